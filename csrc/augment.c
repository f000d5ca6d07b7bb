/* augment.c - the paper's random image transforms (see augment.h for the maths). */
#include <float.h>
#include <omp.h>

#include "augment.h"
#include "core.h"
#include "random.h"

/* ---- sampling ------------------------------------------------------------------- */

/* Which uniform draw of an image feeds which parameter: index = image * SLOTS + slot.
 * Fixed slots keep each parameter's draw independent of which transforms are on. */
enum {
    SLOT_CROP_AREA = 0, /* attempt k: area at 2k, log-ratio at 2k + 1 */
    SLOT_CROP_X = 20,
    SLOT_CROP_Y,
    SLOT_FLIP,
    SLOT_ANGLE,
    SLOT_TRANSLATE_X,
    SLOT_TRANSLATE_Y,
    SLOT_SCALE,
    SLOT_BRIGHTNESS,
    SLOT_CONTRAST,
    SLOT_SIGMA,
    SLOTS = 64
};
#define CROP_ATTEMPTS 10
#define AUGMENT_TAG 0x6175676d656e7400ULL /* "augment": keeps these draws apart */

static double draw(uint64_t seed, uint64_t step, uint64_t image, int slot)
{
    return cv_random_uniform(seed ^ AUGMENT_TAG, step, image * SLOTS + (uint64_t)slot);
}

static double uniform_in(const double range[2], double u)
{
    return range[0] + u * (range[1] - range[0]);
}

static int bad_interval(const double r[2], double lo, double hi, int lo_open)
{
    if (!isfinite(r[0]) || !isfinite(r[1]) || r[0] > r[1])
        return 1;
    if (lo_open ? !(r[0] > lo) : !(r[0] >= lo))
        return 1;
    return !(r[1] <= hi);
}

cv_status cv_augment_check_ranges(const cv_augment_ranges *r)
{
    if (r->crop && bad_interval(r->crop_scale, 0.0, 1.0, 1))
        return cv_fail(CV_ERR_VALUE,
                       "crop_scale must be (lo, hi) with 0 < lo <= hi <= 1, "
                       "got (%g, %g)",
                       r->crop_scale[0], r->crop_scale[1]);
    if (r->crop && bad_interval(r->crop_ratio, 0.0, INFINITY, 1))
        return cv_fail(CV_ERR_VALUE,
                       "crop_ratio must be (lo, hi) with 0 < lo <= hi, "
                       "got (%g, %g)",
                       r->crop_ratio[0], r->crop_ratio[1]);
    if (!(r->flip_p >= 0.0 && r->flip_p <= 1.0))
        return cv_fail(CV_ERR_VALUE, "flip must be a probability in [0, 1], got %g",
                       r->flip_p);
    if (r->rotate && bad_interval(r->degrees, -180.0, 180.0, 0))
        return cv_fail(CV_ERR_VALUE,
                       "degrees must be (lo, hi) with -180 <= lo <= hi <= "
                       "180, got (%g, %g)",
                       r->degrees[0], r->degrees[1]);
    if (r->translate && (!(r->translate_max[0] >= 0.0 && r->translate_max[0] <= 1.0) ||
                         !(r->translate_max[1] >= 0.0 && r->translate_max[1] <= 1.0)))
        return cv_fail(CV_ERR_VALUE,
                       "translate must be fractions of the size in [0, 1], "
                       "got (%g, %g)",
                       r->translate_max[0], r->translate_max[1]);
    if (r->scale && bad_interval(r->scale_range, 0.0, INFINITY, 1))
        return cv_fail(CV_ERR_VALUE,
                       "scale must be (lo, hi) with 0 < lo <= hi, got "
                       "(%g, %g)",
                       r->scale_range[0], r->scale_range[1]);
    if (r->brightness && bad_interval(r->brightness_range, 0.0, CV_AUGMENT_MAX_FACTOR, 0))
        return cv_fail(CV_ERR_VALUE,
                       "brightness must be (lo, hi) with 0 <= lo <= hi <= %g (finite in "
                       "float32), got (%g, %g)",
                       CV_AUGMENT_MAX_FACTOR, r->brightness_range[0],
                       r->brightness_range[1]);
    if (r->contrast && bad_interval(r->contrast_range, 0.0, CV_AUGMENT_MAX_FACTOR, 0))
        return cv_fail(CV_ERR_VALUE,
                       "contrast must be (lo, hi) with 0 <= lo <= hi <= %g (finite in "
                       "float32), got (%g, %g)",
                       CV_AUGMENT_MAX_FACTOR, r->contrast_range[0], r->contrast_range[1]);
    if (r->blur && bad_interval(r->sigma_range, 0.0, CV_AUGMENT_MAX_SIGMA, 1))
        return cv_fail(CV_ERR_VALUE,
                       "blur_sigma must be (lo, hi) with 0 < lo <= hi <= "
                       "%g, got (%g, %g)",
                       CV_AUGMENT_MAX_SIGMA, r->sigma_range[0], r->sigma_range[1]);
    return CV_OK;
}

