/* batchnorm.c - batch normalisation over the rows of an (m, c) matrix (NHWC
 * activations: c, the fastest axis, is the vector axis of every loop here).
 *
 * Statistics are sums of tiles of rows in float (short runs, so rounding stays small)
 * combined in double in a fixed order, shifted by a value of each tile so that a large
 * mean does not cancel the variance (Chan, Golub and LeVeque's pairwise update). The
 * normalisation is an affine map per channel, fused with the ReLU and the residual
 * add. */
#include <omp.h>

#include "core.h"
#include "layers.h"

/* Rows summed in float before the sum moves to double. */
#define RUN 32
/* Channels handled at once (the float accumulators live on the stack). */
#define CHUNK 256

CV_VECTORIZE static void shifted_sums(float *restrict s1, float *restrict s2,
                                      const float *restrict y, const float *restrict shift,
                                      ptrdiff_t rows, ptrdiff_t ldy, ptrdiff_t cn)
{
    for (ptrdiff_t j = 0; j < cn; j++)
        s1[j] = s2[j] = 0.0f;
    for (ptrdiff_t i = 0; i < rows; i++) {
        const float *row = y + i * ldy;
        for (ptrdiff_t j = 0; j < cn; j++) {
            float d = row[j] - shift[j];
            s1[j] += d;
            s2[j] += d * d;
        }
    }
}

void bn_tile_statistics(double *partial, const float *y, ptrdiff_t rows, ptrdiff_t c)
{
    double *mean = partial, *m2 = partial + c;
    for (ptrdiff_t c0 = 0; c0 < c; c0 += CHUNK) {
        ptrdiff_t cn = c - c0 < CHUNK ? c - c0 : CHUNK;
        float shift[CHUNK], s1[CHUNK], s2[CHUNK];
        double t1[CHUNK], t2[CHUNK];
        memcpy(shift, y + c0, (size_t)cn * sizeof(float));
        for (ptrdiff_t j = 0; j < cn; j++)
            t1[j] = t2[j] = 0.0;
        for (ptrdiff_t i = 0; i < rows; i += RUN) {
            ptrdiff_t run = rows - i < RUN ? rows - i : RUN;
            shifted_sums(s1, s2, y + i * c + c0, shift, run, c, cn);
            for (ptrdiff_t j = 0; j < cn; j++) {
                t1[j] += s1[j];
                t2[j] += s2[j];
            }
        }
        for (ptrdiff_t j = 0; j < cn; j++) {
            mean[c0 + j] = shift[j] + t1[j] / (double)rows;
            m2[c0 + j] = t2[j] - t1[j] * t1[j] / (double)rows;
        }
    }
}

void bn_combine_statistics(double *mean, double *var, const double *partials,
                           const ptrdiff_t *counts, ptrdiff_t rows_per_tile,
                           ptrdiff_t tiles, ptrdiff_t c)
{
    double total = 0.0;
    for (ptrdiff_t j = 0; j < c; j++)
        mean[j] = var[j] = 0.0; /* var holds M2 until the end */
    for (ptrdiff_t t = 0; t < tiles; t++) {
        double nb = (double)(counts ? counts[t] : rows_per_tile);
        if (nb <= 0.0)
            continue;
        const double *mb = partials + 2 * c * t, *m2b = mb + c;
        double n = total + nb, wb = nb / n, wab = total * nb / n;
        for (ptrdiff_t j = 0; j < c; j++) {
            double delta = mb[j] - mean[j];
            mean[j] += delta * wb;
            var[j] += m2b[j] + delta * delta * wab;
        }
        total = n;
    }
    for (ptrdiff_t j = 0; j < c; j++)
        var[j] = total > 0.0 && var[j] > 0.0 ? var[j] / total : 0.0;
}

