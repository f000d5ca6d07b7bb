/* layernorm.c - LayerNorm over the last dimension (PyTorch's nn.LayerNorm: biased
 * variance, eps inside the square root). Rows are independent: OpenMP over rows. */
#include <omp.h>

#include "core.h"
#include "layers.h"

/* One row. Two passes (mean, then the centred sum of squares) keep the variance
 * accurate when |mean| >> std. */
CV_VECTORIZE static void norm_row(float *out, float *xhat, float *rstd_out, const float *x,
                                  const float *gamma, const float *beta, ptrdiff_t dim,
                                  float eps)
{
    const ptrdiff_t body = dim / CV_LANES * CV_LANES;
    float lane[CV_LANES] = {0};
    for (ptrdiff_t j = 0; j < body; j += CV_LANES)
        for (int l = 0; l < CV_LANES; l++)
            lane[l] += x[j + l];
    float sum = cv_lanes_total(lane);
    for (ptrdiff_t j = body; j < dim; j++)
        sum += x[j];
    const float mean = sum / (float)dim;
    for (int l = 0; l < CV_LANES; l++)
        lane[l] = 0.0f;
    for (ptrdiff_t j = 0; j < body; j += CV_LANES)
        for (int l = 0; l < CV_LANES; l++) {
            float c = x[j + l] - mean;
            lane[l] += c * c;
        }
    float sq = cv_lanes_total(lane);
    for (ptrdiff_t j = body; j < dim; j++)
        sq += (x[j] - mean) * (x[j] - mean);
    const float rstd = 1.0f / sqrtf(sq / (float)dim + eps);
    if (rstd_out)
        *rstd_out = rstd;
    /* x may alias out or xhat: each element is read before it is written. */
    if (xhat)
        for (ptrdiff_t j = 0; j < dim; j++) {
            float h = (x[j] - mean) * rstd;
            xhat[j] = h;
            out[j] = h * gamma[j] + beta[j];
        }
    else
        for (ptrdiff_t j = 0; j < dim; j++)
            out[j] = (x[j] - mean) * rstd * gamma[j] + beta[j];
}

void layernorm_forward(float *out, float *xhat, float *rstd, const float *inp,
                       const float *gamma, const float *beta, ptrdiff_t rows, ptrdiff_t dim,
                       float eps)
{
    int threads = layer_threads();
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (ptrdiff_t i = 0; i < rows; i++)
        norm_row(out + i * dim, xhat ? xhat + i * dim : NULL, rstd ? rstd + i : NULL,
                 inp + i * dim, gamma, beta, dim, eps);
}

CV_VECTORIZE static void backward_row(float *dx, const float *dy, const float *xhat,
                                      float rstd, const float *gamma, ptrdiff_t dim)
{
    const ptrdiff_t body = dim / CV_LANES * CV_LANES;
    float lane_g[CV_LANES] = {0}, lane_gx[CV_LANES] = {0};
    for (ptrdiff_t j = 0; j < body; j += CV_LANES)
        for (int l = 0; l < CV_LANES; l++) {
            float g = dy[j + l] * gamma[j + l];
            lane_g[l] += g;
            lane_gx[l] += g * xhat[j + l];
        }
    float sum_g = cv_lanes_total(lane_g), sum_gx = cv_lanes_total(lane_gx);
    for (ptrdiff_t j = body; j < dim; j++) {
        float g = dy[j] * gamma[j];
        sum_g += g;
        sum_gx += g * xhat[j];
    }
    const float mean_g = sum_g / (float)dim, mean_gx = sum_gx / (float)dim;
    for (ptrdiff_t j = 0; j < dim; j++)
        dx[j] = rstd * (dy[j] * gamma[j] - mean_g - xhat[j] * mean_gx);
}

