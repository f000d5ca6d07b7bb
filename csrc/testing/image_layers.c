/* image_layers.c - the image layers of the core one at a time (conv.c, batchnorm.c,
 * pool.c), fast and naive, for the tests (convirt._testing):
 *
 *   conv2d_forward(x, weight, stride=1, pad=0, *, reference=False, mean=None, std=None)
 *   conv2d_backward(dout, x, weight, stride=1, pad=0, *, dx=None, dw=None, add=True,
 *                   reference=False, mean=None, std=None, prologue=False) -> (dx, dw)
 *     (prologue: dout reaches the convolution a tile of rows at a time, copied by a
 *     conv_prologue, as the batch norm's fused backward gives it)
 *   bn_statistics(y) -> (mean, var)
 *   batchnorm_forward(y, gamma, beta, running_mean, running_var, *, training=True,
 *                     relu=False, residual=None) -> (out, mean, invstd)
 *   bn_apply(y, scale, shift, *, residual=None, res_y=None, res_scale=None,
 *            res_shift=None, relu=True) -> out
 *   batchnorm_backward(dout, y, mean, invstd, gamma, *, out=None) -> (dy, dgamma, dbeta)
 *   bn_block_end(dout, out, y_a, mean_a, invstd_a, y_b=None, mean_b=None, invstd_b=None)
 *       -> (dz, sum_dz, sum_dzx_a, sum_dzx_b)
 *   maxpool_forward(x, k=3, stride=2, pad=1, *, reference=False) -> out
 *   maxpool_backward(dout, x, out, k=3, stride=2, pad=1, *, reference=False) -> dx
 *     (the fast one runs the forward again for its argmax; out is checked for shape)
 *   avgpool_forward(x) -> (n, c);  avgpool_backward(dout, h, w) -> (n, h, w, c)
 *
 * Activations are float32 C-contiguous (n, h, w, c); convolution weights (k, r, s, c).
 * With mean and std, conv2d_* read x as images (uint8 or float32, (n, h, w) or
 * (n, h, w, c), any strides), normalised on the fly as the encoder does. */
#include "../layers.h"
#include "../py/arrays.h"
#include "../py/errors.h"
#include "testing.h"

/* A float32 C-contiguous array argument of ndim dimensions (shape entries < 0: any). */
static int tensor_arg(PyObject *obj, const char *name, int ndim, npy_intp d0, npy_intp d1,
                      npy_intp d2, npy_intp d3, int writeable, PyArrayObject **out)
{
    cv_array_spec spec = {name, NPY_FLOAT32, ndim, ndim, {d0, d1, d2, d3}, writeable, 1};
    return cv_check_array(obj, &spec, out);
}

static PyArrayObject *new_zeros(int ndim, npy_intp d0, npy_intp d1, npy_intp d2,
                                npy_intp d3)
{
    npy_intp shape[4] = {d0, d1, d2, d3};
    return (PyArrayObject *)PyArray_ZEROS(ndim, shape, NPY_FLOAT32, 0);
}

/* x as a convolution input: a tensor, or images when mean/std are given. */
typedef struct {
    conv_input in;
    npy_intp n, h, w, c;
} layer_input;

static int read_floats(PyObject *seq, const char *name, float *out, npy_intp count)
{
    PyObject *fast = PySequence_Fast(seq, "mean and std must be sequences of floats");
    if (!fast)
        return -1;
    if (PySequence_Fast_GET_SIZE(fast) != count) {
        PyErr_Format(PyExc_ValueError, "%s needs %ld values, got %zd", name, (long)count,
                     PySequence_Fast_GET_SIZE(fast));
        Py_DECREF(fast);
        return -1;
    }
    for (npy_intp i = 0; i < count; i++) {
        double v = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(fast, i));
        if (v == -1.0 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
        out[i] = (float)v;
    }
    Py_DECREF(fast);
    return 0;
}

