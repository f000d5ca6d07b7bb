/* attention.c - multi-head scaled dot-product self-attention over packed sequences
 * (see layers.h for the layout). Each (sequence, head) pair is a few small GEMMs
 * on one thread; OpenMP spreads the pairs over the threads. Packing means there is
 * no padding mask to apply: a sequence's queries only ever see its own keys, which is
 * what Hugging Face's additive mask of the padded keys amounts to for valid tokens. */
/* Without this, GCC 12 does not vectorise the loops that call cv_expf: its clamps
 * followed by a float -> int conversion need if-conversion, which -ftrapping-math (the
 * default) forbids ("control flow in loop"). The core never relies on FP traps. */
#pragma GCC optimize("no-trapping-math")

#include <omp.h>

#include "core.h"
#include "layers.h"

/* Row-wise softmax of a (rows x cols) block, in place: max, exp, sum, scale. */
CV_VECTORIZE static void softmax_rows(float *p, ptrdiff_t rows, ptrdiff_t cols)
{
    const ptrdiff_t body = cols / CV_LANES * CV_LANES;
    for (ptrdiff_t i = 0; i < rows; i++) {
        float *row = p + i * cols;
        float lane_max[CV_LANES], lane_sum[CV_LANES];
        for (int l = 0; l < CV_LANES; l++) {
            lane_max[l] = -INFINITY;
            lane_sum[l] = 0.0f;
        }
        for (ptrdiff_t j = 0; j < body; j += CV_LANES)
            for (int l = 0; l < CV_LANES; l++)
                lane_max[l] = row[j + l] > lane_max[l] ? row[j + l] : lane_max[l];
        float max = -INFINITY;
        for (int l = 0; l < CV_LANES; l++)
            max = lane_max[l] > max ? lane_max[l] : max;
        for (ptrdiff_t j = body; j < cols; j++)
            max = row[j] > max ? row[j] : max;
        for (ptrdiff_t j = 0; j < body; j += CV_LANES)
            for (int l = 0; l < CV_LANES; l++) {
                float e = cv_expf(row[j + l] - max);
                row[j + l] = e;
                lane_sum[l] += e;
            }
        float sum = 0.0f;
        for (int l = 0; l < CV_LANES; l++)
            sum += lane_sum[l];
        for (ptrdiff_t j = body; j < cols; j++) {
            row[j] = cv_expf(row[j] - max);
            sum += row[j];
        }
        const float inv = 1.0f / sum;
        for (ptrdiff_t j = 0; j < cols; j++)
            row[j] *= inv;
    }
}

/* Softmax backward: dS = P * (dP - rowsum(P * dP)), written over dp. */
CV_VECTORIZE static void softmax_backward_rows(float *dp, const float *p, ptrdiff_t rows,
                                               ptrdiff_t cols)
{
    const ptrdiff_t body = cols / CV_LANES * CV_LANES;
    for (ptrdiff_t i = 0; i < rows; i++) {
        const float *pr = p + i * cols;
        float *dr = dp + i * cols;
        float lane_dot[CV_LANES] = {0};
        for (ptrdiff_t j = 0; j < body; j += CV_LANES)
            for (int l = 0; l < CV_LANES; l++)
                lane_dot[l] += pr[j + l] * dr[j + l];
        float dot = 0.0f;
        for (int l = 0; l < CV_LANES; l++)
            dot += lane_dot[l];
        for (ptrdiff_t j = body; j < cols; j++)
            dot += pr[j] * dr[j];
        for (ptrdiff_t j = 0; j < cols; j++)
            dr[j] = pr[j] * (dr[j] - dot);
    }
}

static ptrdiff_t longest(const ptrdiff_t *seq_start, ptrdiff_t n)
{
    ptrdiff_t max = 0;
    for (ptrdiff_t s = 0; s < n; s++)
        if (seq_start[s + 1] - seq_start[s] > max)
            max = seq_start[s + 1] - seq_start[s];
    return max;
}

CV_VECTORIZE static void scale_row(float *row, float alpha, ptrdiff_t n)
{
    for (ptrdiff_t j = 0; j < n; j++)
        row[j] *= alpha;
}

/* C (m x n, rows ldc apart) = alpha A B on this thread: convirt's kernel where it takes
 * the shape (alpha applied to each sum, as BLIS does), else BLIS. */
