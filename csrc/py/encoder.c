/* encoder.c - the Python type convirt._core.Encoder (subclassed by convirt.Encoder).
 *
 * An image (ResNet) or text (BERT) tower with its projection head. It owns the flat
 * parameter, gradient and state buffers and shows them to Python as NumPy views whose
 * base is the encoder; inputs are read in place, outputs go to supplied arrays. */
#include <float.h>

#include "../augment.h"
#include "../bert.h"
#include "../resnet.h"
#include "arrays.h"
#include "errors.h"
#include "module.h"

typedef struct {
    PyObject_HEAD cv_encoder enc;
    int built;
    int is_image;
    int training;
    int busy;
    int in_channels;
    float mean[4], std[4]; /* image normalisation per channel */
    int vocab_size, max_positions, type_vocab_size;
    npy_intp last_h, last_w; /* the last training input, for the input gradient's shape */
    int last_ndim;
    /* The images of the last training forward: the ResNet's backward reads them again
     * (the first convolution's weight gradient), so they are kept alive until then,
     * with where they are and a fingerprint of their values: backward refuses images
     * that changed in between (the gradient would silently be wrong). */
    PyObject *last_input;
    cv_batch last_batch;
    uint64_t last_fingerprint;
    /* Synchronised batch norm: the Python callable the core's reduce hook calls, and
     * the exception it raised (type, value, traceback), raised again after the call. */
    PyObject *bn_reduce;
    PyObject *hook_error[3];
} EncoderObject;

/* ---- construction ------------------------------------------------------------- */

/* Reads an int from a config dict; returns 0, or -1 with an exception. */
static int config_int(PyObject *config, const char *key, int fallback, int *out)
{
    PyObject *value = PyDict_GetItemString(config, key); /* borrowed */
    if (!value) {
        if (fallback == INT32_MIN) {
            PyErr_Format(PyExc_KeyError, "the encoder config needs '%s'", key);
            return -1;
        }
        *out = fallback;
        return 0;
    }
    /* Configs come from checkpoint metadata too: any int, refused clearly. */
    long v = PyLong_AsLong(value);
    if (v == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "config '%s' = %R is out of range", key, value);
        return -1;
    }
    if (v < INT32_MIN + 1 || v > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "config '%s' = %ld is out of range", key, v);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int config_double(PyObject *config, const char *key, double fallback, double *out)
{
    PyObject *value = PyDict_GetItemString(config, key);
    if (!value) {
        *out = fallback;
        return 0;
    }
    *out = PyFloat_AsDouble(value);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static int build_resnet(EncoderObject *self, PyObject *config)
{
    cv_resnet_config rc;
    if (config_int(config, "depth", 50, &rc.depth) ||
        config_int(config, "in_channels", 1, &rc.in_channels))
        return -1;
    if (rc.depth != 18 && rc.depth != 34 && rc.depth != 50) {
        PyErr_Format(PyExc_ValueError, "ResNet depth must be 18, 34 or 50, got %d",
                     rc.depth);
        return -1;
    }
    if (rc.in_channels < 1 || rc.in_channels > 4) {
        PyErr_Format(PyExc_ValueError, "in_channels must be 1..4, got %d", rc.in_channels);
        return -1;
    }
    self->is_image = 1;
    self->in_channels = rc.in_channels;
    for (int c = 0; c < 4; c++) {
        self->mean[c] = 0.5f;
        self->std[c] = 0.25f;
    }
    cv_status status = resnet_create(&self->enc.backbone, &self->enc.table, &rc);
    return status == CV_OK ? 0 : cv_raise(status);
}

static int build_bert(EncoderObject *self, PyObject *config, int *frozen)
{
    cv_bert_config bc;
    if (config_int(config, "vocab_size", INT32_MIN, &bc.vocab_size) ||
        config_int(config, "hidden_size", INT32_MIN, &bc.hidden_size) ||
        config_int(config, "num_hidden_layers", INT32_MIN, &bc.num_layers) ||
        config_int(config, "num_attention_heads", INT32_MIN, &bc.num_heads) ||
        config_int(config, "intermediate_size", INT32_MIN, &bc.intermediate_size) ||
        config_int(config, "max_position_embeddings", 512, &bc.max_position_embeddings) ||
        config_int(config, "type_vocab_size", 2, &bc.type_vocab_size) ||
        config_double(config, "layer_norm_eps", 1e-12, &bc.layer_norm_eps) ||
        config_int(config, "pooling", CV_POOL_MAX, &bc.pooling) ||
        config_int(config, "freeze_layers", 0, &bc.freeze_layers))
        return -1;
    if (bc.vocab_size < 1 || bc.hidden_size < 1 || bc.num_layers < 1 || bc.num_heads < 1 ||
        bc.intermediate_size < 1 || bc.max_position_embeddings < 1 ||
        bc.type_vocab_size < 1) {
        PyErr_SetString(PyExc_ValueError, "BERT sizes must all be >= 1");
        return -1;
    }
    if (bc.hidden_size % bc.num_heads != 0) {
        PyErr_Format(PyExc_ValueError,
                     "hidden_size %d is not a multiple of num_attention_heads %d",
                     bc.hidden_size, bc.num_heads);
        return -1;
    }
    if (bc.pooling < CV_POOL_MAX || bc.pooling > CV_POOL_CLS) {
        PyErr_Format(PyExc_ValueError, "pooling code must be 0 (max), 1 (mean) or 2 (cls)");
        return -1;
    }
    if (bc.freeze_layers < 0 || bc.freeze_layers > bc.num_layers) {
        PyErr_Format(PyExc_ValueError, "freeze_layers must be 0..%d, got %d", bc.num_layers,
                     bc.freeze_layers);
        return -1;
    }
    if (!(bc.layer_norm_eps > 0.0) || !isfinite(bc.layer_norm_eps)) {
        char text[CV_DOUBLE_TEXT];
        PyErr_Format(PyExc_ValueError, "layer_norm_eps must be a finite number > 0, got %s",
                     cv_double_text(bc.layer_norm_eps, text));
        return -1;
    }
    self->is_image = 0;
    self->vocab_size = bc.vocab_size;
    self->max_positions = bc.max_position_embeddings;
    self->type_vocab_size = bc.type_vocab_size;
    cv_status status = bert_create(&self->enc.backbone, &self->enc.table, &bc, frozen);
    return status == CV_OK ? 0 : cv_raise(status);
}

static int Encoder_init(EncoderObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"kind", "config", "proj_dim", "proj_hidden", "seed", NULL};
    const char *kind;
    PyObject *config, *seed_obj = NULL, *dim_obj = NULL, *hidden_obj = NULL;
    Py_ssize_t proj_dim = 512, proj_hidden = 512;
    uint64_t seed = 0;
    int frozen = 0;
    if (self->built) {
        PyErr_SetString(cv_error_state, "an Encoder cannot be initialised twice");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "sO!|$OOO:Encoder", kwlist, &kind,
                                     &PyDict_Type, &config, &dim_obj, &hidden_obj,
                                     &seed_obj) ||
        cv_read_size(dim_obj, "proj_dim", &proj_dim) ||
        cv_read_size(hidden_obj, "proj_hidden", &proj_hidden) ||
        (seed_obj && cv_read_uint64(seed_obj, "seed", &seed)))
        return -1;
    if (proj_dim < 1 || proj_hidden < 1) {
        PyErr_Format(PyExc_ValueError,
                     "proj_dim and proj_hidden must be >= 1, got %zd, %zd", proj_dim,
                     proj_hidden);
        return -1;
    }
    int rc;
    if (!strcmp(kind, "resnet"))
        rc = build_resnet(self, config);
    else if (!strcmp(kind, "bert"))
        rc = build_bert(self, config, &frozen);
    else {
        PyErr_Format(PyExc_ValueError, "kind must be 'resnet' or 'bert', got '%s'", kind);
        return -1;
    }
    if (rc < 0) {
        cv_encoder_free(&self->enc);
        return -1;
    }
    cv_status status;
    Py_BEGIN_ALLOW_THREADS;
    status = cv_encoder_finish(&self->enc, proj_hidden, proj_dim, frozen, seed);
    Py_END_ALLOW_THREADS;
    if (status != CV_OK) {
        cv_encoder_free(&self->enc);
        return cv_raise(status);
    }
    self->built = 1;
    return 0;
}

