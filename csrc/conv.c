/* conv.c - 2-D convolution over NHWC activations, on GEMMs.
 *
 * Forward. Output rows (one per output pixel, n*p*q of them) are cut into tiles; each
 * tile is one GEMM  out[rows x k] = cols[rows x r*s*c] @ weight^T  where cols is the
 * input itself for a 1x1 stride-1 convolution (NHWC makes it a matrix already) and a
 * per-thread im2col buffer otherwise, sized to stay in cache. Tiles run in an OpenMP
 * loop with one thread each: the GEMMs of a convolution layer are too small for BLIS
 * to split well on its own, and the im2col of one tile overlaps the GEMM of another.
 * A tile's GEMM is convirt's small-GEMM kernel (cv_tiles_b): on weight_t in place where
 * the weight is at most 256 x 256, else on the weight packed once for all tiles; BLIS
 * where the kernel set has no such kernel. An epilogue runs on each
 * tile while it is in cache (batch norm, ReLU, residual add, or batch statistics).
 * A few small images (fewer rows than filters, and fewer tiles than threads or at most
 * FEW_ROWS_MAX rows) run one GEMM the other way round instead, the weight read once in
 * place by all the threads (cv_gemm_few_rows), with the same sums.
 *
 * Tiles: an image with at least T output rows (T from the layer's shape) is split
 * into equal parts; smaller images are grouped whole, a few per tile, so that late
 * layers (7 x 7 outputs) still get GEMMs with a few hundred rows.
 *
 * Backward. The weight gradient sums a GEMM per tile (dW = dY^T cols, or its
 * transpose when that shape suits BLIS better) into per-thread buffers, over groups
 * of tiles that own whole images, so that the col2im scatter of one thread never
 * touches another's rows. The input gradient of a stride-1 convolution is itself a
 * convolution of dY with the flipped weights (a GEMM of the forward's shape, written
 * in place); other strides scatter dY W through col2im.
 */
#include <omp.h>

#include "core.h"
#include "layers.h"

/* Tile sizes. BLIS 0.9 runs a GEMM through its packed ("native") kernels only when
 * m >= 512, n >= 200 and k >= 240 (its zen3 thresholds for sgemm; other sub-
 * configurations differ a little, which costs speed, never correctness), and otherwise
 * through the unpacked "sup" kernels, which read A and B in place. So:
 *  - layers with k >= 200 outputs and r*s*c >= 240 get tiles of at least 512 rows, so
 *    that their GEMMs take the packed path (large weights are packed once per tile);
 *  - narrower layers stay on the sup path whatever m is: there the im2col tile is sized
 *    to stay in L2 (512 KiB), between 128 and 1024 rows. */
#define TILE_FLOATS (128 * 1024)
#define TILE_ROWS_MIN 128
#define TILE_ROWS_MAX 1024
#define PACKED_ROWS_MIN 512
#define PACKED_MIN_N 200
#define PACKED_MIN_K 240
#define DIRECT_TILE_ROWS 512

cv_status conv_shape_init(conv_shape *shape, ptrdiff_t n, ptrdiff_t h, ptrdiff_t w,
                          ptrdiff_t c, ptrdiff_t k, ptrdiff_t r, ptrdiff_t s,
                          ptrdiff_t stride, ptrdiff_t pad)
{
    if (n < 1 || h < 1 || w < 1 || c < 1 || k < 1 || r < 1 || s < 1 || stride < 1 ||
        pad < 0)
        return cv_fail(
            CV_ERR_VALUE,
            "convolution sizes must be >= 1 (padding >= 0): input (%td, %td, %td, "
            "%td), %td filters %td x %td, stride %td, padding %td",
            n, h, w, c, k, r, s, stride, pad);
    if (h + 2 * pad < r || w + 2 * pad < s)
        return cv_fail(CV_ERR_VALUE,
                       "a %td x %td window does not fit a %td x %td input with padding %td",
                       r, s, h, w, pad);
    shape->n = n;
    shape->h = h;
    shape->w = w;
    shape->c = c;
    shape->k = k;
    shape->r = r;
    shape->s = s;
    shape->stride = stride;
    shape->pad = pad;
    shape->p = window_out(h, r, stride, pad);
    shape->q = window_out(w, s, stride, pad);
    return CV_OK;
}

/* ---- inputs ------------------------------------------------------------------------ */

void conv_input_tensor(conv_input *in, const float *data)
{
    in->data = data;
    in->pixels = NULL;
    in->is_uint8 = 0;
}

