/* winograd.c - 3x3 stride-1 convolutions with Winograd's F(2x2, 3x3) and F(4x4, 3x3).
 *
 * The output is cut into m x m blocks (m = 2 or 4). Each block's output is
 *     Y = A^T [ U (.) V ] A,   U = G g G^T (t x t per filter and channel, t = m + 2),
 *                              V = B^T d B (t x t per input patch and channel),
 * so that the multiplies of a block are t^2 products per (channel, filter) pair where
 * the direct convolution does 9 m^2: 2.25 times fewer for m = 2 (16 against 36), 4
 * times fewer for m = 4 (36 against 144). Summed over input channels, the element-wise
 * products become t^2 GEMMs per tile of blocks,
 *     M[e] (blocks x k) = V[e] (blocks x c) @ U[e] (c x k),   e = 0..t^2-1,
 * (cv_gemm_tile: convirt's small-GEMM kernel, on B in place for 64-256 channels and on
 * packed panels above), between
 * an input transform (d -> V) and an output transform (M -> Y): additions only for
 * m = 2, additions and multiplies by small integers (2, 4, 5, 8) for m = 4, whose filter
 * transform also divides by 4, 6, 12 and 24. The transforms are vectorised loops over
 * channels ('omp simd'; F(4x4)'s staged through a buffer of CHUNK channels).
 *
 * The three passes of a training step all take this form:
 *  - forward: Y = conv(X, W);
 *  - input gradient: dX = conv(dY, W') with W' the filters flipped and transposed
 *    (stride 1, padding 1: a convolution of the same shape class), so the same code
 *    with U built from W';
 *  - weight gradient: dL/dU = sum over blocks of V (.) (A dY A^T), t^2 GEMMs
 *    D[e] (k x c) += Z[e]^T (k x blocks) @ V[e] (blocks x c) with Z = A dY A^T, and
 *    dW = G^T D G per filter and channel at the end.
 *
 * Which m: F(2x2, 3x3) by default. F(4x4, 3x3) on request (cv_set_winograd(4)), and
 * then only where the output is at least WINO4_MIN_SIDE wide and high: on the small
 * maps of the last stages the blocks hanging over the edge waste more than the
 * multiplies save. One tile of blocks against transformed filters 12 times its size
 * (ResNet-50's last stage on one image) takes the direct path instead
 * (filters_dominate). The choice depends on the switch and the shape only.
 *
 * Accuracy: F(2x2, 3x3)'s transforms multiply by 0, +-1 and +-1/2 only and add a few
 * roundings per element: its error is the direct path's size. F(4x4, 3x3)'s larger
 * constants (up to 8, and 5 in B) make it 10-40x the direct path's (up to 1.2e-5 of
 * the output's scale), enough to move a training run's float32 trajectory beyond what
 * rounding alone does: hence opt-in. docs/NUMERICS.md has the measurements.
 * cv_set_winograd(0) (convirt.set_winograd(False), or CONVIRT_WINOGRAD=0 in the
 * environment) turns the path off.
 *
 * Tiles are runs of whole block rows of one image, or of whole images: each tile's
 * output is a contiguous range of output rows, so the forward's epilogue (batch
 * statistics, batch norm, ReLU) runs on it exactly as on the direct path's tiles. */
#include <omp.h>
#include <stdlib.h>

#include "core.h"
#include "layers.h"

/* ---- the switch ---------------------------------------------------------------------- */

/* -1: not yet read from the environment (cv_init does); 0 off; 1 on, F(2x2, 3x3);
 * 4: F(4x4, 3x3) where the output is at least WINO4_MIN_SIDE a side. */
static int winograd_state = -1;

void cv_set_winograd(int mode)
{
    winograd_state = mode == 4 ? 4 : mode ? 1 : 0;
}

int cv_get_winograd(void)
{
    if (winograd_state < 0) {
        const char *env = getenv("CONVIRT_WINOGRAD");
        int mode = 1;
        if (env && env[0] && !env[1] && (env[0] == '0' || env[0] == '4'))
            mode = env[0] - '0';
        winograd_state = mode;
    }
    return winograd_state;
}

int winograd_fits(const conv_input *in, const conv_shape *sh)
{
    return in->data && sh->r == 3 && sh->s == 3 && sh->stride == 1 && sh->pad == 1;
}

/* ---- tiles --------------------------------------------------------------------------- */

/* Floats of a tile's V and M (or Z) buffers: about 1 MiB, the L2 of the CPUs met. */
#define TILE_FLOATS (256 * 1024)
#define TILE_BLOCKS_MIN 64
#define TILE_BLOCKS_MAX 512
/* The least output side that takes F(4x4, 3x3) when the block size is automatic. */
#define WINO4_MIN_SIDE 8
#define MAX_E 36 /* matrices of F(4x4, 3x3) */

typedef struct {
    int m, t, e;       /* output block side, patch side (m + 2), matrices (t * t) */
    ptrdiff_t n, p, q; /* images, output rows and columns */
    ptrdiff_t bp, bq;  /* block rows and columns per image */
    ptrdiff_t parts;   /* tiles per image when images are split, else 0 */
    ptrdiff_t groups;  /* groups of whole images (parts == 0) */
    ptrdiff_t count;
    ptrdiff_t max_blocks;
} wino_plan;

static int block_side(const conv_shape *sh, int mode)
{
    return mode == 4 && sh->p >= WINO4_MIN_SIDE && sh->q >= WINO4_MIN_SIDE ? 4 : 2;
}

