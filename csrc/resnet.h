/* resnet.h - torchvision's ResNet v1.5 (18, 34, 50) as an encoder backbone.
 * NHWC activations; features are the global-average-pooled output of layer4
 * (512 for ResNet-18/34, 2048 for ResNet-50). Tensor names as in torchvision's
 * state_dict (conv1.weight, bn1.running_mean, layer1.0.conv1.weight, ...; no fc). */
#ifndef CONVIRT_RESNET_H
#define CONVIRT_RESNET_H

#include "encoder.h"

typedef struct {
    int depth;       /* 18, 34 or 50 */
    int in_channels; /* 1 for radiographs, 3 for RGB */
} cv_resnet_config;

/* Declares the tensors in table and fills backbone (kind "resnet"). */
cv_status resnet_create(cv_backbone *backbone, cv_tensor_table *table,
                        const cv_resnet_config *config);

#endif