static void head_gemm(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha, const float *A,
                      ptrdiff_t rsa, ptrdiff_t csa, const float *B, ptrdiff_t rsb,
                      ptrdiff_t csb, float *C, ptrdiff_t ldc)
{
    if (cv_gemm_packed(m, n, k, A, rsa, csa, B, rsb, csb, 0, C, ldc)) {
        cv_gemm(m, n, k, alpha, A, rsa, csa, B, rsb, csb, 0.0f, C, ldc, 1);
        return;
    }
    if (alpha != 1.0f)
        for (ptrdiff_t i = 0; i < m; i++)
            scale_row(C + i * ldc, alpha, n);
}

void attention_forward(float *ctx, float *probs, const float *qkv,
                       const ptrdiff_t *seq_start, const size_t *probs_start, ptrdiff_t n,
                       ptrdiff_t heads, ptrdiff_t head_dim, float *work, int threads)
{
    const ptrdiff_t width = heads * head_dim, ld = 3 * width;
    const ptrdiff_t max_len = longest(seq_start, n);
    const float scale = 1.0f / sqrtf((float)head_dim);
    /* Dynamic: sequences differ in length, so pairs differ in cost. */
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (ptrdiff_t pair = 0; pair < n * heads; pair++) {
        const ptrdiff_t s = pair / heads, h = pair % heads;
        const ptrdiff_t row0 = seq_start[s], len = seq_start[s + 1] - row0;
        const float *q = qkv + row0 * ld + h * head_dim, *k = q + width, *v = q + 2 * width;
        float *p = probs
                       ? probs + probs_start[s] + (size_t)(h * len * len)
                       : work + (size_t)omp_get_thread_num() * (size_t)(max_len * max_len);
        /* scores (len x len) = scale q k^T; k^T is k read with swapped strides */
        head_gemm(len, len, head_dim, scale, q, ld, 1, k, 1, ld, p, len);
        softmax_rows(p, len, len);
        /* ctx rows of this head (len x head_dim) = p v */
        head_gemm(len, head_dim, len, 1.0f, p, len, 1, v, ld, 1,
                  ctx + row0 * width + h * head_dim, width);
    }
}

void attention_backward(float *dqkv, const float *probs, const float *dctx,
                        const float *qkv, const ptrdiff_t *seq_start,
                        const size_t *probs_start, ptrdiff_t n, ptrdiff_t heads,
                        ptrdiff_t head_dim, float *work, int threads)
{
    const ptrdiff_t width = heads * head_dim, ld = 3 * width;
    const ptrdiff_t max_len = longest(seq_start, n);
    const float scale = 1.0f / sqrtf((float)head_dim);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (ptrdiff_t pair = 0; pair < n * heads; pair++) {
        const ptrdiff_t s = pair / heads, h = pair % heads;
        const ptrdiff_t row0 = seq_start[s], len = seq_start[s + 1] - row0;
        const float *q = qkv + row0 * ld + h * head_dim, *k = q + width, *v = q + 2 * width;
        const float *dc = dctx + row0 * width + h * head_dim;
        float *dq = dqkv + row0 * ld + h * head_dim, *dk = dq + width, *dv = dq + 2 * width;
        const float *p = probs + probs_start[s] + (size_t)(h * len * len);
        float *dp = work + (size_t)omp_get_thread_num() * (size_t)(max_len * max_len);
        /* dv = p^T dctx */
        head_gemm(len, head_dim, len, 1.0f, p, 1, len, dc, width, 1, dv, ld);
        /* dp = dctx v^T */
        head_gemm(len, len, head_dim, 1.0f, dc, width, 1, v, 1, ld, dp, len);
        softmax_backward_rows(dp, p, len, len); /* dp now holds dS, the scores' gradient */
        /* dq = scale dS k, dk = scale dS^T q */
        head_gemm(len, head_dim, len, scale, dp, len, 1, k, ld, 1, dq, ld);
        head_gemm(len, head_dim, len, scale, dp, 1, len, q, ld, 1, dk, ld);
    }
}

/* ---- the naive versions the tests compare with ---------------------------------- */

