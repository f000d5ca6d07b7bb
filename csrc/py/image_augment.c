/* image_augment.c - the Python type convirt.ImageAugment (the paper's random image
 * transforms, csrc/augment.c). */
#include <float.h>

#include "../augment.h"
#include "arrays.h"
#include "errors.h"
#include "module.h"

typedef struct {
    PyObject_HEAD cv_augment_ranges ranges;
    ptrdiff_t size;
    float fill;
    int norm_len; /* 0: no normalisation, else 1 or 3 values */
    float mean[3], std[3];
    uint64_t seed;
    int busy;
    cv_augment_workspace ws;
    PyObject *pool[2]; /* outputs reused once nobody else holds them */
} AugmentObject;

/* Images as the transforms read them: a uint8 array (N, H, W[, C]) or a sequence of
 * uint8 arrays (H, W[, C]), validated (read_images); release with
 * image_batch_release. */
typedef struct {
    PyObject *keep; /* the array or a tuple of arrays, held during the call */
    cv_image *images;
    npy_intp n, channels;
    int ndim; /* of the output: 3 (N, S, S) or 4 (N, S, S, C) */
} image_batch;

/* The paper's defaults (ConVIRT, appendix): the ranges below, output 224. */
/* The paper's ranges are policy and live in Python (convirt/augment.py, whose
 * ImageAugment subclass passes every range explicitly); this type validates what it is
 * given and requires every range. A transform switched off keeps its neutral values. */
static const double OFF_ONE[2] = {1.0, 1.0}, OFF_ZERO[2] = {0.0, 0.0};

/* The NumPy dtype of a parameter record: the C struct cv_augment_params. */
static PyArray_Descr *param_descr;

/* ---- settings ------------------------------------------------------------------ */

static int read_number(PyObject *obj, const char *name, double *out)
{
    if (PyBool_Check(obj) || !PyNumber_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a number, got %s", name,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    *out = PyFloat_AsDouble(obj);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

/* A (lo, hi) setting: None or False switches it off, True takes the default, a pair
 * is the range; a single number x is (-x, x) when symmetric, (x, x) when `both`,
 * else an error. */
static int read_range(PyObject *obj, const char *name, const double deflt[2], int symmetric,
                      int both, int *on, double range[2])
{
    if (obj == NULL || obj == Py_True) {
        PyErr_Format(PyExc_TypeError,
                     "%s must be given: a (low, high) pair%s, or None or False for off "
                     "(convirt.ImageAugment supplies the paper's ranges)",
                     name, symmetric || both ? " or a number" : "");
        return -1;
    }
    if (obj == Py_None || obj == Py_False) {
        *on = 0;
        range[0] = deflt[0];
        range[1] = deflt[1];
        return 0;
    }
    *on = 1;
    if (PyNumber_Check(obj) && (symmetric || both)) {
        double x;
        if (read_number(obj, name, &x))
            return -1;
        range[0] = symmetric ? -x : x;
        range[1] = x;
        if (symmetric && !(x >= 0.0)) {
            char text[CV_DOUBLE_TEXT];
            PyErr_Format(PyExc_ValueError,
                         "%s must be >= 0 (the range is (-%s, %s)), got %s", name, name,
                         name, cv_double_text(x, text));
            return -1;
        }
        return 0;
    }
    PyObject *seq = PySequence_Check(obj) ? PySequence_Tuple(obj) : NULL;
    if (!seq || PyTuple_GET_SIZE(seq) != 2) {
        Py_XDECREF(seq);
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "%s must be a (low, high) pair%s, None or False, got %R", name,
                     symmetric || both ? " or a number" : "", obj);
        return -1;
    }
    int status = read_number(PyTuple_GET_ITEM(seq, 0), name, &range[0]) ||
                 read_number(PyTuple_GET_ITEM(seq, 1), name, &range[1]);
    Py_DECREF(seq);
    return status ? -1 : 0;
}

/* One half of normalization (mean or std): a number or a sequence of 1 or 3 numbers. */
static int read_channels(PyObject *obj, const char *name, double *values, int *count)
{
    if (PyNumber_Check(obj) && !PySequence_Check(obj)) {
        *count = 1;
        return read_number(obj, name, &values[0]);
    }
    PyObject *seq = PySequence_Check(obj) ? PySequence_Tuple(obj) : NULL;
    Py_ssize_t n = seq ? PyTuple_GET_SIZE(seq) : -1;
    if (n != 1 && n != 3) {
        Py_XDECREF(seq);
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError,
                     "normalization %s must be a number or 1 or 3 numbers (one per "
                     "channel), got %R",
                     name, obj);
        return -1;
    }
    for (Py_ssize_t c = 0; c < n; c++)
        if (read_number(PyTuple_GET_ITEM(seq, c), name, &values[c])) {
            Py_DECREF(seq);
            return -1;
        }
    Py_DECREF(seq);
    *count = (int)n;
    return 0;
}

