/* layers.h - layers shared by the towers. Each is a forward/backward pair: outputs
 * first, then saved state, then inputs and weights, then sizes. Backward functions
 * ADD into every gradient they produce (inputs' gradients included). */
#ifndef CONVIRT_LAYERS_H
#define CONVIRT_LAYERS_H

#include <omp.h>
#include <stddef.h>
#include <stdint.h>

#include "convirt.h"

/* out (n x out_dim) = inp (n x in_dim) @ weight^T + bias;
 * weight (out_dim x in_dim) as PyTorch's Linear; bias may be NULL. */
void linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                    ptrdiff_t n, ptrdiff_t in_dim, ptrdiff_t out_dim);
/* dinp += dout @ weight; dweight += dout^T @ inp; dbias += sum_rows dout.
 * Any of dinp, dweight, dbias may be NULL. */
void linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                     const float *inp, const float *weight, ptrdiff_t n, ptrdiff_t in_dim,
                     ptrdiff_t out_dim);

/* out = max(x, 0), in place allowed. */
void relu_forward(float *out, const float *inp, size_t count);
/* dinp += dout where out > 0 (out: the forward's output). */
void relu_backward(float *dinp, const float *dout, const float *out, size_t count);

/* ---- text layers (embedding.c, layernorm.c, attention.c, gelu.c) --------------------
 * Token activations are "packed": the valid tokens of all sequences, one row each,
 * sequence s in rows [seq_start[s], seq_start[s + 1]). Padding never enters the math,
 * so results do not depend on how far a batch was padded.
 * Parameter gradients are ADDED, as above. Unlike linear_backward, the input gradient
 * of these layers is WRITTEN (where said it may alias dout), which saves the passes
 * that zeroing and accumulating would cost in the BERT backward. */

/* The threads of a layer's own loop: all of them from serial code, one inside a
 * parallel region (a layer applied per tile of a fused loop), as cv_gemm does. */
static inline int layer_threads(void)
{
    return omp_in_parallel() ? 1 : cv_get_num_threads();
}

/* out (m x dim) = (word[ids[i]] + type[types[i]]) + pos[positions[i]], Hugging Face's
 * order of the sums; types may be NULL (type 0 everywhere). */
void embedding_forward(float *out, const int32_t *ids, const int32_t *positions,
                       const int32_t *types, const float *word, const float *pos,
                       const float *type, ptrdiff_t m, ptrdiff_t dim);
/* dword[ids[i]] += dout[i], dpos[positions[i]] += dout[i], dtype[types[i]] += dout[i]
 * (any table gradient may be NULL). Threads own column ranges, so the sums run in
 * token order whatever the thread count. */
void embedding_backward(float *dword, float *dpos, float *dtype, const float *dout,
                        const int32_t *ids, const int32_t *positions, const int32_t *types,
                        ptrdiff_t m, ptrdiff_t dim);

/* Per row of inp (rows x dim): xhat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps)
 * (biased variance), out = xhat * gamma + beta. xhat (rows x dim) and rstd (rows) are
 * kept for backward when non-NULL. out and xhat may each alias inp. */
void layernorm_forward(float *out, float *xhat, float *rstd, const float *inp,
                       const float *gamma, const float *beta, ptrdiff_t rows, ptrdiff_t dim,
                       float eps);
/* dinp = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dout * gamma: WRITTEN, may
 * alias dout. dgamma += sum_rows dout * xhat, dbeta += sum_rows dout (either may be
 * NULL; summed in row order whatever the thread count). */
void layernorm_backward(float *dinp, float *dgamma, float *dbeta, const float *dout,
                        const float *xhat, const float *rstd, const float *gamma,
                        ptrdiff_t rows, ptrdiff_t dim);
/* The naive versions (one thread, double accumulators) the tests compare with;
 * layernorm_backward_reference ADDS into dinp too. */
void layernorm_forward_reference(float *out, float *xhat, float *rstd, const float *inp,
                                 const float *gamma, const float *beta, ptrdiff_t rows,
                                 ptrdiff_t dim, float eps);
void layernorm_backward_reference(float *dinp, float *dgamma, float *dbeta,
                                  const float *dout, const float *xhat, const float *rstd,
                                  const float *gamma, ptrdiff_t rows, ptrdiff_t dim);

