/* bert.h - Hugging Face's BertModel (post-LayerNorm) as an encoder backbone, pooled
 * over the valid tokens of the last layer. Tensor names as in a Hugging Face BERT
 * checkpoint without the "bert." prefix (embeddings.word_embeddings.weight,
 * encoder.layer.0.attention.self.query.weight, ...; no pooler). Linear weights in
 * PyTorch's (out, in) layout. No dropout: training computes the eval-mode function.
 * Position ids are the token's index in its padded row (Hugging Face's default), and
 * the padded tokens never enter the math. */
#ifndef CONVIRT_BERT_H
#define CONVIRT_BERT_H

#include "encoder.h"

enum { CV_POOL_MAX = 0, CV_POOL_MEAN = 1, CV_POOL_CLS = 2 };

/* The most layers a config may ask for (BERT-large has 24): each layer is 16 table
 * entries and per-layer state, so a hostile config must not size those freely. */
#define CV_BERT_MAX_LAYERS 1024

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

/* The last layer's token outputs of the last forward, unpacked to (n, t, hidden) with
 * zeros at padded positions (Hugging Face's last_hidden_state at the valid tokens).
 * bert_last_shape gives n, t and hidden. */
cv_status bert_last_shape(const cv_backbone *backbone, ptrdiff_t *n, ptrdiff_t *t,
                          ptrdiff_t *hidden);
cv_status bert_last_hidden(const cv_backbone *backbone, float *out, ptrdiff_t n,
                           ptrdiff_t t);

/* Pooling of packed token rows (layers.h) per sequence: out (n x dim) is the max
 * (argmax (n x dim), when non-NULL, records the row each maximum came from; the first
 * wins ties), the mean, or the first valid token ([CLS]: Hugging Face's position 0
 * whenever, as usual, position 0 is not padding). */
void bert_pool_forward(float *out, int32_t *argmax, const float *hidden,
                       const ptrdiff_t *seq_start, ptrdiff_t n, ptrdiff_t dim, int pooling);
/* dhidden (the packed rows, m x dim) is WRITTEN: dout routed back to the rows. */
void bert_pool_backward(float *dhidden, const float *dout, const int32_t *argmax,
                        const ptrdiff_t *seq_start, ptrdiff_t n, ptrdiff_t dim,
                        int pooling);

#endif