cv_status bn_statistics(double *mean, double *var, const float *y, ptrdiff_t m, ptrdiff_t c)
{
    const ptrdiff_t rows = 512, tiles = (m + rows - 1) / rows;
    double *partials = malloc((size_t)(2 * c * tiles) * sizeof(double));
    ptrdiff_t *counts = malloc((size_t)tiles * sizeof(ptrdiff_t));
    if (!partials || !counts) {
        free(partials);
        free(counts);
        return cv_fail(CV_ERR_MEMORY, "out of memory for batch statistics");
    }
#pragma omp parallel for num_threads(cv_get_num_threads()) schedule(static)
    for (ptrdiff_t t = 0; t < tiles; t++) {
        counts[t] = m - t * rows < rows ? m - t * rows : rows;
        bn_tile_statistics(partials + 2 * c * t, y + t * rows * c, counts[t], c);
    }
    bn_combine_statistics(mean, var, partials, counts, rows, tiles, c);
    free(partials);
    free(counts);
    return CV_OK;
}

void bn_finish_statistics(float *batch_mean, float *invstd, float *scale, float *shift,
                          float *running_mean, float *running_var, const double *mean,
                          const double *var, const float *gamma, const float *beta,
                          ptrdiff_t m, ptrdiff_t c, double momentum, double eps)
{
    double unbias = m > 1 ? (double)m / (double)(m - 1) : 1.0;
    for (ptrdiff_t j = 0; j < c; j++) {
        double is = 1.0 / sqrt(var[j] + eps);
        batch_mean[j] = (float)mean[j];
        invstd[j] = (float)is;
        scale[j] = (float)(gamma[j] * is);
        shift[j] = (float)(beta[j] - mean[j] * gamma[j] * is);
        if (running_mean)
            running_mean[j] =
                (float)((1.0 - momentum) * running_mean[j] + momentum * mean[j]);
        if (running_var)
            running_var[j] =
                (float)((1.0 - momentum) * running_var[j] + momentum * var[j] * unbias);
    }
}

void bn_eval_affine(float *scale, float *shift, const float *running_mean,
                    const float *running_var, const float *gamma, const float *beta,
                    ptrdiff_t c, double eps)
{
    for (ptrdiff_t j = 0; j < c; j++) {
        double s = gamma[j] / sqrt((double)running_var[j] + eps);
        scale[j] = (float)s;
        shift[j] = (float)(beta[j] - running_mean[j] * s);
    }
}

/* ---- the affine map with ReLU and residual ------------------------------------------- */

/* The branches on res_y, residual and relu are loop-invariant: GCC unswitches them. */
CV_VECTORIZE void bn_apply_rows(float *out, const float *y, const float *scale,
                                const float *shift, const float *residual,
                                const float *res_y, const float *res_scale,
                                const float *res_shift, int relu, ptrdiff_t rows,
                                ptrdiff_t c)
{
    for (ptrdiff_t i = 0; i < rows; i++) {
        const float *yr = y + i * c;
        float *o = out + i * c;
        if (res_y) {
            const float *ry = res_y + i * c;
            for (ptrdiff_t j = 0; j < c; j++) {
                float v =
                    yr[j] * scale[j] + shift[j] + (ry[j] * res_scale[j] + res_shift[j]);
                o[j] = relu ? (v < 0.0f ? 0.0f : v) : v; /* NaN passes, as in PyTorch */
            }
        } else if (residual) {
            const float *rr = residual + i * c;
            for (ptrdiff_t j = 0; j < c; j++) {
                float v = yr[j] * scale[j] + shift[j] + rr[j];
                o[j] = relu ? (v < 0.0f ? 0.0f : v) : v; /* NaN passes, as in PyTorch */
            }
        } else {
            for (ptrdiff_t j = 0; j < c; j++) {
                float v = yr[j] * scale[j] + shift[j];
                o[j] = relu ? (v < 0.0f ? 0.0f : v) : v; /* NaN passes, as in PyTorch */
            }
        }
    }
}

void bn_apply_forward(float *out, const float *y, const float *scale, const float *shift,
                      const float *residual, const float *res_y, const float *res_scale,
                      const float *res_shift, int relu, ptrdiff_t m, ptrdiff_t c)
{
    const ptrdiff_t rows = 64;
#pragma omp parallel for num_threads(cv_get_num_threads()) schedule(static)
    for (ptrdiff_t i = 0; i < m; i += rows) {
        ptrdiff_t len = m - i < rows ? m - i : rows;
        bn_apply_rows(out + i * c, y + i * c, scale, shift,
                      residual ? residual + i * c : NULL, res_y ? res_y + i * c : NULL,
                      res_scale, res_shift, relu, len, c);
    }
}

