/* bert.c - placeholder until the BERT backbone lands (issue: text encoder). */
#include "bert.h"

cv_status bert_create(cv_backbone *backbone, cv_tensor_table *table,
                      const cv_bert_config *config, int *frozen_tensors)
{
    (void)backbone;
    (void)table;
    (void)config;
    (void)frozen_tensors;
    return cv_fail(CV_ERR_STATE, "the BERT backbone is not implemented yet");
}
