/* layers.h - layers shared by the towers. Each is a forward/backward pair: outputs
 * first, then saved state, then inputs and weights, then sizes. Backward functions
 * ADD into every gradient they produce (inputs' gradients included). */
#ifndef CONVIRT_LAYERS_H
#define CONVIRT_LAYERS_H

#include <stddef.h>

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

#endif
