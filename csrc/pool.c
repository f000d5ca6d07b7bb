/* pool.c - max pooling and global average pooling over NHWC activations, vectorised
 * over channels (the fastest axis). */
#include <omp.h>

#include "core.h"
#include "layers.h"

/* ---- max pool --------------------------------------------------------------------- */

CV_VECTORIZE static void max_into(float *restrict o, const float *restrict v, ptrdiff_t c)
{
    for (ptrdiff_t j = 0; j < c; j++)
        o[j] = v[j] > o[j] ? v[j] : o[j];
}

/* Where each maximum came from: for the window positions in reverse order, the last
 * write is the first position that holds the maximum (PyTorch's tie rule). */
CV_VECTORIZE static void argmax_at(unsigned char *restrict arg, const float *restrict v,
                                   const float *restrict o, unsigned char pos, ptrdiff_t c)
{
    for (ptrdiff_t j = 0; j < c; j++)
        arg[j] = v[j] == o[j] ? pos : arg[j];
}

void maxpool_forward(float *out, unsigned char *argmax, const float *inp, ptrdiff_t n,
                     ptrdiff_t h, ptrdiff_t w, ptrdiff_t c, ptrdiff_t k, ptrdiff_t stride,
                     ptrdiff_t pad)
{
    const ptrdiff_t P = window_out(h, k, stride, pad), Q = window_out(w, k, stride, pad);
#pragma omp parallel for num_threads(cv_get_num_threads()) schedule(static)
    for (ptrdiff_t np = 0; np < n * P; np++) {
        ptrdiff_t b = np / P, p = np % P;
        for (ptrdiff_t q = 0; q < Q; q++) {
            float *o = out + (np * Q + q) * c;
            for (ptrdiff_t j = 0; j < c; j++)
                o[j] = -INFINITY;
            for (ptrdiff_t r = 0; r < k; r++) {
                ptrdiff_t y = p * stride - pad + r;
                if (y < 0 || y >= h)
                    continue;
                for (ptrdiff_t s = 0; s < k; s++) {
                    ptrdiff_t x = q * stride - pad + s;
                    if (x >= 0 && x < w)
                        max_into(o, inp + ((b * h + y) * w + x) * c, c);
                }
            }
            if (!argmax)
                continue;
            /* Start from the first position inside the image, so that every entry is a
             * valid position even where no value equals the maximum (a NaN). */
            unsigned char *arg = argmax + (np * Q + q) * c;
            ptrdiff_t y0 = p * stride - pad, x0 = q * stride - pad;
            ptrdiff_t first = (y0 < 0 ? -y0 : 0) * k + (x0 < 0 ? -x0 : 0);
            memset(arg, (int)first, (size_t)c);
            for (ptrdiff_t pos = k * k - 1; pos >= 0; pos--) {
                ptrdiff_t y = p * stride - pad + pos / k, x = q * stride - pad + pos % k;
                if (y >= 0 && y < h && x >= 0 && x < w)
                    argmax_at(arg, inp + ((b * h + y) * w + x) * c, o, (unsigned char)pos,
                              c);
            }
        }
    }
}

void maxpool_backward(float *dinp, const float *dout, const unsigned char *argmax,
                      ptrdiff_t n, ptrdiff_t h, ptrdiff_t w, ptrdiff_t c, ptrdiff_t k,
                      ptrdiff_t stride, ptrdiff_t pad)
{
    const ptrdiff_t P = window_out(h, k, stride, pad), Q = window_out(w, k, stride, pad);
    /* Windows overlap across neighbouring rows, so threads own whole images. */
#pragma omp parallel for num_threads(cv_get_num_threads()) schedule(static)
    for (ptrdiff_t b = 0; b < n; b++)
        for (ptrdiff_t p = 0; p < P; p++)
            for (ptrdiff_t q = 0; q < Q; q++) {
                ptrdiff_t at = ((b * P + p) * Q + q) * c;
                const unsigned char *arg = argmax + at;
                const float *g = dout + at;
                /* the window's top-left corner, possibly in the padding */
                ptrdiff_t y0 = p * stride - pad, x0 = q * stride - pad;
                for (ptrdiff_t j = 0; j < c; j++) {
                    ptrdiff_t y = y0 + arg[j] / k, x = x0 + arg[j] % k;
                    dinp[((b * h + y) * w + x) * c + j] += g[j];
                }
            }
}