/* RandomResizedCrop in units of the image's width and height: box = (x, y, w, h). */
static void sample_crop(double box[4], const cv_augment_ranges *r, uint64_t seed,
                        uint64_t step, uint64_t image)
{
    const double log_lo = log(r->crop_ratio[0]), log_hi = log(r->crop_ratio[1]);
    for (int attempt = 0; attempt < CROP_ATTEMPTS; attempt++) {
        double area = uniform_in(r->crop_scale, draw(seed, step, image, 2 * attempt));
        double ratio =
            exp(log_lo + draw(seed, step, image, 2 * attempt + 1) * (log_hi - log_lo));
        double w = sqrt(area * ratio), h = sqrt(area / ratio);
        if (w <= 1.0 && h <= 1.0) {
            box[0] = draw(seed, step, image, SLOT_CROP_X) * (1.0 - w);
            box[1] = draw(seed, step, image, SLOT_CROP_Y) * (1.0 - h);
            box[2] = w;
            box[3] = h;
            return;
        }
    }
    /* torchvision's fallback: the whole image, its ratio clamped into the range. */
    double w = 1.0, h = 1.0;
    if (1.0 < r->crop_ratio[0])
        h = 1.0 / r->crop_ratio[0];
    else if (1.0 > r->crop_ratio[1])
        w = r->crop_ratio[1];
    box[0] = 0.5 * (1.0 - w);
    box[1] = 0.5 * (1.0 - h);
    box[2] = w;
    box[3] = h;
}

void cv_augment_sample(cv_augment_params *params, ptrdiff_t n, const cv_augment_ranges *r,
                       uint64_t seed, uint64_t step, uint64_t first_index)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        uint64_t image = first_index + (uint64_t)i;
        cv_augment_params *p = &params[i];
        memset(p, 0, sizeof *p);
        p->crop[2] = p->crop[3] = 1.0;
        p->scale = p->brightness = p->contrast = 1.0;
        if (r->crop)
            sample_crop(p->crop, r, seed, step, image);
        p->flip = r->flip_p > 0.0 && draw(seed, step, image, SLOT_FLIP) < r->flip_p;
        if (r->rotate)
            p->angle = uniform_in(r->degrees, draw(seed, step, image, SLOT_ANGLE));
        if (r->translate) {
            p->translate[0] = r->translate_max[0] *
                              (2.0 * draw(seed, step, image, SLOT_TRANSLATE_X) - 1.0);
            p->translate[1] = r->translate_max[1] *
                              (2.0 * draw(seed, step, image, SLOT_TRANSLATE_Y) - 1.0);
        }
        if (r->scale)
            p->scale = uniform_in(r->scale_range, draw(seed, step, image, SLOT_SCALE));
        if (r->brightness)
            p->brightness =
                uniform_in(r->brightness_range, draw(seed, step, image, SLOT_BRIGHTNESS));
        if (r->contrast)
            p->contrast =
                uniform_in(r->contrast_range, draw(seed, step, image, SLOT_CONTRAST));
        if (r->blur)
            p->sigma = uniform_in(r->sigma_range, draw(seed, step, image, SLOT_SIGMA));
    }
}

