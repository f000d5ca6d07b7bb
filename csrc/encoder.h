/* encoder.h - an encoder is a backbone (ResNet or BERT) plus a projection head,
 * with all of its tensors in flat buffers.
 *
 *   input -> backbone -> h (features, N x feature_dim) -> head g -> z (N x proj_dim)
 *
 * Memory: one flat float32 buffer of parameters, one of gradients of the same
 * layout, and one of state buffers (batch-norm running statistics) that are saved
 * but not trained. A tensor table names every tensor inside them (PyTorch
 * state_dict names). Frozen tensors come first in the parameter buffer, so the
 * trainable ones are the suffix params[trainable_offset:], which is all an
 * optimiser touches.
 */
#ifndef CONVIRT_ENCODER_H
#define CONVIRT_ENCODER_H

#include "convirt.h"

/* ---- tensor table -------------------------------------------------------------- */

#define CV_NAME_LEN 96

typedef struct {
    char name[CV_NAME_LEN]; /* e.g. "layer1.0.conv1.weight" */
    int ndim;
    int64_t shape[4]; /* PyTorch's shape for the tensor (see the layout note) */
    size_t offset;    /* in floats, into params (or buffers when is_buffer) */
    size_t size;
    int is_buffer; /* a running statistic, kept in `buffers`, not trained */
    int frozen;    /* a parameter that gets no gradient */
    int layout;    /* how the stored order differs from PyTorch's (CV_LAYOUT_*) */
} cv_tensor;

/* Stored order of a tensor's elements. Convolution weights are kept GEMM-ready:
 * PyTorch's (K, C, R, S) is stored as (K, R, S, C), Python's views show it in the
 * stored order with shape (K, R, S, C), and import/export convert. */
enum { CV_LAYOUT_TORCH = 0, CV_LAYOUT_KRSC = 1 };

typedef struct {
    cv_tensor *tensors;
    int count, cap;
    size_t n_params, n_buffers;
} cv_tensor_table;

/* Declare a tensor; *offset receives its offset in floats. shape has ndim entries
 * (1 <= ndim <= 4), each >= 1. CV_ERR_VALUE when a size is below 1 or the size or the
 * buffer's total does not fit in size_t (checked, never wrapped: sizes may come from a
 * checkpoint file), CV_ERR_MEMORY when the table cannot grow. Frozen-ness is set
 * afterwards, before the buffers are allocated. */
cv_status cv_table_add(cv_tensor_table *table, const char *name, int ndim,
                       const int64_t *shape, int is_buffer, int layout, size_t *offset);
void cv_table_free(cv_tensor_table *table);

/* ---- inputs ---------------------------------------------------------------------- */

typedef enum { CV_INPUT_IMAGES = 0, CV_INPUT_TOKENS = 1 } cv_input_kind;

typedef struct {
    cv_input_kind kind;
    ptrdiff_t n; /* batch size */

    /* Images: (n, h, w, c) uint8 or float32, element strides; the network sees
     * (pixel * pixel_scale - mean[c]) / std[c], pixel_scale = 1/255 for uint8. */
    const void *pixels;
    int is_uint8;
    ptrdiff_t h, w, c;
    ptrdiff_t stride[4];
    const float *mean, *std; /* c entries each */

    /* Tokens: (n, t) int32 ids, attention mask (1 = token, 0 = padding) and
     * optional token-type ids, element strides. */
    const int32_t *ids, *mask, *token_types;
    ptrdiff_t t;
    ptrdiff_t ids_stride[2], mask_stride[2], types_stride[2];
} cv_batch;

/* ---- backbone interface ------------------------------------------------------------
 * resnet.c and bert.c each provide a create function that declares the backbone's
 * tensors in the table and fills this struct. */
typedef struct {
    const char *kind; /* "resnet" or "bert" */
    ptrdiff_t feature_dim;
    void *model;
    /* Point the model's tensors into the flat buffers (called once after allocation). */
    void (*bind)(void *model, float *params, float *grads, float *buffers);
    /* PyTorch's default initialisation, from a seed. */
    void (*init)(void *model, uint64_t seed);
    /* features: n x feature_dim, written. training: keep what backward needs and
     * (ResNet) use and update batch statistics. */
    cv_status (*forward)(void *model, float *features, const cv_batch *batch, int training);
    /* Adds parameter gradients for d_features (n x feature_dim) of the last training
     * forward; writes d_input (same layout as the input, float32, contiguous (n, h, w,
     * c) for images; NULL to skip, and for tokens) */
    cv_status (*backward)(void *model, float *d_input, const float *d_features);
    void (*free)(void *model);
} cv_backbone;