/* normalization: None, or (mean, std) with numbers or sequences of 1 or 3 numbers, into
 * *count (0: none), mean and std; the caller's object is not touched, so that a refused
 * value changes nothing. Bounds: CV_AUGMENT_MAX_ABS_MEAN and CV_AUGMENT_MIN_STD
 * (augment.h), checked before the values are rounded to float32. */
static int read_normalization(PyObject *obj, int *count, float mean[3], float std[3])
{
    *count = 0;
    if (obj == NULL || obj == Py_None)
        return 0;
    PyObject *pair = PySequence_Check(obj) ? PySequence_Tuple(obj) : NULL;
    if (!pair || PyTuple_GET_SIZE(pair) != 2) {
        Py_XDECREF(pair);
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "normalization must be None or (mean, std), got %R",
                     obj);
        return -1;
    }
    double m[3], s[3];
    int n_mean, n_std;
    if (read_channels(PyTuple_GET_ITEM(pair, 0), "mean", m, &n_mean) ||
        read_channels(PyTuple_GET_ITEM(pair, 1), "std", s, &n_std)) {
        Py_DECREF(pair);
        return -1;
    }
    Py_DECREF(pair);
    if (n_mean != n_std) {
        PyErr_Format(PyExc_ValueError,
                     "normalization mean and std must have the same length, got %d and %d",
                     n_mean, n_std);
        return -1;
    }
    for (int c = 0; c < n_mean; c++)
        if (!cv_augment_mean_ok(m[c]) || !cv_augment_std_ok(s[c])) {
            char mean_text[CV_DOUBLE_TEXT], std_text[CV_DOUBLE_TEXT];
            PyErr_Format(PyExc_ValueError,
                         "normalization needs finite means in [-1e6, 1e6] and positive "
                         "finite stds in [1e-6, 3.4e38] (pixels are in [0, 1]; (x - mean) "
                         "/ std must stay finite in float32), got mean %s, std %s",
                         cv_double_text(m[c], mean_text), cv_double_text(s[c], std_text));
            return -1;
        }
    for (int c = 0; c < n_mean; c++) {
        mean[c] = (float)m[c];
        std[c] = (float)s[c];
    }
    *count = n_mean;
    return 0;
}

static int Augment_init(AugmentObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"size",     "crop_scale", "crop_ratio", "flip",
                             "degrees",  "translate",  "scale",      "brightness",
                             "contrast", "blur_sigma", "fill",       "normalization",
                             "seed",     NULL};
    Py_ssize_t size = 0;
    PyObject *size_obj = NULL, *crop_scale = NULL, *crop_ratio = NULL, *flip = NULL,
             *degrees = NULL, *translate = NULL, *scale = NULL, *brightness = NULL,
             *contrast = NULL, *sigma = NULL, *normalization = NULL, *seed = NULL;
    double fill = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$OOOOOOOOOdOO:ImageAugment", kwlist,
                                     &size_obj, &crop_scale, &crop_ratio, &flip, &degrees,
                                     &translate, &scale, &brightness, &contrast, &sigma,
                                     &fill, &normalization, &seed) ||
        cv_read_size(size_obj, "size", &size))
        return -1;
    if (cv_check_idle(self->busy, "ImageAugment"))
        return -1;
    cv_augment_ranges r;
    memset(&r, 0, sizeof r);
    double flip_range[2];
    int ratio_on, flip_on;
    if (read_range(crop_scale, "crop_scale", OFF_ONE, 0, 0, &r.crop, r.crop_scale) ||
        read_range(crop_ratio, "crop_ratio", OFF_ONE, 0, 0, &ratio_on, r.crop_ratio) ||
        read_range(flip, "flip", OFF_ZERO, 0, 1, &flip_on, flip_range) ||
        read_range(degrees, "degrees", OFF_ZERO, 1, 0, &r.rotate, r.degrees) ||
        read_range(translate, "translate", OFF_ZERO, 0, 1, &r.translate, r.translate_max) ||
        read_range(scale, "scale", OFF_ONE, 0, 0, &r.scale, r.scale_range) ||
        read_range(brightness, "brightness", OFF_ONE, 0, 0, &r.brightness,
                   r.brightness_range) ||
        read_range(contrast, "contrast", OFF_ONE, 0, 0, &r.contrast, r.contrast_range) ||
        read_range(sigma, "blur_sigma", OFF_ZERO, 0, 0, &r.blur, r.sigma_range))
        return -1;
    if (r.crop && !ratio_on) {
        /* no ratio range: keep the image's aspect ratio */
        r.crop_ratio[0] = r.crop_ratio[1] = 1.0;
    }
    if (flip_on && flip_range[0] != flip_range[1]) {
        PyErr_Format(PyExc_TypeError,
                     "flip must be a probability, True, False or None, got %R", flip);
        return -1;
    }
    r.flip_p = flip_on ? flip_range[0] : 0.0;
    if (cv_augment_check_ranges(&r) != CV_OK)
        return cv_raise(CV_ERR_VALUE);
    if (size < CV_AUGMENT_MIN_SIZE || size > CV_AUGMENT_MAX_SIZE) {
        PyErr_Format(PyExc_ValueError, "size must be in [%d, %d], got %zd",
                     CV_AUGMENT_MIN_SIZE, CV_AUGMENT_MAX_SIZE, size);
        return -1;
    }
    if (!(fill >= 0.0 && fill <= 1.0)) {
        char text[CV_DOUBLE_TEXT];
        PyErr_Format(PyExc_ValueError,
                     "fill must be in [0, 1] (pixel units: 0 black, 1 white), got %s",
                     cv_double_text(fill, text));
        return -1;
    }
    uint64_t seed_value = 0;
    if (seed && seed != Py_None && cv_read_uint64(seed, "seed", &seed_value))
        return -1;
    int norm_len;
    float mean[3] = {0, 0, 0}, std[3] = {1, 1, 1};
    if (read_normalization(normalization, &norm_len, mean, std))
        return -1;
    /* Everything is valid: only now is the object changed (a refused re-init keeps it). */
    self->ranges = r;
    self->size = size;
    self->fill = (float)fill;
    self->seed = seed_value;
    self->norm_len = norm_len;
    memcpy(self->mean, mean, sizeof mean);
    memcpy(self->std, std, sizeof std);
    return 0;
}

