/* loss.c - the contrastive (InfoNCE) loss of ConVIRT, forward and backward fused.
 *
 * For rows a (n x d) and columns b (m x d), with a^_i = a_i / |a_i|:
 *   S_ij = scale * <a^_i, b^_j>                       (one GEMM, then a scaling pass)
 *   loss_rows = mean_i [ lse_j S_ij - S_i,i+off ]     (image -> text in ConVIRT)
 *   loss_cols = mean_j [ lse_i S_ij - S_jj ]          (text -> image, square case)
 *   L = row_weight * loss_rows + col_weight * loss_cols
 * Backward: G = dL/dS = row_weight/n (softmax_rows(S) - Y) + col_weight/n
 * (softmax_cols(S) - Y). With H_ij = G_ij / (|a_i| |b_j|) both input gradients come
 * from one matrix and two GEMMs, g = H b and g' = H^T a, and the L2 normalisation's
 * Jacobian reduces to   dL/da_i = scale (g_i - a_i <a_i, g_i> / |a_i|^2).
 *
 * Between the GEMMs, the softmaxes take two passes over S when scale <= FIXED_SHIFT_MAX
 * (ConVIRT's is 10): every logit lies in [-scale, scale], so E = exp(S - scale) can
 * neither overflow nor underflow and one exponential per entry serves both directions:
 *   lse_i = scale + log sum_j E_ij,   lse'_j = scale + log sum_i E_ij,
 *   G_ij = E_ij (row_weight / (n sum_j E_ij) + col_weight / (n sum_i E_ij)) - Y terms.
 * Pass one, over column tiles, scales S, replaces it with E and sums rows and columns;
 * pass two writes H. Larger scales shift by each row's and column's maximum instead
 * (five passes, four exponentials per entry).
 */
#include <float.h>
#include <omp.h>

#include "core.h"

/* row *= s * colscale; returns the row's maximum, or NaN if any entry is not finite. */
CV_VECTORIZE static float scale_row(float *row, const float *colscale, float s, ptrdiff_t m)
{
    const ptrdiff_t body = m / CV_LANES * CV_LANES;
    /* lane arrays, as in exp_tile_row */
    float lane_best[CV_LANES], lane_poison[CV_LANES];
    for (int l = 0; l < CV_LANES; l++) {
        lane_best[l] = -FLT_MAX;
        lane_poison[l] = 0.0f;
    }
    for (ptrdiff_t j = 0; j < body; j += CV_LANES)
        for (int l = 0; l < CV_LANES; l++) {
            const float x = row[j + l] * (s * colscale[j + l]);
            row[j + l] = x;
            lane_best[l] = x > lane_best[l] ? x : lane_best[l];
            lane_poison[l] += x * 0.0f; /* NaN once any entry is NaN or Inf */
        }
    float best = cv_lanes_max_total(lane_best);
    float poison = cv_lanes_total(lane_poison);
    for (ptrdiff_t j = body; j < m; j++) {
        row[j] *= s * colscale[j];
        best = row[j] > best ? row[j] : best;
        poison += row[j] * 0.0f;
    }
    return best + poison;
}

CV_VECTORIZE static float sum_exp(const float *row, float shift, ptrdiff_t m)
{
    const ptrdiff_t body = m / CV_LANES * CV_LANES;
    float lane[CV_LANES] = {0};
    for (ptrdiff_t j = 0; j < body; j += CV_LANES)
        for (int l = 0; l < CV_LANES; l++)
            lane[l] += cv_expf(row[j + l] - shift);
    float sum = cv_lanes_total(lane);
    for (ptrdiff_t j = body; j < m; j++)
        sum += cv_expf(row[j] - shift);
    return sum;
}

CV_VECTORIZE static void max_into(float *best, const float *row, ptrdiff_t m)
{
    for (ptrdiff_t j = 0; j < m; j++)
        best[j] = row[j] > best[j] ? row[j] : best[j];
}

CV_VECTORIZE static void sum_exp_into(float *sum, const float *row, const float *shift,
                                      ptrdiff_t m)
{
    for (ptrdiff_t j = 0; j < m; j++)
        sum[j] += cv_expf(row[j] - shift[j]);
}

/* Overwrites row (the logits S_i.) with H_i. (the positive's -1 is added by the
 * caller); returns sum_j G_ij S_ij for the logit-scale gradient. */