/* ---- projection head g(x) = W2 relu(W1 x + b1) + b2 (head.c) --------------------------- */

typedef struct {
    ptrdiff_t in_dim, hidden_dim, out_dim;
    /* parameters and gradients (PyTorch Linear layout: weight is (out, in)) */
    float *w1, *b1, *w2, *b2;
    float *dw1, *db1, *dw2, *db2;
    size_t w1_offset, b1_offset, w2_offset, b2_offset;
    /* saved by forward for backward */
    float *hidden; /* n x hidden_dim, after the ReLU */
    size_t hidden_cap;
    const float *input; /* the features of the last forward (owned by the encoder) */
    ptrdiff_t n;
    float *d_hidden;
    size_t d_hidden_cap;
} cv_head;

/* Declares projection.0.weight/bias and projection.2.weight/bias. */
cv_status head_create(cv_head *head, cv_tensor_table *table, ptrdiff_t in_dim,
                      ptrdiff_t hidden_dim, ptrdiff_t out_dim);
void head_bind(cv_head *head, float *params, float *grads);
void head_init(cv_head *head, uint64_t seed);
/* out (n x out_dim) = g(in); keeps in and the hidden layer for backward. */
cv_status head_forward(cv_head *head, float *out, const float *in, ptrdiff_t n);
/* Adds parameter gradients; d_in (n x in_dim) is OVERWRITTEN unless NULL. */
cv_status head_backward(cv_head *head, float *d_in, const float *d_out);
void head_free(cv_head *head);

/* ---- the encoder (encoder.c) -------------------------------------------------------- */

typedef struct {
    cv_backbone backbone;
    cv_head head;
    cv_tensor_table table;
    float *params, *grads, *buffers;
    size_t trainable_offset; /* params[trainable_offset:] are trained */
    int freeze_backbone;     /* no backward below the head */
    ptrdiff_t feature_dim, proj_dim;
    /* features of the last forward (n x feature_dim), the head's input */
    float *features;
    size_t features_cap;
    float *d_features;
    size_t d_features_cap;
    ptrdiff_t n;
    int has_forward; /* a training forward is available for backward */
} cv_encoder;

/* Completes an encoder whose backbone was created into enc->backbone and
 * enc->table: declares the head, allocates the flat buffers, binds and initialises
 * (seed) everything. freeze_prefix: the number of leading tensors in the table that
 * are frozen (they must be the first declared). CV_ERR_MEMORY, before allocating
 * anything, when the parameters, gradients and buffers together exceed this machine's
 * physical memory (they are zeroed at once, so the kernel would otherwise kill some
 * process rather than refuse). */
cv_status cv_encoder_finish(cv_encoder *enc, ptrdiff_t proj_hidden, ptrdiff_t proj_dim,
                            int freeze_prefix, uint64_t seed);

/* CV_ERR_MEMORY when the activations of this batch could never fit in this machine's
 * memory (checked arithmetic, before anything is sized or scanned from the batch's
 * shape); cv_encoder_forward checks it too. */
cv_status cv_encoder_check_batch(const cv_encoder *enc, const cv_batch *batch);

/* features (n x feature_dim) and/or embeddings (n x proj_dim), either may be NULL,
 * both written contiguously. */
cv_status cv_encoder_forward(cv_encoder *enc, float *features, float *embeddings,
                             const cv_batch *batch, int training);

/* Backward of the last training forward: d_embeddings (n x proj_dim) and/or
 * d_features (n x feature_dim), either may be NULL; adds into the gradients. */
cv_status cv_encoder_backward(cv_encoder *enc, float *d_input, const float *d_embeddings,
                              const float *d_features);
void cv_encoder_zero_grad(cv_encoder *enc);
void cv_encoder_free(cv_encoder *enc);

#endif