static void Augment_dealloc(AugmentObject *self)
{
    cv_augment_workspace_free(&self->ws);
    Py_CLEAR(self->pool[0]);
    Py_CLEAR(self->pool[1]);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ---- parameters ----------------------------------------------------------------- */

static PyArrayObject *new_params(npy_intp n)
{
    Py_INCREF(param_descr);
    return (PyArrayObject *)PyArray_NewFromDescr(&PyArray_Type, param_descr, 1, &n, NULL,
                                                 NULL, 0, NULL);
}

static PyObject *Augment_sample_parameters(AugmentObject *self, PyObject *args,
                                           PyObject *kwds)
{
    static char *kwlist[] = {"n", "step", "first_index", NULL};
    Py_ssize_t n;
    PyObject *step_obj = NULL, *first_obj = NULL;
    uint64_t step = 0, first = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n|O$O:sample_parameters", kwlist, &n,
                                     &step_obj, &first_obj))
        return NULL;
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "n must be >= 0, got %zd", n);
        return NULL;
    }
    if ((step_obj && cv_read_uint64(step_obj, "step", &step)) ||
        (first_obj && cv_read_uint64(first_obj, "first_index", &first)))
        return NULL;
    PyArrayObject *params = new_params(n);
    if (!params)
        return NULL;
    cv_augment_sample((cv_augment_params *)PyArray_DATA(params), n, &self->ranges,
                      self->seed, step, first);
    return (PyObject *)params;
}

static int check_params(PyObject *obj, npy_intp n, PyArrayObject **out)
{
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError,
                     "parameters must be the structured array sample_parameters() returns "
                     "(dtype ImageAugment.parameter_dtype), got %s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyArrayObject *arr = (PyArrayObject *)obj;
    if (!PyArray_EquivTypes(PyArray_DESCR(arr), param_descr)) {
        PyErr_Format(PyExc_TypeError,
                     "parameters must have dtype ImageAugment.parameter_dtype, got %R",
                     (PyObject *)PyArray_DESCR(arr));
        return -1;
    }
    if (PyArray_NDIM(arr) != 1 || PyArray_DIM(arr, 0) != n) {
        PyErr_Format(PyExc_ValueError,
                     "parameters must have shape (%ld,) (one record per image), got %d "
                     "dimension(s) of %ld records",
                     (long)n, PyArray_NDIM(arr), (long)PyArray_SIZE(arr));
        return -1;
    }
    if (!PyArray_IS_C_CONTIGUOUS(arr) || !PyArray_ISALIGNED(arr)) {
        PyErr_SetString(PyExc_ValueError,
                        "parameters must be C-contiguous and aligned; pass "
                        "np.ascontiguousarray(parameters)");
        return -1;
    }
    *out = arr;
    return 0;
}

/* ---- images and output ---------------------------------------------------------- */

static void image_batch_release(image_batch *b)
{
    Py_CLEAR(b->keep);
    PyMem_Free(b->images);
    b->images = NULL;
}