static int input_arg(PyObject *x_obj, PyObject *mean_obj, PyObject *std_obj,
                     layer_input *li)
{
    PyArrayObject *x;
    if ((mean_obj == Py_None) != (std_obj == Py_None)) {
        PyErr_SetString(PyExc_ValueError,
                        "give both mean and std (images) or neither (tensor)");
        return -1;
    }
    if (mean_obj == Py_None) {
        if (tensor_arg(x_obj, "x", 4, -1, -1, -1, -1, 0, &x))
            return -1;
        li->n = PyArray_DIM(x, 0);
        li->h = PyArray_DIM(x, 1);
        li->w = PyArray_DIM(x, 2);
        li->c = PyArray_DIM(x, 3);
        conv_input_tensor(&li->in, PyArray_DATA(x));
        return 0;
    }
    cv_array_spec spec = {"images", -1, 3, 4, {-1, -1, -1, -1}, 0, 0};
    ptrdiff_t strides[4];
    if (cv_check_array(x_obj, &spec, &x) || cv_element_strides(x, "images", strides))
        return -1;
    int nd = PyArray_NDIM(x);
    li->n = PyArray_DIM(x, 0);
    li->h = PyArray_DIM(x, 1);
    li->w = PyArray_DIM(x, 2);
    li->c = nd == 4 ? PyArray_DIM(x, 3) : 1;
    if (nd == 3)
        strides[3] = 1;
    if (li->c > CONV_MAX_PIXEL_CHANNELS) {
        PyErr_Format(PyExc_ValueError, "images may have up to %d channels, got %ld",
                     CONV_MAX_PIXEL_CHANNELS, (long)li->c);
        return -1;
    }
    float mean[CONV_MAX_PIXEL_CHANNELS], std[CONV_MAX_PIXEL_CHANNELS];
    if (read_floats(mean_obj, "mean", mean, li->c) ||
        read_floats(std_obj, "std", std, li->c))
        return -1;
    cv_status st = conv_input_pixels(&li->in, PyArray_DATA(x), PyArray_TYPE(x) == NPY_UINT8,
                                     strides, li->c, mean, std);
    return st == CV_OK ? 0 : cv_raise(st);
}

static int conv_geometry(const layer_input *li, PyArrayObject *weight, Py_ssize_t stride,
                         Py_ssize_t pad, conv_shape *shape)
{
    if (PyArray_DIM(weight, 3) != li->c) {
        PyErr_Format(PyExc_ValueError, "weight has %ld input channels, x has %ld",
                     (long)PyArray_DIM(weight, 3), (long)li->c);
        return -1;
    }
    cv_status st =
        conv_shape_init(shape, li->n, li->h, li->w, li->c, PyArray_DIM(weight, 0),
                        PyArray_DIM(weight, 1), PyArray_DIM(weight, 2), stride, pad);
    return st == CV_OK ? 0 : cv_raise(st);
}

static PyObject *py_conv2d_forward(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"x",         "weight", "stride", "pad",
                             "reference", "mean",   "std",    NULL};
    PyObject *x_obj, *w_obj, *mean = Py_None, *std = Py_None;
    Py_ssize_t stride = 1, pad = 0;
    int reference = 0;
    PyArrayObject *weight, *out;
    layer_input li;
    conv_shape sh;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|nn$pOO:conv2d_forward", kwlist, &x_obj,
                                     &w_obj, &stride, &pad, &reference, &mean, &std))
        return NULL;
    if (input_arg(x_obj, mean, std, &li) ||
        tensor_arg(w_obj, "weight", 4, -1, -1, -1, -1, 0, &weight) ||
        conv_geometry(&li, weight, stride, pad, &sh))
        return NULL;
    if (!(out = new_zeros(4, sh.n, sh.p, sh.q, sh.k)))
        return NULL;
    cv_status st = CV_OK;
    conv_workspace ws = {0};
    /* weight_t where the ResNet would make it, so that its paths run here too */
    const ptrdiff_t rsc = sh.r * sh.s * sh.c;
    float *weight_t = NULL;
    if (!reference && conv2d_wants_weight_t(&li.in, &sh) &&
        !(weight_t = malloc((size_t)(rsc * sh.k) * sizeof(float)))) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS;
    if (reference)
        conv2d_forward_reference(PyArray_DATA(out), &li.in, PyArray_DATA(weight), &sh);
    else {
        if (weight_t)
            cv_transpose(weight_t, sh.k, PyArray_DATA(weight), rsc, sh.k, rsc, 0);
        st = conv2d_forward(PyArray_DATA(out), &li.in, PyArray_DATA(weight), weight_t, &sh,
                            NULL, &ws);
    }
    Py_END_ALLOW_THREADS;
    free(weight_t);
    conv_workspace_free(&ws);
    if (st != CV_OK) {
        Py_DECREF(out);
        cv_raise(st);
        return NULL;
    }
    return (PyObject *)out;
}

