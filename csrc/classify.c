/* classify.c - softmax cross-entropy and sigmoid binary cross-entropy for fine-tuning,
 * forward and backward fused (see classify.h for the formulas).
 *
 * The logits of a classification head are small (a batch of 32 by 2 to 14 classes), so
 * the loops are plain scalar C that reads any strides; rows are split over threads only
 * when there are enough elements to pay for waking them. Each row is independent: the
 * work is one pass for the row's maximum, one for its exponentials and one that writes
 * the gradient. Validation runs first, serially, so that a bad input leaves the outputs
 * untouched and the error message (per thread) reaches the caller. */
#include <float.h>
#include <omp.h>

#include "classify.h"
#include "core.h"

/* Below this many elements one thread is faster than waking the others. */
#define PARALLEL_MIN_ELEMENTS 16384
/* At most this many blocks of rows, so the partial sums live on the stack. */
#define MAX_BLOCKS 256

/* Rows per block: depends on n only, so the order of the final sum (and the loss, to
 * the last bit) does not depend on the number of threads. */
static ptrdiff_t rows_per_block(ptrdiff_t n)
{
    ptrdiff_t rows = (n + MAX_BLOCKS - 1) / MAX_BLOCKS;
    return rows < 64 ? 64 : rows;
}

static cv_status check_sizes(const char *what, ptrdiff_t n, ptrdiff_t k)
{
    if (n < 1 || k < 1)
        return cv_fail(CV_ERR_VALUE,
                       "%s needs at least one row and one class, got (%td, %td)", what, n,
                       k);
    return CV_OK;
}

/* The first non-finite logit, in row-major order. */
static cv_status check_logits(const float *z, ptrdiff_t rs, ptrdiff_t cs, ptrdiff_t n,
                              ptrdiff_t k)
{
    for (ptrdiff_t i = 0; i < n; i++)
        for (ptrdiff_t j = 0; j < k; j++)
            if (!isfinite(z[i * rs + j * cs]))
                return cv_fail(CV_ERR_NONFINITE,
                               "logits[%td, %td] is %g; logits must be finite", i, j,
                               (double)z[i * rs + j * cs]);
    return CV_OK;
}

/* Loss of row z (k logits) against class y; grad row (may be NULL) = (softmax - onehot)
 * * inv_n. */
static double softmax_row(float *g, ptrdiff_t csg, const float *z, ptrdiff_t cs, int32_t y,
                          ptrdiff_t k, float inv_n)
{
    float zmax = -FLT_MAX;
    for (ptrdiff_t j = 0; j < k; j++)
        zmax = z[j * cs] > zmax ? z[j * cs] : zmax;
    double sum = 0.0;
    if (g) {
        /* The exponentials go into the gradient row, then are scaled to softmax / n. */
        for (ptrdiff_t j = 0; j < k; j++) {
            float e = expf(z[j * cs] - zmax);
            g[j * csg] = e;
            sum += e;
        }
        float scale = (float)(inv_n / sum);
        for (ptrdiff_t j = 0; j < k; j++)
            g[j * csg] *= scale;
        g[y * csg] -= inv_n;
    } else {
        for (ptrdiff_t j = 0; j < k; j++)
            sum += expf(z[j * cs] - zmax);
    }
    /* sum >= 1 (the maximum contributes exp(0)), so the log is safe. */
    return (double)zmax + log(sum) - (double)z[y * cs];
}

cv_status cv_softmax_cross_entropy(double *loss, float *grad, ptrdiff_t rsg, ptrdiff_t csg,
                                   const float *logits, ptrdiff_t rs, ptrdiff_t cs,
                                   const int32_t *labels, ptrdiff_t ys, ptrdiff_t n,
                                   ptrdiff_t k)
{
    cv_status status = check_sizes("softmax cross-entropy", n, k);
    if (status != CV_OK)
        return status;
    for (ptrdiff_t i = 0; i < n; i++)
        if (labels[i * ys] < 0 || labels[i * ys] >= k)
            return cv_fail(CV_ERR_VALUE,
                           "labels[%td] is %d; class indices must be in [0, %td)", i,
                           (int)labels[i * ys], k);
    if ((status = check_logits(logits, rs, cs, n, k)) != CV_OK)
        return status;

    const ptrdiff_t block = rows_per_block(n), n_blocks = (n + block - 1) / block;
    const float inv_n = 1.0f / (float)n;
    const int threads = n * k >= PARALLEL_MIN_ELEMENTS ? cv_get_num_threads() : 1;
    double partial[MAX_BLOCKS];
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (ptrdiff_t b = 0; b < n_blocks; b++) {
        ptrdiff_t stop = (b + 1) * block < n ? (b + 1) * block : n;
        double sum = 0.0;
        for (ptrdiff_t i = b * block; i < stop; i++)
            sum += softmax_row(grad ? grad + i * rsg : NULL, csg, logits + i * rs, cs,
                               labels[i * ys], k, inv_n);
        partial[b] = sum;
    }
    double total = 0.0;
    for (ptrdiff_t b = 0; b < n_blocks; b++)
        total += partial[b];
    *loss = total / (double)n;
    return CV_OK;
}