static int one_image(cv_image *img, PyArrayObject *arr, int nd, npy_intp *channels,
                     const char *name)
{
    ptrdiff_t strides[3];
    if (cv_element_strides(arr, name, strides))
        return -1;
    img->pixels = PyArray_DATA(arr);
    img->h = PyArray_DIM(arr, 0);
    img->w = PyArray_DIM(arr, 1);
    img->stride[0] = strides[0];
    img->stride[1] = strides[1];
    img->stride[2] = nd == 3 ? strides[2] : 0;
    *channels = nd == 3 ? PyArray_DIM(arr, 2) : 1;
    if (img->h < CV_AUGMENT_MIN_INPUT || img->w < CV_AUGMENT_MIN_INPUT) {
        PyErr_Format(PyExc_ValueError, "%s is %ld x %ld; images must be at least %d x %d",
                     name, (long)img->h, (long)img->w, CV_AUGMENT_MIN_INPUT,
                     CV_AUGMENT_MIN_INPUT);
        return -1;
    }
    if (*channels != 1 && *channels != 3) {
        PyErr_Format(PyExc_ValueError,
                     "%s has %ld channels; images must have 1 (grey) or 3 (RGB)", name,
                     (long)*channels);
        return -1;
    }
    return 0;
}

/* images: a uint8 array (N, H, W[, C]) or a sequence of uint8 arrays (H, W[, C]). */
static int read_images(PyObject *obj, image_batch *b)
{
    memset(b, 0, sizeof *b);
    if (PyArray_Check(obj)) {
        PyArrayObject *arr;
        cv_array_spec spec = {
            "images (N, H, W) or (N, H, W, C)", NPY_UINT8, 3, 4, {-1, -1, -1, -1}, 0, 0};
        if (cv_check_array(obj, &spec, &arr))
            return -1;
        b->n = PyArray_DIM(arr, 0);
        if (b->n == 0) {
            PyErr_SetString(PyExc_ValueError, "images is an empty batch (N = 0)");
            return -1;
        }
        ptrdiff_t strides[4];
        if (cv_element_strides(arr, "images", strides))
            return -1;
        int nd = PyArray_NDIM(arr);
        b->ndim = nd;
        b->images = PyMem_Malloc(sizeof(cv_image) * (size_t)b->n);
        if (!b->images) {
            PyErr_NoMemory();
            return -1;
        }
        b->channels = nd == 4 ? PyArray_DIM(arr, 3) : 1;
        for (npy_intp i = 0; i < b->n; i++) {
            cv_image *img = &b->images[i];
            img->pixels = (const uint8_t *)PyArray_DATA(arr) + i * strides[0];
            img->h = PyArray_DIM(arr, 1);
            img->w = PyArray_DIM(arr, 2);
            img->stride[0] = strides[1];
            img->stride[1] = strides[2];
            img->stride[2] = nd == 4 ? strides[3] : 0;
        }
        const cv_image *first = &b->images[0];
        if (first->h < CV_AUGMENT_MIN_INPUT || first->w < CV_AUGMENT_MIN_INPUT) {
            PyErr_Format(PyExc_ValueError,
                         "images are %ld x %ld; they must be at least %d x %d",
                         (long)b->images[0].h, (long)b->images[0].w, CV_AUGMENT_MIN_INPUT,
                         CV_AUGMENT_MIN_INPUT);
            goto error;
        }
        if (b->channels != 1 && b->channels != 3) {
            PyErr_Format(PyExc_ValueError,
                         "images have %ld channels; they must have 1 (grey) or 3 (RGB)",
                         (long)b->channels);
            goto error;
        }
        Py_INCREF(obj);
        b->keep = obj;
        return 0;
    }
    if (!PyList_Check(obj) && !PyTuple_Check(obj)) {
        PyErr_Format(PyExc_TypeError,
                     "images must be a uint8 NumPy array (N, H, W) or (N, H, W, C), or a "
                     "list of uint8 arrays (H, W) or (H, W, C); got %s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    b->keep = PySequence_Tuple(obj); /* holds the arrays while the GIL is released */
    if (!b->keep)
        return -1;
    b->n = PyTuple_GET_SIZE(b->keep);
    if (b->n == 0) {
        PyErr_SetString(PyExc_ValueError, "images is an empty list");
        goto error;
    }
    b->images = PyMem_Malloc(sizeof(cv_image) * (size_t)b->n);
    if (!b->images) {
        PyErr_NoMemory();
        goto error;
    }
    for (npy_intp i = 0; i < b->n; i++) {
        char name[48];
        snprintf(name, sizeof name, "images[%ld]", (long)i);
        PyArrayObject *arr;
        cv_array_spec spec = {name, NPY_UINT8, 2, 3, {-1, -1, -1, -1}, 0, 0};
        npy_intp channels;
        if (cv_check_array(PyTuple_GET_ITEM(b->keep, i), &spec, &arr) ||
            one_image(&b->images[i], arr, PyArray_NDIM(arr), &channels, name))
            goto error;
        int nd = PyArray_NDIM(arr) + 1;
        if (i == 0) {
            b->ndim = nd;
            b->channels = channels;
        } else if (nd != b->ndim || channels != b->channels) {
            PyErr_Format(PyExc_ValueError,
                         "images[%ld] has %d dimensions and %ld channels but images[0] "
                         "has %d and %ld; the images of a batch must agree",
                         (long)i, nd - 1, (long)channels, b->ndim - 1, (long)b->channels);
            goto error;
        }
    }
    return 0;
error:
    image_batch_release(b);
    return -1;
}

static int out_overlaps_input(PyArrayObject *out, image_batch *b)
{
    if (PyArray_Check(b->keep))
        return cv_check_no_overlap(out, "out", (PyArrayObject *)b->keep, "images");
    for (npy_intp i = 0; i < b->n; i++)
        if (cv_check_no_overlap(out, "out", (PyArrayObject *)PyTuple_GET_ITEM(b->keep, i),
                                "an image"))
            return -1;
    return 0;
}

/* The output: the caller's array (checked) or a pooled one. New reference. */
static PyArrayObject *get_output(AugmentObject *self, PyObject *given, image_batch *b)
{
    npy_intp shape[4] = {b->n, self->size, self->size, b->channels};
    if (given && given != Py_None) {
        PyArrayObject *out;
        cv_array_spec spec = {"out",
                              NPY_FLOAT32,
                              b->ndim,
                              b->ndim,
                              {shape[0], shape[1], shape[2], shape[3]},
                              1,
                              1};
        if (cv_check_array(given, &spec, &out) || out_overlaps_input(out, b))
            return NULL;
        Py_INCREF(out);
        return out;
    }
    /* Reuse a pooled array that only the pool still holds; else make one, into an
     * empty slot or in place of an array somebody else still holds. */
    for (int k = 0; k < 2; k++) {
        PyArrayObject *arr = (PyArrayObject *)self->pool[k];
        if (arr && Py_REFCNT(arr) == 1 && PyArray_NDIM(arr) == b->ndim &&
            PyArray_CompareLists(PyArray_DIMS(arr), shape, b->ndim)) {
            Py_INCREF(arr);
            return arr;
        }
    }
    int slot = 1;
    if (!self->pool[0] || (self->pool[1] && Py_REFCNT(self->pool[0]) == 1))
        slot = 0;
    PyArrayObject *arr = cv_new_float_array(b->ndim, shape);
    if (!arr)
        return NULL;
    Py_XSETREF(self->pool[slot], (PyObject *)arr);
    Py_INCREF(arr);
    return arr;
}

/* ---- apply ---------------------------------------------------------------------- */

static PyObject *run(AugmentObject *self, PyObject *images_obj, PyObject *params_obj,
                     uint64_t step, PyObject *out_obj)
{
    image_batch b;
    PyArrayObject *params = NULL, *out = NULL;
    cv_augment_params *owned = NULL;
    const cv_augment_params *p = NULL;
    float mean[3] = {0, 0, 0}, std[3] = {1, 1, 1};
    cv_status status;

    if (read_images(images_obj, &b))
        return NULL;
    if (params_obj) {
        if (check_params(params_obj, b.n, &params))
            goto error;
        p = PyArray_DATA(params);
        if (cv_augment_check_params(p, b.n) != CV_OK) {
            cv_raise(CV_ERR_VALUE);
            goto error;
        }
    }
    if (self->norm_len == 3 && b.channels != 3) {
        PyErr_Format(PyExc_ValueError,
                     "normalization has 3 values (RGB) but the images have %ld channel(s)",
                     (long)b.channels);
        goto error;
    }
    for (int c = 0; c < 3 && self->norm_len; c++) {
        mean[c] = self->mean[self->norm_len == 1 ? 0 : c];
        std[c] = self->std[self->norm_len == 1 ? 0 : c];
    }
    if (cv_claim(&self->busy, "ImageAugment"))
        goto error;
    if (!(out = get_output(self, out_obj, &b))) {
        CV_RELEASE(&self->busy);
        goto error;
    }
    if (!params_obj) {
        owned = PyMem_Malloc(sizeof(cv_augment_params) * (size_t)b.n);
        if (!owned) {
            CV_RELEASE(&self->busy);
            PyErr_NoMemory();
            goto error;
        }
        cv_augment_sample(owned, b.n, &self->ranges, self->seed, step, 0);
        p = owned;
    }
    Py_BEGIN_ALLOW_THREADS;
    status = cv_augment_apply((float *)PyArray_DATA(out), &self->ws, b.images, b.n,
                              b.channels, p, self->size, self->fill,
                              self->norm_len ? mean : NULL, self->norm_len ? std : NULL);
    Py_END_ALLOW_THREADS;
    CV_RELEASE(&self->busy);
    if (status != CV_OK) {
        cv_raise(status);
        goto error;
    }
    PyMem_Free(owned);
    image_batch_release(&b);
    return (PyObject *)out;

error:
    PyMem_Free(owned);
    Py_XDECREF(out);
    image_batch_release(&b);
    return NULL;
}

static PyObject *Augment_call(AugmentObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"images", "step", "out", NULL};
    PyObject *images, *step_obj = NULL, *out = NULL;
    uint64_t step = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O$O:ImageAugment.__call__", kwlist,
                                     &images, &step_obj, &out))
        return NULL;
    if (step_obj && cv_read_uint64(step_obj, "step", &step))
        return NULL;
    return run(self, images, NULL, step, out);
}