/* The prologue of conv2d_backward(prologue=True): rows of dout (k floats each). */
typedef struct {
    const float *dout;
    ptrdiff_t k;
} copy_rows_ctx;

static void copy_rows(void *ctx, float *dy, ptrdiff_t row0, ptrdiff_t rows)
{
    const copy_rows_ctx *c = ctx;
    memcpy(dy, c->dout + row0 * c->k, (size_t)(rows * c->k) * sizeof(float));
}

static PyObject *py_conv2d_backward(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"dout", "x",        "weight", "stride",    "pad",
                             "dx",   "dw",       "add",    "reference", "mean",
                             "std",  "prologue", NULL};
    PyObject *dout_obj, *x_obj, *w_obj, *dx_obj = Py_None, *dw_obj = Py_None;
    PyObject *mean = Py_None, *std = Py_None;
    Py_ssize_t stride = 1, pad = 0;
    int add = 1, reference = 0, use_prologue = 0;
    PyArrayObject *weight, *dout, *dx = NULL, *dw = NULL;
    layer_input li;
    conv_shape sh;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|nn$OOppOOp:conv2d_backward", kwlist,
                                     &dout_obj, &x_obj, &w_obj, &stride, &pad, &dx_obj,
                                     &dw_obj, &add, &reference, &mean, &std, &use_prologue))
        return NULL;
    if (input_arg(x_obj, mean, std, &li) ||
        tensor_arg(w_obj, "weight", 4, -1, -1, -1, -1, 0, &weight) ||
        conv_geometry(&li, weight, stride, pad, &sh) ||
        tensor_arg(dout_obj, "dout", 4, sh.n, sh.p, sh.q, sh.k, 0, &dout))
        return NULL;
    if (dx_obj == Py_None)
        dx = new_zeros(4, li.n, li.h, li.w, li.c);
    else if (!tensor_arg(dx_obj, "dx", 4, li.n, li.h, li.w, li.c, 1, &dx))
        Py_INCREF(dx);
    else
        return NULL;
    if (!dx)
        return NULL;
    if (dw_obj == Py_None)
        dw = new_zeros(4, sh.k, sh.r, sh.s, sh.c);
    else if (!tensor_arg(dw_obj, "dw", 4, sh.k, sh.r, sh.s, sh.c, 1, &dw))
        Py_INCREF(dw);
    else
        dw = NULL;
    if (!dw) {
        Py_DECREF(dx);
        return NULL;
    }
    cv_status st = CV_OK;
    conv_workspace ws = {0};
    copy_rows_ctx rows_ctx = {PyArray_DATA(dout), sh.k};
    conv_prologue pro = {copy_rows, &rows_ctx, NULL};
    if (use_prologue && !reference &&
        !(pro.spill = malloc((size_t)(sh.n * sh.p * sh.q * sh.k) * sizeof(float)))) {
        Py_DECREF(dx);
        Py_DECREF(dw);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS;
    if (reference)
        conv2d_backward_reference(PyArray_DATA(dx), PyArray_DATA(dw), PyArray_DATA(dout),
                                  &li.in, PyArray_DATA(weight), &sh);
    else
        st = conv2d_backward(
            PyArray_DATA(dx), PyArray_DATA(dw), use_prologue ? NULL : PyArray_DATA(dout),
            &li.in, PyArray_DATA(weight), &sh, add, use_prologue ? &pro : NULL, &ws);
    Py_END_ALLOW_THREADS;
    free(pro.spill);
    conv_workspace_free(&ws);
    if (st != CV_OK) {
        Py_DECREF(dx);
        Py_DECREF(dw);
        cv_raise(st);
        return NULL;
    }
    return Py_BuildValue("(NN)", dx, dw);
}

/* ---- batch norm ---------------------------------------------------------------------- */

