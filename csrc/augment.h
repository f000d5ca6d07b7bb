/* augment.h - the paper's random image transforms (ConVIRT, Zhang et al. 2020).
 *
 * In order: random crop (a share of the area and an aspect ratio, as torchvision's
 * RandomResizedCrop), horizontal flip, affine (rotation, translation, scale),
 * brightness, contrast, Gaussian blur; the result is size x size float32 in pixel
 * units [0, 1] (optionally normalised with a mean and std per channel).
 *
 * Crop, flip, affine and resize are ONE bilinear resampling pass: each output pixel's
 * position is mapped back through the inverse affine, the flip and the crop to a
 * point of the uint8 input, which is read in place with its strides. The sequential
 * pipeline (crop + resize, then flip, then affine with a fill value) is the
 * semantics; composing the maps avoids a second interpolation.
 *
 * Coordinates (pixel centres at i + 0.5, as PIL and torch's align_corners=False):
 *   output pixel (row i, col j), p = (j + 0.5 - S/2 - tx, i + 0.5 - S/2 - ty)
 *   q = R(-angle) p / scale            (centred coordinates of the crop image)
 *   q_x = -q_x when flipped
 *   u = q + S/2                        (crop image, 0..S across)
 *   X = crop_x W + u_x crop_w W / S - 0.5, Y likewise (input pixel index space)
 * The value is the bilinear interpolation of the input at (X, Y) with the taps
 * clamped to the image, blended with the fill value by the share of the bilinear
 * footprint (on the crop image's S x S grid) that falls inside the crop image:
 *   out = mask * sample + (1 - mask) * fill.
 * With no crop and S equal to the input size this is exactly scipy.ndimage's
 * affine_transform(order=1, mode="grid-constant") and torchvision's affine with a
 * fill; with no affine it is PIL's bilinear resize of the crop box (upsampling; PIL
 * antialiases when it shrinks, this does not: feed images near the output size,
 * as the paper does by resizing to 256 first).
 *
 * Colour, as torchvision (ColorJitter in a fixed order, brightness first):
 *   x = clamp(brightness * x, 0, 1)
 *   x = clamp(contrast * x + (1 - contrast) * mean_grey(x), 0, 1)
 * with grey = 0.2989 R + 0.587 G + 0.114 B (one channel: the value itself), the mean
 * taken over the whole output image, fill included.
 * Blur: separable Gaussian, exp(-k^2 / (2 sigma^2)) for |k| <= ceil(3 sigma),
 * normalised to sum 1, mirror padding (d c b | a b c d | c b a, torch's "reflect",
 * scipy's "mirror") - scipy.ndimage.gaussian_filter(mode="mirror", radius=ceil(3s)).
 *
 * Randomness: every parameter is a pure function of (seed, step, index in the batch)
 * through random.h, so a batch is the same whatever the number of threads. */
#ifndef CONVIRT_AUGMENT_H
#define CONVIRT_AUGMENT_H

#include <float.h>
#include <math.h>

#include "convirt.h"

#define CV_AUGMENT_MIN_INPUT 2    /* images are at least 2 x 2 */
#define CV_AUGMENT_MIN_SIZE 2     /* output at least 2 x 2 */
#define CV_AUGMENT_MAX_SIZE 8192  /* output at most 8192 x 8192 */
#define CV_AUGMENT_MAX_SIGMA 64.0 /* blur radius at most 192 */
#define CV_AUGMENT_MAX_CHANNELS 4
/* Brightness and contrast factors are used in float32: at most FLT_MAX (a larger one
 * became Inf, and Inf * 0 NaN). The clamp to [0, 1] bounds what they make. */
#define CV_AUGMENT_MAX_FACTOR 3.4028234663852886e38
/* Normalisation: stds at least 1e-6, means within +-1e6. Pixels are in [0, 1], in steps
 * of 1/255 = 3.9e-3: no statistic of them is smaller or larger, and within these
 * bounds |x - mean| / std stays below about 1e12, finite in float32 (a denormal std
 * such as 1e-45 made every output Inf). */
#define CV_AUGMENT_MIN_STD 1e-6
#define CV_AUGMENT_MAX_ABS_MEAN 1e6

/* Whether a normalisation mean / std is within those bounds (NaN is not), the one
 * check of them for the core and the bindings: double arguments, so that the bindings
 * check what they were given before it is rounded to float32, against the bounds in
 * float32, so that what passes there passes again here once rounded. */