static PyObject *Augment_apply(AugmentObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"images", "parameters", "out", NULL};
    PyObject *images, *params, *out = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|$O:ImageAugment.apply", kwlist,
                                     &images, &params, &out))
        return NULL;
    return run(self, images, params, 0, out);
}

/* ---- attributes ----------------------------------------------------------------- */

static PyObject *pair_or_none(int on, const double r[2])
{
    if (!on)
        Py_RETURN_NONE;
    return Py_BuildValue("(dd)", r[0], r[1]);
}

/* The keyword arguments that rebuild this object: ImageAugment(**aug.config). */
static PyObject *get_config(AugmentObject *self, void *closure)
{
    (void)closure;
    const cv_augment_ranges *r = &self->ranges;
    PyObject *normalization;
    if (self->norm_len == 0) {
        normalization = Py_NewRef(Py_None);
    } else if (self->norm_len == 1) {
        normalization = Py_BuildValue("(dd)", (double)self->mean[0], (double)self->std[0]);
    } else {
        normalization =
            Py_BuildValue("((ddd)(ddd))", (double)self->mean[0], (double)self->mean[1],
                          (double)self->mean[2], (double)self->std[0], (double)self->std[1],
                          (double)self->std[2]);
    }
    if (!normalization)
        return NULL;
    PyObject *flip = r->flip_p > 0.0 ? PyFloat_FromDouble(r->flip_p) : Py_NewRef(Py_None);
    return Py_BuildValue(
        "{s:n,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:d,s:N,s:K}", "size",
        (Py_ssize_t)self->size, "crop_scale", pair_or_none(r->crop, r->crop_scale),
        "crop_ratio", pair_or_none(r->crop, r->crop_ratio), "flip", flip, "degrees",
        pair_or_none(r->rotate, r->degrees), "translate",
        pair_or_none(r->translate, r->translate_max), "scale",
        pair_or_none(r->scale, r->scale_range), "brightness",
        pair_or_none(r->brightness, r->brightness_range), "contrast",
        pair_or_none(r->contrast, r->contrast_range), "blur_sigma",
        pair_or_none(r->blur, r->sigma_range), "fill", (double)self->fill, "normalization",
        normalization, "seed", (unsigned long long)self->seed);
}