static int channel_arg(PyObject *obj, const char *name, npy_intp c, int writeable,
                       PyArrayObject **out)
{
    return tensor_arg(obj, name, 1, c, -1, -1, -1, writeable, out);
}

/* y: (..., c) float32 contiguous, seen as (m, c). */
static int matrix_arg(PyObject *obj, const char *name, npy_intp *m, npy_intp *c,
                      PyArrayObject **out)
{
    cv_array_spec spec = {name, NPY_FLOAT32, 2, 4, {-1, -1, -1, -1}, 0, 1};
    if (cv_check_array(obj, &spec, out))
        return -1;
    int nd = PyArray_NDIM(*out);
    *c = PyArray_DIM(*out, nd - 1);
    *m = *c ? PyArray_SIZE(*out) / *c : 0;
    if (*m < 1 || *c < 1) {
        PyErr_Format(PyExc_ValueError, "%s is empty", name);
        return -1;
    }
    return 0;
}

static int same_shape(PyObject *obj, const char *name, PyArrayObject *like,
                      PyArrayObject **out)
{
    int nd = PyArray_NDIM(like);
    npy_intp d[4] = {-1, -1, -1, -1};
    for (int i = 0; i < nd; i++)
        d[i] = PyArray_DIM(like, i);
    return tensor_arg(obj, name, nd, d[0], d[1], d[2], d[3], 0, out);
}

static PyArrayObject *new_like(PyArrayObject *like)
{
    return (PyArrayObject *)PyArray_ZEROS(PyArray_NDIM(like), PyArray_DIMS(like),
                                          NPY_FLOAT32, 0);
}

static PyObject *py_bn_statistics(PyObject *self, PyObject *arg)
{
    (void)self;
    PyArrayObject *y;
    npy_intp m, c;
    if (matrix_arg(arg, "y", &m, &c, &y))
        return NULL;
    npy_intp shape[1] = {c};
    PyArrayObject *mean = (PyArrayObject *)PyArray_ZEROS(1, shape, NPY_FLOAT64, 0);
    PyArrayObject *var = (PyArrayObject *)PyArray_ZEROS(1, shape, NPY_FLOAT64, 0);
    if (!mean || !var) {
        Py_XDECREF(mean);
        Py_XDECREF(var);
        return NULL;
    }
    cv_status st;
    Py_BEGIN_ALLOW_THREADS;
    st = bn_statistics(PyArray_DATA(mean), PyArray_DATA(var), PyArray_DATA(y), m, c);
    Py_END_ALLOW_THREADS;
    if (st != CV_OK) {
        Py_DECREF(mean);
        Py_DECREF(var);
        cv_raise(st);
        return NULL;
    }
    return Py_BuildValue("(NN)", mean, var);
}