cv_status conv_input_pixels(conv_input *in, const void *pixels, int is_uint8,
                            const ptrdiff_t stride[4], ptrdiff_t c, const float *mean,
                            const float *std)
{
    if (c < 1 || c > CONV_MAX_PIXEL_CHANNELS)
        return cv_fail(CV_ERR_VALUE, "images must have 1..%d channels, got %td",
                       CONV_MAX_PIXEL_CHANNELS, c);
    in->data = NULL;
    in->pixels = pixels;
    in->is_uint8 = is_uint8;
    for (int i = 0; i < 4; i++)
        in->stride[i] = stride[i];
    const float pixel_scale = is_uint8 ? 1.0f / 255.0f : 1.0f;
    for (ptrdiff_t ch = 0; ch < c; ch++) {
        if (!(std[ch] > 0.0f) || !isfinite(std[ch]) || !isfinite(mean[ch]))
            return cv_fail(CV_ERR_VALUE,
                           "normalisation of channel %td: mean %g, std %g "
                           "(std must be > 0, both finite)",
                           ch, mean[ch], std[ch]);
        in->mul[ch] = pixel_scale / std[ch];
        in->add[ch] = -mean[ch] / std[ch];
        if (is_uint8)
            for (int v = 0; v < 256;
                 v++) /* the same arithmetic as (x / 255 - mean) / std */
                in->lut[ch][v] = ((float)v * pixel_scale - mean[ch]) / std[ch];
    }
    return CV_OK;
}

/* The normalised value of pixel (n, h, w, ch). */
static inline float pixel_value(const conv_input *in, ptrdiff_t n, ptrdiff_t h, ptrdiff_t w,
                                ptrdiff_t ch)
{
    ptrdiff_t at =
        n * in->stride[0] + h * in->stride[1] + w * in->stride[2] + ch * in->stride[3];
    if (in->is_uint8)
        return in->lut[ch][((const uint8_t *)in->pixels)[at]];
    return ((const float *)in->pixels)[at] * in->mul[ch] + in->add[ch];
}

/* ---- tiles --------------------------------------------------------------------------- */

typedef struct {
    ptrdiff_t pq;       /* output rows per image */
    ptrdiff_t parts;    /* tiles per image when images are split, else 0 */
    ptrdiff_t groups;   /* groups of whole images (when parts == 0): one tile each */
    ptrdiff_t count;    /* tiles */
    ptrdiff_t rows_max; /* rows of the largest tile */
    ptrdiff_t n;
} tile_plan;

static int is_direct(const conv_input *in, const conv_shape *sh)
{
    return in->data && sh->r == 1 && sh->s == 1 && sh->stride == 1 && sh->pad == 0;
}

static int packed(const conv_shape *sh);

static ptrdiff_t target_rows(const conv_shape *sh, int direct)
{
    const ptrdiff_t rsc = sh->r * sh->s * sh->c;
    if (packed(sh))
        return PACKED_ROWS_MIN;
    if (direct)
        return DIRECT_TILE_ROWS;
    ptrdiff_t t = TILE_FLOATS / rsc;
    return t < TILE_ROWS_MIN ? TILE_ROWS_MIN : t > TILE_ROWS_MAX ? TILE_ROWS_MAX : t;
}

static int packed(const conv_shape *sh)
{
    return sh->k >= PACKED_MIN_N && sh->r * sh->s * sh->c >= PACKED_MIN_K;
}

/* Tiles of about `target` rows: at most target for the unpacked path (cache), at least
 * target for the packed one (BLIS's threshold), when the batch has that many rows.
 * round_to: make the number of groups a multiple of it (backward: threads), so that a
 * static split of groups over threads is even. */
static tile_plan plan_tiles(const conv_shape *sh, int direct, ptrdiff_t round_to)
{
    tile_plan t;
    t.n = sh->n;
    t.pq = sh->p * sh->q;
    const ptrdiff_t target = target_rows(sh, direct);
    const int at_least = packed(sh);
    if (t.pq >= target) {
        t.parts = at_least ? t.pq / target : (t.pq + target - 1) / target;
        t.groups = sh->n;
        t.count = sh->n * t.parts;
        t.rows_max = (t.pq + t.parts - 1) / t.parts;
    } else {
        ptrdiff_t rows = sh->n * t.pq;
        ptrdiff_t g = at_least ? rows / target : (rows + target - 1) / target;
        if (round_to > 1 && g >= round_to)
            g = at_least ? g / round_to * round_to
                         : (g + round_to - 1) / round_to * round_to;
        else if (round_to > 1)
            g = round_to; /* fewer rows than round_to x target: round_to groups */
        g = g > sh->n ? sh->n : g < 1 ? 1 : g;
        t.parts = 0;
        t.groups = g;
        t.count = g;
        t.rows_max = ((sh->n + g - 1) / g) * t.pq;
    }
    return t;
}

/* Output rows [*row0, *row0 + *rows) of tile i. */
static void tile_rows(const tile_plan *t, ptrdiff_t i, ptrdiff_t *row0, ptrdiff_t *rows)
{
    if (t->parts) {
        ptrdiff_t n = i / t->parts, j = i % t->parts;
        ptrdiff_t a = j * t->pq / t->parts, b = (j + 1) * t->pq / t->parts;
        *row0 = n * t->pq + a;
        *rows = b - a;
    } else {
        ptrdiff_t a = i * t->n / t->groups, b = (i + 1) * t->n / t->groups;
        *row0 = a * t->pq;
        *rows = (b - a) * t->pq;
    }
}

