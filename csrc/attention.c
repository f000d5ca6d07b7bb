/* attention.c - multi-head scaled dot-product self-attention over packed sequences
 * (see layers.h for the layout). Each (sequence, head) pair is a few small GEMMs
 * on one thread; OpenMP spreads the pairs over the threads. Packing means there is
 * no padding mask to apply: a sequence's queries only ever see its own keys, which is
 * what Hugging Face's additive mask of the padded keys amounts to for valid tokens.
 *
 * The GEMMs go to cv_gemm_small, which reads its operands in place (q, k, v, the
 * probabilities and their transposes, at any strides) where it takes the head's width:
 * only k^T and v^T are copied, a head_dim x len block each. Through cv_gemm_packed
 * (before) a head's GEMMs spent a third of their time packing and transposing, and with
 * 32 columns (MiniLM's heads) ran in the 6 x 64 kernel's slow partial path. The scale
 * 1/sqrt(head_dim) goes into the softmax's exponent and into the scores' gradient, not
 * into passes of its own. */
/* Without this, GCC 12 does not vectorise the loops that call cv_expf: its clamps
 * followed by a float -> int conversion need if-conversion, which -ftrapping-math (the
 * default) forbids ("control flow in loop"). The core never relies on FP traps. */
#pragma GCC optimize("no-trapping-math")

#include <omp.h>

#include "core.h"
#include "layers.h"

CV_VECTORIZE static void scale_row(float *row, float alpha, ptrdiff_t n)
{
    for (ptrdiff_t j = 0; j < n; j++)
        row[j] *= alpha;
}

/* A softmax row's body, s[0 .. body) with body a multiple of CV_LANES, two ways: on
 * 64-byte vectors where the AVX-512 loops run (cv_wide_lanes), and on float arrays that
 * GCC vectorises at the width of the AVX2 and baseline builds, where it keeps 64-byte
 * vectors in memory (a running maximum ran 4x slower there than on the arrays). Both
 * give the same maximum, and the same exponentials summed in the same order: lane l
 * adds elements l, l + 32, ... and, apart, l + 16, l + 48, ..., then the two. Always
 * inlined: GCC leaves a helper this size out of line, compiled for the baseline, when
 * the caller is a target clone. */
static inline __attribute__((always_inline)) float row_max_lanes(const float *s,
                                                                 ptrdiff_t body)
{
    /* two running maxima: one waits on its compare and blend every other step */
    cv_lanes_f max0, max1;
    for (int l = 0; l < CV_LANES; l++)
        max0[l] = max1[l] = -INFINITY;
    ptrdiff_t j = 0;
    for (; j + 2 * CV_LANES <= body; j += 2 * CV_LANES) {
        cv_lanes_max(&max0, (const cv_lanes_f *)(s + j));
        cv_lanes_max(&max1, (const cv_lanes_f *)(s + j + CV_LANES));
    }
    if (j < body)
        cv_lanes_max(&max0, (const cv_lanes_f *)(s + j));
    cv_lanes_max(&max0, &max1);
    return cv_lanes_max_total((const float *)&max0);
}

static inline __attribute__((always_inline)) float row_max_floats(const float *s,
                                                                  ptrdiff_t body)
{
    float best[CV_LANES];
    for (int l = 0; l < CV_LANES; l++)
        best[l] = -INFINITY;
    for (ptrdiff_t j = 0; j < body; j += CV_LANES)
        for (int l = 0; l < CV_LANES; l++)
            best[l] = s[j + l] > best[l] ? s[j + l] : best[l];
    return cv_lanes_max_total(best);
}

/* d[j] = exp(scale s[j] - shift) over the body; returns their sum. The exponentials
 * stay in registers from exp to sum: in a Zen 5 profile, the loads that read
 * just-stored exponentials back were the loop's hottest instructions. */