static PyObject *config_item(AugmentObject *self, const char *key)
{
    PyObject *config = get_config(self, NULL);
    if (!config)
        return NULL;
    PyObject *value = PyDict_GetItemString(config, key);
    Py_XINCREF(value);
    Py_DECREF(config);
    return value;
}

#define CONFIG_GETTER(field)                                                               \
    static PyObject *get_##field(AugmentObject *self, void *closure)                       \
    {                                                                                      \
        (void)closure;                                                                     \
        return config_item(self, #field);                                                  \
    }
CONFIG_GETTER(size)
CONFIG_GETTER(crop_scale)
CONFIG_GETTER(crop_ratio)
CONFIG_GETTER(flip)
CONFIG_GETTER(degrees)
CONFIG_GETTER(translate)
CONFIG_GETTER(scale)
CONFIG_GETTER(brightness)
CONFIG_GETTER(contrast)
CONFIG_GETTER(blur_sigma)
CONFIG_GETTER(fill)
CONFIG_GETTER(normalization)
CONFIG_GETTER(seed)

static PyObject *Augment_repr(AugmentObject *self)
{
    PyObject *config = get_config(self, NULL), *parts = NULL, *sep = NULL, *body = NULL,
             *result = NULL;
    if (!config || !(parts = PyList_New(0)))
        goto done;
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(config, &pos, &key, &value)) {
        PyObject *item = PyUnicode_FromFormat("%U=%R", key, value);
        if (!item || PyList_Append(parts, item) < 0) {
            Py_XDECREF(item);
            goto done;
        }
        Py_DECREF(item);
    }
    if (!(sep = PyUnicode_FromString(", ")) || !(body = PyUnicode_Join(sep, parts)))
        goto done;
    result = PyUnicode_FromFormat("ImageAugment(%U)", body);
done:
    Py_XDECREF(config);
    Py_XDECREF(parts);
    Py_XDECREF(sep);
    Py_XDECREF(body);
    return result;
}