static wino_plan plan_blocks_for(const conv_shape *sh, int m)
{
    wino_plan t;
    t.m = m;
    t.t = m + 2;
    t.e = t.t * t.t;
    t.n = sh->n;
    t.p = sh->p;
    t.q = sh->q;
    t.bp = (sh->p + m - 1) / m;
    t.bq = (sh->q + m - 1) / m;
    ptrdiff_t target = TILE_FLOATS / (t.e * (sh->c > sh->k ? sh->c : sh->k));
    target = target < TILE_BLOCKS_MIN   ? TILE_BLOCKS_MIN
             : target > TILE_BLOCKS_MAX ? TILE_BLOCKS_MAX
                                        : target;
    const ptrdiff_t per_image = t.bp * t.bq;
    if (per_image >= target) {
        t.parts = (per_image + target - 1) / target;
        t.parts = t.parts > t.bp ? t.bp : t.parts;
        t.groups = t.n;
        t.count = t.n * t.parts;
        t.max_blocks = (t.bp + t.parts - 1) / t.parts * t.bq;
    } else {
        ptrdiff_t g = (t.n * per_image + target - 1) / target;
        g = (g + 1) / 2 * 2; /* an even count: two threads share them evenly */
        g = g > t.n ? t.n : g;
        t.parts = 0;
        t.groups = g;
        t.count = g;
        t.max_blocks = (t.n + g - 1) / g * per_image;
    }
    return t;
}

/* The plan of the block size the switch and the shape choose. */
static wino_plan plan_blocks(const conv_shape *sh)
{
    return plan_blocks_for(sh, block_side(sh, cv_get_winograd()));
}

/* Tile i: images [*n0, *n1), and within them block rows [*b0, *b1). */
static void tile_blocks(const wino_plan *t, ptrdiff_t i, ptrdiff_t *n0, ptrdiff_t *n1,
                        ptrdiff_t *b0, ptrdiff_t *b1)
{
    if (t->parts) {
        ptrdiff_t j = i % t->parts;
        *n0 = i / t->parts;
        *n1 = *n0 + 1;
        *b0 = j * t->bp / t->parts;
        *b1 = (j + 1) * t->bp / t->parts;
    } else {
        *n0 = i * t->n / t->groups;
        *n1 = (i + 1) * t->n / t->groups;
        *b0 = 0;
        *b1 = t->bp;
    }
}

/* Blocks of tile i, the blocks before it (in image, block-row, block-column order) and
 * the batch's. */
static ptrdiff_t tile_size(const wino_plan *t, ptrdiff_t i)
{
    ptrdiff_t n0, n1, b0, b1;
    tile_blocks(t, i, &n0, &n1, &b0, &b1);
    return (n1 - n0) * (b1 - b0) * t->bq;
}

static ptrdiff_t first_block(const wino_plan *t, ptrdiff_t i)
{
    ptrdiff_t n0, n1, b0, b1;
    tile_blocks(t, i, &n0, &n1, &b0, &b1);
    return (n0 * t->bp + b0) * t->bq;
}

static ptrdiff_t batch_blocks(const wino_plan *t)
{
    return t->n * t->bp * t->bq;
}

/* Image n, block row bp and block column bq of the batch's block g. */
static void block_at(const wino_plan *t, ptrdiff_t g, ptrdiff_t *n, ptrdiff_t *bp,
                     ptrdiff_t *bq)
{
    *n = g / (t->bp * t->bq);
    *bp = g / t->bq % t->bp;
    *bq = g % t->bq;
}

/* Deep layers on small images (ResNet's last stages): the transformed filter matrices
 * (c x k each) outweigh the batch's transformed input and output, so that reading them
 * once per tile costs more than the GEMMs gain from L2-sized tiles. Then each GEMM
 * spans the whole batch's blocks: the filters are read once, and the GEMMs get all the
 * rows. Which path runs depends on the shape only, never on the thread count. */
static int whole_batch(const wino_plan *t, ptrdiff_t c, ptrdiff_t k)
{
    return t->count > 1 && batch_blocks(t) * (c + k) <= 2 * c * k;
}

/* One tile whose transformed filters (c x k per matrix) outweigh its transformed input
 * and output (blocks x (c + k)) 12 times or more: ResNet-50's last stage on one image,
 * 16 blocks against 512 x 512 filters (16 times). Transforming, writing and packing
 * the filters then costs more than the multiplies save, on one tile (one thread): on
 * an Intel Xeon with AVX-512 (2026-12-04, 2 threads) that stage's three 3x3
 * convolutions took 13 ms through Winograd and 4 ms direct (reading the weight once,
 * cv_gemm_few_rows); on two images (8 times) Winograd was faster again, 9 against 12
 * ms, as on 14 x 14 x 256 on one image (2.6 times), 7 against 8. The shape decides. */
static int filters_dominate(const conv_shape *sh)
{
    const wino_plan t = plan_blocks(sh);
    return t.count == 1 && 12 * batch_blocks(&t) * (sh->c + sh->k) <= sh->c * sh->k;
}

int winograd_applies(const conv_input *in, const conv_shape *sh)
{
    return winograd_fits(in, sh) && cv_get_winograd() && !filters_dominate(sh);
}

int winograd_reads_weight_t(const conv_shape *sh)
{
    const wino_plan plan = plan_blocks(sh);
    return !whole_batch(&plan, sh->c, sh->k);
}

ptrdiff_t winograd_tile_count(const conv_shape *sh)
{
    return plan_blocks(sh).count;
}