void maxpool_forward_reference(float *out, const float *inp, ptrdiff_t n, ptrdiff_t h,
                               ptrdiff_t w, ptrdiff_t c, ptrdiff_t k, ptrdiff_t stride,
                               ptrdiff_t pad)
{
    const ptrdiff_t P = window_out(h, k, stride, pad), Q = window_out(w, k, stride, pad);
    for (ptrdiff_t b = 0; b < n; b++)
        for (ptrdiff_t p = 0; p < P; p++)
            for (ptrdiff_t q = 0; q < Q; q++)
                for (ptrdiff_t j = 0; j < c; j++) {
                    float best = -INFINITY;
                    for (ptrdiff_t r = 0; r < k; r++)
                        for (ptrdiff_t s = 0; s < k; s++) {
                            ptrdiff_t y = p * stride - pad + r, x = q * stride - pad + s;
                            if (y >= 0 && y < h && x >= 0 && x < w &&
                                inp[((b * h + y) * w + x) * c + j] > best)
                                best = inp[((b * h + y) * w + x) * c + j];
                        }
                    out[((b * P + p) * Q + q) * c + j] = best;
                }
}

void maxpool_backward_reference(float *dinp, const float *dout, const float *inp,
                                ptrdiff_t n, ptrdiff_t h, ptrdiff_t w, ptrdiff_t c,
                                ptrdiff_t k, ptrdiff_t stride, ptrdiff_t pad)
{
    const ptrdiff_t P = window_out(h, k, stride, pad), Q = window_out(w, k, stride, pad);
    for (ptrdiff_t b = 0; b < n; b++)
        for (ptrdiff_t p = 0; p < P; p++)
            for (ptrdiff_t q = 0; q < Q; q++)
                for (ptrdiff_t j = 0; j < c; j++) {
                    float best = -INFINITY;
                    ptrdiff_t arg = -1;
                    for (ptrdiff_t r = 0; r < k; r++)
                        for (ptrdiff_t s = 0; s < k; s++) {
                            ptrdiff_t y = p * stride - pad + r, x = q * stride - pad + s;
                            ptrdiff_t at = ((b * h + y) * w + x) * c + j;
                            if (y >= 0 && y < h && x >= 0 && x < w && inp[at] > best) {
                                best = inp[at];
                                arg = at;
                            }
                        }
                    if (arg >= 0)
                        dinp[arg] += dout[((b * P + p) * Q + q) * c + j];
                }
}

/* ---- global average pool ------------------------------------------------------------- */

CV_VECTORIZE static void sum_rows(double *restrict acc, const float *restrict x,
                                  ptrdiff_t rows, ptrdiff_t c)
{
    for (ptrdiff_t j = 0; j < c; j++)
        acc[j] = 0.0;
    for (ptrdiff_t i = 0; i < rows; i++)
        for (ptrdiff_t j = 0; j < c; j++)
            acc[j] += x[i * c + j];
}

void avgpool_forward(float *out, const float *inp, ptrdiff_t n, ptrdiff_t hw, ptrdiff_t c)
{
    const int threads = cv_get_num_threads();
    double *acc_all = malloc((size_t)(c * threads) * sizeof(double));
    if (!acc_all) {
        for (ptrdiff_t b = 0; b < n; b++)
            for (ptrdiff_t j = 0; j < c; j++) {
                double s = 0.0;
                for (ptrdiff_t i = 0; i < hw; i++)
                    s += inp[(b * hw + i) * c + j];
                out[b * c + j] = (float)(s / (double)hw);
            }
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (ptrdiff_t b = 0; b < n; b++) {
        double *acc = acc_all + c * omp_get_thread_num();
        sum_rows(acc, inp + b * hw * c, hw, c);
        for (ptrdiff_t j = 0; j < c; j++)
            out[b * c + j] = (float)(acc[j] / (double)hw);
    }
    free(acc_all);
}

CV_VECTORIZE static void broadcast_rows(float *restrict d, const float *restrict g,
                                        float scale, ptrdiff_t rows, ptrdiff_t c, int add)
{
    for (ptrdiff_t i = 0; i < rows; i++)
        for (ptrdiff_t j = 0; j < c; j++)
            d[i * c + j] = (add ? d[i * c + j] : 0.0f) + g[j] * scale;
}

void avgpool_backward(float *dinp, const float *dout, ptrdiff_t n, ptrdiff_t hw,
                      ptrdiff_t c, int add)
{
    const float scale = 1.0f / (float)hw;
#pragma omp parallel for num_threads(cv_get_num_threads()) schedule(static)
    for (ptrdiff_t b = 0; b < n; b++)
        broadcast_rows(dinp + b * hw * c, dout + b * c, scale, hw, c, add);
}