static void Encoder_dealloc(EncoderObject *self)
{
    Py_CLEAR(self->last_input);
    Py_CLEAR(self->bn_reduce);
    for (int i = 0; i < 3; i++)
        Py_CLEAR(self->hook_error[i]);
    cv_encoder_free(&self->enc);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int check_built(EncoderObject *self)
{
    if (!self->built) {
        PyErr_SetString(cv_error_state, "the Encoder was not initialised");
        return -1;
    }
    return 0;
}

/* ---- synchronised batch norm ----------------------------------------------------------
 */

/* 0 when the reduce left its array as it was given, n float64 values in one block, all
 * finite; else -1 with a ValueError (it reshaped, resized or retyped the array) or a
 * NonFiniteError. */
static int check_reduced(PyArrayObject *array, ptrdiff_t n)
{
    if (PyArray_NDIM(array) != 1 || PyArray_DIM(array, 0) != n ||
        PyArray_TYPE(array) != NPY_FLOAT64 || !PyArray_ISNOTSWAPPED(array) ||
        !PyArray_IS_C_CONTIGUOUS(array)) {
        PyErr_Format(PyExc_ValueError,
                     "the batch-norm reduce must sum its array in place, keeping it a "
                     "contiguous float64 array of %zd values; it left dtype %S, %d "
                     "dimension(s), %zd values",
                     (Py_ssize_t)n, (PyObject *)PyArray_DESCR(array), PyArray_NDIM(array),
                     (Py_ssize_t)PyArray_SIZE(array));
        return -1;
    }
    const double *sums = PyArray_DATA(array);
    for (ptrdiff_t i = 0; i < n; i++)
        if (!isfinite(sums[i])) {
            char text[CV_DOUBLE_TEXT];
            PyErr_Format(cv_error_nonfinite,
                         "the batch-norm reduce returned a non-finite sum: element %zd of "
                         "%zd is %s",
                         (Py_ssize_t)i, (Py_ssize_t)n, cv_double_text(sums[i], text));
            return -1;
        }
    return 0;
}

/* The core's cv_reduce_fn: calls self->bn_reduce(array) with the GIL. The array owns its
 * memory, a copy of the core's n sums: fn may keep it and write to it later (after the
 * call, after the encoder is freed) without touching the core's buffer. fn sums it in
 * place; the result is checked and copied back. An exception is kept for raise_status()
 * and stops the core's call. */
static int bn_reduce_hook(void *user, double *data, ptrdiff_t n)
{
    EncoderObject *self = user;
    PyGILState_STATE gil = PyGILState_Ensure();
    npy_intp dims[1] = {n};
    PyObject *result = NULL;
    PyArrayObject *array = (PyArrayObject *)PyArray_SimpleNew(1, dims, NPY_FLOAT64);
    int failed = 1;
    if (!array)
        goto done;
    memcpy(PyArray_DATA(array), data, (size_t)n * sizeof(double));
    result = PyObject_CallOneArg(self->bn_reduce, (PyObject *)array);
    if (!result || check_reduced(array, n))
        goto done;
    memcpy(data, PyArray_DATA(array), (size_t)n * sizeof(double));
    failed = 0;
done:
    if (failed && !self->hook_error[0])
        PyErr_Fetch(&self->hook_error[0], &self->hook_error[1], &self->hook_error[2]);
    PyErr_Clear();
    Py_XDECREF(result);
    Py_XDECREF(array);
    PyGILState_Release(gil);
    return failed;
}

/* After a core call that failed: the reduce hook's exception if it raised one, else the
 * core's status as the package's exception. */
static void raise_status(EncoderObject *self, cv_status status)
{
    if (self->hook_error[0]) {
        PyErr_Restore(self->hook_error[0], self->hook_error[1], self->hook_error[2]);
        self->hook_error[0] = self->hook_error[1] = self->hook_error[2] = NULL;
        return;
    }
    cv_raise(status);
}

static PyObject *Encoder_set_batchnorm_reduce(EncoderObject *self, PyObject *fn)
{
    if (check_built(self))
        return NULL;
    if (fn != Py_None && !PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError, "the reduce must be callable or None, got %s",
                     Py_TYPE(fn)->tp_name);
        return NULL;
    }
    if (cv_claim(&self->busy, "Encoder"))
        return NULL;
    cv_status status = cv_encoder_set_batchnorm_reduce(
        &self->enc, fn == Py_None ? NULL : bn_reduce_hook, self);
    CV_RELEASE(&self->busy);
    if (status != CV_OK)
        return cv_raise(status), NULL;
    Py_XSETREF(self->bn_reduce, fn == Py_None ? NULL : Py_NewRef(fn));
    Py_RETURN_NONE;
}