static PyObject *py_batchnorm_forward(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"y",           "gamma",    "beta", "running_mean",
                             "running_var", "training", "relu", "residual",
                             NULL};
    PyObject *y_obj, *g_obj, *b_obj, *rm_obj, *rv_obj, *res_obj = Py_None;
    int training = 1, relu = 0;
    PyArrayObject *y, *gamma, *beta, *rm, *rv, *res = NULL, *out, *mean, *invstd;
    npy_intp m, c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO|$ppO:batchnorm_forward", kwlist,
                                     &y_obj, &g_obj, &b_obj, &rm_obj, &rv_obj, &training,
                                     &relu, &res_obj))
        return NULL;
    if (matrix_arg(y_obj, "y", &m, &c, &y) || channel_arg(g_obj, "gamma", c, 0, &gamma) ||
        channel_arg(b_obj, "beta", c, 0, &beta) ||
        channel_arg(rm_obj, "running_mean", c, 1, &rm) ||
        channel_arg(rv_obj, "running_var", c, 1, &rv) ||
        (res_obj != Py_None && same_shape(res_obj, "residual", y, &res)))
        return NULL;
    if (training && m < 2) {
        PyErr_SetString(PyExc_ValueError, "batch norm in training needs more than one row");
        return NULL;
    }
    npy_intp cs[1] = {c};
    out = new_like(y);
    mean = (PyArrayObject *)PyArray_ZEROS(1, cs, NPY_FLOAT32, 0);
    invstd = (PyArrayObject *)PyArray_ZEROS(1, cs, NPY_FLOAT32, 0);
    float *scale = malloc((size_t)c * sizeof(float)),
          *shift = malloc((size_t)c * sizeof(float));
    double *dm = malloc((size_t)c * sizeof(double)),
           *dv = malloc((size_t)c * sizeof(double));
    cv_status st = CV_OK;
    if (!out || !mean || !invstd || !scale || !shift || !dm || !dv) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        goto error;
    }
    Py_BEGIN_ALLOW_THREADS;
    if (training) {
        st = bn_statistics(dm, dv, PyArray_DATA(y), m, c);
        if (st == CV_OK)
            bn_finish_statistics(PyArray_DATA(mean), PyArray_DATA(invstd), scale, shift,
                                 PyArray_DATA(rm), PyArray_DATA(rv), dm, dv,
                                 PyArray_DATA(gamma), PyArray_DATA(beta), m, c, 0.1, 1e-5);
    } else {
        bn_eval_affine(scale, shift, PyArray_DATA(rm), PyArray_DATA(rv),
                       PyArray_DATA(gamma), PyArray_DATA(beta), c, 1e-5);
    }
    if (st == CV_OK)
        bn_apply_forward(PyArray_DATA(out), PyArray_DATA(y), scale, shift,
                         res ? PyArray_DATA(res) : NULL, NULL, NULL, NULL, relu, m, c);
    Py_END_ALLOW_THREADS;
    free(scale);
    free(shift);
    free(dm);
    free(dv);
    if (st != CV_OK) {
        cv_raise(st);
        scale = shift = NULL;
        dm = dv = NULL;
        goto error;
    }
    return Py_BuildValue("(NNN)", out, mean, invstd);
error:
    free(scale);
    free(shift);
    free(dm);
    free(dv);
    Py_XDECREF(out);
    Py_XDECREF(mean);
    Py_XDECREF(invstd);
    return NULL;
}

static PyObject *py_bn_apply(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"y",         "scale",     "shift", "residual", "res_y",
                             "res_scale", "res_shift", "relu",  NULL};
    PyObject *y_obj, *s_obj, *t_obj, *res_obj = Py_None, *ry_obj = Py_None;
    PyObject *rs_obj = Py_None, *rt_obj = Py_None;
    int relu = 1;
    PyArrayObject *y, *scale, *shift, *res = NULL, *ry = NULL, *rs = NULL, *rt = NULL, *out;
    npy_intp m, c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|$OOOOp:bn_apply", kwlist, &y_obj,
                                     &s_obj, &t_obj, &res_obj, &ry_obj, &rs_obj, &rt_obj,
                                     &relu))
        return NULL;
    if (matrix_arg(y_obj, "y", &m, &c, &y) || channel_arg(s_obj, "scale", c, 0, &scale) ||
        channel_arg(t_obj, "shift", c, 0, &shift) ||
        (res_obj != Py_None && same_shape(res_obj, "residual", y, &res)) ||
        (ry_obj != Py_None && same_shape(ry_obj, "res_y", y, &ry)))
        return NULL;
    if (ry && (channel_arg(rs_obj, "res_scale", c, 0, &rs) ||
               channel_arg(rt_obj, "res_shift", c, 0, &rt)))
        return NULL;
    if (!(out = new_like(y)))
        return NULL;
    Py_BEGIN_ALLOW_THREADS;
    bn_apply_forward(PyArray_DATA(out), PyArray_DATA(y), PyArray_DATA(scale),
                     PyArray_DATA(shift), res ? PyArray_DATA(res) : NULL,
                     ry ? PyArray_DATA(ry) : NULL, rs ? PyArray_DATA(rs) : NULL,
                     rt ? PyArray_DATA(rt) : NULL, relu, m, c);
    Py_END_ALLOW_THREADS;
    return (PyObject *)out;
}