CV_VECTORIZE static float softmax_grad_row(float *row, const float *col_lse,
                                           const float *inv_b, float row_lse, float inv_a,
                                           float row_coef, float col_coef, ptrdiff_t m)
{
    const ptrdiff_t body = m / CV_LANES * CV_LANES;
    float lane[CV_LANES] = {0}, dot = 0.0f;
    if (col_coef != 0.0f) {
        for (ptrdiff_t j = 0; j < body; j += CV_LANES)
            for (int l = 0; l < CV_LANES; l++) {
                float s = row[j + l];
                float g = row_coef * cv_expf(s - row_lse) +
                          col_coef * cv_expf(s - col_lse[j + l]);
                lane[l] += g * s;
                row[j + l] = g * inv_a * inv_b[j + l];
            }
        dot = cv_lanes_total(lane);
        for (ptrdiff_t j = body; j < m; j++) {
            float s = row[j];
            float g = row_coef * cv_expf(s - row_lse) + col_coef * cv_expf(s - col_lse[j]);
            dot += g * s;
            row[j] = g * inv_a * inv_b[j];
        }
    } else {
        for (ptrdiff_t j = 0; j < body; j += CV_LANES)
            for (int l = 0; l < CV_LANES; l++) {
                float s = row[j + l];
                float g = row_coef * cv_expf(s - row_lse);
                lane[l] += g * s;
                row[j + l] = g * inv_a * inv_b[j + l];
            }
        dot = cv_lanes_total(lane);
        for (ptrdiff_t j = body; j < m; j++) {
            float s = row[j];
            float g = row_coef * cv_expf(s - row_lse);
            dot += g * s;
            row[j] = g * inv_a * inv_b[j];
        }
    }
    return dot;
}

/* The failure for a row inverse_norms refused: NaN or Inf in it (CV_ERR_NONFINITE),
 * or a norm of zero or beyond float32's range (CV_ERR_VALUE). */
static cv_status bad_row(const char *which, const float *x, ptrdiff_t rs, ptrdiff_t cs,
                         ptrdiff_t row, ptrdiff_t d)
{
    for (ptrdiff_t k = 0; k < d; k++)
        if (!isfinite(x[row * rs + k * cs]))
            return cv_fail(CV_ERR_NONFINITE, "row %td of %s contains NaN or Inf", row,
                           which);
    return cv_fail(CV_ERR_VALUE, "row %td of %s has a zero or out-of-range norm", row,
                   which);
}

/* sum_k x_k y_k (x at stride xs, y at ys) in double: in 8 lanes when both are
 * contiguous, which GCC vectorises. */
CV_VECTORIZE static double dot_double(const float *x, ptrdiff_t xs, const float *y,
                                      ptrdiff_t ys, ptrdiff_t d)
{
    double sum = 0.0;
    ptrdiff_t k = 0;
    if (xs == 1 && ys == 1) {
        double lane[8] = {0};
        for (; k + 8 <= d; k += 8)
            for (int l = 0; l < 8; l++)
                lane[l] += (double)x[k + l] * y[k + l];
        for (int l = 0; l < 8; l++)
            sum += lane[l];
    }
    for (; k < d; k++)
        sum += (double)x[k * xs] * y[k * ys];
    return sum;
}

/* Inverse L2 norms of the rows of x; returns the first bad row or -1. */
static ptrdiff_t inverse_norms(float *inv, const float *x, ptrdiff_t rs, ptrdiff_t cs,
                               ptrdiff_t n, ptrdiff_t d, int threads)
{
    ptrdiff_t bad = -1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (ptrdiff_t i = 0; i < n; i++) {
        double ss = dot_double(x + i * rs, cs, x + i * rs, cs, d);
        double r = 1.0 / sqrt(ss);
        inv[i] = (float)r;
        if (!(ss > 0.0) || !isfinite(ss) || !(inv[i] > 0.0f) || !isfinite(inv[i])) {
#pragma omp critical(cv_loss_bad_row)
            if (bad < 0 || i < bad)
                bad = i;
        }
    }
    return bad;
}