static inline int cv_augment_mean_ok(double mean)
{
    return fabs(mean) <= (float)CV_AUGMENT_MAX_ABS_MEAN;
}
static inline int cv_augment_std_ok(double std)
{
    return std >= (float)CV_AUGMENT_MIN_STD && std <= FLT_MAX;
}

/* The parameters of one image's transform. The identity is crop (0, 0, 1, 1), no
 * flip, angle 0, translate (0, 0), scale 1, brightness 1, contrast 1, sigma 0. */
typedef struct {
    double crop[4];      /* x, y, width, height: fractions of the image's W and H */
    double angle;        /* rotation in degrees, counter-clockwise as displayed */
    double translate[2]; /* x (right), y (down): fractions of the output size */
    double scale;        /* > 0 */
    double brightness;   /* factor >= 0 */
    double contrast;     /* factor >= 0 */
    double sigma;        /* Gaussian blur in output pixels; 0: no blur */
    uint8_t flip;        /* horizontal flip (of the crop, before the affine) */
    /* (the NumPy dtype ImageAugment.parameter_dtype mirrors this order) */
} cv_augment_params;

/* The ranges parameters are drawn from. A transform whose flag is 0 is drawn as
 * the identity. Intervals are [lo, hi]. */
typedef struct {
    int crop;
    double crop_scale[2]; /* share of the area kept, in (0, 1] */
    double crop_ratio[2]; /* width / height of the crop relative to the image's */
    double flip_p;        /* probability of a flip, 0: off */
    int rotate;
    double degrees[2];
    int translate;
    double translate_max[2]; /* |tx| <= translate_max[0], |ty| <= translate_max[1] */
    int scale;
    double scale_range[2];
    int brightness;
    double brightness_range[2];
    int contrast;
    double contrast_range[2];
    int blur;
    double sigma_range[2];
} cv_augment_ranges;

/* One uint8 input image: (h, w, c) with element (= byte) strides. */
typedef struct {
    const uint8_t *pixels;
    ptrdiff_t h, w;
    ptrdiff_t stride[3]; /* row, column, channel */
} cv_image;

/* Per-thread scratch for the blur, reused across calls (grown on demand). */
typedef struct {
    float *scratch;
    size_t cap;
} cv_augment_workspace;

void cv_augment_workspace_free(cv_augment_workspace *ws);

/* Checks a ranges struct; CV_ERR_VALUE with a message naming the bad range. */
cv_status cv_augment_check_ranges(const cv_augment_ranges *ranges);

/* params[i] for images first_index + i of batch `step`, i < n. Pure function of
 * (seed, step, first_index + i): no state, any order, any thread count.
 * Crop: as torchvision's RandomResizedCrop in relative units: up to 10 draws of an
 * area share s and a log-uniform ratio r, kept when w = sqrt(s r) <= 1 and
 * h = sqrt(s / r) <= 1, at a uniform position; else the whole image (the ratio
 * clamped into the range when 1 is outside it), centred. Translations are uniform
 * in [-max, max] (continuous, not rounded to pixels). */
void cv_augment_sample(cv_augment_params *params, ptrdiff_t n,
                       const cv_augment_ranges *ranges, uint64_t seed, uint64_t step,
                       uint64_t first_index);

/* Checks params[0..n) (finite, crop box inside the image with a positive size,
 * scale > 0, 0 <= factors <= CV_AUGMENT_MAX_FACTOR, 0 <= sigma <= CV_AUGMENT_MAX_SIGMA). */
cv_status cv_augment_check_params(const cv_augment_params *params, ptrdiff_t n);

/* out (n, size, size, channels) float32, contiguous, written. images[i] with
 * channels channels (1 or 3), at least 2 x 2. fill: the value (pixel units) of
 * samples outside the crop image. mean, std: channels values each (|mean| <=
 * CV_AUGMENT_MAX_ABS_MEAN, CV_AUGMENT_MIN_STD <= std <= FLT_MAX), or NULL for no
 * normalisation. OpenMP over the images; each image is done by one thread, so the
 * result does not depend on the number of threads. */
cv_status cv_augment_apply(float *out, cv_augment_workspace *ws, const cv_image *images,
                           ptrdiff_t n, ptrdiff_t channels, const cv_augment_params *params,
                           ptrdiff_t size, float fill, const float *mean, const float *std);

#endif