cv_status cv_augment_check_params(const cv_augment_params *params, ptrdiff_t n)
{
    const double slack = 1e-9; /* rounding in x + w */
    for (ptrdiff_t i = 0; i < n; i++) {
        const cv_augment_params *p = &params[i];
        const double *c = p->crop;
        int finite = 1;
        for (int k = 0; k < 4; k++)
            finite &= isfinite(c[k]);
        finite &= isfinite(p->angle) && isfinite(p->translate[0]) &&
                  isfinite(p->translate[1]) && isfinite(p->scale) &&
                  isfinite(p->brightness) && isfinite(p->contrast) && isfinite(p->sigma);
        if (!finite)
            return cv_fail(CV_ERR_VALUE, "parameters of image %td are not all finite", i);
        if (!(c[0] >= 0.0 && c[1] >= 0.0 && c[2] > 0.0 && c[3] > 0.0 &&
              c[0] + c[2] <= 1.0 + slack && c[1] + c[3] <= 1.0 + slack))
            return cv_fail(CV_ERR_VALUE,
                           "crop of image %td must be (x, y, w, h) fractions with x, "
                           "y >= 0, w, h > 0, x + w <= 1 and y + h <= 1, got (%g, %g, %g, "
                           "%g)",
                           i, c[0], c[1], c[2], c[3]);
        if (!(p->scale > 0.0))
            return cv_fail(CV_ERR_VALUE, "scale of image %td must be > 0, got %g", i,
                           p->scale);
        if (!(p->brightness >= 0.0 && p->brightness <= CV_AUGMENT_MAX_FACTOR) ||
            !(p->contrast >= 0.0 && p->contrast <= CV_AUGMENT_MAX_FACTOR))
            return cv_fail(CV_ERR_VALUE,
                           "brightness and contrast of image %td must be in [0, %g] "
                           "(finite in float32), got %g, %g",
                           i, CV_AUGMENT_MAX_FACTOR, p->brightness, p->contrast);
        if (!(p->sigma >= 0.0 && p->sigma <= CV_AUGMENT_MAX_SIGMA))
            return cv_fail(CV_ERR_VALUE, "sigma of image %td must be in [0, %g], got %g", i,
                           CV_AUGMENT_MAX_SIGMA, p->sigma);
    }
    return CV_OK;
}

/* ---- one image ------------------------------------------------------------------ */

static inline float clamp01(float x)
{
    return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x);
}

/* Share of a bilinear footprint at grid coordinate a inside the grid 0..n-1. */
static inline double inside_weight(double a, double n)
{
    if (a >= 0.0 && a <= n - 1.0)
        return 1.0;
    if (a > -1.0 && a < 0.0)
        return 1.0 + a;
    if (a > n - 1.0 && a < n)
        return n - a;
    return 0.0;
}

/* Crop + flip + affine + resize in one bilinear pass, then brightness; out is
 * (S, S, C) contiguous. Returns the sum over pixels of the grey value (for the
 * contrast's mean). Inlined for each channel count, so that C is a constant. */