/* Tiles [*first, *last) and images [*img0, *img1) of group g. */
static void group_range(const tile_plan *t, ptrdiff_t g, ptrdiff_t *first, ptrdiff_t *last,
                        ptrdiff_t *img0, ptrdiff_t *img1)
{
    if (t->parts) {
        *first = g * t->parts;
        *last = *first + t->parts;
        *img0 = g;
        *img1 = g + 1;
    } else {
        *first = g;
        *last = g + 1;
        *img0 = g * t->n / t->groups;
        *img1 = (g + 1) * t->n / t->groups;
    }
}

/* The forward's tiles come in an even number where there are few (2 threads share
 * them evenly); a fixed rule, so that results do not depend on the thread count. */
#define FORWARD_ROUND 2

ptrdiff_t conv2d_tile_count(const conv_input *inp, const conv_shape *shape)
{
    if (winograd_applies(inp, shape))
        return winograd_tile_count(shape);
    return plan_tiles(shape, is_direct(inp, shape), FORWARD_ROUND).count;
}

ptrdiff_t conv2d_tile_bound(const conv_input *inp, const conv_shape *shape)
{
    ptrdiff_t direct = plan_tiles(shape, is_direct(inp, shape), FORWARD_ROUND).count;
    ptrdiff_t wino = winograd_fits(inp, shape) ? winograd_tile_bound(shape) : 0;
    return direct > wino ? direct : wino;
}

/* Rows of the smallest tile of a plan. */
static ptrdiff_t min_tile_rows(const tile_plan *t)
{
    return t->parts ? t->pq / t->parts : (t->n / t->groups) * t->pq;
}

static int packed_gemm(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k);

/* The most output rows (a few small images) whose forward reads the weight in place
 * through cv_gemm_few_rows when there are tiles for every thread. */
#define FEW_ROWS_MAX 256

/* Does the forward read the weight in place through cv_gemm_few_rows, all its rows in
 * one GEMM? Fewer rows than filters, a weight too large for the tiles' kernel to read
 * in place, and fewer tiles than threads (one small image) or at most FEW_ROWS_MAX rows
 * (a few): there every tile packs and sweeps all of the weight. */
static int few_rows(const tile_plan *plan, const conv_shape *sh)
{
    const ptrdiff_t rows = sh->n * sh->p * sh->q;
    return (plan->count < cv_get_num_threads() || rows <= FEW_ROWS_MAX) && rows < sh->k &&
           !cv_gemm_tile_is_small(sh->k, sh->r * sh->s * sh->c);
}

int conv2d_wants_weight_t(const conv_input *inp, const conv_shape *shape)
{
    if (winograd_applies(inp, shape))
        return winograd_reads_weight_t(shape);
    tile_plan t = plan_tiles(shape, is_direct(inp, shape), FORWARD_ROUND);
    return !few_rows(&t, shape) &&
           !packed_gemm(min_tile_rows(&t), shape->k, shape->r * shape->s * shape->c);
}

/* ---- im2col / col2im ----------------------------------------------------------------- */

static size_t round16(size_t n)
{
    return (n + 15) / 16 * 16;
}

/* Floats of the normalised band of input rows a pixel input needs per thread. */
static size_t band_floats(const conv_input *in, const conv_shape *sh)
{
    return in->data ? 0 : round16((size_t)(sh->h * (sh->w + 2 * sh->pad) * sh->c));
}

/* Columns of output rows [idx0, idx1) of image n from a float tensor. */
static void im2col_tensor(float *col, const float *x, const conv_shape *sh, ptrdiff_t n,
                          ptrdiff_t idx0, ptrdiff_t idx1)
{
    const ptrdiff_t C = sh->c, S = sh->s, R = sh->r, H = sh->h, W = sh->w, Q = sh->q;
    const ptrdiff_t SC = S * C, RSC = R * SC;
    const float *img = x + n * H * W * C;
    for (ptrdiff_t idx = idx0; idx < idx1; idx++) {
        ptrdiff_t p = idx / Q, q = idx % Q;
        float *dst = col + (idx - idx0) * RSC;
        ptrdiff_t w0 = q * sh->stride - sh->pad;
        ptrdiff_t s_lo = w0 < 0 ? -w0 : 0, s_hi = W - w0 < S ? W - w0 : S;
        for (ptrdiff_t r = 0; r < R; r++) {
            ptrdiff_t h = p * sh->stride - sh->pad + r;
            float *d = dst + r * SC;
            if (h < 0 || h >= H || s_lo >= s_hi) {
                memset(d, 0, (size_t)SC * sizeof(float));
                continue;
            }
            if (s_lo > 0)
                memset(d, 0, (size_t)(s_lo * C) * sizeof(float));
            memcpy(d + s_lo * C, img + (h * W + w0 + s_lo) * C,
                   (size_t)((s_hi - s_lo) * C) * sizeof(float));
            if (s_hi < S)
                memset(d + s_hi * C, 0, (size_t)((S - s_hi) * C) * sizeof(float));
        }
    }
}

/* Normalise input rows [h_lo, h_hi) of image n into band, padded with `pad` zero
 * columns on each side: band row i holds input row h_lo + i. */
