/* linear.c - fully connected layer and ReLU. */
#include <omp.h>

#include "core.h"
#include "layers.h"

CV_VECTORIZE static void fill_rows(float *out, const float *row, ptrdiff_t n, ptrdiff_t dim)
{
    for (ptrdiff_t i = 0; i < n; i++)
        memcpy(out + i * dim, row, (size_t)dim * sizeof(float));
}

void linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                    ptrdiff_t n, ptrdiff_t in_dim, ptrdiff_t out_dim)
{
    if (bias)
        fill_rows(out, bias, n, out_dim);
    cv_gemm_nt(n, out_dim, in_dim, 1.0f, inp, in_dim, weight, in_dim, bias ? 1.0f : 0.0f,
               out, out_dim);
}

CV_VECTORIZE static void sum_rows_into(float *acc, const float *x, ptrdiff_t n,
                                       ptrdiff_t dim)
{
    for (ptrdiff_t i = 0; i < n; i++)
        for (ptrdiff_t j = 0; j < dim; j++)
            acc[j] += x[i * dim + j];
}

void linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                     const float *inp, const float *weight, ptrdiff_t n, ptrdiff_t in_dim,
                     ptrdiff_t out_dim)
{
    if (dinp)
        cv_gemm_nn(n, in_dim, out_dim, 1.0f, dout, out_dim, weight, in_dim, 1.0f, dinp,
                   in_dim);
    if (dweight)
        cv_gemm_tn(out_dim, in_dim, n, 1.0f, dout, out_dim, inp, in_dim, 1.0f, dweight,
                   in_dim);
    if (dbias)
        sum_rows_into(dbias, dout, n, out_dim);
}

CV_VECTORIZE void relu_forward(float *out, const float *inp, size_t count)
{
    for (size_t i = 0; i < count; i++)
        out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}

CV_VECTORIZE void relu_backward(float *dinp, const float *dout, const float *out,
                                size_t count)
{
    for (size_t i = 0; i < count; i++)
        dinp[i] += out[i] > 0.0f ? dout[i] : 0.0f;
}