static inline __attribute__((always_inline)) double
resample_channels(float *out, const cv_image *img, const ptrdiff_t C, ptrdiff_t S,
                  const cv_augment_params *p, float fill)
{
    const double half = 0.5 * (double)S;
    const double theta = p->angle * (3.14159265358979323846 / 180.0);
    const double k = 1.0 / p->scale, cs = cos(theta) * k, sn = sin(theta) * k;
    const double flip = p->flip ? -1.0 : 1.0;
    const double tx = p->translate[0] * (double)S, ty = p->translate[1] * (double)S;
    /* u = M (j, i) + u0: crop-image coordinates of output pixel (row i, col j). */
    const double mxj = flip * cs, mxi = -flip * sn, myj = sn, myi = cs;
    const double px0 = 0.5 - half - tx, py0 = 0.5 - half - ty;
    const double ux0 = flip * (cs * px0 - sn * py0) + half;
    const double uy0 = sn * px0 + cs * py0 + half;
    /* X = u_x sx + bx in the input's pixel index space. */
    const double W = (double)img->w, H = (double)img->h;
    const double sx = p->crop[2] * W / (double)S, sy = p->crop[3] * H / (double)S;
    const double bx = p->crop[0] * W - 0.5, by = p->crop[1] * H - 0.5;
    const ptrdiff_t rs = img->stride[0], csd = img->stride[1], chs = img->stride[2];
    const float bright = (float)p->brightness;
    const int do_bright = p->brightness != 1.0;
    static const float grey3[3] = {0.2989f, 0.587f, 0.114f};
    double grey_sum = 0.0;

    for (ptrdiff_t i = 0; i < S; i++) {
        float *row = out + i * S * C;
        double row_grey = 0.0;
        for (ptrdiff_t j = 0; j < S; j++) {
            double ux = ux0 + mxj * (double)j + mxi * (double)i;
            double uy = uy0 + myj * (double)j + myi * (double)i;
            double mask =
                inside_weight(ux - 0.5, (double)S) * inside_weight(uy - 0.5, (double)S);
            float v[CV_AUGMENT_MAX_CHANNELS];
            if (mask == 0.0) {
                for (ptrdiff_t c = 0; c < C; c++)
                    v[c] = fill;
            } else {
                double X = ux * sx + bx, Y = uy * sy + by;
                double xf = floor(X), yf = floor(Y);
                float fx = (float)(X - xf), fy = (float)(Y - yf);
                ptrdiff_t x0 = (ptrdiff_t)xf, y0 = (ptrdiff_t)yf, x1 = x0 + 1, y1 = y0 + 1;
                x0 = x0 < 0 ? 0 : (x0 >= img->w ? img->w - 1 : x0);
                x1 = x1 < 0 ? 0 : (x1 >= img->w ? img->w - 1 : x1);
                y0 = y0 < 0 ? 0 : (y0 >= img->h ? img->h - 1 : y0);
                y1 = y1 < 0 ? 0 : (y1 >= img->h ? img->h - 1 : y1);
                const uint8_t *p00 = img->pixels + y0 * rs + x0 * csd;
                const uint8_t *p01 = img->pixels + y0 * rs + x1 * csd;
                const uint8_t *p10 = img->pixels + y1 * rs + x0 * csd;
                const uint8_t *p11 = img->pixels + y1 * rs + x1 * csd;
                const float m = (float)mask, mf = (float)(1.0 - mask) * fill;
                for (ptrdiff_t c = 0; c < C; c++) {
                    float a = p00[c * chs], b = p01[c * chs], d = p10[c * chs],
                          e = p11[c * chs];
                    float top = a + fx * (b - a), bot = d + fx * (e - d);
                    float s = (top + fy * (bot - top)) / 255.0f;
                    v[c] = m * s + mf;
                }
            }
            for (ptrdiff_t c = 0; c < C; c++) {
                float x = do_bright ? clamp01(bright * v[c]) : v[c];
                row[j * C + c] = x;
            }
            if (C == 3)
                row_grey += grey3[0] * row[j * 3] + grey3[1] * row[j * 3 + 1] +
                            grey3[2] * row[j * 3 + 2];
            else
                row_grey += row[j];
        }
        grey_sum += row_grey;
    }
    return grey_sum;
}

CV_VECTORIZE static double resample(float *out, const cv_image *img, ptrdiff_t C,
                                    ptrdiff_t S, const cv_augment_params *p, float fill)
{
    return C == 1 ? resample_channels(out, img, 1, S, p, fill)
                  : resample_channels(out, img, 3, S, p, fill);
}

CV_VECTORIZE static void contrast_inplace(float *x, size_t count, float factor,
                                          float offset)
{
    for (size_t i = 0; i < count; i++) {
        float v = factor * x[i] + offset;
        x[i] = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
    }
}

/* Index i reflected into 0..n-1 without repeating the edge (n >= 2). */
static inline ptrdiff_t mirror(ptrdiff_t i, ptrdiff_t n)
{
    ptrdiff_t period = 2 * (n - 1);
    i %= period;
    if (i < 0)
        i += period;
    return i < n ? i : period - i;
}