ptrdiff_t winograd_tile_bound(const conv_shape *sh)
{
    ptrdiff_t two = plan_blocks_for(sh, 2).count, four = plan_blocks_for(sh, 4).count;
    return two > four ? two : four;
}

/* ---- transforms ---------------------------------------------------------------------- */

/* F(2x2, 3x3): G (4 x 3), B^T (4 x 4), A^T (2 x 4) as in Lavin and Gray (2016). */

/* u[e * es + i] = (G g G^T)[e] for i < count, g[r][s] = taps[r * 3 + s][i * step]. */
CV_VECTORIZE static void filter_transform_2(float *restrict u, ptrdiff_t es,
                                            const float *const taps[9], ptrdiff_t step,
                                            ptrdiff_t count)
{
#pragma omp simd
    for (ptrdiff_t i = 0; i < count; i++) {
        float t[4][3];
        for (int s = 0; s < 3; s++) {
            const float g0 = taps[s][i * step], g1 = taps[3 + s][i * step],
                        g2 = taps[6 + s][i * step];
            t[0][s] = g0;
            t[1][s] = 0.5f * (g0 + g1 + g2);
            t[2][s] = 0.5f * (g0 - g1 + g2);
            t[3][s] = g2;
        }
        for (int r = 0; r < 4; r++) {
            u[(r * 4 + 0) * es + i] = t[r][0];
            u[(r * 4 + 1) * es + i] = 0.5f * (t[r][0] + t[r][1] + t[r][2]);
            u[(r * 4 + 2) * es + i] = 0.5f * (t[r][0] - t[r][1] + t[r][2]);
            u[(r * 4 + 3) * es + i] = t[r][2];
        }
    }
}

/* v[e * es + i] = (B^T d B)[e] for i < count, d[a][b] = patch[a * 4 + b][i]. */
CV_VECTORIZE static void input_transform_2(float *restrict v, ptrdiff_t es,
                                           const float *const patch[16], ptrdiff_t count)
{
#pragma omp simd
    for (ptrdiff_t i = 0; i < count; i++) {
        float t[4][4];
        for (int b = 0; b < 4; b++) {
            const float d0 = patch[b][i], d1 = patch[4 + b][i], d2 = patch[8 + b][i],
                        d3 = patch[12 + b][i];
            t[0][b] = d0 - d2;
            t[1][b] = d1 + d2;
            t[2][b] = d2 - d1;
            t[3][b] = d1 - d3;
        }
        for (int a = 0; a < 4; a++) {
            v[(a * 4 + 0) * es + i] = t[a][0] - t[a][2];
            v[(a * 4 + 1) * es + i] = t[a][1] + t[a][2];
            v[(a * 4 + 2) * es + i] = t[a][2] - t[a][1];
            v[(a * 4 + 3) * es + i] = t[a][1] - t[a][3];
        }
    }
}

/* y[j] (= or +=) (A^T m A) for the 2 x 2 outputs, m[a][b] = mm[(a * 4 + b) * es + i];
 * y[j] is a sink (count floats whose values do not matter) for an output outside the
 * image. */
CV_VECTORIZE static void output_transform_2(float *const y[4], const float *restrict mm,
                                            ptrdiff_t es, ptrdiff_t count, int add)
{
#pragma omp simd
    for (ptrdiff_t i = 0; i < count; i++) {
        float t[2][4];
        for (int b = 0; b < 4; b++) {
            const float m0 = mm[(0 + b) * es + i], m1 = mm[(4 + b) * es + i],
                        m2 = mm[(8 + b) * es + i], m3 = mm[(12 + b) * es + i];
            t[0][b] = m0 + m1 + m2;
            t[1][b] = m1 - m2 - m3;
        }
        for (int a = 0; a < 2; a++) {
            const float y0 = t[a][0] + t[a][1] + t[a][2], y1 = t[a][1] - t[a][2] - t[a][3];
            float *p0 = y[a * 2], *p1 = y[a * 2 + 1];
            p0[i] = add ? p0[i] + y0 : y0;
            p1[i] = add ? p1[i] + y1 : y1;
        }
    }
}

/* z[e * es + i] = (A dy A^T)[e], dy[a][b] = grad[a * 2 + b][i] (the 2 x 2 outputs). */
CV_VECTORIZE static void gradient_transform_2(float *restrict z, ptrdiff_t es,
                                              const float *const grad[4], ptrdiff_t count)
{
#pragma omp simd
    for (ptrdiff_t i = 0; i < count; i++) {
        float t[4][2];
        for (int b = 0; b < 2; b++) {
            const float y0 = grad[b][i], y1 = grad[2 + b][i];
            t[0][b] = y0;
            t[1][b] = y0 + y1;
            t[2][b] = y0 - y1;
            t[3][b] = -y1;
        }
        for (int a = 0; a < 4; a++) {
            z[(a * 4 + 0) * es + i] = t[a][0];
            z[(a * 4 + 1) * es + i] = t[a][0] + t[a][1];
            z[(a * 4 + 2) * es + i] = t[a][0] - t[a][1];
            z[(a * 4 + 3) * es + i] = -t[a][1];
        }
    }
}