static PyGetSetDef Augment_getset[] = {
    {"config", (getter)get_config, NULL,
     "the keyword arguments as a dict: ImageAugment(**aug.config) rebuilds it", NULL},
    {"size", (getter)get_size, NULL, "output size S: images come out S x S", NULL},
    {"crop_scale", (getter)get_crop_scale, NULL, "share of the area a crop keeps, or None",
     NULL},
    {"crop_ratio", (getter)get_crop_ratio, NULL,
     "aspect ratio range of a crop (relative to the image's), or None", NULL},
    {"flip", (getter)get_flip, NULL, "probability of a horizontal flip, or None", NULL},
    {"degrees", (getter)get_degrees, NULL, "rotation range in degrees, or None", NULL},
    {"translate", (getter)get_translate, NULL,
     "largest translation (x, y) as fractions of the size, or None", NULL},
    {"scale", (getter)get_scale, NULL, "affine scale range, or None", NULL},
    {"brightness", (getter)get_brightness, NULL, "brightness factor range, or None", NULL},
    {"contrast", (getter)get_contrast, NULL, "contrast factor range, or None", NULL},
    {"blur_sigma", (getter)get_blur_sigma, NULL, "Gaussian blur sigma range, or None",
     NULL},
    {"fill", (getter)get_fill, NULL, "value of pixels from outside the image, in [0, 1]",
     NULL},
    {"normalization", (getter)get_normalization, NULL,
     "(mean, std) applied last as (x - mean) / std, or None (output in [0, 1])", NULL},
    {"seed", (getter)get_seed, NULL, "the seed of the random parameters", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

/* Pickling (e.g. into DataLoader workers): the settings travel, not the buffers. */
static PyObject *Augment_reduce(AugmentObject *self, PyObject *unused)
{
    (void)unused;
    /* copyreg.__newobj__(type) makes the object without __init__ (which requires the
     * settings); __setstate__ then initialises it from them. */
    PyObject *copyreg = PyImport_ImportModule("copyreg");
    PyObject *newobj = copyreg ? PyObject_GetAttrString(copyreg, "__newobj__") : NULL;
    Py_XDECREF(copyreg);
    PyObject *config = newobj ? get_config(self, NULL) : NULL;
    if (!config) {
        Py_XDECREF(newobj);
        return NULL;
    }
    return Py_BuildValue("(N(O)N)", newobj, (PyObject *)Py_TYPE(self), config);
}

static PyObject *Augment_setstate(AugmentObject *self, PyObject *state)
{
    if (!PyDict_Check(state)) {
        PyErr_SetString(PyExc_TypeError, "ImageAugment state must be a dict of settings");
        return NULL;
    }
    PyObject *args = PyTuple_New(0);
    if (!args)
        return NULL;
    int status = Augment_init(self, args, state);
    Py_DECREF(args);
    if (status < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef Augment_methods[] = {
    {"__reduce__", (PyCFunction)Augment_reduce, METH_NOARGS, "pickle support"},
    {"__setstate__", (PyCFunction)Augment_setstate, METH_O, "pickle support"},
    {"sample_parameters", (PyCFunction)(void (*)(void))Augment_sample_parameters,
     METH_VARARGS | METH_KEYWORDS,
     "sample_parameters($self, /, n, step=0, *, first_index=0)\n--\n\n"
     "Returns a structured array (n,): the random parameters of images first_index .. "
     "first_index + n - 1 of batch `step`:\n"
     "fields crop (x, y, w, h as fractions of the image), flip (bool), angle (degrees,\n"
     "counter-clockwise), translate (x, y as fractions of the output size), scale,\n"
     "brightness, contrast, sigma (0: no blur). A pure function of (seed, step, index);\n"
     "switched-off transforms are drawn as the identity."},
    {"apply", (PyCFunction)(void (*)(void))Augment_apply, METH_VARARGS | METH_KEYWORDS,
     "apply($self, /, images, parameters, *, out=None)\n--\n\n"
     "Returns float32 (N, S, S) or (N, S, S, C): the transforms with the given parameters "
     "(a structured array like the one\n"
     "sample_parameters returns, one record per image), whatever the settings."},
    {NULL, NULL, 0, NULL}};

PyDoc_STRVAR(
    Augment_doc,
    "ImageAugment(size, *, crop_scale, crop_ratio, flip, degrees, translate, scale,\n"
    "             brightness, contrast, blur_sigma, fill=0.0, normalization=None, seed=0)\n"
    "--\n"
    "\n"
    "(convirt.ImageAugment: size=224, crop_scale=(0.6, 1.0), crop_ratio=(3/4, 4/3),\n"
    "flip=0.5, degrees=20.0, translate=0.1, scale=(0.95, 1.05), brightness=(0.6, 1.4),\n"
    "contrast=(0.6, 1.4), blur_sigma=(0.1, 3.0), fill=0.0, normalization=None, seed=0)\n"
    "\n"
    "ConVIRT's random image transforms (Zhang et al. 2020), in C, in this order: a random\n"
    "crop keeping crop_scale of the area with an aspect ratio in crop_ratio (as\n"
    "torchvision's RandomResizedCrop, the ratio relative to the image's), a horizontal\n"
    "flip with probability flip, an affine map (rotation in degrees, translation up to\n"
    "translate of the size, scale), brightness and contrast factors (torchvision's\n"
    "semantics, brightness first), a Gaussian blur with sigma in blur_sigma (radius\n"
    "ceil(3 sigma), mirror padding), at size x size. Crop, flip, affine and resize are "
    "one\n"
    "bilinear resampling pass; samples from outside the crop take the value fill.\n"
    "Each range is a keyword; None or False switches a transform off, True is the paper's\n"
    "range. The defaults are the paper's (convirt/augment.py); "
    "convirt._core.ImageAugment,\n"
    "the C type under convirt.ImageAugment, has none and requires every range.\n"
    "degrees and translate also take one number (+-degrees; the same fraction in x and "
    "y).\n"
    "\n"
    "Call it as ``aug(images, step=0, *, out=None)``. images is a uint8 array (N, H, W) "
    "or\n"
    "(N, H, W, C) with C = 1 or 3, read in place with its strides (a memmap works), or a\n"
    "list of uint8 arrays (H, W[, C]) of different sizes. The result is float32\n"
    "(N, S, S) or (N, S, S, C) in pixel units [0, 1], or (x - mean) / std with\n"
    "normalization=(mean, std) (means in [-1e6, 1e6], stds in [1e-6, 3.4e38]; the\n"
    "brightness and contrast factors are at most 3.4e38, finite in float32: so the\n"
    "output is finite). It is written into ``out`` when given (C-contiguous,\n"
    "float32), else into an array the object reuses on a later call once nothing else\n"
    "refers to it. The random parameters are a pure function of (seed, step, index in\n"
    "the batch): the same on any number of threads. sample_parameters() and apply()\n"
    "split the two halves, so that parameters can be fixed or inspected.\n"
    "Images should be near the output size (the paper resizes to 256 first): the\n"
    "bilinear pass does not antialias when it shrinks.");

static PyTypeObject AugmentType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "convirt._core.ImageAugment",
    .tp_basicsize = sizeof(AugmentObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = Augment_doc,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Augment_init,
    .tp_dealloc = (destructor)Augment_dealloc,
    .tp_call = (ternaryfunc)Augment_call,
    .tp_repr = (reprfunc)Augment_repr,
    .tp_methods = Augment_methods,
    .tp_getset = Augment_getset,
};

/* The dtype of cv_augment_params: its fields in struct order, aligned as C aligns
 * them (checked field by field, so a mismatch fails the import, not the maths). */
static PyArray_Descr *make_param_descr(void)
{
    static const struct {
        const char *name, *format;
        size_t offset;
    } fields[] = {{"crop", "(4,)f8", offsetof(cv_augment_params, crop)},
                  {"angle", "f8", offsetof(cv_augment_params, angle)},
                  {"translate", "(2,)f8", offsetof(cv_augment_params, translate)},
                  {"scale", "f8", offsetof(cv_augment_params, scale)},
                  {"brightness", "f8", offsetof(cv_augment_params, brightness)},
                  {"contrast", "f8", offsetof(cv_augment_params, contrast)},
                  {"sigma", "f8", offsetof(cv_augment_params, sigma)},
                  {"flip", "?", offsetof(cv_augment_params, flip)}};
    const int n = (int)(sizeof fields / sizeof fields[0]);
    PyArray_Descr *descr = NULL;
    PyObject *spec = PyList_New(n);
    if (!spec)
        return NULL;
    for (int k = 0; k < n; k++) {
        PyObject *item = Py_BuildValue("(ss)", fields[k].name, fields[k].format);
        if (!item) {
            Py_DECREF(spec);
            return NULL;
        }
        PyList_SET_ITEM(spec, k, item);
    }
    if (!PyArray_DescrAlignConverter(spec, &descr))
        descr = NULL;
    Py_DECREF(spec);
    if (!descr)
        return NULL;
    int ok = PyDataType_ELSIZE(descr) == (npy_intp)sizeof(cv_augment_params);
    for (int k = 0; k < n && ok; k++) {
        PyObject *field = PyDict_GetItemString(PyDataType_FIELDS(descr), fields[k].name);
        ok = field &&
             PyLong_AsSsize_t(PyTuple_GET_ITEM(field, 1)) == (Py_ssize_t)fields[k].offset;
    }
    if (!ok) {
        Py_DECREF(descr);
        PyErr_SetString(PyExc_ImportError,
                        "convirt: the ImageAugment parameter dtype does not match the C "
                        "struct");
        return NULL;
    }
    return descr;
}

int cv_register_image_augment(PyObject *module)
{
    if (!param_descr && !(param_descr = make_param_descr()))
        return -1;
    if (PyType_Ready(&AugmentType) < 0)
        return -1;
    PyObject *dict = AugmentType.tp_dict;
    if (PyDict_SetItemString(dict, "parameter_dtype", (PyObject *)param_descr) < 0)
        return -1;
    PyType_Modified(&AugmentType);
    return PyModule_AddObjectRef(module, "ImageAugment", (PyObject *)&AugmentType);
}