/* ---- inputs -------------------------------------------------------------------- */

/* ValueError when arr shares memory with the encoder's own parameters, gradients or
 * state buffers, which a call reads or writes while it reads or writes arr. */
static int check_not_own(EncoderObject *self, PyArrayObject *arr, const char *name)
{
    const cv_encoder *e = &self->enc;
    const size_t params = e->table.n_params * sizeof(float);
    return cv_check_not_in_buffer(arr, name, e->params, params,
                                  "the encoder's parameters") ||
                   cv_check_not_in_buffer(arr, name, e->grads, params,
                                          "the encoder's gradients") ||
                   cv_check_not_in_buffer(arr, name, e->buffers,
                                          e->table.n_buffers * sizeof(float),
                                          "the encoder's buffers")
               ? -1
               : 0;
}

/* Element i, y, x, k of the images as raw bits (strides in elements, any sign). */
static inline uint32_t pixel_bits(const cv_batch *b, npy_intp i, npy_intp y, npy_intp x,
                                  npy_intp k)
{
    const ptrdiff_t at =
        i * b->stride[0] + y * b->stride[1] + x * b->stride[2] + k * b->stride[3];
    if (b->is_uint8)
        return ((const uint8_t *)b->pixels)[at];
    uint32_t bits;
    memcpy(&bits, (const float *)b->pixels + at, sizeof bits);
    return bits;
}

/* A fingerprint of the images' values: Fletcher-style running sums of every element in
 * order, so a changed, added or moved value changes it. Taken at a training forward
 * and checked at backward, which reads the images again; costs one pass over the
 * input, next to a forward and backward that cost thousands of operations per pixel. */
static uint64_t image_fingerprint(const cv_batch *b)
{
    uint64_t s1 = 0, s2 = 0;
    for (npy_intp i = 0; i < b->n; i++)
        for (npy_intp y = 0; y < b->h; y++)
            for (npy_intp x = 0; x < b->w; x++)
                for (npy_intp k = 0; k < b->c; k++) {
                    s1 += pixel_bits(b, i, y, x, k);
                    s2 += s1;
                }
    return s1 ^ (s2 * 0x9E3779B97F4A7C15ULL);
}

static int images_finite(const cv_batch *b)
{
    const float *p = b->pixels;
    int finite = 1;
    for (npy_intp i = 0; i < b->n && finite; i++)
        for (npy_intp y = 0; y < b->h && finite; y++)
            for (npy_intp x = 0; x < b->w; x++)
                for (npy_intp k = 0; k < b->c; k++)
                    finite &= isfinite(p[i * b->stride[0] + y * b->stride[1] +
                                         x * b->stride[2] + k * b->stride[3]]) != 0;
    return finite;
}

/* Validates images for the encoder and fills batch. With fingerprint, also takes the
 * input's fingerprint (training). */