static PyObject *py_batchnorm_backward(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"dout", "y", "mean", "invstd", "gamma", "out", NULL};
    PyObject *d_obj, *y_obj, *m_obj, *i_obj, *g_obj, *o_obj = Py_None;
    PyArrayObject *dout, *y, *mean, *invstd, *gamma, *out = NULL, *dy, *dg, *db;
    npy_intp m, c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO|$O:batchnorm_backward", kwlist,
                                     &d_obj, &y_obj, &m_obj, &i_obj, &g_obj, &o_obj))
        return NULL;
    if (matrix_arg(y_obj, "y", &m, &c, &y) || same_shape(d_obj, "dout", y, &dout) ||
        channel_arg(m_obj, "mean", c, 0, &mean) ||
        channel_arg(i_obj, "invstd", c, 0, &invstd) ||
        channel_arg(g_obj, "gamma", c, 0, &gamma) ||
        (o_obj != Py_None && same_shape(o_obj, "out", y, &out)))
        return NULL;
    npy_intp cs[1] = {c};
    dy = new_like(y);
    dg = (PyArrayObject *)PyArray_ZEROS(1, cs, NPY_FLOAT32, 0);
    db = (PyArrayObject *)PyArray_ZEROS(1, cs, NPY_FLOAT32, 0);
    double *sums = malloc((size_t)(2 * c) * sizeof(double));
    if (!dy || !dg || !db || !sums) {
        Py_XDECREF(dy);
        Py_XDECREF(dg);
        Py_XDECREF(db);
        free(sums);
        return PyErr_Occurred() ? NULL : PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS;
    bn_backward_reduce(sums, sums + c, PyArray_DATA(dout), out ? PyArray_DATA(out) : NULL,
                       PyArray_DATA(y), PyArray_DATA(mean), PyArray_DATA(invstd), m, c);
    bn_backward_apply(PyArray_DATA(dy), PyArray_DATA(dg), PyArray_DATA(db),
                      PyArray_DATA(dout), out ? PyArray_DATA(out) : NULL, PyArray_DATA(y),
                      PyArray_DATA(mean), PyArray_DATA(invstd), PyArray_DATA(gamma), sums,
                      sums + c, m, c);
    Py_END_ALLOW_THREADS;
    free(sums);
    return Py_BuildValue("(NNN)", dy, dg, db);
}

/* bn_block_end(dout, out, y_a, mean_a, invstd_a, y_b=None, mean_b=None, invstd_b=None)
 * -> (dz, sum_dz, sum_dzx_a, sum_dzx_b): the fused mask-and-reduce at a block's end. */
static PyObject *py_bn_block_end(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"dout", "out",    "y_a",      "mean_a", "invstd_a",
                             "y_b",  "mean_b", "invstd_b", NULL};
    PyObject *d_obj, *o_obj, *ya_obj, *ma_obj, *ia_obj,
        *yb_obj = Py_None, *mb_obj = Py_None, *ib_obj = Py_None;
    PyArrayObject *dout, *out, *ya, *ma, *ia, *yb = NULL, *mb = NULL, *ib = NULL, *dz;
    npy_intp m, c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOO|OOO:bn_block_end", kwlist, &d_obj,
                                     &o_obj, &ya_obj, &ma_obj, &ia_obj, &yb_obj, &mb_obj,
                                     &ib_obj))
        return NULL;
    if (matrix_arg(ya_obj, "y_a", &m, &c, &ya) || same_shape(d_obj, "dout", ya, &dout) ||
        same_shape(o_obj, "out", ya, &out) || channel_arg(ma_obj, "mean_a", c, 0, &ma) ||
        channel_arg(ia_obj, "invstd_a", c, 0, &ia))
        return NULL;
    if (yb_obj != Py_None &&
        (same_shape(yb_obj, "y_b", ya, &yb) || channel_arg(mb_obj, "mean_b", c, 0, &mb) ||
         channel_arg(ib_obj, "invstd_b", c, 0, &ib)))
        return NULL;
    npy_intp cs[1] = {c};
    PyArrayObject *sums[3];
    dz = (PyArrayObject *)PyArray_NewCopy(dout, NPY_CORDER);
    for (int i = 0; i < 3; i++)
        sums[i] = (PyArrayObject *)PyArray_ZEROS(1, cs, NPY_FLOAT64, 0);
    if (!dz || !sums[0] || !sums[1] || !sums[2]) {
        Py_XDECREF(dz);
        for (int i = 0; i < 3; i++)
            Py_XDECREF(sums[i]);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS;
    bn_backward_mask_reduce2(PyArray_DATA(sums[0]), PyArray_DATA(sums[1]),
                             PyArray_DATA(sums[2]), PyArray_DATA(dz), PyArray_DATA(out),
                             PyArray_DATA(ya), PyArray_DATA(ma), PyArray_DATA(ia),
                             yb ? PyArray_DATA(yb) : NULL, mb ? PyArray_DATA(mb) : NULL,
                             ib ? PyArray_DATA(ib) : NULL, m, c);
    Py_END_ALLOW_THREADS;
    return Py_BuildValue("(NNNN)", dz, sums[0], sums[1], sums[2]);
}