/* out[t] = sum_k w[k] pad[t + k * step], t < count: one padded row, all channels. */
CV_VECTORIZE static void convolve_row(float *out, const float *pad, const float *w,
                                      ptrdiff_t taps, ptrdiff_t step, ptrdiff_t count)
{
    for (ptrdiff_t t = 0; t < count; t++)
        out[t] = 0.0f;
    for (ptrdiff_t k = 0; k < taps; k++) {
        const float wk = w[k];
        const float *src = pad + k * step;
        for (ptrdiff_t t = 0; t < count; t++)
            out[t] += wk * src[t];
    }
}

CV_VECTORIZE static void scale_row(float *out, const float *x, float w, ptrdiff_t count)
{
    for (ptrdiff_t t = 0; t < count; t++)
        out[t] = w * x[t];
}

CV_VECTORIZE static void axpy_row(float *out, const float *x, float w, ptrdiff_t count)
{
    for (ptrdiff_t t = 0; t < count; t++)
        out[t] += w * x[t];
}

static ptrdiff_t blur_radius(double sigma)
{
    return (ptrdiff_t)ceil(3.0 * sigma);
}

/* Scratch floats one thread needs for a blur of radius r on (S, S, C). */
static size_t blur_scratch(ptrdiff_t S, ptrdiff_t C, ptrdiff_t r)
{
    return (size_t)(S * S * C + (S + 2 * r) * C + 2 * r + 1 + 3 * 16);
}

/* Separable Gaussian blur of img (S, S, C) in place: rows into tmp, columns back. */
static void blur(float *img, float *scratch, ptrdiff_t S, ptrdiff_t C, double sigma)
{
    const ptrdiff_t r = blur_radius(sigma), taps = 2 * r + 1, rowlen = S * C;
    float *tmp = scratch;
    float *pad = tmp + ((S * S * C + 15) & ~(ptrdiff_t)15);
    float *w = pad + (((S + 2 * r) * C + 15) & ~(ptrdiff_t)15);
    double total = 0.0;
    for (ptrdiff_t k = -r; k <= r; k++)
        total += exp(-0.5 * (double)(k * k) / (sigma * sigma));
    for (ptrdiff_t k = -r; k <= r; k++)
        w[k + r] = (float)(exp(-0.5 * (double)(k * k) / (sigma * sigma)) / total);

    for (ptrdiff_t y = 0; y < S; y++) {
        const float *row = img + y * rowlen;
        for (ptrdiff_t x = -r; x < S + r; x++) {
            const float *src = row + mirror(x, S) * C;
            for (ptrdiff_t c = 0; c < C; c++)
                pad[(x + r) * C + c] = src[c];
        }
        convolve_row(tmp + y * rowlen, pad, w, taps, C, rowlen);
    }
    for (ptrdiff_t y = 0; y < S; y++) {
        float *dst = img + y * rowlen;
        scale_row(dst, tmp + mirror(y - r, S) * rowlen, w[0], rowlen);
        for (ptrdiff_t k = 1; k < taps; k++)
            axpy_row(dst, tmp + mirror(y + k - r, S) * rowlen, w[k], rowlen);
    }
}

CV_VECTORIZE static void normalize_pixels(float *x, ptrdiff_t pixels, ptrdiff_t C,
                                          const float *mean, const float *inv_std)
{
    if (C == 1) {
        const float m = mean[0], s = inv_std[0];
        for (ptrdiff_t t = 0; t < pixels; t++)
            x[t] = (x[t] - m) * s;
        return;
    }
    for (ptrdiff_t t = 0; t < pixels; t++)
        for (ptrdiff_t c = 0; c < C; c++)
            x[t * C + c] = (x[t * C + c] - mean[c]) * inv_std[c];
}

static void augment_one(float *out, float *scratch, const cv_image *img, ptrdiff_t C,
                        ptrdiff_t S, const cv_augment_params *p, float fill,
                        const float *mean, const float *inv_std)
{
    double grey_sum = resample(out, img, C, S, p, fill);
    if (p->contrast != 1.0) {
        double grey_mean = grey_sum / (double)(S * S);
        float factor = (float)p->contrast;
        float offset = (float)((1.0 - p->contrast) * grey_mean);
        contrast_inplace(out, (size_t)(S * S * C), factor, offset);
    }
    if (p->sigma > 0.0)
        blur(out, scratch, S, C, p->sigma);
    if (mean)
        normalize_pixels(out, S * S, C, mean, inv_std);
}