/* g = scale (g - c x), the row's update of project_out_norm. */
CV_VECTORIZE static void subtract_scaled(float *g, ptrdiff_t gs, const float *x,
                                         ptrdiff_t xs, double c, double scale, ptrdiff_t d)
{
    if (gs == 1 && xs == 1)
        for (ptrdiff_t k = 0; k < d; k++)
            g[k] = (float)(scale * (g[k] - c * x[k]));
    else
        for (ptrdiff_t k = 0; k < d; k++)
            g[k * gs] = (float)(scale * (g[k * gs] - c * x[k * xs]));
}

/* dx_i = scale (g_i - x_i <x_i, g_i> / |x_i|^2), in place in g. In double: g and
 * the projection nearly cancel when d is small. */
static void project_out_norm(float *g, ptrdiff_t rsg, ptrdiff_t csg, const float *x,
                             ptrdiff_t rs, ptrdiff_t cs, ptrdiff_t n, ptrdiff_t d,
                             double scale, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (ptrdiff_t i = 0; i < n; i++) {
        float *gi = g + i * rsg;
        const float *xi = x + i * rs;
        double c = dot_double(xi, cs, gi, csg, d) / dot_double(xi, cs, xi, cs, d);
        subtract_scaled(gi, csg, xi, cs, c, scale, d);
    }
}

void cv_loss_workspace_free(cv_loss_workspace *ws)
{
    free(ws->logits);
    free(ws->row_stat);
    free(ws->col_stat);
    free(ws->tile_stat);
    memset(ws, 0, sizeof *ws);
}

#define COL_TILE 256

/* Rows per block of the big GEMMs, at least: an interrupt is checked between blocks.
 * A block of 1024 rows of a 20000 x 20000 x 512 similarity GEMM is about 0.1 s on two
 * cores. Where BLIS runs them, every block packs the other operand again, which costs
 * about 4% at 1024 rows: below that the blocks would cost more than the interrupt
 * latency they buy (the small-GEMM kernel's packing is done once for all blocks). */
#define GEMM_BLOCK_ROWS 1024

/* C (rows x cols) = A (rows x inner) @ B (inner x cols), in blocks of rows with an
 * interrupt check before each. Each element of C is the same dot product over `inner`
 * in the same order whatever the split, and the blocks are balanced and never smaller
 * than GEMM_BLOCK_ROWS (fewer than two blocks' worth is one call, as before), so BLIS
 * takes the same path for every block as for the whole: the result is unchanged (the
 * small-GEMM kernel's sums do not depend on the split at all). */
static cv_status gemm_by_rows(ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t inner,
                              const float *A, ptrdiff_t rsa, ptrdiff_t csa, const float *B,
                              ptrdiff_t rsb, ptrdiff_t csb, float *C, ptrdiff_t rsc,
                              ptrdiff_t csc)
{
    const ptrdiff_t blocks = rows >= 2 * GEMM_BLOCK_ROWS ? rows / GEMM_BLOCK_ROWS : 1;
    const ptrdiff_t base = rows / blocks, extra = rows % blocks;
    /* C with contiguous rows: B packed once for every block (cv_tiles_b) */
    const int own = csc == 1;
    cv_tiles_b tb;
    if (own && csa == 1) /* A's rows contiguous: k <= 512 in one slab of B */
        cv_tiles_b_init_rows(&tb, inner, cols, B, rsb, csb);
    else if (own)
        cv_tiles_b_init(&tb, inner, cols, B, rsb, csb);
    ptrdiff_t r0 = 0;
    for (ptrdiff_t b = 0; b < blocks; b++) {
        const ptrdiff_t len = base + (b < extra);
        cv_status status = cv_check_interrupt();
        if (status != CV_OK)
            return status;
        if (own)
            cv_tiles_b_gemm(&tb, len, A + r0 * rsa, rsa, csa, 0, C + r0 * rsc, rsc);
        else
            cv_gemm(len, cols, inner, 1.0f, A + r0 * rsa, rsa, csa, B, rsb, csb, 0.0f,
                    C + r0 * rsc, rsc, csc);
        r0 += len;
    }
    return CV_OK;
}

/* Largest scale the two-pass softmaxes take: exp(-2 scale) stays above FLT_MIN. */
#define FIXED_SHIFT_MAX 40.0

/* Columns per tile of the first pass: a function of m alone (never of the thread
 * count), so every column sum and row partial has the same order on any team; about 8
 * tiles to share, of 128 to 256 columns (a multiple of CV_LANES; narrower tiles spend
 * more of their time adding up each row's lanes). */