static int encoder_images(EncoderObject *self, PyObject *obj, cv_batch *batch,
                          PyArrayObject **arr, uint64_t *fingerprint)
{
    cv_array_spec spec = {"images", -1, 3, 4, {-1, -1, -1, -1}, 0, 0};
    if (cv_check_array(obj, &spec, arr))
        return -1;
    ptrdiff_t strides[4];
    if (cv_element_strides(*arr, "images", strides) || check_not_own(self, *arr, "images"))
        return -1;
    int nd = PyArray_NDIM(*arr);
    npy_intp c = nd == 4 ? PyArray_DIM(*arr, 3) : 1;
    if (c != self->in_channels) {
        PyErr_Format(
            PyExc_ValueError,
            "images have %ld channel(s) but the encoder was built for in_channels=%d "
            "(pass (N, H, W) for 1 channel, (N, H, W, C) otherwise)",
            (long)c, self->in_channels);
        return -1;
    }
    npy_intp n = PyArray_DIM(*arr, 0), h = PyArray_DIM(*arr, 1), w = PyArray_DIM(*arr, 2);
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "images is an empty batch (N = 0)");
        return -1;
    }
    if (h < 32 || w < 32) {
        PyErr_Format(PyExc_ValueError,
                     "images must be at least 32 x 32 pixels, got %ld x %ld", (long)h,
                     (long)w);
        return -1;
    }
    memset(batch, 0, sizeof *batch);
    batch->kind = CV_INPUT_IMAGES;
    batch->n = n;
    batch->pixels = PyArray_DATA(*arr);
    batch->is_uint8 = PyArray_TYPE(*arr) == NPY_UINT8;
    batch->h = h;
    batch->w = w;
    batch->c = c;
    for (int i = 0; i < 3; i++)
        batch->stride[i] = strides[i];
    batch->stride[3] = nd == 4 ? strides[3] : 1;
    batch->mean = self->mean;
    batch->std = self->std;
    /* Before any pass over the pixels: a view with overlapping strides can claim more
     * pixels than memory could ever hold activations for. */
    cv_status status = cv_encoder_check_batch(&self->enc, batch);
    if (status != CV_OK)
        return cv_raise(status);
    int finite = 1;
    Py_BEGIN_ALLOW_THREADS;
    if (!batch->is_uint8)
        finite = images_finite(batch);
    if (finite && fingerprint)
        *fingerprint = image_fingerprint(batch);
    Py_END_ALLOW_THREADS;
    if (!finite) {
        PyErr_SetString(cv_error_nonfinite, "images contain NaN or Inf");
        return -1;
    }
    return 0;
}

static int token_array(PyObject *obj, const char *name, npy_intp n, npy_intp t,
                       PyArrayObject **arr, ptrdiff_t *strides)
{
    cv_array_spec spec = {name, NPY_INT32, 2, 2, {n, t, -1, -1}, 0, 0};
    return cv_check_array(obj, &spec, arr) || cv_element_strides(*arr, name, strides) ? -1
                                                                                      : 0;
}

/* Token ids, attention mask and optional token types, validated for a text encoder. */
static int token_batch(EncoderObject *self, PyObject *ids_obj, PyObject *mask_obj,
                       PyObject *types_obj, cv_batch *batch)
{
    PyArrayObject *ids, *mask, *types;
    memset(batch, 0, sizeof *batch);
    if (token_array(ids_obj, "input_ids", -1, -1, &ids, batch->ids_stride))
        return -1;
    npy_intp n = PyArray_DIM(ids, 0), t = PyArray_DIM(ids, 1);
    if (n < 1 || t < 1) {
        PyErr_Format(PyExc_ValueError, "input_ids is empty: shape (%ld, %ld)", (long)n,
                     (long)t);
        return -1;
    }
    if (t > self->max_positions) {
        PyErr_Format(PyExc_ValueError,
                     "sequences of %ld tokens are longer than the position table (%d)",
                     (long)t, self->max_positions);
        return -1;
    }
    /* before the pass over the tokens below (overlapping views can claim many rows) */
    batch->kind = CV_INPUT_TOKENS;
    batch->n = n;
    batch->t = t;
    cv_status status = cv_encoder_check_batch(&self->enc, batch);
    if (status != CV_OK)
        return cv_raise(status);
    if (!mask_obj || mask_obj == Py_None) {
        PyErr_SetString(PyExc_ValueError,
                        "text input needs attention_mask (int32, same shape as input_ids)");
        return -1;
    }
    if (token_array(mask_obj, "attention_mask (same shape as input_ids)", n, t, &mask,
                    batch->mask_stride))
        return -1;
    batch->token_types = NULL;
    if (types_obj && types_obj != Py_None) {
        if (token_array(types_obj, "token_type_ids (same shape as input_ids)", n, t, &types,
                        batch->types_stride))
            return -1;
        batch->token_types = PyArray_DATA(types);
    }
    batch->kind = CV_INPUT_TOKENS;
    batch->n = n;
    batch->t = t;
    batch->ids = PyArray_DATA(ids);
    batch->mask = PyArray_DATA(mask);
    /* Values: ids in the vocabulary, mask 0/1 with a token in every row, types in range. */
    for (npy_intp i = 0; i < n; i++) {
        int valid = 0;
        for (npy_intp j = 0; j < t; j++) {
            int32_t id = batch->ids[i * batch->ids_stride[0] + j * batch->ids_stride[1]];
            int32_t m = batch->mask[i * batch->mask_stride[0] + j * batch->mask_stride[1]];
            if (m != 0 && m != 1) {
                PyErr_Format(PyExc_ValueError,
                             "attention_mask[%ld, %ld] = %d; it must be 0 or 1", (long)i,
                             (long)j, m);
                return -1;
            }
            if (id < 0 || id >= self->vocab_size) {
                PyErr_Format(PyExc_ValueError,
                             "input_ids[%ld, %ld] = %d is outside the vocabulary [0, %d)",
                             (long)i, (long)j, id, self->vocab_size);
                return -1;
            }
            if (batch->token_types) {
                int32_t ty = batch->token_types[i * batch->types_stride[0] +
                                                j * batch->types_stride[1]];
                if (ty < 0 || ty >= self->type_vocab_size) {
                    PyErr_Format(PyExc_ValueError,
                                 "token_type_ids[%ld, %ld] = %d is outside [0, %d)",
                                 (long)i, (long)j, ty, self->type_vocab_size);
                    return -1;
                }
            }
            valid += m;
        }
        if (!valid) {
            PyErr_Format(PyExc_ValueError,
                         "sequence %ld has no valid token in attention_mask", (long)i);
            return -1;
        }
    }
    return 0;
}