/* dgamma, dbeta for the columns [j0, j0 + width) over all rows, in row order. */
CV_VECTORIZE static void param_grads_block(float *dgamma, float *dbeta, const float *dy,
                                           const float *xhat, ptrdiff_t rows, ptrdiff_t dim,
                                           ptrdiff_t j0, ptrdiff_t width)
{
    float acc_g[64] = {0}, acc_b[64] = {0};
    for (ptrdiff_t i = 0; i < rows; i++) {
        const float *y = dy + i * dim + j0, *h = xhat + i * dim + j0;
        for (ptrdiff_t j = 0; j < width; j++) {
            acc_g[j] += y[j] * h[j];
            acc_b[j] += y[j];
        }
    }
    for (ptrdiff_t j = 0; j < width; j++) {
        if (dgamma)
            dgamma[j0 + j] += acc_g[j];
        if (dbeta)
            dbeta[j0 + j] += acc_b[j];
    }
}

void layernorm_backward(float *dinp, float *dgamma, float *dbeta, const float *dout,
                        const float *xhat, const float *rstd, const float *gamma,
                        ptrdiff_t rows, ptrdiff_t dim)
{
    int threads = layer_threads();
    /* Parameter gradients first: dinp may overwrite dout. Threads own blocks of 64
     * columns so that the sums do not depend on the thread count. */
    if (dgamma || dbeta) {
        const ptrdiff_t blocks = (dim + 63) / 64;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
        for (ptrdiff_t b = 0; b < blocks; b++) {
            ptrdiff_t j0 = b * 64, width = dim - j0 < 64 ? dim - j0 : 64;
            param_grads_block(dgamma, dbeta, dout, xhat, rows, dim, j0, width);
        }
    }
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (ptrdiff_t i = 0; i < rows; i++)
        backward_row(dinp + i * dim, dout + i * dim, xhat + i * dim, rstd[i], gamma, dim);
}

/* ---- the naive versions the tests compare with ---------------------------------- */

void layernorm_forward_reference(float *out, float *xhat, float *rstd, const float *inp,
                                 const float *gamma, const float *beta, ptrdiff_t rows,
                                 ptrdiff_t dim, float eps)
{
    for (ptrdiff_t i = 0; i < rows; i++) {
        const float *x = inp + i * dim;
        double mean = 0.0, var = 0.0;
        for (ptrdiff_t j = 0; j < dim; j++)
            mean += x[j];
        mean /= (double)dim;
        for (ptrdiff_t j = 0; j < dim; j++)
            var += (x[j] - mean) * (x[j] - mean);
        var /= (double)dim;
        double r = 1.0 / sqrt(var + (double)eps);
        for (ptrdiff_t j = 0; j < dim; j++) {
            double h = (x[j] - mean) * r;
            if (xhat)
                xhat[i * dim + j] = (float)h;
            out[i * dim + j] = (float)(h * gamma[j] + beta[j]);
        }
        if (rstd)
            rstd[i] = (float)r;
    }
}

void layernorm_backward_reference(float *dinp, float *dgamma, float *dbeta,
                                  const float *dout, const float *xhat, const float *rstd,
                                  const float *gamma, ptrdiff_t rows, ptrdiff_t dim)
{
    for (ptrdiff_t i = 0; i < rows; i++) {
        const float *dy = dout + i * dim, *h = xhat + i * dim;
        double sum_g = 0.0, sum_gx = 0.0;
        for (ptrdiff_t j = 0; j < dim; j++) {
            sum_g += (double)dy[j] * gamma[j];
            sum_gx += (double)dy[j] * gamma[j] * h[j];
            if (dgamma)
                dgamma[j] += dy[j] * h[j];
            if (dbeta)
                dbeta[j] += dy[j];
        }
        for (ptrdiff_t j = 0; j < dim; j++)
            dinp[i * dim + j] += (float)(rstd[i] * ((double)dy[j] * gamma[j] - sum_g / dim -
                                                    h[j] * sum_gx / dim));
    }
}
