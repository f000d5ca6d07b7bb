/* resnet.c - placeholder until the ResNet backbone lands (issue: image encoder). */
#include "resnet.h"

cv_status resnet_create(cv_backbone *backbone, cv_tensor_table *table,
                        const cv_resnet_config *config)
{
    (void)backbone;
    (void)table;
    (void)config;
    return cv_fail(CV_ERR_STATE, "the ResNet backbone is not implemented yet");
}