static void fill_band(float *band, const conv_input *in, const conv_shape *sh, ptrdiff_t n,
                      ptrdiff_t h_lo, ptrdiff_t h_hi)
{
    const ptrdiff_t C = sh->c, W = sh->w, pad = sh->pad, Wp = W + 2 * pad;
    for (ptrdiff_t h = h_lo; h < h_hi; h++) {
        float *row = band + (h - h_lo) * Wp * C;
        memset(row, 0, (size_t)(pad * C) * sizeof(float));
        memset(row + (pad + W) * C, 0, (size_t)(pad * C) * sizeof(float));
        float *d = row + pad * C;
        if (in->is_uint8) {
            const uint8_t *src =
                (const uint8_t *)in->pixels + n * in->stride[0] + h * in->stride[1];
            for (ptrdiff_t w = 0; w < W; w++)
                for (ptrdiff_t ch = 0; ch < C; ch++)
                    d[w * C + ch] =
                        in->lut[ch][src[w * in->stride[2] + ch * in->stride[3]]];
        } else {
            const float *src =
                (const float *)in->pixels + n * in->stride[0] + h * in->stride[1];
            for (ptrdiff_t w = 0; w < W; w++)
                for (ptrdiff_t ch = 0; ch < C; ch++)
                    d[w * C + ch] =
                        src[w * in->stride[2] + ch * in->stride[3]] * in->mul[ch] +
                        in->add[ch];
        }
    }
}

/* Columns of output rows [idx0, idx1) of image n from the caller's pixels, through a
 * normalised band of the input rows they need (no copy of the whole batch). */
static void im2col_pixels(float *col, float *band, const conv_input *in,
                          const conv_shape *sh, ptrdiff_t n, ptrdiff_t idx0, ptrdiff_t idx1)
{
    const ptrdiff_t C = sh->c, S = sh->s, R = sh->r, H = sh->h, Q = sh->q;
    const ptrdiff_t SC = S * C, RSC = R * SC, Wp = sh->w + 2 * sh->pad;
    ptrdiff_t p0 = idx0 / Q, p1 = (idx1 - 1) / Q;
    ptrdiff_t h_lo = p0 * sh->stride - sh->pad, h_hi = p1 * sh->stride - sh->pad + R;
    h_lo = h_lo < 0 ? 0 : h_lo;
    h_hi = h_hi > H ? H : h_hi;
    if (h_lo < h_hi)
        fill_band(band, in, sh, n, h_lo, h_hi);
    for (ptrdiff_t idx = idx0; idx < idx1; idx++) {
        ptrdiff_t p = idx / Q, q = idx % Q;
        float *dst = col + (idx - idx0) * RSC;
        for (ptrdiff_t r = 0; r < R; r++) {
            ptrdiff_t h = p * sh->stride - sh->pad + r;
            if (h < 0 || h >= H)
                memset(dst + r * SC, 0, (size_t)SC * sizeof(float));
            else
                memcpy(dst + r * SC, band + ((h - h_lo) * Wp + q * sh->stride) * C,
                       (size_t)SC * sizeof(float));
        }
    }
}

/* Columns of the output rows [row0, row0 + rows), which may span images. */
static void im2col_tile(float *col, float *band, const conv_input *in, const conv_shape *sh,
                        ptrdiff_t row0, ptrdiff_t rows)
{
    const ptrdiff_t pq = sh->p * sh->q, rsc = sh->r * sh->s * sh->c;
    for (ptrdiff_t m = row0; m < row0 + rows;) {
        ptrdiff_t n = m / pq, idx0 = m - n * pq;
        ptrdiff_t idx1 = row0 + rows - n * pq < pq ? row0 + rows - n * pq : pq;
        float *dst = col + (m - row0) * rsc;
        if (in->data)
            im2col_tensor(dst, in->data, sh, n, idx0, idx1);
        else
            im2col_pixels(dst, band, in, sh, n, idx0, idx1);
        m = n * pq + idx1;
    }
}

CV_VECTORIZE static void add_into(float *restrict dst, const float *restrict src,
                                  ptrdiff_t count)
{
    for (ptrdiff_t i = 0; i < count; i++)
        dst[i] += src[i];
}

CV_VECTORIZE static void add_scaled_into(float *restrict dst, const float *restrict src,
                                         const float *restrict scale, ptrdiff_t count)
{
    for (ptrdiff_t i = 0; i < count; i++)
        dst[i] += src[i] * scale[i];
}

/* dx (n, h, w, c) += the columns' gradient of output rows [row0, row0 + rows);
 * scale (s*c, periodic in c) multiplies each term when given (pixel gradients). */
