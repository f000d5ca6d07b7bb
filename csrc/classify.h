/* classify.h - the classification losses of fine-tuning, forward and backward fused.
 *
 * Both take logits z (n x k) with a row and a column stride (in elements), read them
 * in place, and return the mean loss in *loss. grad (may be NULL) has its own strides
 * and is OVERWRITTEN with dL/dz (a loss starts the backward pass; it does not add).
 * Inputs are validated before anything is written: on failure *loss and grad are
 * left untouched and cv_last_error() says what was wrong and where.
 * The loss is summed in double over fixed blocks of rows, so it does not depend on
 * the number of threads. */
#ifndef CONVIRT_CLASSIFY_H
#define CONVIRT_CLASSIFY_H

#include "convirt.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Softmax cross-entropy against class indices y (n, int32, stride ys), mean over rows:
 *   L = (1/n) sum_i [ logsumexp_j z_ij - z_i,y_i ]
 *   dL/dz_ij = (softmax(z_i)_j - [j == y_i]) / n
 * Needs n >= 1, k >= 1, finite logits and 0 <= y_i < k. */
cv_status cv_softmax_cross_entropy(double *loss, float *grad, ptrdiff_t rsg, ptrdiff_t csg,
                                   const float *logits, ptrdiff_t rs, ptrdiff_t cs,
                                   const int32_t *labels, ptrdiff_t ys, ptrdiff_t n,
                                   ptrdiff_t k);

/* Sigmoid binary cross-entropy against targets y (n x k, float32, 0/1 or any value in
 * [0, 1]), with an optional weight w_j >= 0 on the positive term of each class
 * (pos_weight, k values with stride ws; NULL: all 1), mean over all n * k elements:
 *   l_ij = -[ w_j y_ij log s(z_ij) + (1 - y_ij) log(1 - s(z_ij)) ],  s = sigmoid
 * computed in the stable form of PyTorch's binary_cross_entropy_with_logits,
 *   l = (1 - y) z + (1 + (w - 1) y) (log1p(exp(-|z|)) + max(-z, 0)),
 *   dL/dz_ij = [ (1 - y) s(z) - w y (1 - s(z)) ] / (n k)
 * with s(z) and 1 - s(z) both formed from exp(-|z|), so neither cancels. */
cv_status cv_binary_cross_entropy(double *loss, float *grad, ptrdiff_t rsg, ptrdiff_t csg,
                                  const float *logits, ptrdiff_t rs, ptrdiff_t cs,
                                  const float *targets, ptrdiff_t rst, ptrdiff_t cst,
                                  const float *pos_weight, ptrdiff_t ws, ptrdiff_t n,
                                  ptrdiff_t k);

#ifdef __cplusplus
}
#endif
#endif