static ptrdiff_t column_tile(ptrdiff_t m)
{
    ptrdiff_t w = (m / 8 + CV_LANES - 1) / CV_LANES * CV_LANES;
    return w < 128 ? 128 : w > 256 ? 256 : w;
}

/* The first pass reads a column tile's rows this far ahead: at N = 1024 on Zen 5, one
 * thread, the loss ran 2-3% faster with 2-8 rows (S had just left the GEMM for L3). */
#define PREFETCH_ROWS 4

/* One row's w entries of a column tile. S_ij *= s * inv_b_j, then E_ij = exp(S_ij -
 * shift) replaces it; E and E * S are added to the tile's column sums and the row's
 * partial sums part[0], part[1], the maxima of S raise col_max and part[2], and
 * part[3] turns NaN if an entry is not finite. */
CV_VECTORIZE static void exp_tile_row(float *restrict row, const float *restrict inv_b,
                                      float s, float shift, ptrdiff_t w,
                                      float *restrict col_sum, float *restrict col_dot,
                                      float *restrict col_max, float part[4])
{
    /* lane arrays, not 64-byte vectors: GCC vectorises them at the width each build has,
     * where the AVX2 build kept 64-byte vectors in memory (4.5x slower there) */
    const ptrdiff_t body = w / CV_LANES * CV_LANES;
    float lane_sum[CV_LANES], lane_dot[CV_LANES], lane_max[CV_LANES], lane_poison[CV_LANES];
    for (int l = 0; l < CV_LANES; l++) {
        lane_sum[l] = lane_dot[l] = lane_poison[l] = 0.0f;
        lane_max[l] = -FLT_MAX;
    }
    for (ptrdiff_t j = 0; j < body; j += CV_LANES)
        for (int l = 0; l < CV_LANES; l++) {
            const float x = row[j + l] * (s * inv_b[j + l]);
            lane_max[l] = x > lane_max[l] ? x : lane_max[l];
            col_max[j + l] = x > col_max[j + l] ? x : col_max[j + l];
            lane_poison[l] += x * 0.0f; /* NaN once any entry is NaN or Inf */
            const float e = cv_expf(x - shift);
            row[j + l] = e;
            lane_sum[l] += e;
            lane_dot[l] += e * x;
            col_sum[j + l] += e;
            col_dot[j + l] += e * x;
        }
    float sum = cv_lanes_total(lane_sum);
    float dot = cv_lanes_total(lane_dot);
    float poison = cv_lanes_total(lane_poison);
    float best = cv_lanes_max_total(lane_max);
    for (ptrdiff_t j = body; j < w; j++) {
        float v = row[j] * (s * inv_b[j]), e = cv_expf(v - shift);
        row[j] = e;
        sum += e;
        dot += e * v;
        best = v > best ? v : best;
        poison += v * 0.0f;
        col_sum[j] += e;
        col_dot[j] += e * v;
        col_max[j] = v > col_max[j] ? v : col_max[j];
    }
    part[0] = sum;
    part[1] = dot;
    part[2] = best;
    part[3] = poison;
}

/* row (E_i.) becomes H_i. = E_ij (r + col_g_j) inv_a inv_b_j; the positive's term is
 * the caller's. */
CV_VECTORIZE static void weigh_row(float *row, const float *col_g, const float *inv_b,
                                   float r, float inv_a, ptrdiff_t m)
{
    for (ptrdiff_t j = 0; j < m; j++)
        row[j] = row[j] * (r + col_g[j]) * (inv_a * inv_b[j]);
}

/* What the softmax stage hands on: H in place of S, and the sums for the result. */
typedef struct {
    double loss_rows, loss_cols, hits_rows, hits_cols, grad_scale;
} softmax_totals;