/* ---- backward ------------------------------------------------------------------------ */

/* Float sums over a short run of rows: s_dz = sum dz, s_dzy = sum dz * (y - mean). */
CV_VECTORIZE static void backward_sums(float *restrict s_dz, float *restrict s_dzy,
                                       const float *dout, const float *out, const float *y,
                                       const float *restrict mean, ptrdiff_t rows,
                                       ptrdiff_t ld, ptrdiff_t cn)
{
    for (ptrdiff_t j = 0; j < cn; j++)
        s_dz[j] = s_dzy[j] = 0.0f;
    for (ptrdiff_t i = 0; i < rows; i++) {
        const float *d = dout + i * ld, *yr = y + i * ld;
        if (out) {
            const float *o = out + i * ld;
            for (ptrdiff_t j = 0; j < cn; j++) {
                float dz = o[j] > 0.0f ? d[j] : 0.0f;
                s_dz[j] += dz;
                s_dzy[j] += dz * (yr[j] - mean[j]);
            }
        } else {
            for (ptrdiff_t j = 0; j < cn; j++) {
                s_dz[j] += d[j];
                s_dzy[j] += d[j] * (yr[j] - mean[j]);
            }
        }
    }
}

void bn_backward_reduce(double *sum_dz, double *sum_dzx, const float *dout,
                        const float *out, const float *y, const float *mean,
                        const float *invstd, ptrdiff_t m, ptrdiff_t c)
{
    const int threads = cv_get_num_threads();
    /* One double accumulator pair per thread over a fixed share of the rows, added in
     * thread order: deterministic for a given thread count. */
    double *acc = calloc((size_t)(2 * c * threads), sizeof(double));
    int used = 1;
    if (!acc) { /* out of memory: do it serially without the buffer */
        for (ptrdiff_t j = 0; j < c; j++)
            sum_dz[j] = sum_dzx[j] = 0.0;
        for (ptrdiff_t i = 0; i < m; i++)
            for (ptrdiff_t j = 0; j < c; j++) {
                float dz = !out || out[i * c + j] > 0.0f ? dout[i * c + j] : 0.0f;
                sum_dz[j] += dz;
                sum_dzx[j] += (double)dz * (y[i * c + j] - mean[j]) * invstd[j];
            }
        return;
    }
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        if (t == 0)
            used = nt;
        double *a_dz = acc + 2 * c * t, *a_dzy = a_dz + c;
        ptrdiff_t r0 = t * m / nt, r1 = (t + 1) * m / nt;
        for (ptrdiff_t c0 = 0; c0 < c; c0 += CHUNK) {
            ptrdiff_t cn = c - c0 < CHUNK ? c - c0 : CHUNK;
            float s_dz[CHUNK], s_dzy[CHUNK];
            for (ptrdiff_t i = r0; i < r1; i += RUN) {
                ptrdiff_t run = r1 - i < RUN ? r1 - i : RUN;
                backward_sums(s_dz, s_dzy, dout + i * c + c0, out ? out + i * c + c0 : NULL,
                              y + i * c + c0, mean + c0, run, c, cn);
                for (ptrdiff_t j = 0; j < cn; j++) {
                    a_dz[c0 + j] += s_dz[j];
                    a_dzy[c0 + j] += s_dzy[j];
                }
            }
        }
    }
    for (ptrdiff_t j = 0; j < c; j++) {
        double s = 0.0, sx = 0.0;
        for (int t = 0; t < used; t++) {
            s += acc[2 * c * t + j];
            sx += acc[2 * c * t + c + j];
        }
        sum_dz[j] = s;
        sum_dzx[j] = sx * invstd[j];
    }
    free(acc);
}

/* dy = k1 * dz + k2 * (y - mean) + k0 per channel (the backward of the
 * normalisation). y - mean is formed first: folding mean into k0 would cancel when the
 * mean is large against the spread. */