/* dw[(r * 3 + s) * ts + i] += (G^T D G)[r][s], D[a][b] = d[(a * 4 + b) * es + i]. */
CV_VECTORIZE static void filter_gradient_2(float *restrict dw, ptrdiff_t ts,
                                           const float *restrict d, ptrdiff_t es,
                                           ptrdiff_t count)
{
#pragma omp simd
    for (ptrdiff_t i = 0; i < count; i++) {
        float t[3][4];
        for (int b = 0; b < 4; b++) {
            const float d0 = d[(0 + b) * es + i], d1 = d[(4 + b) * es + i],
                        d2 = d[(8 + b) * es + i], d3 = d[(12 + b) * es + i];
            t[0][b] = d0 + 0.5f * (d1 + d2);
            t[1][b] = 0.5f * (d1 - d2);
            t[2][b] = 0.5f * (d1 + d2) + d3;
        }
        for (int r = 0; r < 3; r++) {
            dw[(r * 3 + 0) * ts + i] += t[r][0] + 0.5f * (t[r][1] + t[r][2]);
            dw[(r * 3 + 1) * ts + i] += 0.5f * (t[r][1] - t[r][2]);
            dw[(r * 3 + 2) * ts + i] += 0.5f * (t[r][1] + t[r][2]) + t[r][3];
        }
    }
}

/* F(4x4, 3x3), on the points 0, 1, -1, 2, -2 and infinity (Lavin and Gray, 2016):
 *   G   = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
 *   B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0;
 *          0 4 0 -5 0 1]
 *   A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
 * Each applies to the columns, then the rows, of a patch. */
#define SIXTH (1.0f / 6.0f)
#define TWELFTH (1.0f / 12.0f)
#define TWENTYFOURTH (1.0f / 24.0f)

/* Each runs on vectors of n channels, one stage (columns, then rows) of a patch at a
 * time through a small buffer, so that every loop is a plain loop over channels. */
#define CHUNK 64

/* o = G g, g's three vectors `step` floats between channels */
static inline void g_6(float *const o[6], const float *const g[3], ptrdiff_t step,
                       ptrdiff_t n)
{
    const float *g0 = g[0], *g1 = g[1], *g2 = g[2];
    float *o0 = o[0], *o1 = o[1], *o2 = o[2], *o3 = o[3], *o4 = o[4], *o5 = o[5];
#pragma omp simd
    for (ptrdiff_t i = 0; i < n; i++) {
        const float x0 = g0[i * step], x1 = g1[i * step], x2 = g2[i * step];
        const float a = x0 + x2, b = TWENTYFOURTH * x0 + SIXTH * x2;
        o0[i] = 0.25f * x0;
        o1[i] = -SIXTH * (a + x1);
        o2[i] = -SIXTH * (a - x1);
        o3[i] = b + TWELFTH * x1;
        o4[i] = b - TWELFTH * x1;
        o5[i] = x2;
    }
}

static inline void bt_6(float *const o[6], const float *const d[6], ptrdiff_t n)
{
    const float *d0 = d[0], *d1 = d[1], *d2 = d[2], *d3 = d[3], *d4 = d[4], *d5 = d[5];
    float *o0 = o[0], *o1 = o[1], *o2 = o[2], *o3 = o[3], *o4 = o[4], *o5 = o[5];
#pragma omp simd
    for (ptrdiff_t i = 0; i < n; i++) {
        o0[i] = 4.0f * d0[i] - 5.0f * d2[i] + d4[i];
        o1[i] = d3[i] + d4[i] - 4.0f * (d1[i] + d2[i]);
        o2[i] = d4[i] - d3[i] + 4.0f * (d1[i] - d2[i]);
        o3[i] = d4[i] - d2[i] + 2.0f * (d3[i] - d1[i]);
        o4[i] = d4[i] - d2[i] + 2.0f * (d1[i] - d3[i]);
        o5[i] = 4.0f * d1[i] - 5.0f * d3[i] + d5[i];
    }
}

/* o (= or += with add) A^T m */
static inline void at_4(float *const o[4], const float *const m[6], ptrdiff_t n, int add)
{
    const float *m0 = m[0], *m1 = m[1], *m2 = m[2], *m3 = m[3], *m4 = m[4], *m5 = m[5];
    float *o0 = o[0], *o1 = o[1], *o2 = o[2], *o3 = o[3];
#pragma omp simd
    for (ptrdiff_t i = 0; i < n; i++) {
        const float a = m1[i] + m2[i], b = m1[i] - m2[i], c = m3[i] + m4[i],
                    d = m3[i] - m4[i];
        const float y0 = m0[i] + a + c, y1 = b + 2.0f * d, y2 = a + 4.0f * c,
                    y3 = b + 8.0f * d + m5[i];
        o0[i] = add ? o0[i] + y0 : y0;
        o1[i] = add ? o1[i] + y1 : y1;
        o2[i] = add ? o2[i] + y2 : y2;
        o3[i] = add ? o3[i] + y3 : y3;
    }
}

static inline void a_6(float *const o[6], const float *const y[4], ptrdiff_t n)
{
    const float *y0 = y[0], *y1 = y[1], *y2 = y[2], *y3 = y[3];
    float *o0 = o[0], *o1 = o[1], *o2 = o[2], *o3 = o[3], *o4 = o[4], *o5 = o[5];
#pragma omp simd
    for (ptrdiff_t i = 0; i < n; i++) {
        const float a = y0[i] + y2[i], b = y1[i] + y3[i];
        const float c = y0[i] + 4.0f * y2[i], d = 2.0f * y1[i] + 8.0f * y3[i];
        o0[i] = y0[i];
        o1[i] = a + b;
        o2[i] = a - b;
        o3[i] = c + d;
        o4[i] = c - d;
        o5[i] = y3[i];
    }
}