/* out = x * Phi(x) = x / 2 * (1 + erf(x / sqrt 2)), the exact GELU; in place allowed. */
void gelu_forward(float *out, const float *inp, size_t count);
/* dinp = dout * GELU'(inp): WRITTEN, may alias dout. */
void gelu_backward(float *dinp, const float *dout, const float *inp, size_t count);
/* erf in float, vectorisable (absolute error below 5e-7), for tests. */
float gelu_erf(float x);

/* Multi-head scaled dot-product self-attention over packed sequences.
 *   qkv (m x 3 * heads * head_dim): per row [q | k | v], head h in columns
 *       [h * head_dim, (h + 1) * head_dim) of each third (Hugging Face's layout).
 *   ctx (m x heads * head_dim), written: softmax(q k^T / sqrt(head_dim)) v per head.
 *   probs: the softmax of every (sequence, head), kept for backward: sequence s, head h
 *       at probs + probs_start[s] + h * len_s^2, row-major (len_s x len_s), where
 *       probs_start[s] = heads * sum_{r < s} len_r^2. NULL in inference.
 *   work: attention_work_floats(seq_start, n, head_dim, threads) floats, one block
 *       per thread (the scores and a transposed head).
 * OpenMP over (sequence, head) pairs with `threads` threads, one-thread GEMMs inside. */
size_t attention_work_floats(const ptrdiff_t *seq_start, ptrdiff_t n, ptrdiff_t head_dim,
                             int threads);
void attention_forward(float *ctx, float *probs, const float *qkv,
                       const ptrdiff_t *seq_start, const size_t *probs_start, ptrdiff_t n,
                       ptrdiff_t heads, ptrdiff_t head_dim, float *work, int threads);
/* dqkv (m x 3 * heads * head_dim), WRITTEN, from dctx (m x heads * head_dim) and the
 * forward's probs; work as attention_forward's. */
void attention_backward(float *dqkv, const float *probs, const float *dctx,
                        const float *qkv, const ptrdiff_t *seq_start,
                        const size_t *probs_start, ptrdiff_t n, ptrdiff_t heads,
                        ptrdiff_t head_dim, float *work, int threads);
/* Naive triple loops in double (same contract, one thread; probs must be given). */
void attention_forward_reference(float *ctx, float *probs, const float *qkv,
                                 const ptrdiff_t *seq_start, const size_t *probs_start,
                                 ptrdiff_t n, ptrdiff_t heads, ptrdiff_t head_dim);
void attention_backward_reference(float *dqkv, const float *probs, const float *dctx,
                                  const float *qkv, const ptrdiff_t *seq_start,
                                  const size_t *probs_start, ptrdiff_t n, ptrdiff_t heads,
                                  ptrdiff_t head_dim);
/* ---- image layers (conv.c, batchnorm.c, pool.c) ---------------------------------
 * Activations are NHWC float32, contiguous: a tensor (n, h, w, c) is also a matrix of
 * n*h*w rows and c columns, which is how batch norm and the GEMMs see it. */

#include "convirt.h"

/* Geometry of a convolution: input (n, h, w, c), weights (k, r, s, c) ("KRSC", the
 * GEMM-ready order of PyTorch's (k, c, r, s)), output (n, p, q, k) with zero padding
 * `pad` on every side. */
typedef struct {
    ptrdiff_t n, h, w, c;
    ptrdiff_t k, r, s;
    ptrdiff_t stride, pad;
    ptrdiff_t p, q;
} conv_shape;

/* Fills shape and checks it (every size >= 1, the window fits the padded input). */
cv_status conv_shape_init(conv_shape *shape, ptrdiff_t n, ptrdiff_t h, ptrdiff_t w,
                          ptrdiff_t c, ptrdiff_t k, ptrdiff_t r, ptrdiff_t s,
                          ptrdiff_t stride, ptrdiff_t pad);

#define CONV_MAX_PIXEL_CHANNELS 4

/* What a convolution reads: a float tensor, or the caller's images (uint8 or float32,
 * any element strides) normalised on the fly inside the im2col, so the batch is never
 * copied: value = (pixel * pixel_scale - mean[c]) / std[c]. */
typedef struct {
    const float *data; /* a contiguous (n, h, w, c) float tensor, or NULL: pixels */
    const void *pixels;
    int is_uint8;
    ptrdiff_t stride[4];
    float lut[CONV_MAX_PIXEL_CHANNELS][256]; /* uint8: normalised value of each byte */
    float mul[CONV_MAX_PIXEL_CHANNELS];      /* d value / d pixel */
    float add[CONV_MAX_PIXEL_CHANNELS];      /* float32: value = pixel * mul + add */
} conv_input;