static void col2im_tile(float *dx, const float *dcol, const float *scale,
                        const conv_shape *sh, ptrdiff_t row0, ptrdiff_t rows)
{
    const ptrdiff_t C = sh->c, S = sh->s, R = sh->r, H = sh->h, W = sh->w, Q = sh->q;
    const ptrdiff_t SC = S * C, RSC = R * SC, pq = sh->p * Q;
    for (ptrdiff_t m = row0; m < row0 + rows; m++) {
        ptrdiff_t n = m / pq, idx = m - n * pq, p = idx / Q, q = idx % Q;
        const float *src = dcol + (m - row0) * RSC;
        float *img = dx + n * H * W * C;
        ptrdiff_t w0 = q * sh->stride - sh->pad;
        ptrdiff_t s_lo = w0 < 0 ? -w0 : 0, s_hi = W - w0 < S ? W - w0 : S;
        if (s_lo >= s_hi)
            continue;
        for (ptrdiff_t r = 0; r < R; r++) {
            ptrdiff_t h = p * sh->stride - sh->pad + r;
            if (h < 0 || h >= H)
                continue;
            float *d = img + (h * W + w0 + s_lo) * C;
            const float *s = src + r * SC + s_lo * C;
            if (scale)
                add_scaled_into(d, s, scale + s_lo * C, (s_hi - s_lo) * C);
            else
                add_into(d, s, (s_hi - s_lo) * C);
        }
    }
}

/* ---- workspace ----------------------------------------------------------------------- */

void conv_workspace_free(conv_workspace *ws)
{
    free(ws->data);
    ws->data = NULL;
    ws->cap = 0;
}

static float *workspace(conv_workspace *ws, size_t floats)
{
    if (cv_reserve((void **)&ws->data, &ws->cap, floats ? floats : 1, sizeof(float)))
        return NULL;
    return ws->data;
}

/* ---- forward ------------------------------------------------------------------------- */

cv_status conv2d_forward(float *out, const conv_input *inp, const float *weight,
                         const float *weight_t, const conv_shape *shape,
                         const conv_epilogue *epilogue, conv_workspace *ws)
{
    const conv_shape *sh = shape;
    if (winograd_applies(inp, sh))
        return winograd_forward(out, inp->data, weight, weight_t, 0, sh, 0, epilogue, ws);
    const ptrdiff_t K = sh->k, RSC = sh->r * sh->s * sh->c;
    const int direct = is_direct(inp, sh);
    const tile_plan plan = plan_tiles(sh, direct, FORWARD_ROUND);
    const int threads = cv_get_num_threads();
    const size_t col_floats = direct ? 0 : round16((size_t)(plan.rows_max * RSC));
    const size_t per_thread = col_floats + band_floats(inp, sh);
    const int few = few_rows(&plan, sh);
    const ptrdiff_t M = sh->n * sh->p * sh->q;
    const size_t few_floats = few && !direct ? round16((size_t)(M * RSC)) : 0;
    const size_t floats = per_thread * (size_t)threads;
    float *scratch =
        workspace(ws, few_floats + per_thread > floats ? few_floats + per_thread : floats);
    if (!scratch)
        return cv_fail(CV_ERR_MEMORY, "out of memory for %d im2col tiles of %td x %td",
                       threads, plan.rows_max, RSC);
    /* A few rows (few_rows): one GEMM the other way round, the weight read once in place
     * by all the threads (cv_gemm_few_rows), then each tile's epilogue; the same sums as
     * the tiles on the packed weight below, which run if it declines. */
    if (few) {
        const float *a = direct ? inp->data : scratch;
        if (!direct)
            im2col_tile(scratch, scratch + few_floats, inp, sh, 0, M);
        if (!cv_gemm_few_rows(M, K, RSC, a, RSC, 1, weight, 1, RSC, 0, out, K)) {
            for (ptrdiff_t i = 0; epilogue && epilogue->run && i < plan.count; i++) {
                ptrdiff_t row0, rows;
                tile_rows(&plan, i, &row0, &rows);
                epilogue->run(epilogue->ctx, out + row0 * K, row0, rows, i);
            }
            return CV_OK;
        }
    }
    /* Fewer tiles than threads (one small image): one loop thread, and the GEMM gets them.
     */
    const int loop_threads = plan.count >= threads ? threads : 1;
    cv_tiles_b wb;
    if (weight_t)
        cv_tiles_b_init(&wb, RSC, K, weight_t, K, 1);
    else
        cv_tiles_b_init(&wb, RSC, K, weight, 1, RSC);

#pragma omp parallel num_threads(loop_threads)
    {
        float *col = scratch + per_thread * (size_t)omp_get_thread_num();
        float *band = col + col_floats;
#pragma omp for schedule(dynamic, 1)
        for (ptrdiff_t i = 0; i < plan.count; i++) {
            ptrdiff_t row0, rows;
            tile_rows(&plan, i, &row0, &rows);
            const float *a = direct ? inp->data + row0 * RSC : col;
            if (!direct)
                im2col_tile(col, band, inp, sh, row0, rows);
            cv_tiles_b_gemm(&wb, rows, a, RSC, 1, 0, out + row0 * K, K);
            if (epilogue && epilogue->run)
                epilogue->run(epilogue->ctx, out + row0 * K, row0, rows, i);
        }
    }
    return CV_OK;
}

/* ---- backward ------------------------------------------------------------------------ */