/* o (= or += with add) G^T d */
static inline void gt_3(float *const o[3], const float *const d[6], ptrdiff_t n, int add)
{
    const float *d0 = d[0], *d1 = d[1], *d2 = d[2], *d3 = d[3], *d4 = d[4], *d5 = d[5];
    float *o0 = o[0], *o1 = o[1], *o2 = o[2];
#pragma omp simd
    for (ptrdiff_t i = 0; i < n; i++) {
        const float s12 = d1[i] + d2[i], s34 = d3[i] + d4[i];
        const float w0 = 0.25f * d0[i] - SIXTH * s12 + TWENTYFOURTH * s34;
        const float w1 = SIXTH * (d2[i] - d1[i]) + TWELFTH * (d3[i] - d4[i]);
        const float w2 = SIXTH * (s34 - s12) + d5[i];
        o0[i] = add ? o0[i] + w0 : w0;
        o1[i] = add ? o1[i] + w1 : w1;
        o2[i] = add ? o2[i] + w2 : w2;
    }
}

/* u[e * es + i] = (G g G^T)[e] for i < count, g[r][s] = taps[r * 3 + s][i * step]. */
CV_VECTORIZE static void filter_transform_4(float *restrict u, ptrdiff_t es,
                                            const float *const taps[9], ptrdiff_t step,
                                            ptrdiff_t count)
{
    float t[18][CHUNK]; /* t[r * 3 + s] = (G g)[r][s] */
    for (ptrdiff_t i0 = 0; i0 < count; i0 += CHUNK) {
        const ptrdiff_t n = count - i0 < CHUNK ? count - i0 : CHUNK;
        for (int s = 0; s < 3; s++) {
            const float *g[3];
            float *o[6];
            for (int r = 0; r < 3; r++)
                g[r] = taps[r * 3 + s] + i0 * step;
            for (int r = 0; r < 6; r++)
                o[r] = t[r * 3 + s];
            g_6(o, g, step, n);
        }
        for (int r = 0; r < 6; r++) {
            const float *g[3];
            float *o[6];
            for (int s = 0; s < 3; s++)
                g[s] = t[r * 3 + s];
            for (int c = 0; c < 6; c++)
                o[c] = u + (r * 6 + c) * es + i0;
            g_6(o, g, 1, n);
        }
    }
}

/* v[e * es + i] = (B^T d B)[e] for i < count, d[a][b] = patch[a * 6 + b][i]. */
CV_VECTORIZE static void input_transform_4(float *restrict v, ptrdiff_t es,
                                           const float *const patch[36], ptrdiff_t count)
{
    float t[36][CHUNK]; /* t[a * 6 + b] = (B^T d)[a][b] */
    for (ptrdiff_t i0 = 0; i0 < count; i0 += CHUNK) {
        const ptrdiff_t n = count - i0 < CHUNK ? count - i0 : CHUNK;
        for (int b = 0; b < 6; b++) {
            const float *d[6];
            float *o[6];
            for (int a = 0; a < 6; a++) {
                d[a] = patch[a * 6 + b] + i0;
                o[a] = t[a * 6 + b];
            }
            bt_6(o, d, n);
        }
        for (int a = 0; a < 6; a++) {
            const float *d[6];
            float *o[6];
            for (int c = 0; c < 6; c++) {
                d[c] = t[a * 6 + c];
                o[c] = v + (a * 6 + c) * es + i0;
            }
            bt_6(o, d, n);
        }
    }
}

/* y[j] (= or +=) (A^T m A) for the 4 x 4 outputs, m[a][b] = mm[(a * 6 + b) * es + i]. */
CV_VECTORIZE static void output_transform_4(float *const y[16], const float *restrict mm,
                                            ptrdiff_t es, ptrdiff_t count, int add)
{
    float t[24][CHUNK]; /* t[a * 6 + b] = (A^T m)[a][b] */
    for (ptrdiff_t i0 = 0; i0 < count; i0 += CHUNK) {
        const ptrdiff_t n = count - i0 < CHUNK ? count - i0 : CHUNK;
        for (int b = 0; b < 6; b++) {
            const float *m[6];
            float *o[4];
            for (int a = 0; a < 6; a++)
                m[a] = mm + (a * 6 + b) * es + i0;
            for (int a = 0; a < 4; a++)
                o[a] = t[a * 6 + b];
            at_4(o, m, n, 0);
        }
        for (int a = 0; a < 4; a++) {
            const float *m[6];
            float *o[4];
            for (int b = 0; b < 6; b++)
                m[b] = t[a * 6 + b];
            for (int b = 0; b < 4; b++)
                o[b] = y[a * 4 + b] + i0;
            at_4(o, m, n, add);
        }
    }
}

/* z[e * es + i] = (A dy A^T)[e], dy[a][b] = grad[a * 4 + b][i] (the 4 x 4 outputs). */
CV_VECTORIZE static void gradient_transform_4(float *restrict z, ptrdiff_t es,
                                              const float *const grad[16], ptrdiff_t count)
{
    float t[24][CHUNK]; /* t[a * 4 + b] = (A dy)[a][b] */
    for (ptrdiff_t i0 = 0; i0 < count; i0 += CHUNK) {
        const ptrdiff_t n = count - i0 < CHUNK ? count - i0 : CHUNK;
        for (int b = 0; b < 4; b++) {
            const float *y[4];
            float *o[6];
            for (int a = 0; a < 4; a++)
                y[a] = grad[a * 4 + b] + i0;
            for (int a = 0; a < 6; a++)
                o[a] = t[a * 4 + b];
            a_6(o, y, n);
        }
        for (int a = 0; a < 6; a++) {
            const float *y[4];
            float *o[6];
            for (int b = 0; b < 4; b++)
                y[b] = t[a * 4 + b];
            for (int c = 0; c < 6; c++)
                o[c] = z + (a * 6 + c) * es + i0;
            a_6(o, y, n);
        }
    }
}