/* ---- pooling ------------------------------------------------------------------------- */

static int pool_geometry(Py_ssize_t k, Py_ssize_t stride, Py_ssize_t pad, npy_intp h,
                         npy_intp w)
{
    if (k < 1 || k > 16 || stride < 1 || pad < 0 || 2 * pad > k || h + 2 * pad < k ||
        w + 2 * pad < k) {
        PyErr_Format(
            PyExc_ValueError,
            "bad pooling geometry: window %zd, stride %zd, padding %zd on %ld x %ld", k,
            stride, pad, (long)h, (long)w);
        return -1;
    }
    return 0;
}

static PyObject *py_maxpool_forward(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"x", "k", "stride", "pad", "reference", NULL};
    PyObject *x_obj;
    Py_ssize_t k = 3, stride = 2, pad = 1;
    int reference = 0;
    PyArrayObject *x, *out;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|nnn$p:maxpool_forward", kwlist, &x_obj,
                                     &k, &stride, &pad, &reference) ||
        tensor_arg(x_obj, "x", 4, -1, -1, -1, -1, 0, &x))
        return NULL;
    npy_intp n = PyArray_DIM(x, 0), h = PyArray_DIM(x, 1), w = PyArray_DIM(x, 2),
             c = PyArray_DIM(x, 3);
    if (pool_geometry(k, stride, pad, h, w))
        return NULL;
    if (!(out = new_zeros(4, n, window_out(h, k, stride, pad),
                          window_out(w, k, stride, pad), c)))
        return NULL;
    Py_BEGIN_ALLOW_THREADS;
    if (reference)
        maxpool_forward_reference(PyArray_DATA(out), PyArray_DATA(x), n, h, w, c, k, stride,
                                  pad);
    else
        maxpool_forward(PyArray_DATA(out), NULL, PyArray_DATA(x), n, h, w, c, k, stride,
                        pad);
    Py_END_ALLOW_THREADS;
    return (PyObject *)out;
}

static PyObject *py_maxpool_backward(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"dout", "x", "out", "k", "stride", "pad", "reference", NULL};
    PyObject *d_obj, *x_obj, *o_obj;
    Py_ssize_t k = 3, stride = 2, pad = 1;
    int reference = 0;
    PyArrayObject *x, *out, *dout, *dx;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|nnn$p:maxpool_backward", kwlist,
                                     &d_obj, &x_obj, &o_obj, &k, &stride, &pad,
                                     &reference) ||
        tensor_arg(x_obj, "x", 4, -1, -1, -1, -1, 0, &x))
        return NULL;
    npy_intp n = PyArray_DIM(x, 0), h = PyArray_DIM(x, 1), w = PyArray_DIM(x, 2),
             c = PyArray_DIM(x, 3);
    if (pool_geometry(k, stride, pad, h, w))
        return NULL;
    npy_intp p = window_out(h, k, stride, pad), q = window_out(w, k, stride, pad);
    if (tensor_arg(o_obj, "out", 4, n, p, q, c, 0, &out) ||
        tensor_arg(d_obj, "dout", 4, n, p, q, c, 0, &dout) ||
        !(dx = new_zeros(4, n, h, w, c)))
        return NULL;
    /* The forward again, for its argmax (the fast backward's saved state). */
    unsigned char *argmax = reference ? NULL : malloc((size_t)(n * p * q * c));
    float *again = reference ? NULL : malloc((size_t)(n * p * q * c) * sizeof(float));
    if (!reference && (!argmax || !again)) {
        free(argmax);
        free(again);
        Py_DECREF(dx);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS;
    if (reference) {
        maxpool_backward_reference(PyArray_DATA(dx), PyArray_DATA(dout), PyArray_DATA(x), n,
                                   h, w, c, k, stride, pad);
    } else {
        maxpool_forward(again, argmax, PyArray_DATA(x), n, h, w, c, k, stride, pad);
        maxpool_backward(PyArray_DATA(dx), PyArray_DATA(dout), argmax, n, h, w, c, k,
                         stride, pad);
    }
    Py_END_ALLOW_THREADS;
    free(argmax);
    free(again);
    return (PyObject *)dx;
}