/* An (n, dim) float32 output: the caller's C-contiguous writeable array (over none of
 * the inputs, nor the encoder's own buffers) or a new one. */
static PyArrayObject *output_matrix(EncoderObject *self, PyObject *given, const char *name,
                                    npy_intp n, npy_intp dim,
                                    const cv_named_array inputs[3])
{
    cv_array_spec spec = {name, NPY_FLOAT32, 2, 2, {n, dim, -1, -1}, 1, 1};
    PyArrayObject *arr = cv_output_array(given, &spec, name, inputs, 3, NULL);
    if (arr && check_not_own(self, arr, name))
        Py_CLEAR(arr);
    return arr;
}

/* ---- forward / backward ----------------------------------------------------------- */

static PyObject *Encoder_forward(EncoderObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"x",          "attention_mask", "token_type_ids", "features",
                             "embeddings", "features_out",   "embeddings_out", NULL};
    PyObject *x, *mask = NULL, *types = NULL, *feat_out = NULL, *emb_out = NULL;
    int want_features = 1, want_embeddings = 1;
    PyArrayObject *image_arr = NULL, *feats = NULL, *embs = NULL;
    uint64_t fingerprint = 0;
    cv_batch batch;
    cv_status status;
    if (check_built(self))
        return NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OO$ppOO:forward", kwlist, &x, &mask,
                                     &types, &want_features, &want_embeddings, &feat_out,
                                     &emb_out))
        return NULL;
    if (self->is_image) {
        if ((mask && mask != Py_None) || (types && types != Py_None)) {
            PyErr_SetString(PyExc_TypeError, "an image encoder takes no attention_mask");
            return NULL;
        }
        if (encoder_images(self, x, &batch, &image_arr,
                           self->training ? &fingerprint : NULL))
            return NULL;
    } else if (token_batch(self, x, mask, types, &batch)) {
        return NULL;
    }
    if (!want_features && !want_embeddings) {
        PyErr_SetString(PyExc_ValueError,
                        "nothing to compute: features and embeddings are both False");
        return NULL;
    }
    /* (PyArray_Check: a text encoder's optional inputs may be None) */
    const cv_named_array inputs[3] = {
        {PyArray_Check(x) ? (PyArrayObject *)x : NULL, "the input"},
        {!self->is_image && mask && PyArray_Check(mask) ? (PyArrayObject *)mask : NULL,
         "attention_mask"},
        {!self->is_image && types && PyArray_Check(types) ? (PyArrayObject *)types : NULL,
         "token_type_ids"}};
    if (want_features && !(feats = output_matrix(self, feat_out, "features_out", batch.n,
                                                 self->enc.feature_dim, inputs)))
        goto error;
    if (want_embeddings && !(embs = output_matrix(self, emb_out, "embeddings_out", batch.n,
                                                  self->enc.proj_dim, inputs)))
        goto error;
    /* Both outputs are written during the call: one over the other would be garbage. */
    if (feats && embs && cv_check_no_overlap(embs, "embeddings_out", feats, "features_out"))
        goto error;
    if (cv_claim(&self->busy, "Encoder"))
        goto error;
    Py_BEGIN_ALLOW_THREADS;
    status = cv_encoder_forward(&self->enc, feats ? PyArray_DATA(feats) : NULL,
                                embs ? PyArray_DATA(embs) : NULL, &batch, self->training);
    Py_END_ALLOW_THREADS;
    CV_RELEASE(&self->busy);
    if (status != CV_OK) {
        raise_status(self, status);
        goto error;
    }
    Py_CLEAR(self->last_input);
    if (self->is_image && self->training) {
        self->last_h = batch.h;
        self->last_w = batch.w;
        self->last_ndim = PyArray_NDIM(image_arr);
        self->last_input = Py_NewRef((PyObject *)image_arr);
        self->last_batch = batch;
        self->last_fingerprint = fingerprint;
    }
    return Py_BuildValue("(NN)", feats ? (PyObject *)feats : Py_NewRef(Py_None),
                         embs ? (PyObject *)embs : Py_NewRef(Py_None));
error:
    Py_XDECREF(feats);
    Py_XDECREF(embs);
    return NULL;
}

static int gradient_input(EncoderObject *self, PyObject *obj, const char *name, npy_intp n,
                          npy_intp dim, PyArrayObject **arr)
{
    cv_array_spec spec = {name, NPY_FLOAT32, 2, 2, {n, dim, -1, -1}, 0, 1};
    if (cv_check_array(obj, &spec, arr) || check_not_own(self, *arr, name))
        return -1;
    const float *p = PyArray_DATA(*arr);
    for (npy_intp i = 0; i < n * dim; i++)
        if (!isfinite(p[i])) {
            PyErr_Format(cv_error_nonfinite, "%s contains NaN or Inf", name);
            return -1;
        }
    return 0;
}