void attention_forward_reference(float *ctx, float *probs, const float *qkv,
                                 const ptrdiff_t *seq_start, const size_t *probs_start,
                                 ptrdiff_t n, ptrdiff_t heads, ptrdiff_t head_dim)
{
    const ptrdiff_t width = heads * head_dim, ld = 3 * width;
    const double scale = 1.0 / sqrt((double)head_dim);
    for (ptrdiff_t s = 0; s < n; s++) {
        const ptrdiff_t row0 = seq_start[s], len = seq_start[s + 1] - row0;
        for (ptrdiff_t h = 0; h < heads; h++) {
            float *p = probs + probs_start[s] + (size_t)(h * len * len);
            for (ptrdiff_t i = 0; i < len; i++) {
                const float *q = qkv + (row0 + i) * ld + h * head_dim;
                double max = -INFINITY, sum = 0.0;
                for (ptrdiff_t j = 0; j < len; j++) {
                    const float *k = qkv + (row0 + j) * ld + width + h * head_dim;
                    double dot = 0.0;
                    for (ptrdiff_t d = 0; d < head_dim; d++)
                        dot += (double)q[d] * k[d];
                    p[i * len + j] = (float)(dot * scale);
                    max = fmax(max, dot * scale);
                }
                for (ptrdiff_t j = 0; j < len; j++)
                    sum += exp(p[i * len + j] - max);
                for (ptrdiff_t j = 0; j < len; j++)
                    p[i * len + j] = (float)(exp(p[i * len + j] - max) / sum);
                for (ptrdiff_t d = 0; d < head_dim; d++) {
                    double acc = 0.0;
                    for (ptrdiff_t j = 0; j < len; j++)
                        acc += (double)p[i * len + j] *
                               qkv[(row0 + j) * ld + 2 * width + h * head_dim + d];
                    ctx[(row0 + i) * width + h * head_dim + d] = (float)acc;
                }
            }
        }
    }
}

void attention_backward_reference(float *dqkv, const float *probs, const float *dctx,
                                  const float *qkv, const ptrdiff_t *seq_start,
                                  const size_t *probs_start, ptrdiff_t n, ptrdiff_t heads,
                                  ptrdiff_t head_dim)
{
    const ptrdiff_t width = heads * head_dim, ld = 3 * width;
    const double scale = 1.0 / sqrt((double)head_dim);
    for (ptrdiff_t s = 0; s < n; s++) {
        const ptrdiff_t row0 = seq_start[s], len = seq_start[s + 1] - row0;
        for (ptrdiff_t h = 0; h < heads; h++) {
            const float *p = probs + probs_start[s] + (size_t)(h * len * len);
#define Q(i, d) qkv[(row0 + (i)) * ld + h * head_dim + (d)]
#define K(i, d) qkv[(row0 + (i)) * ld + width + h * head_dim + (d)]
#define V(i, d) qkv[(row0 + (i)) * ld + 2 * width + h * head_dim + (d)]
#define DC(i, d) dctx[(row0 + (i)) * width + h * head_dim + (d)]
#define DQKV(i, part, d) dqkv[(row0 + (i)) * ld + (part) * width + h * head_dim + (d)]
            for (ptrdiff_t i = 0; i < len; i++)
                for (ptrdiff_t d = 0; d < head_dim; d++) {
                    double dv = 0.0;
                    for (ptrdiff_t r = 0; r < len; r++)
                        dv += (double)p[r * len + i] * DC(r, d);
                    DQKV(i, 2, d) = (float)dv;
                    DQKV(i, 0, d) = 0.0f;
                    DQKV(i, 1, d) = 0.0f;
                }
            for (ptrdiff_t i = 0; i < len; i++) {
                /* dP row i, then dS row i = P (dP - <P, dP>) */
                double dot = 0.0;
                for (ptrdiff_t j = 0; j < len; j++) {
                    double dp = 0.0;
                    for (ptrdiff_t d = 0; d < head_dim; d++)
                        dp += (double)DC(i, d) * V(j, d);
                    dot += p[i * len + j] * dp;
                }
                for (ptrdiff_t j = 0; j < len; j++) {
                    double dp = 0.0;
                    for (ptrdiff_t d = 0; d < head_dim; d++)
                        dp += (double)DC(i, d) * V(j, d);
                    double ds = p[i * len + j] * (dp - dot) * scale;
                    for (ptrdiff_t d = 0; d < head_dim; d++) {
                        DQKV(i, 0, d) += (float)(ds * K(j, d));
                        DQKV(j, 1, d) += (float)(ds * Q(i, d));
                    }
                }
            }
#undef Q
#undef K
#undef V
#undef DC
#undef DQKV
        }
    }
}