/* The softmaxes of both directions when scale <= FIXED_SHIFT_MAX (see the top). */
static cv_status softmax_two_pass(softmax_totals *t, float *S, cv_loss_workspace *ws,
                                  ptrdiff_t n, ptrdiff_t m, ptrdiff_t offset, double scale,
                                  float row_coef, float col_coef, int square, int threads)
{
    const float shift = (float)scale;
    const ptrdiff_t tile = column_tile(m), tiles = (m + tile - 1) / tile;
    float *inv_a = ws->row_stat, *positive = inv_a + n;
    float *inv_b = ws->col_stat, *col_max = inv_b + m, *col_sum = col_max + m,
          *col_dot = col_sum + m, *col_g = col_dot + m;
    float *part = ws->tile_stat; /* [tiles][n][4] */

    int nonfinite = 0, stop = 0;
    double loss_cols = 0.0, hits_cols = 0.0, dot_cols = 0.0;
#pragma omp parallel for num_threads(threads) schedule(static)                             \
    reduction(+ : loss_cols, hits_cols, dot_cols) reduction(| : nonfinite)
    for (ptrdiff_t t = 0; t < tiles; t++) {
        if (cv_stopping(&stop, 0))
            continue;
        const ptrdiff_t j0 = t * tile, w = m - j0 < tile ? m - j0 : tile;
        for (ptrdiff_t j = j0; j < j0 + w; j++) {
            col_sum[j] = col_dot[j] = 0.0f;
            col_max[j] = -FLT_MAX;
        }
        for (ptrdiff_t i = 0; i < n; i++) {
            float *row = S + i * m + j0, s = (float)scale * inv_a[i];
            if (i + PREFETCH_ROWS < n) /* rows kilobytes apart: no hardware prefetch */
                for (ptrdiff_t j = 0; j < w; j += CV_ALIGN / sizeof(float))
                    __builtin_prefetch(row + PREFETCH_ROWS * m + j, 1, 3);
            const ptrdiff_t p = i + offset - j0;
            if (p >= 0 && p < w) /* the same product exp_tile_row forms */
                positive[i] = row[p] * (s * inv_b[j0 + p]);
            float *pi = part + (t * n + i) * 4;
            exp_tile_row(row, inv_b + j0, s, shift, w, col_sum + j0, col_dot + j0,
                         col_max + j0, pi);
            nonfinite |= !isfinite(pi[3]);
        }
        for (ptrdiff_t j = j0; j < j0 + w; j++) {
            col_g[j] = col_coef / col_sum[j];
            if (square) {
                loss_cols += shift + logf(col_sum[j]) - positive[j];
                hits_cols += positive[j] >= col_max[j];
                dot_cols += (double)col_g[j] * col_dot[j];
            }
        }
    }
    if (stop)
        return CV_ERR_INTERRUPTED;
    if (nonfinite)
        return cv_fail(CV_ERR_NONFINITE,
                       "the similarities overflowed float32: the inputs are too large");

    double loss_rows = 0.0, hits_rows = 0.0, grad_scale = 0.0;
    const float g_positive = -(row_coef + col_coef);
#pragma omp parallel for num_threads(threads) schedule(static)                             \
    reduction(+ : loss_rows, hits_rows, grad_scale)
    for (ptrdiff_t i = 0; i < n; i++) {
        if (cv_stopping(&stop, i))
            continue;
        float sum = 0.0f, dot = 0.0f, best = -FLT_MAX;
        for (ptrdiff_t t = 0; t < tiles; t++) {
            const float *pi = part + (t * n + i) * 4;
            sum += pi[0];
            dot += pi[1];
            best = pi[2] > best ? pi[2] : best;
        }
        loss_rows += shift + logf(sum) - positive[i];
        hits_rows += positive[i] >= best;
        const float r = row_coef / sum;
        grad_scale += (double)r * dot + (double)g_positive * positive[i];
        float *row = S + i * m;
        weigh_row(row, col_g, inv_b, r, inv_a[i], m);
        row[i + offset] += g_positive * inv_a[i] * inv_b[i + offset];
    }
    if (stop)
        return CV_ERR_INTERRUPTED;
    *t =
        (softmax_totals){loss_rows, loss_cols, hits_rows, hits_cols, grad_scale + dot_cols};
    return CV_OK;
}

/* The softmaxes of both directions for any scale: each row and column shifted by its
 * own maximum. */