static PyObject *Encoder_backward(EncoderObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"d_embeddings", "d_features", "input_grad", NULL};
    PyObject *de_obj = Py_None, *df_obj = Py_None;
    int want_input = 0;
    PyArrayObject *de = NULL, *df = NULL, *d_input = NULL;
    cv_status status;
    if (check_built(self))
        return NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO$p:backward", kwlist, &de_obj, &df_obj,
                                     &want_input))
        return NULL;
    if (!self->enc.has_forward) {
        PyErr_SetString(cv_error_state,
                        "backward needs a forward in training mode first (call train())");
        return NULL;
    }
    npy_intp n = self->enc.n;
    if (de_obj == Py_None && df_obj == Py_None) {
        PyErr_SetString(PyExc_ValueError, "give d_embeddings and/or d_features");
        return NULL;
    }
    if (de_obj != Py_None &&
        gradient_input(self, de_obj, "d_embeddings", n, self->enc.proj_dim, &de))
        return NULL;
    if (df_obj != Py_None &&
        gradient_input(self, df_obj, "d_features", n, self->enc.feature_dim, &df))
        return NULL;
    if (want_input && !self->is_image) {
        PyErr_SetString(PyExc_ValueError, "input_grad is only defined for images");
        return NULL;
    }
    if (cv_claim(&self->busy, "Encoder"))
        return NULL;
    /* The ResNet's backward reads the forward's images again (the first convolution's
     * weight gradient): refuse images that changed since, rather than return a gradient
     * of data that was never forwarded. Without the backbone's backward (a frozen
     * backbone and no input gradient) the images are not read. Checked while the
     * encoder is claimed, so no other thread's forward replaces them meanwhile. */
    if (self->is_image && self->last_input && !(self->enc.freeze_backbone && !want_input)) {
        uint64_t now;
        Py_BEGIN_ALLOW_THREADS;
        now = image_fingerprint(&self->last_batch);
        Py_END_ALLOW_THREADS;
        if (now != self->last_fingerprint) {
            PyErr_SetString(cv_error_state,
                            "the images given to forward() changed before backward(), "
                            "which reads them again: the gradient would be wrong. Leave "
                            "the input unchanged until backward, or run forward again");
            goto error;
        }
    }
    /* The input gradient has the shape of the last training input. */
    float *d_input_ptr = NULL;
    if (want_input) {
        npy_intp shape[4] = {n, self->last_h, self->last_w, self->in_channels};
        if (!(d_input = cv_new_float_array(self->last_ndim, shape)))
            goto error;
        d_input_ptr = PyArray_DATA(d_input);
    }
    Py_BEGIN_ALLOW_THREADS;
    status = cv_encoder_backward(&self->enc, d_input_ptr, de ? PyArray_DATA(de) : NULL,
                                 df ? PyArray_DATA(df) : NULL);
    Py_END_ALLOW_THREADS;
    if (status != CV_OK) {
        raise_status(self, status);
        goto error;
    }
    CV_RELEASE(&self->busy);
    if (d_input)
        return (PyObject *)d_input;
    Py_RETURN_NONE;
error:
    CV_RELEASE(&self->busy);
    Py_XDECREF(d_input);
    return NULL;
}

/* The last layer's token outputs of the last forward (text only), (N, T, hidden). */
static PyObject *Encoder_last_hidden_state(EncoderObject *self, PyObject *unused)
{
    (void)unused;
    ptrdiff_t n, t, hidden;
    cv_status status;
    if (check_built(self))
        return NULL;
    if (self->is_image) {
        PyErr_SetString(PyExc_ValueError,
                        "last_hidden_state exists only for a text encoder");
        return NULL;
    }
    if (cv_claim(&self->busy, "Encoder"))
        return NULL;
    status = bert_last_shape(&self->enc.backbone, &n, &t, &hidden);
    if (status != CV_OK) {
        CV_RELEASE(&self->busy);
        cv_raise(status);
        return NULL;
    }
    npy_intp shape[3] = {n, t, hidden};
    PyArrayObject *out = cv_new_float_array(3, shape);
    if (!out) {
        CV_RELEASE(&self->busy);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS;
    status = bert_last_hidden(&self->enc.backbone, PyArray_DATA(out), n, t);
    Py_END_ALLOW_THREADS;
    CV_RELEASE(&self->busy);
    if (status != CV_OK) {
        Py_DECREF(out);
        cv_raise(status);
        return NULL;
    }
    return (PyObject *)out;
}

static PyObject *Encoder_zero_grad(EncoderObject *self, PyObject *unused)
{
    (void)unused;
    if (check_built(self) || cv_claim(&self->busy, "Encoder"))
        return NULL;
    Py_BEGIN_ALLOW_THREADS;
    cv_encoder_zero_grad(&self->enc);
    Py_END_ALLOW_THREADS;
    CV_RELEASE(&self->busy);
    Py_RETURN_NONE;
}

/* ---- buffers as NumPy views ---------------------------------------------------------- */

/* A 1-D view of count floats of the encoder's buffers (base: the encoder). */
static PyObject *flat_view(EncoderObject *self, float *data, size_t count)
{
    npy_intp shape[1] = {(npy_intp)count};
    return cv_owned_view((PyObject *)self, data, 1, shape, 1);
}

static PyObject *get_flat_parameters(EncoderObject *self, void *closure)
{
    (void)closure;
    if (check_built(self))
        return NULL;
    return flat_view(self, self->enc.params, self->enc.table.n_params);
}

static PyObject *get_flat_gradients(EncoderObject *self, void *closure)
{
    (void)closure;
    if (check_built(self))
        return NULL;
    return flat_view(self, self->enc.grads, self->enc.table.n_params);
}

static PyObject *get_flat_buffers(EncoderObject *self, void *closure)
{
    (void)closure;
    if (check_built(self))
        return NULL;
    return flat_view(self, self->enc.buffers, self->enc.table.n_buffers);
}

/* [(name, shape, offset, size, is_buffer, frozen, layout)] in declaration order. */
static PyObject *get_tensor_table(EncoderObject *self, void *closure)
{
    (void)closure;
    if (check_built(self))
        return NULL;
    const cv_tensor_table *t = &self->enc.table;
    PyObject *list = PyList_New(t->count);
    if (!list)
        return NULL;
    for (int i = 0; i < t->count; i++) {
        const cv_tensor *x = &t->tensors[i];
        PyObject *shape = PyTuple_New(x->ndim);
        if (!shape) {
            Py_DECREF(list);
            return NULL;
        }
        for (int d = 0; d < x->ndim; d++)
            PyTuple_SET_ITEM(shape, d, PyLong_FromLongLong(x->shape[d]));
        PyObject *row = Py_BuildValue(
            "(sNnnOOs)", x->name, shape, (Py_ssize_t)x->offset, (Py_ssize_t)x->size,
            x->is_buffer ? Py_True : Py_False, x->frozen ? Py_True : Py_False,
            x->layout == CV_LAYOUT_KRSC ? "KRSC" : "torch");
        if (!row) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, row);
    }
    return list;
}