CV_VECTORIZE void bn_backward_rows(float *dy, const float *dout, const float *out,
                                   const float *y, const float *restrict mean,
                                   const float *restrict coef, ptrdiff_t rows, ptrdiff_t c)
{
    const float *restrict k0 = coef, *restrict k1 = coef + c, *restrict k2 = coef + 2 * c;
    for (ptrdiff_t i = 0; i < rows; i++) {
        const float *d = dout + i * c, *yr = y + i * c;
        float *o = dy + i * c;
        if (out) {
            const float *a = out + i * c;
            for (ptrdiff_t j = 0; j < c; j++) {
                float dz = a[j] > 0.0f ? d[j] : 0.0f;
                o[j] = k1[j] * dz + k2[j] * (yr[j] - mean[j]) + k0[j];
            }
        } else {
            for (ptrdiff_t j = 0; j < c; j++)
                o[j] = k1[j] * d[j] + k2[j] * (yr[j] - mean[j]) + k0[j];
        }
    }
}

void bn_backward_coefficients(float *coef, float *dgamma, float *dbeta, const float *invstd,
                              const float *gamma, const double *sum_dz,
                              const double *sum_dzx, ptrdiff_t m, ptrdiff_t c)
{
    float *k0 = coef, *k1 = coef + c, *k2 = coef + 2 * c;
    for (ptrdiff_t j = 0; j < c; j++) {
        /* dy = a (dz - sum_dz / m - (y - mean) invstd sum_dzx / m) */
        double a = (double)gamma[j] * invstd[j];
        double b = sum_dz[j] / (double)m, g = a * sum_dzx[j] / (double)m * invstd[j];
        k1[j] = (float)a;
        k2[j] = (float)-g;
        k0[j] = (float)(-a * b);
        if (dgamma)
            dgamma[j] += (float)sum_dzx[j];
        if (dbeta)
            dbeta[j] += (float)sum_dz[j];
    }
}

void bn_backward_apply(float *dy, float *dgamma, float *dbeta, const float *dout,
                       const float *out, const float *y, const float *mean,
                       const float *invstd, const float *gamma, const double *sum_dz,
                       const double *sum_dzx, ptrdiff_t m, ptrdiff_t c)
{
    float *coef = malloc((size_t)(3 * c) * sizeof(float));
    if (!coef) { /* out of memory: the same formula, element by element */
        for (ptrdiff_t i = 0; i < m; i++)
            for (ptrdiff_t j = 0; j < c; j++) {
                double a = (double)gamma[j] * invstd[j];
                float dz = !out || out[i * c + j] > 0.0f ? dout[i * c + j] : 0.0f;
                double xhat = (y[i * c + j] - mean[j]) * (double)invstd[j];
                dy[i * c + j] = (float)(a * (dz - sum_dz[j] / m - xhat * sum_dzx[j] / m));
            }
        for (ptrdiff_t j = 0; j < c; j++) {
            if (dgamma)
                dgamma[j] += (float)sum_dzx[j];
            if (dbeta)
                dbeta[j] += (float)sum_dz[j];
        }
        return;
    }
    bn_backward_coefficients(coef, dgamma, dbeta, invstd, gamma, sum_dz, sum_dzx, m, c);
    const ptrdiff_t rows = 64;
#pragma omp parallel for num_threads(cv_get_num_threads()) schedule(static)
    for (ptrdiff_t i = 0; i < m; i += rows) {
        ptrdiff_t len = m - i < rows ? m - i : rows;
        bn_backward_rows(dy + i * c, dout + i * c, out ? out + i * c : NULL, y + i * c,
                         mean, coef, len, c);
    }
    free(coef);
}

/* Float sums over a short run of rows of dz = dout * (out > 0), written back into
 * dout, for two batch norms that both feed the masked sum (a block's last unit and its
 * downsample, y_b may be NULL). */