/* Does BLIS take its packed path for an m x n x k GEMM? */
static int packed_gemm(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k)
{
    return m >= PACKED_ROWS_MIN && n >= PACKED_MIN_N && k >= PACKED_MIN_K;
}

/* Is the input gradient a forward convolution of dout (stride 1, a float tensor)?
 * dX = conv(dY, W') with W'[c, r, s, k] = W[k, R-1-r, S-1-s, c] and padding R-1-pad:
 * a GEMM of the forward's shape (k = r*s*k) writing dX rows in place, instead of a
 * short GEMM and a col2im scatter. */
static int transposed_conv(const conv_input *in, const conv_shape *sh)
{
    return in->data && sh->stride == 1 && !is_direct(in, sh) && sh->pad <= sh->r - 1 &&
           sh->pad <= sh->s - 1;
}

/* The shape of that convolution: input dY (n, p, q, k), output dX (n, h, w, c). */
static conv_shape transposed_shape(const conv_shape *sh)
{
    conv_shape t = *sh;
    t.h = sh->p;
    t.w = sh->q;
    t.c = sh->k;
    t.k = sh->c;
    t.pad = sh->r - 1 - sh->pad; /* r == s in practice; the rows' padding */
    t.p = sh->h;
    t.q = sh->w;
    return t;
}

/* w_flip (r*s*k, c) row-major: the B operand of the transposed convolution. */
static void flip_weights(float *w_flip, const float *weight, const conv_shape *sh)
{
    const ptrdiff_t R = sh->r, S = sh->s, C = sh->c, K = sh->k;
#pragma omp parallel for num_threads(cv_get_num_threads())                                 \
    schedule(static) if (K * R * S * C > 65536)
    for (ptrdiff_t k = 0; k < K; k++)
        for (ptrdiff_t r = 0; r < R; r++)
            for (ptrdiff_t s = 0; s < S; s++)
                memcpy(w_flip + (((R - 1 - r) * S + (S - 1 - s)) * K + k) * C,
                       weight + ((k * R + r) * S + s) * C, (size_t)C * sizeof(float));
}

/* The whole output gradient from a prologue, into its spill buffer. */
static void spill_gradient(const conv_prologue *pro, const conv_shape *sh)
{
    const ptrdiff_t m = sh->n * sh->p * sh->q, rows = 64;
#pragma omp parallel for num_threads(cv_get_num_threads()) schedule(static)
    for (ptrdiff_t i = 0; i < m; i += rows)
        pro->run(pro->ctx, pro->spill + i * sh->k, i, m - i < rows ? m - i : rows);
}

