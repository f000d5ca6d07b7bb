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

/* Declares the tensors in table and fills backbone (kind "resnet").
 * Training: the backward reads the images of the last training forward again (for
 * the first convolution's weight gradient), so they must stay alive and unchanged
 * until then; the Python binding keeps a reference. */
cv_status resnet_create(cv_backbone *backbone, cv_tensor_table *table,
                        const cv_resnet_config *config);

/* ---- per-layer profile --------------------------------------------------------------
 * Off by default. While on, every ResNet forward and backward adds the wall time of
 * each layer (convolution and batch norm apart) into one table for the process;
 * turning it on clears the table, turning it off keeps it for reading. */
typedef struct {
    char name[48];       /* "conv1", "layer1.0.conv2", "maxpool", "avgpool" */
    double conv_forward; /* seconds */
    double bn_forward;   /* batch norm, ReLU and residual add (training) */
    double conv_backward;
    double bn_backward;
    double flops_forward; /* of the convolution, summed over calls */
    double flops_backward;
    long forward_calls, backward_calls;
} resnet_profile_entry;

/* on: 0 off, 1 wall time, RESNET_PROFILE_CPU_TIME the process's CPU time (what a
 * layer costs on a busy machine, when run on one thread). */
#define RESNET_PROFILE_CPU_TIME 2
void resnet_profile_enable(int on);
int resnet_profile_enabled(void);
/* The table (count entries, in network order); valid until the next enable. */
const resnet_profile_entry *resnet_profile(int *count);

#endif
