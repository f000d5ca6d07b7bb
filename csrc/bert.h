/* bert.h - Hugging Face's BertModel (post-LayerNorm) as an encoder backbone, pooled
 * over the valid tokens of the last layer. Tensor names as in a Hugging Face BERT
 * checkpoint without the "bert." prefix (embeddings.word_embeddings.weight,
 * encoder.layer.0.attention.self.query.weight, ...; no pooler). */
#ifndef CONVIRT_BERT_H
#define CONVIRT_BERT_H

#include "encoder.h"

enum { CV_POOL_MAX = 0, CV_POOL_MEAN = 1, CV_POOL_CLS = 2 };

typedef struct {
    int vocab_size, hidden_size, num_layers, num_heads, intermediate_size;
    int max_position_embeddings, type_vocab_size;
    double layer_norm_eps;
    int pooling;       /* CV_POOL_* (ConVIRT: max) */
    int freeze_layers; /* 0: none; k >= 1: the embeddings and the first k layers */
} cv_bert_config;

/* Declares the tensors in table (the frozen ones first) and fills backbone (kind
 * "bert"); *frozen_tensors is the number of leading tables entries that are frozen. */
cv_status bert_create(cv_backbone *backbone, cv_tensor_table *table,
                      const cv_bert_config *config, int *frozen_tensors);

#endif
