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
#include "head.h"
#include "tensor_table.h"

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

/* A sum over the processes of a data-parallel run, in place: data (n doubles) becomes
 * the element-wise sum of every process's data. Returns 0, or nonzero to stop the
 * calling forward or backward with an error. The core calls it from the thread that
 * called the forward or backward, outside any parallel region; user is passed back. */
typedef int (*cv_reduce_fn)(void *user, double *data, ptrdiff_t n);

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
    /* Synchronised batch norm (NULL for a backbone without batch norm): training
     * forwards use the statistics of every process's batch together, summed with fn
     * (NULL: this process's batch alone, the default). */
    void (*set_batchnorm_reduce)(void *model, cv_reduce_fn fn, void *user);
} cv_backbone;

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
    /* What the last forward left for backward: 0 nothing (no forward yet, or the
     * last was not in training mode or failed); 1 features and embeddings, so
     * backward takes d_embeddings and/or d_features; 2 features only (embeddings
     * were not asked for), so backward takes d_features alone. */
    int has_forward;
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

/* Synchronised batch norm over the processes of a data-parallel run (see
 * cv_reduce_fn); fn NULL turns it off. CV_ERR_VALUE for a backbone without batch
 * norm (BERT). */
cv_status cv_encoder_set_batchnorm_reduce(cv_encoder *enc, cv_reduce_fn fn, void *user);
void cv_encoder_free(cv_encoder *enc);

#endif