CV_VECTORIZE static void masked_sums2(float *restrict s_dz, float *restrict s_dya,
                                      float *restrict s_dyb, float *dout, const float *out,
                                      const float *ya, const float *restrict mean_a,
                                      const float *yb, const float *restrict mean_b,
                                      ptrdiff_t rows, ptrdiff_t ld, ptrdiff_t cn)
{
    for (ptrdiff_t j = 0; j < cn; j++)
        s_dz[j] = s_dya[j] = s_dyb[j] = 0.0f;
    for (ptrdiff_t i = 0; i < rows; i++) {
        float *d = dout + i * ld;
        const float *o = out + i * ld, *a = ya + i * ld;
        if (yb) {
            const float *b = yb + i * ld;
            for (ptrdiff_t j = 0; j < cn; j++) {
                float dz = o[j] > 0.0f ? d[j] : 0.0f;
                d[j] = dz;
                s_dz[j] += dz;
                s_dya[j] += dz * (a[j] - mean_a[j]);
                s_dyb[j] += dz * (b[j] - mean_b[j]);
            }
        } else {
            for (ptrdiff_t j = 0; j < cn; j++) {
                float dz = o[j] > 0.0f ? d[j] : 0.0f;
                d[j] = dz;
                s_dz[j] += dz;
                s_dya[j] += dz * (a[j] - mean_a[j]);
            }
        }
    }
}

void bn_backward_mask_reduce2(double *sum_dz, double *sum_dzx_a, double *sum_dzx_b,
                              float *dout, const float *out, const float *y_a,
                              const float *mean_a, const float *invstd_a, const float *y_b,
                              const float *mean_b, const float *invstd_b, ptrdiff_t m,
                              ptrdiff_t c)
{
    const int threads = cv_get_num_threads();
    double *acc = calloc((size_t)(3 * c * threads), sizeof(double));
    int used = 1;
    if (!acc) { /* out of memory: the separate passes need no buffer of this size */
        relu_mask_inplace(dout, out, (size_t)(m * c));
        bn_backward_reduce(sum_dz, sum_dzx_a, dout, NULL, y_a, mean_a, invstd_a, m, c);
        if (y_b)
            bn_backward_reduce(sum_dz, sum_dzx_b, dout, NULL, y_b, mean_b, invstd_b, m, c);
        return;
    }
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        if (t == 0)
            used = nt;
        double *a_dz = acc + 3 * c * t, *a_a = a_dz + c, *a_b = a_a + c;
        ptrdiff_t r0 = t * m / nt, r1 = (t + 1) * m / nt;
        for (ptrdiff_t c0 = 0; c0 < c; c0 += CHUNK) {
            ptrdiff_t cn = c - c0 < CHUNK ? c - c0 : CHUNK;
            float s_dz[CHUNK], s_a[CHUNK], s_b[CHUNK];
            for (ptrdiff_t i = r0; i < r1; i += RUN) {
                ptrdiff_t run = r1 - i < RUN ? r1 - i : RUN;
                masked_sums2(s_dz, s_a, s_b, dout + i * c + c0, out + i * c + c0,
                             y_a + i * c + c0, mean_a + c0, y_b ? y_b + i * c + c0 : NULL,
                             y_b ? mean_b + c0 : NULL, run, c, cn);
                for (ptrdiff_t j = 0; j < cn; j++) {
                    a_dz[c0 + j] += s_dz[j];
                    a_a[c0 + j] += s_a[j];
                    a_b[c0 + j] += s_b[j];
                }
            }
        }
    }
    for (ptrdiff_t j = 0; j < c; j++) {
        double s = 0.0, sa = 0.0, sb = 0.0;
        for (int t = 0; t < used; t++) {
            s += acc[3 * c * t + j];
            sa += acc[3 * c * t + c + j];
            sb += acc[3 * c * t + 2 * c + j];
        }
        sum_dz[j] = s;
        sum_dzx_a[j] = sa * invstd_a[j];
        if (y_b)
            sum_dzx_b[j] = sb * invstd_b[j];
    }
    free(acc);
}

CV_VECTORIZE static void mask_rows(float *d, const float *out, ptrdiff_t count)
{
    for (ptrdiff_t i = 0; i < count; i++)
        d[i] = out[i] > 0.0f ? d[i] : 0.0f;
}

void relu_mask_inplace(float *dout, const float *out, size_t count)
{
    const ptrdiff_t chunk = 16384;
#pragma omp parallel for num_threads(cv_get_num_threads()) schedule(static)
    for (ptrdiff_t i = 0; i < (ptrdiff_t)count; i += chunk) {
        ptrdiff_t len = (ptrdiff_t)count - i < chunk ? (ptrdiff_t)count - i : chunk;
        mask_rows(dout + i, out + i, len);
    }
}