cv_status conv2d_backward(float *dinp, float *dweight, const float *dout,
                          const conv_input *inp, const float *weight,
                          const conv_shape *shape, int add_dinp,
                          const conv_prologue *prologue, conv_workspace *ws)
{
    const conv_shape *sh = shape;
    const ptrdiff_t K = sh->k, C = sh->c, RSC = sh->r * sh->s * C;
    const ptrdiff_t image = sh->h * sh->w * C;
    if (!dinp && !dweight)
        return CV_OK;
    const int winograd = winograd_applies(inp, sh);
    const int transposed = dinp && transposed_conv(inp, sh) && sh->r == sh->s;
    if (prologue && (winograd || transposed)) {
        spill_gradient(prologue, sh); /* these paths read the gradient whole */
        dout = prologue->spill;
        prologue = NULL;
    }
    if (winograd) {
        cv_status st;
        if (dweight && (st = winograd_weight_gradient(dweight, dout, inp->data, sh, ws)))
            return st;
        const conv_shape tsh = transposed_shape(sh);
        return dinp
                   ? winograd_forward(dinp, dout, weight, NULL, 1, &tsh, add_dinp, NULL, ws)
                   : CV_OK;
    }
    const int direct = is_direct(inp, sh);
    const int threads = cv_get_num_threads();
    const conv_shape tsh = transposed_shape(sh);
    const tile_plan plan = plan_tiles(sh, direct, threads);
    const tile_plan tplan = plan_tiles(&tsh, 0, FORWARD_ROUND);
    /* Input gradient in the group loop (direct GEMM or col2im) unless transposed. */
    const int dx_in_groups = dinp && !transposed;
    const int need_cols = dweight && !direct;
    const int need_dcols = dx_in_groups && !direct;
    const size_t tile_floats = round16((size_t)(plan.rows_max * RSC));
    const size_t ttile_floats =
        transposed ? round16((size_t)(tplan.rows_max * tsh.r * tsh.s * tsh.c)) : 0;
    const size_t acc_floats = dweight ? round16((size_t)(K * RSC)) : 0;
    /* The weight gradient as dW^T = cols^T dY (m = r*s*c, n = k) when that shape reaches
     * BLIS's packed kernels and dW = dY^T cols (m = k) does not: every thread then sums
     * into a private (r*s*c, k) buffer, added transposed at the end. */
    const ptrdiff_t tile_rows_min = min_tile_rows(&plan);
    const int dw_t =
        dweight &&
        ((!packed_gemm(K, RSC, tile_rows_min) && packed_gemm(RSC, K, tile_rows_min)) ||
         (!cv_gemm_tile_is_small(RSC, plan.rows_max) &&
          cv_gemm_tile_is_small(K, plan.rows_max)));
    const size_t band = need_cols ? band_floats(inp, sh) : 0;
    const size_t dy_floats = prologue ? round16((size_t)(plan.rows_max * K)) : 0;
    /* per thread: [cols][dcols][band][dy][private weight gradient] */
    const size_t acc_at =
        (need_cols ? tile_floats : 0) + (need_dcols ? tile_floats : 0) + band + dy_floats;
    size_t per_thread = acc_at + acc_floats;
    if (ttile_floats > per_thread)
        per_thread = ttile_floats; /* the transposed pass reuses the same scratch */
    const size_t flip_floats = transposed ? round16((size_t)(K * RSC)) : 0;
    float *scratch = workspace(ws, per_thread * (size_t)threads + flip_floats);
    if (!scratch)
        return cv_fail(CV_ERR_MEMORY,
                       "out of memory for the convolution's backward (%d x "
                       "%zu floats)",
                       threads, per_thread);
    float *w_flip = scratch + per_thread * (size_t)threads;
    /* d value / d pixel, repeated over the window's columns (s*c). */
    float scale_row[64 * CONV_MAX_PIXEL_CHANNELS];
    const float *scale = NULL;
    if (!inp->data && dinp) {
        if (sh->s * C > (ptrdiff_t)(sizeof scale_row / sizeof *scale_row))
            return cv_fail(CV_ERR_VALUE, "a %td-wide window on images is not supported",
                           sh->s);
        for (ptrdiff_t i = 0; i < sh->s * C; i++)
            scale_row[i] = inp->mul[i % C];
        scale = scale_row;
    }
    int used = 1;
    cv_tiles_b wb; /* the input gradient's B: the weights (k, r*s*c) */
    if (dx_in_groups)
        cv_tiles_b_init(&wb, K, RSC, weight, RSC, 1);

    if (dweight || dx_in_groups) {
#pragma omp parallel num_threads(plan.groups >= threads ? threads : 1)
        {
            const int t = omp_get_thread_num(), nt = omp_get_num_threads();
            float *col = scratch + per_thread * (size_t)t;
            float *dcol = col + (need_cols ? tile_floats : 0);
            float *bnd = dcol + (need_dcols ? tile_floats : 0);
            float *dyt = bnd + band;
            float *acc = col + acc_at;
            /* Thread 0 adds straight into dweight; the others into private sums. */
            float *dw = t == 0 && !dw_t ? dweight : acc;
            if (t == 0)
                used = nt;
            if (dweight && dw != dweight)
                memset(dw, 0, (size_t)(K * RSC) * sizeof(float));
            ptrdiff_t g0 = t * plan.groups / nt, g1 = (t + 1) * plan.groups / nt;
            for (ptrdiff_t g = g0; g < g1; g++) {
                ptrdiff_t first, last, img0, img1;
                group_range(&plan, g, &first, &last, &img0, &img1);
                if (dx_in_groups && !direct && !add_dinp)
                    memset(dinp + img0 * image, 0,
                           (size_t)((img1 - img0) * image) * sizeof(float));
                for (ptrdiff_t i = first; i < last; i++) {
                    ptrdiff_t row0, rows;
                    tile_rows(&plan, i, &row0, &rows);
                    const float *dy = prologue ? dyt : dout + row0 * K;
                    if (prologue)
                        prologue->run(prologue->ctx, dyt, row0, rows);
                    if (dweight) {
                        const float *a = direct ? inp->data + row0 * RSC : col;
                        if (!direct)
                            im2col_tile(col, bnd, inp, sh, row0, rows);
                        if (dw_t)
                            cv_gemm_tile(RSC, K, rows, a, 1, RSC, dy, K, 1, dw, K);
                        else
                            cv_gemm_tile(K, RSC, rows, dy, 1, K, a, RSC, 1, dw, RSC);
                    }
                    if (dx_in_groups && direct) {
                        cv_tiles_b_gemm(&wb, rows, dy, K, 1, add_dinp, dinp + row0 * C, C);
                    } else if (dx_in_groups) {
                        cv_tiles_b_gemm(&wb, rows, dy, K, 1, 0, dcol, RSC);
                        col2im_tile(dinp, dcol, scale, sh, row0, rows);
                    }
                }
            }
        }
    }
    if (dw_t) {
        for (int t = 0; t < used; t++)
            cv_transpose(dweight, RSC, scratch + per_thread * (size_t)t + acc_at, K, RSC, K,
                         1);
    } else if (dweight && used > 1) {
        const ptrdiff_t count = K * RSC;
#pragma omp parallel for num_threads(threads) schedule(static)
        for (ptrdiff_t i0 = 0; i0 < count; i0 += 4096) {
            ptrdiff_t len = count - i0 < 4096 ? count - i0 : 4096;
            for (int t = 1; t < used; t++) {
                const float *acc = scratch + per_thread * (size_t)t + acc_at;
                add_into(dweight + i0, acc + i0, len);
            }
        }
    }
    if (transposed) {
        const ptrdiff_t RSK = tsh.r * tsh.s * tsh.c;
        flip_weights(w_flip, weight, sh);
        cv_tiles_b_init(&wb, RSK, C, w_flip, C, 1);
#pragma omp parallel num_threads(tplan.count >= threads ? threads : 1)
        {
            float *col = scratch + per_thread * (size_t)omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
            for (ptrdiff_t i = 0; i < tplan.count; i++) {
                ptrdiff_t row0, rows;
                tile_rows(&tplan, i, &row0, &rows);
                im2col_tile(col, NULL, &(conv_input){.data = dout}, &tsh, row0, rows);
                cv_tiles_b_gemm(&wb, rows, col, RSK, 1, add_dinp, dinp + row0 * C, C);
            }
        }
    }
    return CV_OK;
}