static cv_status softmax_by_max(softmax_totals *t, float *S, cv_loss_workspace *ws,
                                ptrdiff_t n, ptrdiff_t m, ptrdiff_t offset, double scale,
                                float row_coef, float col_coef, int square, int threads)
{
    float *inv_a = ws->row_stat, *row_lse = inv_a + n;
    float *inv_b = ws->col_stat, *col_max = inv_b + m, *col_lse = col_max + m,
          *col_sum = col_lse + m;
    double loss_rows = 0.0, hits_rows = 0.0;
    int nonfinite = 0, stop = 0;
#pragma omp parallel for num_threads(threads) schedule(static)                             \
    reduction(+ : loss_rows, hits_rows) reduction(| : nonfinite)
    for (ptrdiff_t i = 0; i < n; i++) {
        if (cv_stopping(&stop, i))
            continue;
        float *row = S + i * m;
        float best = scale_row(row, inv_b, (float)scale * inv_a[i], m);
        if (!isfinite(best)) {
            nonfinite = 1;
            continue;
        }
        row_lse[i] = best + logf(sum_exp(row, best, m));
        float positive = row[i + offset];
        loss_rows += row_lse[i] - positive;
        hits_rows += positive >= best;
    }
    if (stop)
        return CV_ERR_INTERRUPTED;
    if (nonfinite)
        return cv_fail(CV_ERR_NONFINITE,
                       "the similarities overflowed float32: the inputs are too large");

    double loss_cols = 0.0, hits_cols = 0.0;
    if (square) {
#pragma omp parallel for num_threads(threads) schedule(static)                             \
    reduction(+ : loss_cols, hits_cols)
        for (ptrdiff_t j0 = 0; j0 < m; j0 += COL_TILE) {
            if (cv_stopping(&stop, j0)) /* j0 is a multiple of 16: checks every tile */
                continue;
            ptrdiff_t w = m - j0 < COL_TILE ? m - j0 : COL_TILE;
            for (ptrdiff_t j = j0; j < j0 + w; j++) {
                col_max[j] = -FLT_MAX;
                col_sum[j] = 0.0f;
            }
            for (ptrdiff_t i = 0; i < n; i++)
                max_into(col_max + j0, S + i * m + j0, w);
            for (ptrdiff_t i = 0; i < n; i++)
                sum_exp_into(col_sum + j0, S + i * m + j0, col_max + j0, w);
            for (ptrdiff_t j = j0; j < j0 + w; j++) {
                col_lse[j] = col_max[j] + logf(col_sum[j]);
                float positive = S[j * m + j];
                loss_cols += col_lse[j] - positive;
                hits_cols += positive >= col_max[j];
            }
        }
        if (stop)
            return CV_ERR_INTERRUPTED;
    }

    /* G, the logit-scale gradient, and H = G / (|a_i| |b_j|) in place of S. */
    double grad_scale = 0.0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : grad_scale)
    for (ptrdiff_t i = 0; i < n; i++) {
        if (cv_stopping(&stop, i))
            continue;
        float *row = S + i * m;
        float positive = row[i + offset];
        grad_scale += softmax_grad_row(row, col_lse, inv_b, row_lse[i], inv_a[i], row_coef,
                                       col_coef, m);
        float g_positive = -(row_coef + col_coef);
        grad_scale += g_positive * positive;
        row[i + offset] += g_positive * inv_a[i] * inv_b[i + offset];
    }
    if (stop)
        return CV_ERR_INTERRUPTED;
    *t = (softmax_totals){loss_rows, loss_cols, hits_rows, hits_cols, grad_scale};
    return CV_OK;
}

