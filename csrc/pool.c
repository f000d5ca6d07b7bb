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

void maxpool_forward(float *out, const float *inp, ptrdiff_t n, ptrdiff_t h, ptrdiff_t w,
                     ptrdiff_t c, ptrdiff_t k, ptrdiff_t stride, ptrdiff_t pad)
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
        }
    }
}

/* For one window position: d += g where v == o and no earlier position matched
 * (taken: 1 where the gradient is already routed). */
CV_VECTORIZE static void route_first(float *restrict d, float *restrict taken,
                                     const float *restrict v, const float *restrict o,
                                     const float *restrict g, ptrdiff_t c)
{
    for (ptrdiff_t j = 0; j < c; j++) {
        int hit = taken[j] == 0.0f && v[j] == o[j];
        d[j] += hit ? g[j] : 0.0f;
        taken[j] = hit ? 1.0f : taken[j];
    }
}

void maxpool_backward(float *dinp, const float *dout, const float *out, const float *inp,
                      ptrdiff_t n, ptrdiff_t h, ptrdiff_t w, ptrdiff_t c, ptrdiff_t k,
                      ptrdiff_t stride, ptrdiff_t pad)
{
    const ptrdiff_t P = window_out(h, k, stride, pad), Q = window_out(w, k, stride, pad);
    float *taken_all = malloc((size_t)(c * cv_get_num_threads()) * sizeof(float));
    if (!taken_all) { /* out of memory: the reference does the same work serially */
        maxpool_backward_reference(dinp, dout, inp, n, h, w, c, k, stride, pad);
        return;
    }
    /* Windows overlap across neighbouring rows, so threads own whole images. */
#pragma omp parallel for num_threads(cv_get_num_threads()) schedule(static)
    for (ptrdiff_t b = 0; b < n; b++) {
        float *taken = taken_all + c * omp_get_thread_num();
        for (ptrdiff_t p = 0; p < P; p++)
            for (ptrdiff_t q = 0; q < Q; q++) {
                ptrdiff_t at = ((b * P + p) * Q + q) * c;
                memset(taken, 0, (size_t)c * sizeof(float));
                for (ptrdiff_t r = 0; r < k; r++) {
                    ptrdiff_t y = p * stride - pad + r;
                    if (y < 0 || y >= h)
                        continue;
                    for (ptrdiff_t s = 0; s < k; s++) {
                        ptrdiff_t x = q * stride - pad + s;
                        if (x < 0 || x >= w)
                            continue;
                        ptrdiff_t in_at = ((b * h + y) * w + x) * c;
                        route_first(dinp + in_at, taken, inp + in_at, out + at, dout + at, c);
                    }
                }
            }
    }
    free(taken_all);
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

/* ---- global average pool ---------------------------------------------------------------- */

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