void conv_input_tensor(conv_input *in, const float *data);
cv_status conv_input_pixels(conv_input *in, const void *pixels, int is_uint8,
                            const ptrdiff_t stride[4], ptrdiff_t c, const float *mean,
                            const float *std);

/* Called on each tile of output rows right after its GEMM, while it is in cache:
 * out points at row row0 of the output (rows x k). tile numbers the tiles 0..count-1
 * (conv2d_tile_count) in a fixed way, whichever thread runs them. */
typedef struct {
    void (*run)(void *ctx, float *out, ptrdiff_t row0, ptrdiff_t rows, ptrdiff_t tile);
    void *ctx;
} conv_epilogue;

/* Makes rows [row0, row0 + rows) of a convolution's output gradient into dy (rows x k):
 * conv2d_backward then uses each tile of it while it is in cache, and the gradient is
 * never written whole (the batch norm's backward, fused). Where conv2d_backward's path
 * reads the gradient whole (Winograd, the transposed convolution), it first writes all
 * of it into spill, (n*p*q, k) floats. run is called from several threads at once. */
typedef struct {
    void (*run)(void *ctx, float *dy, ptrdiff_t row0, ptrdiff_t rows);
    void *ctx;
    float *spill;
} conv_prologue;

/* Scratch memory of the convolutions (im2col tiles, private weight gradients), grown
 * on demand and shared by every convolution of a model. */
typedef struct {
    float *data;
    size_t cap;
} conv_workspace;

void conv_workspace_free(conv_workspace *ws);

/* The number of output-row tiles conv2d_forward uses (fixed by the geometry, the kind
 * of input and the batch size, not by the thread count). */
ptrdiff_t conv2d_tile_count(const conv_input *inp, const conv_shape *shape);

/* The most tiles conv2d_forward may use for this shape, whether the Winograd path is on
 * or off (the size of per-tile buffers that must survive cv_set_winograd). */
ptrdiff_t conv2d_tile_bound(const conv_input *inp, const conv_shape *shape);

/* Whether conv2d_forward gains from weight_t for this shape: only where BLIS runs the
 * GEMMs unpacked (small tiles or narrow layers); packed, it reads any layout. */
int conv2d_wants_weight_t(const conv_input *inp, const conv_shape *shape);

/* out (n, p, q, k) = conv(inp, weight), then epilogue (may be NULL) on each tile.
 * weight: (k, r, s, c); weight_t: the same transposed to (r*s*c, k), or NULL
 * (faster GEMMs when r*s*c is small). One GEMM per tile of output rows: a 1x1
 * stride-1 convolution reads the input in place, others through a per-thread im2col
 * tile that stays in cache. OpenMP over tiles, one BLIS thread each. */
cv_status conv2d_forward(float *out, const conv_input *inp, const float *weight,
                         const float *weight_t, const conv_shape *shape,
                         const conv_epilogue *epilogue, conv_workspace *ws);

/* dweight (k, r, s, c) += dW; dinp += dX (add_dinp) or = dX (!add_dinp); either may be
 * NULL. For a pixel input dinp is the gradient with respect to the pixel values
 * (float32, contiguous (n, h, w, c)). OpenMP over groups of tiles that own whole
 * images (their col2im writes never meet); each thread adds its weight gradient into
 * a private buffer, summed at the end (deterministic for a given thread count). With a
 * prologue (may be NULL), dout is not read (may be NULL): the prologue makes it. */
cv_status conv2d_backward(float *dinp, float *dweight, const float *dout,
                          const conv_input *inp, const float *weight,
                          const conv_shape *shape, int add_dinp,
                          const conv_prologue *prologue, conv_workspace *ws);

/* ---- Winograd F(2x2, 3x3) and F(4x4, 3x3) (winograd.c): 3x3, stride 1, padding 1 ----
 * conv2d_forward and conv2d_backward take this path themselves when it applies; these
 * are its pieces. */
/* fits: the geometry allows it; applies: it fits and the switch is on. */
int winograd_fits(const conv_input *in, const conv_shape *sh);
int winograd_applies(const conv_input *in, const conv_shape *sh);
ptrdiff_t winograd_tile_count(const conv_shape *sh);
/* The most tiles either block size may use for this shape. */
ptrdiff_t winograd_tile_bound(const conv_shape *sh);
/* Whether winograd_forward gains from weight_t for this shape (its filter transform
 * then reads (9 c, k) contiguously). */