static inline __attribute__((always_inline)) float
exp_sum_lanes(float *d, const float *s, ptrdiff_t body, float scale, float shift)
{
    /* two vectors a step: an exponential is a chain of some twenty dependent
     * operations, and the scheduler holds too few steps to overlap one at a time */
    cv_lanes_f lane_sum = {0}, lane_sum1 = {0};
    ptrdiff_t j = 0;
    for (; j + 2 * CV_LANES <= body; j += 2 * CV_LANES) {
        cv_lanes_f x0 = *(const cv_lanes_f *)(s + j) * scale - shift, e0;
        cv_lanes_f x1 = *(const cv_lanes_f *)(s + j + CV_LANES) * scale - shift, e1;
        cv_lanes_exp(&e0, &x0);
        cv_lanes_exp(&e1, &x1);
        *(cv_lanes_f *)(d + j) = e0;
        *(cv_lanes_f *)(d + j + CV_LANES) = e1;
        lane_sum += e0;
        lane_sum1 += e1;
    }
    if (j < body) {
        cv_lanes_f x = *(const cv_lanes_f *)(s + j) * scale - shift, e;
        cv_lanes_exp(&e, &x);
        *(cv_lanes_f *)(d + j) = e;
        lane_sum += e;
    }
    lane_sum += lane_sum1;
    return cv_lanes_tree_total((const float *)&lane_sum);
}

static inline __attribute__((always_inline)) float
exp_sum_floats(float *d, const float *s, ptrdiff_t body, float scale, float shift)
{
    /* through a local block: d may be s, and a loop that reads s and writes d runs
     * GCC's scalar version whenever the two overlap */
    float sum[2][CV_LANES] = {{0}}, e[CV_LANES];
    for (ptrdiff_t j = 0; j < body; j += CV_LANES) {
        float *lane = sum[(j / CV_LANES) & 1];
        for (int l = 0; l < CV_LANES; l++)
            e[l] = cv_expf(s[j + l] * scale - shift);
        for (int l = 0; l < CV_LANES; l++) {
            d[j + l] = e[l];
            lane[l] += e[l];
        }
    }
    for (int l = 0; l < CV_LANES; l++)
        sum[0][l] += sum[1][l];
    return cv_lanes_tree_total(sum[0]);
}

/* dst (rows x cols, rows ldd apart) = the row-wise softmax of scale * src (rows lds
 * apart): max, exp, sum, then scaled by the sum. dst may be src. A row is scaled only
 * after the next row's exponentials (the same Zen 5 profile). */
CV_VECTORIZE static void softmax_rows(float *dst, ptrdiff_t ldd, const float *src,
                                      ptrdiff_t lds, ptrdiff_t rows, ptrdiff_t cols,
                                      float scale)
{
    const ptrdiff_t body = cols / CV_LANES * CV_LANES;
    const int wide = cv_wide_lanes; /* read once: the stores below may alias it */
    float *pending = NULL, pending_inv = 0.0f;
    for (ptrdiff_t i = 0; i < rows; i++) {
        const float *s = src + i * lds;
        float *d = dst + i * ldd;
        float max = wide ? row_max_lanes(s, body) : row_max_floats(s, body);
        for (ptrdiff_t j = body; j < cols; j++)
            max = s[j] > max ? s[j] : max;
        const float shift = scale * max;
        float sum = wide ? exp_sum_lanes(d, s, body, scale, shift)
                         : exp_sum_floats(d, s, body, scale, shift);
        for (ptrdiff_t j = body; j < cols; j++) {
            d[j] = cv_expf(scale * s[j] - shift);
            sum += d[j];
        }
        if (pending)
            scale_row(pending, pending_inv, cols);
        pending = d;
        pending_inv = 1.0f / sum;
    }
    if (pending)
        scale_row(pending, pending_inv, cols);
}

/* Softmax backward, scaled: ds = scale P * (dP - rowsum(P * dP)) (rows ldd apart),
 * written over dp (rows ldd apart; P's rows ldp apart). */