/* dw[(r * 3 + s) * ts + i] += (G^T D G)[r][s], D[a][b] = d[(a * 6 + b) * es + i]. */
CV_VECTORIZE static void filter_gradient_4(float *restrict dw, ptrdiff_t ts,
                                           const float *restrict d, ptrdiff_t es,
                                           ptrdiff_t count)
{
    float t[18][CHUNK]; /* t[r * 6 + b] = (G^T D)[r][b] */
    for (ptrdiff_t i0 = 0; i0 < count; i0 += CHUNK) {
        const ptrdiff_t n = count - i0 < CHUNK ? count - i0 : CHUNK;
        for (int b = 0; b < 6; b++) {
            const float *col[6];
            float *o[3];
            for (int a = 0; a < 6; a++)
                col[a] = d + (a * 6 + b) * es + i0;
            for (int r = 0; r < 3; r++)
                o[r] = t[r * 6 + b];
            gt_3(o, col, n, 0);
        }
        for (int r = 0; r < 3; r++) {
            const float *row[6];
            float *o[3];
            for (int b = 0; b < 6; b++)
                row[b] = t[r * 6 + b];
            for (int s = 0; s < 3; s++)
                o[s] = dw + (r * 3 + s) * ts + i0;
            gt_3(o, row, n, 1);
        }
    }
}

/* ---- passes over a tile -------------------------------------------------------------- */

/* V (e x blocks x c) of the tile's blocks, in image, block-row, block-column order. */
static void tile_input(float *v, ptrdiff_t es, const float *x, const float *zeros,
                       const wino_plan *t, ptrdiff_t c, ptrdiff_t i)
{
    const ptrdiff_t H = t->p, W = t->q; /* stride 1, padding 1: the input's size */
    const ptrdiff_t first = first_block(t, i), blocks = tile_size(t, i);
    const int m = t->m, side = t->t;
    for (ptrdiff_t blk = 0; blk < blocks; blk++) {
        ptrdiff_t n, bp, bq;
        block_at(t, first + blk, &n, &bp, &bq);
        const float *patch[MAX_E];
        for (int a = 0; a < side; a++)
            for (int b = 0; b < side; b++) {
                ptrdiff_t h = m * bp - 1 + a, w = m * bq - 1 + b;
                patch[a * side + b] = h < 0 || h >= H || w < 0 || w >= W
                                          ? zeros
                                          : x + ((n * H + h) * W + w) * c;
            }
        if (m == 4)
            input_transform_4(v + blk * c, es, patch, c);
        else
            input_transform_2(v + blk * c, es, patch, c);
    }
}

/* Offsets of the m x m outputs of the batch's block g in an (n, p, q, k) tensor, -1
 * for an output outside the image. */
static void block_outputs(ptrdiff_t at[16], const wino_plan *t, ptrdiff_t k, ptrdiff_t g)
{
    ptrdiff_t n, bp, bq;
    block_at(t, g, &n, &bp, &bq);
    for (int a = 0; a < t->m; a++)
        for (int b = 0; b < t->m; b++) {
            ptrdiff_t p = t->m * bp + a, q = t->m * bq + b;
            at[a * t->m + b] = p < t->p && q < t->q ? ((n * t->p + p) * t->q + q) * k : -1;
        }
}

/* ---- forward ------------------------------------------------------------------------- */

/* The e transformed filters of weight (k_w, 3, 3, c_w) as matrices es floats apart:
 * [e][k][c] (rows k_w, read in place), or with by_channel [e][c][k] (rows c_w), read
 * from weight_t (9 c_w, k_w) when given (contiguous), else from weight 9 c_w floats
 * apart. flip: the filters turned by 180 degrees (tap 8 - t for tap t). */
static void transform_filters(float *u, ptrdiff_t es, const float *weight,
                              const float *weight_t, ptrdiff_t k_w, ptrdiff_t c_w,
                              int by_channel, int flip, int m)
{
    const ptrdiff_t rows = by_channel ? c_w : k_w;
#pragma omp parallel for num_threads(layer_threads())                                      \
    schedule(static) if (k_w * c_w > 16384)
    for (ptrdiff_t j = 0; j < rows; j++) {
        const float *taps[9];
        ptrdiff_t step = 1;
        for (int t = 0; t < 9; t++) {
            const int tap = flip ? 8 - t : t;
            if (!by_channel)
                taps[t] = weight + (j * 9 + tap) * c_w;
            else if (weight_t)
                taps[t] = weight_t + (tap * c_w + j) * k_w;
            else
                taps[t] = weight + tap * c_w + j, step = 9 * c_w;
        }
        float *row = u + j * (by_channel ? k_w : c_w);
        const ptrdiff_t count = by_channel ? k_w : c_w;
        if (m == 4)
            filter_transform_4(row, es, taps, step, count);
        else
            filter_transform_2(row, es, taps, step, count);
    }
}

static size_t round16(size_t n)
{
    return (n + 15) / 16 * 16;
}

/* The distance between two of the matrices of a tile: rows x cols rounded up to a
 * cache line, plus one, so that the streams of stores never fall into the same cache
 * sets (a multiple of 4 KiB would). */
static ptrdiff_t matrix_stride(ptrdiff_t rows, ptrdiff_t cols)
{
    return (ptrdiff_t)round16((size_t)(rows * cols)) + 16;
}