cv_status cv_loss_forward_backward(cv_loss_result *result, float *grad_a, ptrdiff_t rsga,
                                   ptrdiff_t csga, float *grad_b, ptrdiff_t rsgb,
                                   ptrdiff_t csgb, cv_loss_workspace *ws, const float *a,
                                   ptrdiff_t rsa, ptrdiff_t csa, const float *b,
                                   ptrdiff_t rsb, ptrdiff_t csb, ptrdiff_t n_rows,
                                   ptrdiff_t n_cols, ptrdiff_t d, ptrdiff_t offset,
                                   double scale, double row_weight, double col_weight)
{
    const ptrdiff_t n = n_rows, m = n_cols;
    if (n < 1 || m < 1 || d < 1)
        return cv_fail(CV_ERR_VALUE, "empty input: %td rows, %td columns, dimension %td", n,
                       m, d);
    if (offset < 0 || offset + n > m)
        return cv_fail(CV_ERR_VALUE,
                       "the positives of rows 0..%td at offset %td fall outside the %td "
                       "columns",
                       n - 1, offset, m);
    if (!(scale > 0.0) || !isfinite(scale))
        return cv_fail(CV_ERR_VALUE, "the logit scale must be positive and finite, got %g",
                       scale);
    if (!(row_weight >= 0.0) || !(col_weight >= 0.0))
        return cv_fail(CV_ERR_VALUE, "direction weights must be >= 0, got %g and %g",
                       row_weight, col_weight);
    if (col_weight > 0.0 && (n != m || offset != 0))
        return cv_fail(CV_ERR_VALUE,
                       "the column direction needs the whole square (rows == columns, "
                       "offset 0); got %td x %td at offset %td",
                       n, m, offset);

    if (cv_reserve((void **)&ws->logits, &ws->logits_cap, cv_mul_sat((size_t)n, (size_t)m),
                   sizeof(float)) ||
        cv_reserve((void **)&ws->row_stat, &ws->row_cap, cv_mul_sat(2, (size_t)n),
                   sizeof(float)) ||
        cv_reserve((void **)&ws->col_stat, &ws->col_cap, cv_mul_sat(5, (size_t)m),
                   sizeof(float)) ||
        cv_reserve(
            (void **)&ws->tile_stat, &ws->tile_cap,
            cv_mul_sat(4 * (size_t)((m + column_tile(m) - 1) / column_tile(m)), (size_t)n),
            sizeof(float)))
        return cv_fail(CV_ERR_MEMORY, "out of memory for a %td x %td similarity matrix", n,
                       m);
    const int threads = cv_get_num_threads();
    float *S = ws->logits;
    float *inv_a = ws->row_stat, *inv_b = ws->col_stat;

    ptrdiff_t bad = inverse_norms(inv_a, a, rsa, csa, n, d, threads);
    if (bad >= 0)
        return bad_row("the first input", a, rsa, csa, bad, d);
    bad = inverse_norms(inv_b, b, rsb, csb, m, d, threads);
    if (bad >= 0)
        return bad_row("the second input", b, rsb, csb, bad, d);

    /* S = a b^T; the softmax stage scales it to cosine * scale and leaves H. */
    cv_status status = gemm_by_rows(n, m, d, a, rsa, csa, b, csb, rsb, S, m, 1);
    if (status != CV_OK)
        return status;

    /* The column statistics are reported whenever the square is whole, even when
     * the column direction carries no weight. */
    const int square = n == m && offset == 0;
    const float row_coef = (float)(row_weight / n);
    const float col_coef = square ? (float)(col_weight / n) : 0.0f;
    softmax_totals t = {0};
    status = scale <= FIXED_SHIFT_MAX
                 ? softmax_two_pass(&t, S, ws, n, m, offset, scale, row_coef, col_coef,
                                    square, threads)
                 : softmax_by_max(&t, S, ws, n, m, offset, scale, row_coef, col_coef,
                                  square, threads);
    if (status != CV_OK)
        return status;

    if (grad_a) {
        if ((status = gemm_by_rows(n, d, m, S, m, 1, b, rsb, csb, grad_a, rsga, csga)))
            return status;
        project_out_norm(grad_a, rsga, csga, a, rsa, csa, n, d, scale, threads);
    }
    if (grad_b) {
        if ((status = gemm_by_rows(m, d, n, S, 1, m, a, rsa, csa, grad_b, rsgb, csgb)))
            return status;
        project_out_norm(grad_b, rsgb, csgb, b, rsb, csb, m, d, scale, threads);
    }

    result->loss_rows = t.loss_rows / n;
    result->loss_cols = square ? t.loss_cols / m : NAN;
    result->accuracy_rows = t.hits_rows / n;
    result->accuracy_cols = square ? t.hits_cols / m : NAN;
    result->loss = row_weight * result->loss_rows +
                   (col_weight > 0.0 ? col_weight * result->loss_cols : 0.0);
    result->grad_logit_scale = t.grad_scale;
    return CV_OK;
}