/* ---- the batch ------------------------------------------------------------------ */

void cv_augment_workspace_free(cv_augment_workspace *ws)
{
    free(ws->scratch);
    ws->scratch = NULL;
    ws->cap = 0;
}

cv_status cv_augment_apply(float *out, cv_augment_workspace *ws, const cv_image *images,
                           ptrdiff_t n, ptrdiff_t C, const cv_augment_params *params,
                           ptrdiff_t S, float fill, const float *mean, const float *std)
{
    if (n <= 0)
        return cv_fail(CV_ERR_VALUE, "the batch is empty");
    if (C != 1 && C != 3)
        return cv_fail(CV_ERR_VALUE, "images must have 1 or 3 channels, got %td", C);
    if (S < CV_AUGMENT_MIN_SIZE || S > CV_AUGMENT_MAX_SIZE)
        return cv_fail(CV_ERR_VALUE, "the output size must be in [%d, %d], got %td",
                       CV_AUGMENT_MIN_SIZE, CV_AUGMENT_MAX_SIZE, S);
    if (!isfinite(fill))
        return cv_fail(CV_ERR_VALUE, "fill must be finite, got %g", (double)fill);
    for (ptrdiff_t i = 0; i < n; i++)
        if (images[i].h < CV_AUGMENT_MIN_INPUT || images[i].w < CV_AUGMENT_MIN_INPUT)
            return cv_fail(CV_ERR_VALUE,
                           "image %td is %td x %td; images must be at least "
                           "%d x %d",
                           i, images[i].h, images[i].w, CV_AUGMENT_MIN_INPUT,
                           CV_AUGMENT_MIN_INPUT);
    cv_status status = cv_augment_check_params(params, n);
    if (status != CV_OK)
        return status;
    float inv_std[CV_AUGMENT_MAX_CHANNELS] = {1.0f, 1.0f, 1.0f, 1.0f};
    if (mean)
        for (ptrdiff_t c = 0; c < C; c++) {
            if (!cv_augment_mean_ok(mean[c]) || !cv_augment_std_ok(std[c]))
                return cv_fail(CV_ERR_VALUE,
                               "normalization needs means in [-%g, %g] and stds in [%g, "
                               "%g], got mean %g, std %g for channel %td",
                               CV_AUGMENT_MAX_ABS_MEAN, CV_AUGMENT_MAX_ABS_MEAN,
                               CV_AUGMENT_MIN_STD, (double)FLT_MAX, (double)mean[c],
                               (double)std[c], c);
            inv_std[c] = 1.0f / std[c];
        }

    ptrdiff_t radius = 0;
    for (ptrdiff_t i = 0; i < n; i++)
        if (params[i].sigma > 0.0 && blur_radius(params[i].sigma) > radius)
            radius = blur_radius(params[i].sigma);
    int threads = cv_get_num_threads();
    if (threads > n)
        threads = (int)n;
    size_t per_thread = (blur_scratch(S, C, radius) + 15) & ~(size_t)15;
    if (cv_reserve((void **)&ws->scratch, &ws->cap, per_thread * (size_t)threads,
                   sizeof(float)))
        return cv_fail(CV_ERR_MEMORY, "cannot allocate %zu floats of blur scratch",
                       per_thread * (size_t)threads);

    const size_t image_floats = (size_t)(S * S * C);
    int stop = 0;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (ptrdiff_t i = 0; i < n; i++) {
        if (cv_stopping(&stop, 0)) /* dynamic schedule: thread 0 checks at every image */
            continue;
        float *scratch = ws->scratch + per_thread * (size_t)omp_get_thread_num();
        augment_one(out + image_floats * (size_t)i, scratch, &images[i], C, S, &params[i],
                    fill, mean ? mean : NULL, inv_std);
    }
    return stop ? CV_ERR_INTERRUPTED : CV_OK;
}