/* Sum over row z (k logits) of the element losses against targets t with positive
 * weights w (NULL: 1); grad row (may be NULL) = dl/dz * inv_count. */
static double bce_row(float *g, ptrdiff_t csg, const float *z, ptrdiff_t cs, const float *t,
                      ptrdiff_t ct, const float *w, ptrdiff_t ws, ptrdiff_t k,
                      float inv_count)
{
    double sum = 0.0;
    for (ptrdiff_t j = 0; j < k; j++) {
        float x = z[j * cs], y = t[j * ct], pw = w ? w[j * ws] : 1.0f;
        float e = expf(-fabsf(x)); /* in (0, 1]: no overflow for any finite x */
        float inv = 1.0f / (1.0f + e);
        float sig = x >= 0.0f ? inv : e * inv;                   /* s(x) */
        float sig_neg = x >= 0.0f ? e * inv : inv;               /* 1 - s(x) = s(-x) */
        float softplus_neg = log1pf(e) + (x < 0.0f ? -x : 0.0f); /* -log s(x) */
        sum += (double)((1.0f - y) * x + (1.0f + (pw - 1.0f) * y) * softplus_neg);
        if (g)
            g[j * csg] = ((1.0f - y) * sig - pw * y * sig_neg) * inv_count;
    }
    return sum;
}

cv_status cv_binary_cross_entropy(double *loss, float *grad, ptrdiff_t rsg, ptrdiff_t csg,
                                  const float *logits, ptrdiff_t rs, ptrdiff_t cs,
                                  const float *targets, ptrdiff_t rst, ptrdiff_t cst,
                                  const float *pos_weight, ptrdiff_t ws, ptrdiff_t n,
                                  ptrdiff_t k)
{
    cv_status status = check_sizes("binary cross-entropy", n, k);
    if (status != CV_OK)
        return status;
    for (ptrdiff_t i = 0; i < n; i++)
        for (ptrdiff_t j = 0; j < k; j++) {
            float y = targets[i * rst + j * cst];
            if (!(y >= 0.0f && y <= 1.0f))
                return cv_fail(
                    CV_ERR_VALUE,
                    "targets[%td, %td] is %g; targets must be in [0, 1] (1 "
                    "positive, 0 negative); map uncertain or missing labels first",
                    i, j, (double)y);
        }
    if (pos_weight)
        for (ptrdiff_t j = 0; j < k; j++)
            if (!(pos_weight[j * ws] >= 0.0f) || !isfinite(pos_weight[j * ws]))
                return cv_fail(CV_ERR_VALUE,
                               "pos_weight[%td] is %g; weights must be finite and >= 0", j,
                               (double)pos_weight[j * ws]);
    if ((status = check_logits(logits, rs, cs, n, k)) != CV_OK)
        return status;

    const ptrdiff_t block = rows_per_block(n), n_blocks = (n + block - 1) / block;
    const float inv_count = (float)(1.0 / ((double)n * (double)k));
    const int threads = n * k >= PARALLEL_MIN_ELEMENTS ? cv_get_num_threads() : 1;
    double partial[MAX_BLOCKS];
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (ptrdiff_t b = 0; b < n_blocks; b++) {
        ptrdiff_t stop = (b + 1) * block < n ? (b + 1) * block : n;
        double sum = 0.0;
        for (ptrdiff_t i = b * block; i < stop; i++)
            sum += bce_row(grad ? grad + i * rsg : NULL, csg, logits + i * rs, cs,
                           targets + i * rst, cst, pos_weight, ws, k, inv_count);
        partial[b] = sum;
    }
    double total = 0.0;
    for (ptrdiff_t b = 0; b < n_blocks; b++)
        total += partial[b];
    *loss = total / ((double)n * (double)k);
    return CV_OK;
}