static PyObject *py_avgpool_forward(PyObject *self, PyObject *arg)
{
    (void)self;
    PyArrayObject *x, *out;
    if (tensor_arg(arg, "x", 4, -1, -1, -1, -1, 0, &x))
        return NULL;
    npy_intp n = PyArray_DIM(x, 0), hw = PyArray_DIM(x, 1) * PyArray_DIM(x, 2),
             c = PyArray_DIM(x, 3);
    if (!(out = new_zeros(2, n, c, 0, 0)))
        return NULL;
    Py_BEGIN_ALLOW_THREADS;
    avgpool_forward(PyArray_DATA(out), PyArray_DATA(x), n, hw, c);
    Py_END_ALLOW_THREADS;
    return (PyObject *)out;
}

static PyObject *py_avgpool_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *d_obj;
    Py_ssize_t h, w;
    PyArrayObject *dout, *dx;
    if (!PyArg_ParseTuple(args, "Onn:avgpool_backward", &d_obj, &h, &w) ||
        tensor_arg(d_obj, "dout", 2, -1, -1, -1, -1, 0, &dout))
        return NULL;
    if (h < 1 || w < 1) {
        PyErr_SetString(PyExc_ValueError, "h and w must be >= 1");
        return NULL;
    }
    npy_intp n = PyArray_DIM(dout, 0), c = PyArray_DIM(dout, 1);
    if (!(dx = new_zeros(4, n, h, w, c)))
        return NULL;
    Py_BEGIN_ALLOW_THREADS;
    avgpool_backward(PyArray_DATA(dx), PyArray_DATA(dout), n, h * w, c, 0);
    Py_END_ALLOW_THREADS;
    return (PyObject *)dx;
}

static PyMethodDef image_layer_methods[] = {
    {"conv2d_forward", (PyCFunction)(void (*)(void))py_conv2d_forward,
     METH_VARARGS | METH_KEYWORDS, "convolution forward (test entry point)"},
    {"conv2d_backward", (PyCFunction)(void (*)(void))py_conv2d_backward,
     METH_VARARGS | METH_KEYWORDS, "convolution backward (test entry point)"},
    {"bn_statistics", py_bn_statistics, METH_O, "batch mean and biased variance (test)"},
    {"batchnorm_forward", (PyCFunction)(void (*)(void))py_batchnorm_forward,
     METH_VARARGS | METH_KEYWORDS, "batch norm forward (test entry point)"},
    {"bn_apply", (PyCFunction)(void (*)(void))py_bn_apply, METH_VARARGS | METH_KEYWORDS,
     "affine + residual + ReLU (test entry point)"},
    {"batchnorm_backward", (PyCFunction)(void (*)(void))py_batchnorm_backward,
     METH_VARARGS | METH_KEYWORDS, "batch norm backward (test entry point)"},
    {"bn_block_end", (PyCFunction)(void (*)(void))py_bn_block_end,
     METH_VARARGS | METH_KEYWORDS, "fused ReLU mask and two batch-norm reduces (test)"},
    {"maxpool_forward", (PyCFunction)(void (*)(void))py_maxpool_forward,
     METH_VARARGS | METH_KEYWORDS, "max pool forward (test entry point)"},
    {"maxpool_backward", (PyCFunction)(void (*)(void))py_maxpool_backward,
     METH_VARARGS | METH_KEYWORDS, "max pool backward (test entry point)"},
    {"avgpool_forward", py_avgpool_forward, METH_O,
     "global average pool (test entry point)"},
    {"avgpool_backward", py_avgpool_backward, METH_VARARGS,
     "global average pool backward (test entry point)"},
    {NULL, NULL, 0, NULL}};

int cv_testing_add_image_layers(PyObject *module)
{
    return PyModule_AddFunctions(module, image_layer_methods);
}