int winograd_reads_weight_t(const conv_shape *sh);
/* out (=, or += with add) conv(x, weight) with sh's geometry; weight_t: weight as
 * (9 c, k), or NULL (read in place, slower where winograd_reads_weight_t). flip: weight
 * is that of the layer whose input gradient this is, (sh->c, 3, 3, sh->k), used flipped
 * and transposed (sh is then the transposed shape; weight_t unused). epilogue as
 * conv2d_forward's. */
cv_status winograd_forward(float *out, const float *x, const float *weight,
                           const float *weight_t, int flip, const conv_shape *sh, int add,
                           const conv_epilogue *epilogue, conv_workspace *ws);
/* dweight (k, 3, 3, c) += the gradient of conv(x, W) given dout (n, p, q, k). */
cv_status winograd_weight_gradient(float *dweight, const float *dout, const float *x,
                                   const conv_shape *sh, conv_workspace *ws);

/* The naive direct convolution the tests compare with (double accumulation). */
void conv2d_forward_reference(float *out, const conv_input *inp, const float *weight,
                              const conv_shape *shape);
void conv2d_backward_reference(float *dinp, float *dweight, const float *dout,
                               const conv_input *inp, const float *weight,
                               const conv_shape *shape);

/* ---- batch norm (batchnorm.c) -----------------------------------------------------
 * Over the rows of an (m, c) matrix (m = n*h*w). Forward with batch statistics:
 *   mean, var (biased) per channel; invstd = 1 / sqrt(var + eps);
 *   running_mean += momentum (mean - running_mean);
 *   running_var += momentum (var * m / (m - 1) - running_var).
 * The normalisation itself is an affine map per channel, a = y * scale + shift, which
 * bn_apply_forward fuses with the ReLU and the residual add. */

/* Shifted sums of one tile of rows, for statistics that are combined later in a fixed
 * order (Chan et al.): partial holds 2*c doubles per tile (mean, M2). */
void bn_tile_statistics(double *partial, const float *y, ptrdiff_t rows, ptrdiff_t c);
/* Combines `tiles` partials (tile i has counts[i] rows; counts NULL: all equal to
 * rows_per_tile) into mean and var (biased), c each. */
void bn_combine_statistics(double *mean, double *var, const double *partials,
                           const ptrdiff_t *counts, ptrdiff_t rows_per_tile,
                           ptrdiff_t tiles, ptrdiff_t c);
/* mean, var of y (m, c) in parallel (tiles of rows, combined in a fixed order). */
cv_status bn_statistics(double *mean, double *var, const float *y, ptrdiff_t m,
                        ptrdiff_t c);
/* From batch statistics: invstd, the affine scale/shift, and the running update. */
void bn_finish_statistics(float *batch_mean, float *invstd, float *scale, float *shift,
                          float *running_mean, float *running_var, const double *mean,
                          const double *var, const float *gamma, const float *beta,
                          ptrdiff_t m, ptrdiff_t c, double momentum, double eps);
/* Eval mode: scale = gamma / sqrt(running_var + eps), shift = beta - running_mean * scale.
 */
void bn_eval_affine(float *scale, float *shift, const float *running_mean,
                    const float *running_var, const float *gamma, const float *beta,
                    ptrdiff_t c, double eps);

/* out (m, c) = act(y * scale + shift + residual + res_y * res_scale + res_shift):
 * residual (may be NULL) is added as is, res_y (may be NULL) through its own affine
 * map (the downsample branch's batch norm); act is ReLU when relu. out may alias y.
 * Parallel over rows. */
void bn_apply_forward(float *out, const float *y, const float *scale, const float *shift,
                      const float *residual, const float *res_y, const float *res_scale,
                      const float *res_shift, int relu, ptrdiff_t m, ptrdiff_t c);
/* The same on rows [row0, row0 + rows) from one thread (a convolution epilogue). */
void bn_apply_rows(float *out, const float *y, const float *scale, const float *shift,
                   const float *residual, const float *res_y, const float *res_scale,
                   const float *res_shift, int relu, ptrdiff_t rows, ptrdiff_t c);

/* Backward of a = act(gamma * (y - mean) * invstd + beta [+ residual]), in two passes.
 * dz = dout masked by out > 0 when out is given (the ReLU; out: the forward's output),
 * dout itself when out is NULL.
 * reduce: sum_dz = sum_rows dz, sum_dzx = sum_rows dz * xhat (c doubles each). */