/* Tile i's output rows: the m x m outputs of its blocks from mm (the tile's M, rows
 * blocks x k, matrices ms apart), then the epilogue on them. Outputs outside the image
 * go to sink (k floats of the calling thread's own). */
static void tile_output(float *out, float *sink, const float *mm, ptrdiff_t ms,
                        const wino_plan *t, ptrdiff_t k, ptrdiff_t i, int add,
                        const conv_epilogue *epilogue)
{
    const ptrdiff_t first = first_block(t, i), blocks = tile_size(t, i);
    for (ptrdiff_t blk = 0; blk < blocks; blk++) {
        ptrdiff_t at[16] = {0};
        float *y[16];
        block_outputs(at, t, k, first + blk);
        for (int j = 0; j < t->m * t->m; j++)
            y[j] = at[j] < 0 ? sink : out + at[j];
        if (t->m == 4)
            output_transform_4(y, mm + blk * k, ms, k, add);
        else
            output_transform_2(y, mm + blk * k, ms, k, add);
    }
    if (epilogue && epilogue->run) {
        ptrdiff_t n0, n1, b0, b1;
        tile_blocks(t, i, &n0, &n1, &b0, &b1);
        const ptrdiff_t p0 = t->m * b0, p1 = t->m * b1 < t->p ? t->m * b1 : t->p;
        const ptrdiff_t row0 = (n0 * t->p + p0) * t->q;
        const ptrdiff_t rows = t->parts ? (p1 - p0) * t->q : (n1 - n0) * t->p * t->q;
        epilogue->run(epilogue->ctx, out + row0 * k, row0, rows, i);
    }
}

cv_status winograd_forward(float *out, const float *x, const float *weight,
                           const float *weight_t, int flip, const conv_shape *sh, int add,
                           const conv_epilogue *epilogue, conv_workspace *ws)
{
    const ptrdiff_t C = sh->c, K = sh->k;
    const wino_plan plan = plan_blocks(sh);
    const int threads = layer_threads();
    const int whole = whole_batch(&plan, C, K);
    const ptrdiff_t T = whole ? batch_blocks(&plan) : plan.max_blocks;
    const ptrdiff_t us = matrix_stride(C, K), vs = matrix_stride(T, C),
                    ms = matrix_stride(T, K);
    const int E = plan.e;
    const size_t per_copy = (size_t)(E * (vs + ms));
    const int copies = whole ? 1 : threads; /* of V and M: shared, or one per thread */
    const size_t zero_floats = round16((size_t)C), sink_floats = round16((size_t)K);
    const size_t sinks = sink_floats * (size_t)threads;
    if (cv_reserve((void **)&ws->data, &ws->cap,
                   (size_t)(E * us) + zero_floats + sinks + per_copy * (size_t)copies,
                   sizeof(float)))
        return cv_fail(CV_ERR_MEMORY,
                       "out of memory for the Winograd transforms (%d x %zu floats)",
                       copies, per_copy);
    float *u = ws->data, *zeros = u + E * us, *sink = zeros + zero_floats;
    float *scratch = sink + sinks;
    memset(zeros, 0, (size_t)C * sizeof(float));
    memset(sink, 0, sinks * sizeof(float));
    /* B[e] (C x K), rows rsb and columns csb floats apart. Input gradient: the layer's
     * weight is (C, 3, 3, K), whose flipped filters' [e][C][K] is B.
     * Forward: weight is (K, 3, 3, C); its [e][K][C], read in place, is B transposed,
     * which the whole batch's GEMMs pack once each; the tiles' GEMMs, which pack B for
     * every tile, read [e][C][K] faster, built from weight_t. */
    const int transposed = !flip && whole;
    const ptrdiff_t rsb = transposed ? 1 : K, csb = transposed ? C : 1;
    if (flip)
        transform_filters(u, us, weight, NULL, C, K, 0, 1, plan.m);
    else if (transposed)
        transform_filters(u, us, weight, NULL, K, C, 0, 0, plan.m);
    else
        transform_filters(u, us, weight, weight_t, K, C, 1, 0, plan.m);
    const int loop_threads = plan.count >= threads ? threads : 1;

#pragma omp parallel num_threads(loop_threads)
    {
        float *v = scratch + (whole ? 0 : per_copy * (size_t)omp_get_thread_num());
        float *m = v + E * vs;
        float *my_sink = sink + sink_floats * (size_t)omp_get_thread_num();
        if (whole) {
            /* V of every tile, then M[e] = V[e] U[e] over the batch's blocks (the
             * threads share the E GEMMs), then every tile's output. */
#pragma omp for schedule(dynamic, 1)
            for (ptrdiff_t i = 0; i < plan.count; i++)
                tile_input(v + first_block(&plan, i) * C, vs, x, zeros, &plan, C, i);
#pragma omp for schedule(static)
            for (int e = 0; e < E; e++)
                if (cv_gemm_packed(T, K, C, v + e * vs, C, 1, u + e * us, rsb, csb, 0,
                                   m + e * ms, K))
                    cv_gemm(T, K, C, 1.0f, v + e * vs, C, 1, u + e * us, rsb, csb, 0.0f,
                            m + e * ms, K, 1);
#pragma omp for schedule(dynamic, 1)
            for (ptrdiff_t i = 0; i < plan.count; i++)
                tile_output(out, my_sink, m + first_block(&plan, i) * K, ms, &plan, K, i,
                            add, epilogue);
        } else {
#pragma omp for schedule(dynamic, 1)
            for (ptrdiff_t i = 0; i < plan.count; i++) {
                tile_input(v, vs, x, zeros, &plan, C, i);
                for (int e = 0; e < E; e++)
                    cv_gemm_tile(tile_size(&plan, i), K, C, v + e * vs, C, 1, u + e * us, K,
                                 0, m + e * ms, K);
                tile_output(out, my_sink, m, ms, &plan, K, i, add, epilogue);
            }
        }
    }
    return CV_OK;
}

