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
 *       probs_start[s] = heads * sum_{r < s} len_r^2. NULL in inference: then work holds
 *       threads * max_len^2 floats, one block per thread.
 * OpenMP over (sequence, head) pairs with `threads` threads, one-thread GEMMs inside. */
void attention_forward(float *ctx, float *probs, const float *qkv,
                       const ptrdiff_t *seq_start, const size_t *probs_start, ptrdiff_t n,
                       ptrdiff_t heads, ptrdiff_t head_dim, float *work, int threads);
/* dqkv (m x 3 * heads * head_dim), WRITTEN, from dctx (m x heads * head_dim) and the
 * forward's probs; work holds threads * max_len^2 floats. */
void attention_backward(float *dqkv, const float *probs, const float *dctx, const float *qkv,
                        const ptrdiff_t *seq_start, const size_t *probs_start, ptrdiff_t n,
                        ptrdiff_t heads, ptrdiff_t head_dim, float *work, int threads);
/* Naive triple loops in double (same contract, one thread; probs must be given). */
void attention_forward_reference(float *ctx, float *probs, const float *qkv,
                                 const ptrdiff_t *seq_start, const size_t *probs_start,
                                 ptrdiff_t n, ptrdiff_t heads, ptrdiff_t head_dim);
void attention_backward_reference(float *dqkv, const float *probs, const float *dctx,
                                  const float *qkv, const ptrdiff_t *seq_start,
                                  const size_t *probs_start, ptrdiff_t n, ptrdiff_t heads,
                                  ptrdiff_t head_dim);

#endif