CV_VECTORIZE static void softmax_backward_rows(float *dp, ptrdiff_t ldd, const float *p,
                                               ptrdiff_t ldp, ptrdiff_t rows,
                                               ptrdiff_t cols, float scale)
{
    const ptrdiff_t body = cols / CV_LANES * CV_LANES;
    for (ptrdiff_t i = 0; i < rows; i++) {
        const float *pr = p + i * ldp;
        float *dr = dp + i * ldd;
        /* a lane array, not a 64-byte vector, as in exp_sum_floats (the AVX-512
         * build vectorises it as well) */
        float lane_dot[CV_LANES] = {0};
        for (ptrdiff_t j = 0; j < body; j += CV_LANES)
            for (int l = 0; l < CV_LANES; l++)
                lane_dot[l] += pr[j + l] * dr[j + l];
        float dot = cv_lanes_tree_total(lane_dot);
        for (ptrdiff_t j = body; j < cols; j++)
            dot += pr[j] * dr[j];
        for (ptrdiff_t j = 0; j < cols; j++)
            dr[j] = scale * (pr[j] * (dr[j] - dot));
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

/* A sequence's length rounded up to the kernels' column blocks. */
static ptrdiff_t padded(ptrdiff_t len)
{
    return (len + 15) / 16 * 16;
}

/* One thread's scratch: a (len x padded(len)) block of scores, then a head of k or v
 * transposed (head_dim x padded(len)). */
static size_t work_per_thread(ptrdiff_t max_len, ptrdiff_t head_dim)
{
    const size_t lp = (size_t)padded(max_len);
    return ((size_t)max_len * lp + (size_t)head_dim * lp + 15) / 16 * 16;
}

size_t attention_work_floats(const ptrdiff_t *seq_start, ptrdiff_t n, ptrdiff_t head_dim,
                             int threads)
{
    return (size_t)threads * work_per_thread(longest(seq_start, n), head_dim);
}

/* The heads go through cv_gemm_small, every operand read in place but k^T and v^T
 * (copied, head_dim x padded(len)), when it takes head_dim columns; else cv_gemm. */
static int small_heads(ptrdiff_t head_dim)
{
    return cv_gemm_small_takes(head_dim) && cv_gemm_small_takes(16);
}

/* C (m x n, rows ldc apart) = A B with B row-major (rows ldb apart): cv_gemm_small,
 * which takes n = head_dim whenever small_heads said so, else BLIS. */
static void head_gemm(int small, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A,
                      ptrdiff_t rsa, ptrdiff_t csa, const float *B, ptrdiff_t ldb, float *C,
                      ptrdiff_t ldc)
{
    if (!small || cv_gemm_small(m, n, k, A, rsa, csa, B, ldb, 0, C, ldc))
        cv_gemm(m, n, k, 1.0f, A, rsa, csa, B, ldb, 1, 0.0f, C, ldc, 1);
}

/* dst (head_dim x lp) = the head's rows (len x head_dim, ld apart) transposed, its
 * columns past len zero (so that the scores past len are zero, never read). */
static void transpose_head(float *dst, ptrdiff_t lp, const float *src, ptrdiff_t ld,
                           ptrdiff_t len, ptrdiff_t head_dim)
{
    cv_transpose(dst, lp, src, ld, len, head_dim, 0);
    for (ptrdiff_t i = 0; i < head_dim; i++)
        for (ptrdiff_t j = len; j < lp; j++)
            dst[i * lp + j] = 0.0f;
}

void attention_forward(float *ctx, float *probs, const float *qkv,
                       const ptrdiff_t *seq_start, const size_t *probs_start, ptrdiff_t n,
                       ptrdiff_t heads, ptrdiff_t head_dim, float *work, int threads)
{
    const ptrdiff_t width = heads * head_dim, ld = 3 * width;
    const ptrdiff_t max_len = longest(seq_start, n);
    const size_t per_thread = work_per_thread(max_len, head_dim);
    const float scale = 1.0f / sqrtf((float)head_dim);
    const int small = small_heads(head_dim);
    /* Dynamic: sequences differ in length, so pairs differ in cost. */
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (ptrdiff_t pair = 0; pair < n * heads; pair++) {
        const ptrdiff_t s = pair / heads, h = pair % heads;
        const ptrdiff_t row0 = seq_start[s], len = seq_start[s + 1] - row0;
        const ptrdiff_t lp = small ? padded(len) : len;
        const float *q = qkv + row0 * ld + h * head_dim, *k = q + width, *v = q + 2 * width;
        float *scratch = work + (size_t)omp_get_thread_num() * per_thread;
        float *kt = scratch + (size_t)(max_len * padded(max_len));
        float *out = ctx + row0 * width + h * head_dim;
        /* the probabilities: kept (len x len) in training, else in the scratch */
        float *p = probs ? probs + probs_start[s] + (size_t)(h * len * len) : scratch;
        const ptrdiff_t ldp = probs ? len : lp;
        /* the scores: where the probabilities go when their rows are lp apart (they are
         * then exponentiated in place, in cache), else in the scratch */
        float *scores = ldp == lp ? p : scratch;
        /* scores (len x len, rows lp apart) = q k^T; k^T is k read with swapped strides */
        if (small) {
            transpose_head(kt, lp, k, ld, len, head_dim);
            cv_gemm_small(len, lp, head_dim, q, ld, 1, kt, lp, 0, scores, lp);
        } else
            cv_gemm(len, len, head_dim, 1.0f, q, ld, 1, k, 1, ld, 0.0f, scores, lp, 1);
        softmax_rows(p, ldp, scores, lp, len, len, scale);
        /* this head's ctx rows (len x head_dim) = p v */
        head_gemm(small, len, head_dim, len, p, ldp, 1, v, ld, out, width);
    }
}

void attention_backward(float *dqkv, const float *probs, const float *dctx,
                        const float *qkv, const ptrdiff_t *seq_start,
                        const size_t *probs_start, ptrdiff_t n, ptrdiff_t heads,
                        ptrdiff_t head_dim, float *work, int threads)
{
    const ptrdiff_t width = heads * head_dim, ld = 3 * width;
    const ptrdiff_t max_len = longest(seq_start, n);
    const size_t per_thread = work_per_thread(max_len, head_dim);
    const float scale = 1.0f / sqrtf((float)head_dim);
    const int small = small_heads(head_dim);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (ptrdiff_t pair = 0; pair < n * heads; pair++) {
        const ptrdiff_t s = pair / heads, h = pair % heads;
        const ptrdiff_t row0 = seq_start[s], len = seq_start[s + 1] - row0;
        const ptrdiff_t lp = small ? padded(len) : len;
        const float *q = qkv + row0 * ld + h * head_dim, *k = q + width, *v = q + 2 * width;
        const float *dc = dctx + row0 * width + h * head_dim;
        float *dq = dqkv + row0 * ld + h * head_dim, *dk = dq + width, *dv = dq + 2 * width;
        const float *p = probs + probs_start[s] + (size_t)(h * len * len);
        float *ds = work + (size_t)omp_get_thread_num() * per_thread;
        float *vt = ds + (size_t)(max_len * padded(max_len));
        /* dv = p^T dctx (p^T read in place, column by column) */
        head_gemm(small, len, head_dim, len, p, 1, len, dc, width, dv, ld);
        /* dp (rows lp apart) = dctx v^T */
        if (small) {
            transpose_head(vt, lp, v, ld, len, head_dim);
            cv_gemm_small(len, lp, head_dim, dc, width, 1, vt, lp, 0, ds, lp);
        } else
            cv_gemm(len, len, head_dim, 1.0f, dc, width, 1, v, 1, ld, 0.0f, ds, lp, 1);
        /* ds = scale dS, dS the scores' gradient */
        softmax_backward_rows(ds, lp, p, len, len, len, scale);
        /* dq = scale dS k, dk = scale dS^T q */
        head_gemm(small, len, head_dim, len, ds, lp, 1, k, ld, dq, ld);
        head_gemm(small, len, head_dim, len, ds, 1, lp, q, ld, dk, ld);
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