cv_status cv_ntxent_forward_backward(cv_loss_result *result, float *grad_z, ptrdiff_t rsg,
                                     ptrdiff_t csg, cv_loss_workspace *ws, const float *z,
                                     ptrdiff_t rs, ptrdiff_t cs, ptrdiff_t n2, ptrdiff_t d,
                                     double scale)
{
    if (n2 < 2 || n2 % 2 != 0 || d < 1)
        return cv_fail(CV_ERR_VALUE,
                       "NT-Xent needs an even number (>= 2) of rows, two views of each "
                       "sample; got %td rows of dimension %td",
                       n2, d);
    if (!(scale > 0.0) || !isfinite(scale))
        return cv_fail(CV_ERR_VALUE, "the logit scale must be positive and finite, got %g",
                       scale);
    if (cv_reserve((void **)&ws->logits, &ws->logits_cap,
                   cv_mul_sat((size_t)n2, (size_t)n2), sizeof(float)) ||
        cv_reserve((void **)&ws->row_stat, &ws->row_cap, cv_mul_sat(2, (size_t)n2),
                   sizeof(float)))
        return cv_fail(CV_ERR_MEMORY, "out of memory for a %td x %td similarity matrix", n2,
                       n2);
    const ptrdiff_t half = n2 / 2;
    const int threads = cv_get_num_threads();
    float *S = ws->logits, *inv = ws->row_stat, *row_lse = inv + n2;
    ptrdiff_t bad = inverse_norms(inv, z, rs, cs, n2, d, threads);
    if (bad >= 0)
        return bad_row("the input", z, rs, cs, bad, d);
    cv_status status = gemm_by_rows(n2, n2, d, z, rs, cs, z, cs, rs, S, n2, 1);
    if (status != CV_OK)
        return status;

    /* Row i's positive is the other view, (i + half) mod n2; itself is no candidate. */
    double loss = 0.0, hits = 0.0;
    int nonfinite = 0, stop = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : loss, hits)   \
    reduction(| : nonfinite)
    for (ptrdiff_t i = 0; i < n2; i++) {
        if (cv_stopping(&stop, i))
            continue;
        float *row = S + i * n2;
        if (!isfinite(scale_row(row, inv, (float)scale * inv[i], n2))) {
            nonfinite = 1;
            continue;
        }
        row[i] = -FLT_MAX;
        float best = -FLT_MAX;
        for (ptrdiff_t j = 0; j < n2; j++)
            best = row[j] > best ? row[j] : best;
        row_lse[i] = best + logf(sum_exp(row, best, n2));
        float positive = row[(i + half) % n2];
        loss += row_lse[i] - positive;
        hits += positive >= best;
    }
    if (stop)
        return CV_ERR_INTERRUPTED;
    if (nonfinite)
        return cv_fail(CV_ERR_NONFINITE,
                       "the similarities overflowed float32: the inputs are too large");

    const float coef = (float)(1.0 / n2);
    double grad_scale = 0.0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : grad_scale)
    for (ptrdiff_t i = 0; i < n2; i++) {
        if (cv_stopping(&stop, i))
            continue;
        float *row = S + i * n2;
        ptrdiff_t p = (i + half) % n2;
        float positive = row[p];
        /* S_ii = -FLT_MAX: its softmax weight is exactly 0, so H_ii = 0. */
        grad_scale += softmax_grad_row(row, NULL, inv, row_lse[i], inv[i], coef, 0.0f, n2);
        grad_scale += -coef * positive;
        row[p] += -coef * inv[i] * inv[p];
    }
    if (stop)
        return CV_ERR_INTERRUPTED;
    if (grad_z) {
        /* z is both the rows and the columns: dL/dz = (H + H^T) z, one GEMM. */
#pragma omp parallel for num_threads(threads) schedule(dynamic, 16)
        for (ptrdiff_t i = 0; i < n2; i++) {
            if (cv_stopping(&stop, 0))
                continue;
            for (ptrdiff_t j = i + 1; j < n2; j++) {
                float sum = S[i * n2 + j] + S[j * n2 + i];
                S[i * n2 + j] = S[j * n2 + i] = sum;
            }
        }
        if (stop)
            return CV_ERR_INTERRUPTED;
        if ((status = gemm_by_rows(n2, d, n2, S, n2, 1, z, rs, cs, grad_z, rsg, csg)))
            return status;
        project_out_norm(grad_z, rsg, csg, z, rs, cs, n2, d, scale, threads);
    }
    result->loss = result->loss_rows = loss / n2;
    result->accuracy_rows = hits / n2;
    result->loss_cols = result->accuracy_cols = NAN;
    result->grad_logit_scale = grad_scale;
    return CV_OK;
}