/* ---- weight gradient ----------------------------------------------------------------- */

/* Z (e x blocks x k) of tile i's output gradient, in the order of its blocks. */
static void tile_gradient(float *z, ptrdiff_t es, const float *dout, const float *zeros,
                          const wino_plan *t, ptrdiff_t k, ptrdiff_t i)
{
    const ptrdiff_t first = first_block(t, i), blocks = tile_size(t, i);
    for (ptrdiff_t blk = 0; blk < blocks; blk++) {
        ptrdiff_t at[16] = {0};
        const float *g[16];
        block_outputs(at, t, k, first + blk);
        for (int j = 0; j < t->m * t->m; j++)
            g[j] = at[j] < 0 ? zeros : dout + at[j];
        if (t->m == 4)
            gradient_transform_4(z + blk * k, es, g, k);
        else
            gradient_transform_2(z + blk * k, es, g, k);
    }
}

cv_status winograd_weight_gradient(float *dweight, const float *dout, const float *x,
                                   const conv_shape *sh, conv_workspace *ws)
{
    const ptrdiff_t C = sh->c, K = sh->k;
    const wino_plan plan = plan_blocks(sh);
    const int threads = layer_threads();
    const int used = plan.count >= threads ? threads : 1;
    const int whole = whole_batch(&plan, C, K);
    const ptrdiff_t T = whole ? batch_blocks(&plan) : plan.max_blocks;
    const ptrdiff_t ds = matrix_stride(K, C), vs = matrix_stride(T, C),
                    zs = matrix_stride(T, K);
    const int E = plan.e;
    const size_t per_copy = (size_t)(E * (vs + zs + ds));
    const int copies = whole ? 1 : used; /* of V, Z and D: shared, or one per thread */
    const size_t zero_floats = round16((size_t)(C > K ? C : K));
    if (cv_reserve((void **)&ws->data, &ws->cap, zero_floats + per_copy * (size_t)copies,
                   sizeof(float)))
        return cv_fail(CV_ERR_MEMORY,
                       "out of memory for the Winograd weight gradient (%d x %zu floats)",
                       copies, per_copy);
    float *zeros = ws->data, *scratch = zeros + zero_floats;
    memset(zeros, 0, zero_floats * sizeof(float));

#pragma omp parallel num_threads(used)
    {
        const int th = omp_get_thread_num(), nt = omp_get_num_threads();
        float *v = scratch + (whole ? 0 : per_copy * (size_t)th);
        float *z = v + E * vs;
        float *d = z + E * zs;
        if (whole) {
            /* V and Z of every tile, then D[e] (K x C) = Z[e]^T V[e] over the batch's
             * blocks, one GEMM each (the threads share the E). */
#pragma omp for schedule(dynamic, 1)
            for (ptrdiff_t i = 0; i < plan.count; i++) {
                const ptrdiff_t first = first_block(&plan, i);
                tile_input(v + first * C, vs, x, zeros, &plan, C, i);
                tile_gradient(z + first * K, zs, dout, zeros, &plan, K, i);
            }
#pragma omp for schedule(static)
            for (int e = 0; e < E; e++)
                cv_gemm_tile(K, C, T, z + e * zs, 1, K, v + e * vs, C, 0, d + e * ds, C);
        } else {
            /* Contiguous runs of tiles per thread: the sums' order is fixed for a
             * thread count. The first tile's GEMMs write D, the others add. */
            ptrdiff_t i0 = th * plan.count / nt, i1 = (th + 1) * plan.count / nt;
            if (i0 == i1)
                memset(d, 0, (size_t)(E * ds) * sizeof(float));
            for (ptrdiff_t i = i0; i < i1; i++) {
                tile_input(v, vs, x, zeros, &plan, C, i);
                tile_gradient(z, zs, dout, zeros, &plan, K, i);
                /* D[e] (K x C) += Z[e]^T (K x blocks) @ V[e] (blocks x C) */
                for (int e = 0; e < E; e++)
                    cv_gemm_tile(K, C, tile_size(&plan, i), z + e * zs, 1, K, v + e * vs, C,
                                 i != i0, d + e * ds, C);
            }
        }
    }
    /* Sum the copies of D into the first, then dW += G^T D G. */
    float *d0 = scratch + E * (vs + zs);
    const ptrdiff_t count = E * ds;
    for (int t = 1; t < copies; t++) {
        const float *dt = d0 + per_copy * (size_t)t;
#pragma omp parallel for num_threads(threads) schedule(static) if (count > 65536)
        for (ptrdiff_t j = 0; j < count; j++)
            d0[j] += dt[j];
    }
#pragma omp parallel for num_threads(threads) schedule(static) if (K * C > 16384)
    for (ptrdiff_t k = 0; k < K; k++) {
        if (plan.m == 4)
            filter_gradient_4(dweight + k * 9 * C, C, d0 + k * C, ds, C);
        else
            filter_gradient_2(dweight + k * 9 * C, C, d0 + k * C, ds, C);
    }
    return CV_OK;
}