void bn_backward_reduce(double *sum_dz, double *sum_dzx, const float *dout,
                        const float *out, const float *y, const float *mean,
                        const float *invstd, ptrdiff_t m, ptrdiff_t c);
/* dy = gamma * invstd * (dz - sum_dz / m - xhat * sum_dzx / m); dy may alias dout.
 * Adds sum_dzx into dgamma and sum_dz into dbeta (either may be NULL). */
void bn_backward_apply(float *dy, float *dgamma, float *dbeta, const float *dout,
                       const float *out, const float *y, const float *mean,
                       const float *invstd, const float *gamma, const double *sum_dz,
                       const double *sum_dzx, ptrdiff_t m, ptrdiff_t c);
/* The pieces of bn_backward_apply, for a consumer that makes dy a tile at a time:
 * coefficients: coef (3 c floats) from the sums, and the sums added into dgamma and
 * dbeta (either may be NULL); rows: dy (rows, c) of those rows, from one thread, the
 * same bits bn_backward_apply writes. */
void bn_backward_coefficients(float *coef, float *dgamma, float *dbeta, const float *invstd,
                              const float *gamma, const double *sum_dz,
                              const double *sum_dzx, ptrdiff_t m, ptrdiff_t c);
void bn_backward_rows(float *dy, const float *dout, const float *out, const float *y,
                      const float *mean, const float *coef, ptrdiff_t rows, ptrdiff_t c);
/* The end of a residual block, one pass: dout *= (out > 0) in place (the ReLU after
 * the add), and the reduce of both batch norms that feed the add, a (the last unit)
 * and b (the downsample; y_b NULL for an identity shortcut): sum_dz is shared. */
void bn_backward_mask_reduce2(double *sum_dz, double *sum_dzx_a, double *sum_dzx_b,
                              float *dout, const float *out, const float *y_a,
                              const float *mean_a, const float *invstd_a, const float *y_b,
                              const float *mean_b, const float *invstd_b, ptrdiff_t m,
                              ptrdiff_t c);
/* dout *= (out > 0), in place (the ReLU after a residual add). */
void relu_mask_inplace(float *dout, const float *out, size_t count);

/* ---- pooling (pool.c) ---------------------------------------------------------------- */

/* Max pool (n, h, w, c) -> (n, p, q, c), window k x k, stride, padding that never
 * wins. argmax (may be NULL; k*k <= 256): the window position (row-major) each maximum
 * came from, PyTorch's rule: the first maximum. Parallel over output rows, vectorised
 * over channels. */
void maxpool_forward(float *out, unsigned char *argmax, const float *inp, ptrdiff_t n,
                     ptrdiff_t h, ptrdiff_t w, ptrdiff_t c, ptrdiff_t k, ptrdiff_t stride,
                     ptrdiff_t pad);
/* dinp += dout routed to each window's maximum (argmax from the forward). */
void maxpool_backward(float *dinp, const float *dout, const unsigned char *argmax,
                      ptrdiff_t n, ptrdiff_t h, ptrdiff_t w, ptrdiff_t c, ptrdiff_t k,
                      ptrdiff_t stride, ptrdiff_t pad);
void maxpool_forward_reference(float *out, const float *inp, ptrdiff_t n, ptrdiff_t h,
                               ptrdiff_t w, ptrdiff_t c, ptrdiff_t k, ptrdiff_t stride,
                               ptrdiff_t pad);
void maxpool_backward_reference(float *dinp, const float *dout, const float *inp,
                                ptrdiff_t n, ptrdiff_t h, ptrdiff_t w, ptrdiff_t c,
                                ptrdiff_t k, ptrdiff_t stride, ptrdiff_t pad);
/* Output size of a pooling or convolution window along one axis. */
static inline ptrdiff_t window_out(ptrdiff_t size, ptrdiff_t k, ptrdiff_t stride,
                                   ptrdiff_t pad)
{
    return (size + 2 * pad - k) / stride + 1;
}

/* Global average pool: out (n, c) = mean over the hw rows of each image of inp
 * (n, hw, c). backward: dinp += dout / hw broadcast (add) or = (!add). */
void avgpool_forward(float *out, const float *inp, ptrdiff_t n, ptrdiff_t hw, ptrdiff_t c);
void avgpool_backward(float *dinp, const float *dout, ptrdiff_t n, ptrdiff_t hw,
                      ptrdiff_t c, int add);

#endif