static PyObject *get_training(EncoderObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->training);
}

static int set_bool(PyObject *value, int *field, const char *name)
{
    if (!value) {
        PyErr_Format(PyExc_AttributeError, "%s cannot be deleted", name);
        return -1;
    }
    int v = PyObject_IsTrue(value);
    if (v < 0)
        return -1;
    *field = v;
    return 0;
}

static int set_training(EncoderObject *self, PyObject *value, void *closure)
{
    (void)closure;
    if (cv_check_idle(self->busy, "Encoder"))
        return -1;
    return set_bool(value, &self->training, "training");
}

static PyObject *get_freeze_backbone(EncoderObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->enc.freeze_backbone);
}

static int set_freeze_backbone(EncoderObject *self, PyObject *value, void *closure)
{
    (void)closure;
    if (cv_check_idle(self->busy, "Encoder"))
        return -1;
    return set_bool(value, &self->enc.freeze_backbone, "freeze_backbone");
}

static PyObject *get_trainable_offset(EncoderObject *self, void *closure)
{
    (void)closure;
    size_t offset =
        self->enc.freeze_backbone ? self->enc.head.w1_offset : self->enc.trainable_offset;
    return PyLong_FromSize_t(offset);
}

static PyObject *get_kind(EncoderObject *self, void *closure)
{
    (void)closure;
    return PyUnicode_FromString(self->is_image ? "image" : "text");
}

static PyObject *get_feature_dim(EncoderObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->enc.feature_dim);
}

static PyObject *get_proj_dim(EncoderObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->enc.proj_dim);
}

static PyObject *get_in_channels(EncoderObject *self, void *closure)
{
    (void)closure;
    if (!self->is_image)
        Py_RETURN_NONE;
    return PyLong_FromLong(self->in_channels);
}

/* normalization: (mean, std) tuples of in_channels floats, for images */
static PyObject *get_normalization(EncoderObject *self, void *closure)
{
    (void)closure;
    if (!self->is_image)
        Py_RETURN_NONE;
    PyObject *mean = PyTuple_New(self->in_channels), *std = PyTuple_New(self->in_channels);
    if (!mean || !std) {
        Py_XDECREF(mean);
        Py_XDECREF(std);
        return NULL;
    }
    for (int c = 0; c < self->in_channels; c++) {
        PyTuple_SET_ITEM(mean, c, PyFloat_FromDouble(self->mean[c]));
        PyTuple_SET_ITEM(std, c, PyFloat_FromDouble(self->std[c]));
    }
    return Py_BuildValue("(NN)", mean, std);
}

static int read_channels(PyObject *seq, const char *name, int channels, float *out,
                         int positive)
{
    if (PyUnicode_Check(seq) || PyBytes_Check(seq)) { /* a sequence, but of characters */
        PyErr_Format(PyExc_TypeError,
                     "normalization %s must be a sequence of numbers (one per channel), "
                     "got %R",
                     name, seq);
        return -1;
    }
    PyObject *fast = PySequence_Fast(seq, "normalization must be (mean, std) sequences");
    if (!fast)
        return -1;
    Py_ssize_t len = PySequence_Fast_GET_SIZE(fast);
    if (len != channels && len != 1) {
        if (channels == 1)
            PyErr_Format(PyExc_ValueError,
                         "normalization %s needs 1 value (the images have 1 channel), got "
                         "%zd",
                         name, len);
        else
            PyErr_Format(PyExc_ValueError,
                         "normalization %s needs 1 or %d values (one per channel), got %zd",
                         name, channels, len);
        Py_DECREF(fast);
        return -1;
    }
    for (int c = 0; c < channels; c++) {
        double v = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(fast, len == 1 ? 0 : c));
        if (v == -1.0 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
        /* ImageAugment's bounds: within them (x - mean) / std stays finite */
        if (positive ? !cv_augment_std_ok(v) : !cv_augment_mean_ok(v)) {
            char text[CV_DOUBLE_TEXT];
            PyErr_Format(PyExc_ValueError, "%s values must be in %s, got %s", name,
                         positive ? "[1e-6, 3.4e38]" : "[-1e6, 1e6]",
                         cv_double_text(v, text));
            Py_DECREF(fast);
            return -1;
        }
        out[c] = (float)v;
    }
    Py_DECREF(fast);
    return 0;
}