/* ---- the naive reference ------------------------------------------------------------- */

static float input_value(const conv_input *in, const conv_shape *sh, ptrdiff_t n,
                         ptrdiff_t h, ptrdiff_t w, ptrdiff_t ch)
{
    if (in->data)
        return in->data[((n * sh->h + h) * sh->w + w) * sh->c + ch];
    return pixel_value(in, n, h, w, ch);
}

void conv2d_forward_reference(float *out, const conv_input *inp, const float *weight,
                              const conv_shape *sh)
{
    for (ptrdiff_t n = 0; n < sh->n; n++)
        for (ptrdiff_t p = 0; p < sh->p; p++)
            for (ptrdiff_t q = 0; q < sh->q; q++)
                for (ptrdiff_t k = 0; k < sh->k; k++) {
                    double sum = 0.0;
                    for (ptrdiff_t r = 0; r < sh->r; r++)
                        for (ptrdiff_t s = 0; s < sh->s; s++) {
                            ptrdiff_t h = p * sh->stride - sh->pad + r;
                            ptrdiff_t w = q * sh->stride - sh->pad + s;
                            if (h < 0 || h >= sh->h || w < 0 || w >= sh->w)
                                continue;
                            for (ptrdiff_t c = 0; c < sh->c; c++)
                                sum += (double)input_value(inp, sh, n, h, w, c) *
                                       weight[((k * sh->r + r) * sh->s + s) * sh->c + c];
                        }
                    out[((n * sh->p + p) * sh->q + q) * sh->k + k] = (float)sum;
                }
}

void conv2d_backward_reference(float *dinp, float *dweight, const float *dout,
                               const conv_input *inp, const float *weight,
                               const conv_shape *sh)
{
    const ptrdiff_t R = sh->r, S = sh->s, C = sh->c, K = sh->k;
    if (dweight)
        for (ptrdiff_t k = 0; k < K; k++)
            for (ptrdiff_t r = 0; r < R; r++)
                for (ptrdiff_t s = 0; s < S; s++)
                    for (ptrdiff_t c = 0; c < C; c++) {
                        double sum = 0.0;
                        for (ptrdiff_t n = 0; n < sh->n; n++)
                            for (ptrdiff_t p = 0; p < sh->p; p++)
                                for (ptrdiff_t q = 0; q < sh->q; q++) {
                                    ptrdiff_t h = p * sh->stride - sh->pad + r;
                                    ptrdiff_t w = q * sh->stride - sh->pad + s;
                                    if (h < 0 || h >= sh->h || w < 0 || w >= sh->w)
                                        continue;
                                    sum += (double)
                                               dout[((n * sh->p + p) * sh->q + q) * K + k] *
                                           input_value(inp, sh, n, h, w, c);
                                }
                        dweight[((k * R + r) * S + s) * C + c] += (float)sum;
                    }
    if (dinp)
        for (ptrdiff_t n = 0; n < sh->n; n++)
            for (ptrdiff_t h = 0; h < sh->h; h++)
                for (ptrdiff_t w = 0; w < sh->w; w++)
                    for (ptrdiff_t c = 0; c < C; c++) {
                        double sum = 0.0;
                        for (ptrdiff_t r = 0; r < R; r++)
                            for (ptrdiff_t s = 0; s < S; s++) {
                                ptrdiff_t ph = h + sh->pad - r, qw = w + sh->pad - s;
                                if (ph < 0 || qw < 0 || ph % sh->stride || qw % sh->stride)
                                    continue;
                                ptrdiff_t p = ph / sh->stride, q = qw / sh->stride;
                                if (p >= sh->p || q >= sh->q)
                                    continue;
                                for (ptrdiff_t k = 0; k < K; k++)
                                    sum += (double)
                                               dout[((n * sh->p + p) * sh->q + q) * K + k] *
                                           weight[((k * R + r) * S + s) * C + c];
                            }
                        if (!inp->data)
                            sum *= inp->mul[c];
                        dinp[((n * sh->h + h) * sh->w + w) * C + c] += (float)sum;
                    }
}