static int set_normalization(EncoderObject *self, PyObject *value, void *closure)
{
    (void)closure;
    float mean[4], std[4];
    if (!value) {
        PyErr_SetString(PyExc_AttributeError, "normalization cannot be deleted");
        return -1;
    }
    if (!self->is_image) {
        PyErr_SetString(PyExc_AttributeError, "a text encoder has no image normalization");
        return -1;
    }
    if (!PyTuple_Check(value) || PyTuple_GET_SIZE(value) != 2) {
        PyErr_SetString(PyExc_TypeError, "normalization must be a (mean, std) tuple");
        return -1;
    }
    if (read_channels(PyTuple_GET_ITEM(value, 0), "mean", self->in_channels, mean, 0) ||
        read_channels(PyTuple_GET_ITEM(value, 1), "std", self->in_channels, std, 1))
        return -1;
    if (cv_check_idle(self->busy, "Encoder"))
        return -1;
    memcpy(self->mean, mean, sizeof mean);
    memcpy(self->std, std, sizeof std);
    return 0;
}

static PyGetSetDef Encoder_getset[] = {
    {"flat_parameters", (getter)get_flat_parameters, NULL,
     "all parameters as one float32 view (base: the encoder)", NULL},
    {"flat_gradients", (getter)get_flat_gradients, NULL,
     "all gradients, same layout as flat_parameters", NULL},
    {"flat_buffers", (getter)get_flat_buffers, NULL,
     "state that is saved but not trained (batch-norm running statistics)", NULL},
    {"tensor_table", (getter)get_tensor_table, NULL,
     "[(name, shape, offset, size, is_buffer, frozen, layout)] of every tensor", NULL},
    {"training", (getter)get_training, (setter)set_training,
     "training mode: forward keeps what backward needs; batch norm uses batch statistics",
     NULL},
    {"freeze_backbone", (getter)get_freeze_backbone, (setter)set_freeze_backbone,
     "when True, backward stops at the projection head", NULL},
    {"trainable_offset", (getter)get_trainable_offset, NULL,
     "flat_parameters[trainable_offset:] are the trained parameters", NULL},
    {"kind", (getter)get_kind, NULL, "'image' or 'text'", NULL},
    {"feature_dim", (getter)get_feature_dim, NULL, "width of the backbone features h",
     NULL},
    {"proj_dim", (getter)get_proj_dim, NULL, "width of the projected embeddings", NULL},
    {"in_channels", (getter)get_in_channels, NULL, "image channels (None for text)", NULL},
    {"normalization", (getter)get_normalization, (setter)set_normalization,
     "(mean, std) per channel: the network sees (x / 255 - mean) / std for uint8, "
     "(x - mean) / std for float32",
     NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyMethodDef Encoder_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))Encoder_forward, METH_VARARGS | METH_KEYWORDS,
     "forward($self, /, x, attention_mask=None, token_type_ids=None, *, features=True, "
     "embeddings=True, features_out=None, embeddings_out=None)\n--\n\n"
     "Returns (features, embeddings). features_out / embeddings_out: C-contiguous float32 "
     "arrays written in place; they "
     "may not overlap each other, the inputs or the encoder's own buffers (ValueError). "
     "In training mode the images must stay unchanged until backward(), which reads "
     "them again: it raises RuntimeError if they changed. Ctrl-C interrupts a long call "
     "(KeyboardInterrupt; a stopped training forward may have updated some batch-norm "
     "running statistics)."},
    {"backward", (PyCFunction)(void (*)(void))Encoder_backward,
     METH_VARARGS | METH_KEYWORDS,
     "backward($self, /, d_embeddings=None, d_features=None, *, input_grad=False)\n--\n\n"
     "Returns the input gradient or None; adds into the gradients. Images: the input "
     "gradient is float32 with the "
     "input's shape, with respect to the pixel values as given (through the "
     "normalisation, so a uint8 input's gradient is per unit of pixel value). "
     "RuntimeError when the forward's images changed since (the gradient would be "
     "wrong). A Ctrl-C that stops it leaves partial gradients: zero_grad() before the "
     "next step."},
    {"zero_grad", (PyCFunction)Encoder_zero_grad, METH_NOARGS,
     "zero_grad($self, /)\n--\n\nSet all gradients to zero."},
    {"set_batchnorm_reduce", (PyCFunction)Encoder_set_batchnorm_reduce, METH_O,
     "set_batchnorm_reduce($self, fn, /)\n--\n\nSynchronised batch norm for data-parallel "
     "training (image encoders). Training forwards and backwards call fn(array) with a "
     "C-contiguous float64 array (n,) of per-channel sums, which fn must replace in place "
     "by their sum over the processes (e.g. an MPI all-reduce), so that the batch "
     "statistics are those of every process's images together. The array is a copy that "
     "owns its memory (fn may keep it; later writes change nothing); its values are read "
     "back when fn returns (fn's return value is ignored). An exception from fn stops "
     "the call and is raised from it; so does a ValueError when fn left the array "
     "another shape or dtype, and a NonFiniteError when it left a NaN or Inf in it. None "
     "turns it off. ValueError for a text encoder (no batch norm)."},
    {"last_hidden_state", (PyCFunction)Encoder_last_hidden_state, METH_NOARGS,
     "last_hidden_state($self, /)\n--\n\n"
     "float32 (N, T, hidden): the last BERT layer's token outputs "
     "of the last forward (text only), zeros at padded positions"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "convirt._core.Encoder",
    .tp_basicsize = sizeof(EncoderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Encoder(kind, config, *, proj_dim=512, proj_hidden=512, seed=0)\n--\n\n"
              "The C encoder: a ResNet or BERT backbone with its projection head. Use "
              "convirt.Encoder.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Encoder_init,
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_methods = Encoder_methods,
    .tp_getset = Encoder_getset,
};

int cv_register_encoder(PyObject *module)
{
    if (PyType_Ready(&EncoderType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "Encoder", (PyObject *)&EncoderType);
}
