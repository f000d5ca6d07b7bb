/* linear_head.c - the Python type convirt._core.LinearHead: the linear classifier that
 * fine-tuning puts on the image features, logits = h W^T + b, on the core's
 * linear_forward / linear_backward (csrc/linear.c).
 *
 * It owns one flat parameter buffer [W (out_dim x in_dim) | b (out_dim)] and a
 * gradient buffer of the same layout, shown to Python as views whose base is the head,
 * so that convirt.Adam can update them next to an encoder's buffers. It keeps no
 * activations: backward takes the features of the forward again, as the core's layers
 * do (linear_backward(dinp, dweight, dbias, dout, inp, weight, ...)). */
#include "../core.h"
#include "../layers.h"
#include "../random.h"
#include "arrays.h"
#include "errors.h"
#include "module.h"

typedef struct {
    PyObject_HEAD ptrdiff_t in_dim, out_dim;
    float *params; /* W then b */
    float *grads;  /* same layout */
    int busy;
    unsigned long long seed;
} HeadObject;

/* PyTorch's nn.Linear default: W and b ~ U(-1/sqrt(in_dim), 1/sqrt(in_dim)). */
static void head_reset(HeadObject *self)
{
    const ptrdiff_t count = self->out_dim * self->in_dim;
    const double bound = 1.0 / sqrt((double)self->in_dim);
    const uint64_t seed = self->seed;
    float *w = self->params, *b = self->params + count;
    for (ptrdiff_t i = 0; i < count; i++)
        w[i] = (float)(bound *
                       (2.0 * cv_random_uniform(seed, 0x4C494E57ULL, (uint64_t)i) - 1.0));
    for (ptrdiff_t i = 0; i < self->out_dim; i++)
        b[i] = (float)(bound *
                       (2.0 * cv_random_uniform(seed, 0x4C494E42ULL, (uint64_t)i) - 1.0));
    memset(self->grads, 0, (size_t)(count + self->out_dim) * sizeof(float));
}

static int Head_init(HeadObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"in_dim", "out_dim", "seed", NULL};
    Py_ssize_t in_dim = 0, out_dim = 0;
    PyObject *seed_obj = NULL, *in_obj, *out_obj;
    uint64_t seed = 0;
    if (self->params) {
        PyErr_SetString(
            cv_error_state,
            "a LinearHead cannot be re-initialised (views of its buffers may be "
            "in use); make a new one");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|$O:LinearHead", kwlist, &in_obj,
                                     &out_obj, &seed_obj) ||
        cv_read_size(in_obj, "in_dim", &in_dim) ||
        cv_read_size(out_obj, "out_dim", &out_dim) ||
        (seed_obj && cv_read_uint64(seed_obj, "seed", &seed)))
        return -1;
    if (in_dim < 1 || out_dim < 1 || in_dim > (1 << 24) || out_dim > (1 << 24)) {
        PyErr_Format(PyExc_ValueError,
                     "in_dim and out_dim must be in [1, 2^24], got in_dim=%zd, out_dim=%zd",
                     in_dim, out_dim);
        return -1;
    }
    size_t count = (size_t)(in_dim * out_dim + out_dim);
    /* Both buffers are written at once: refuse what this machine could never hold
     * rather than let the kernel kill a process. */
    const size_t memory = cv_physical_memory();
    if (memory && cv_mul_sat(count, 2 * sizeof(float)) > memory) {
        PyErr_Format(PyExc_MemoryError,
                     "a LinearHead(%zd, %zd) needs %zu bytes for its parameters and "
                     "gradients; this machine has %zu",
                     in_dim, out_dim, cv_mul_sat(count, 2 * sizeof(float)), memory);
        return -1;
    }
    self->params = cv_alloc_floats(count);
    self->grads = cv_alloc_floats(count);
    if (!self->params || !self->grads) {
        free(self->params);
        free(self->grads);
        self->params = self->grads = NULL;
        PyErr_NoMemory();
        return -1;
    }
    self->in_dim = in_dim;
    self->out_dim = out_dim;
    self->seed = seed;
    head_reset(self);
    return 0;
}

static void Head_dealloc(HeadObject *self)
{
    free(self->params);
    free(self->grads);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int check_ready(HeadObject *self)
{
    if (!self->params) {
        PyErr_SetString(cv_error_state, "the LinearHead was not initialised");
        return -1;
    }
    return 0;
}

/* The features: float32 (n, in_dim), C-contiguous, n >= 1. Borrowed into *x. */
static int check_features(HeadObject *self, PyObject *obj, const char *name, npy_intp n,
                          PyArrayObject **x)
{
    cv_array_spec spec = {name, NPY_FLOAT32, 2, 2, {n, self->in_dim, -1, -1}, 0, 1};
    if (cv_check_array(obj, &spec, x))
        return -1;
    if (PyArray_DIM(*x, 0) == 0) {
        PyErr_Format(PyExc_ValueError, "%s is empty: it needs at least one row", name);
        return -1;
    }
    return 0;
}

/* 0, or -1 and a NonFiniteError naming the first NaN or Inf of name, a C-contiguous
 * (rows x cols) float32 array: a NaN feature or gradient would reach every weight's
 * gradient. */
static int check_finite(const float *p, npy_intp rows, npy_intp cols, const char *name)
{
    for (npy_intp i = 0; i < rows * cols; i++)
        if (!isfinite(p[i])) {
            PyErr_Format(cv_error_nonfinite, "%s[%zd, %zd] is %s; it must be finite", name,
                         (Py_ssize_t)(i / cols), (Py_ssize_t)(i % cols),
                         isnan(p[i]) ? "nan"
                         : p[i] > 0  ? "inf"
                                     : "-inf");
            return -1;
        }
    return 0;
}

/* The size of each of the head's buffers [W | b]. */
static size_t buffer_bytes(const HeadObject *self)
{
    return (size_t)(self->out_dim * self->in_dim + self->out_dim) * sizeof(float);
}

/* ValueError when arr shares memory with the head's parameters or gradients: a call
 * reads the one and writes the other. */
static int check_not_own(HeadObject *self, PyArrayObject *arr, const char *name)
{
    const size_t bytes = buffer_bytes(self);
    return cv_check_not_in_buffer(arr, name, self->params, bytes,
                                  "the head's parameters") ||
                   cv_check_not_in_buffer(arr, name, self->grads, bytes,
                                          "the head's gradients")
               ? -1
               : 0;
}

/* The caller's output (validated, not over any input nor the head's own buffers) or a
 * new (n, dim) array. New reference or NULL. */
static PyArrayObject *output(HeadObject *self, PyObject *given, const char *name,
                             npy_intp n, npy_intp dim, const cv_named_array *inputs,
                             int n_inputs)
{
    cv_array_spec spec = {name, NPY_FLOAT32, 2, 2, {n, dim, -1, -1}, 1, 1};
    PyArrayObject *arr = cv_output_array(given, &spec, name, inputs, n_inputs, NULL);
    if (arr && check_not_own(self, arr, name))
        Py_CLEAR(arr);
    return arr;
}

static PyObject *Head_forward(HeadObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"x", "out", NULL};
    PyObject *x_obj, *out_obj = NULL;
    PyArrayObject *x, *out;
    if (check_ready(self) ||
        !PyArg_ParseTupleAndKeywords(args, kwds, "O|$O:forward", kwlist, &x_obj,
                                     &out_obj) ||
        check_features(self, x_obj, "x (features)", -1, &x) ||
        check_finite(PyArray_DATA(x), PyArray_DIM(x, 0), self->in_dim, "x"))
        return NULL;
    npy_intp n = PyArray_DIM(x, 0);
    const cv_named_array inputs[1] = {{x, "x"}};
    if (!(out = output(self, out_obj, "out (logits)", n, self->out_dim, inputs, 1)))
        return NULL;
    if (cv_claim(&self->busy, "LinearHead")) {
        Py_DECREF(out);
        return NULL;
    }
    const float *w = self->params, *b = self->params + self->out_dim * self->in_dim;
    Py_BEGIN_ALLOW_THREADS;
    linear_forward(PyArray_DATA(out), PyArray_DATA(x), w, b, n, self->in_dim,
                   self->out_dim);
    Py_END_ALLOW_THREADS;
    CV_RELEASE(&self->busy);
    return (PyObject *)out;
}

static PyObject *Head_backward(HeadObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"d_logits", "x", "d_x", "input_grad", NULL};
    PyObject *dout_obj, *x_obj, *dx_obj = NULL;
    int want_dx = 1;
    PyArrayObject *dout, *x, *dx = NULL;
    if (check_ready(self) ||
        !PyArg_ParseTupleAndKeywords(args, kwds, "OO|$Op:backward", kwlist, &dout_obj,
                                     &x_obj, &dx_obj, &want_dx) ||
        check_features(self, x_obj, "x (the features of the forward)", -1, &x))
        return NULL;
    npy_intp n = PyArray_DIM(x, 0);
    cv_array_spec spec = {"d_logits (one row per row of x)", NPY_FLOAT32, 2, 2,
                          {n, self->out_dim, -1, -1},        0,           1};
    /* backward adds into the gradients while it reads d_logits and x */
    if (cv_check_array(dout_obj, &spec, &dout) ||
        cv_check_not_in_buffer(dout, "d_logits", self->grads, buffer_bytes(self),
                               "the head's gradients") ||
        cv_check_not_in_buffer(x, "x", self->grads, buffer_bytes(self),
                               "the head's gradients"))
        return NULL;
    if (!want_dx && dx_obj && dx_obj != Py_None) {
        PyErr_SetString(PyExc_ValueError, "d_x given with input_grad=False");
        return NULL;
    }
    const cv_named_array inputs[2] = {{x, "x"}, {dout, "d_logits"}};
    if (want_dx && !(dx = output(self, dx_obj, "d_x", n, self->in_dim, inputs, 2)))
        return NULL;
    const float *dp = PyArray_DATA(dout);
    if (check_finite(dp, n, self->out_dim, "d_logits") ||
        check_finite(PyArray_DATA(x), n, self->in_dim, "x")) {
        Py_XDECREF(dx);
        return NULL;
    }
    if (cv_claim(&self->busy, "LinearHead")) {
        Py_XDECREF(dx);
        return NULL;
    }
    const ptrdiff_t count = self->out_dim * self->in_dim;
    float *dx_ptr = dx ? PyArray_DATA(dx) : NULL;
    Py_BEGIN_ALLOW_THREADS;
    /* d_x is written (the features' only consumer is this head), the rest added. */
    if (dx_ptr)
        memset(dx_ptr, 0, (size_t)(n * self->in_dim) * sizeof(float));
    linear_backward(dx_ptr, self->grads, self->grads + count, dp, PyArray_DATA(x),
                    self->params, n, self->in_dim, self->out_dim);
    Py_END_ALLOW_THREADS;
    CV_RELEASE(&self->busy);
    if (dx)
        return (PyObject *)dx;
    Py_RETURN_NONE;
}

static PyObject *Head_zero_grad(HeadObject *self, PyObject *unused)
{
    (void)unused;
    if (check_ready(self) || cv_claim(&self->busy, "LinearHead"))
        return NULL;
    memset(self->grads, 0, buffer_bytes(self));
    CV_RELEASE(&self->busy);
    Py_RETURN_NONE;
}

/* ---- buffers as NumPy views ------------------------------------------------------------
 */

/* A view of the head's parameters or gradients (base: the head). */
static PyObject *view(HeadObject *self, float *data, int ndim, npy_intp *shape)
{
    if (check_ready(self))
        return NULL;
    return cv_owned_view((PyObject *)self, data, ndim, shape, 1);
}

static PyObject *get_flat(HeadObject *self, void *closure)
{
    npy_intp shape[1] = {self->out_dim * self->in_dim + self->out_dim};
    return view(self, closure ? self->grads : self->params, 1, shape);
}

static PyObject *get_weight(HeadObject *self, void *closure)
{
    npy_intp shape[2] = {self->out_dim, self->in_dim};
    return view(self, closure ? self->grads : self->params, 2, shape);
}

static PyObject *get_bias(HeadObject *self, void *closure)
{
    npy_intp shape[1] = {self->out_dim};
    ptrdiff_t offset = self->out_dim * self->in_dim;
    return view(self, (closure ? self->grads : self->params) + offset, 1, shape);
}

static PyObject *get_in_dim(HeadObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->in_dim);
}

static PyObject *get_out_dim(HeadObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->out_dim);
}

static PyObject *Head_repr(HeadObject *self)
{
    return PyUnicode_FromFormat("LinearHead(in_dim=%zd, out_dim=%zd, seed=%llu)",
                                (Py_ssize_t)self->in_dim, (Py_ssize_t)self->out_dim,
                                self->seed);
}

/* closure NULL: the parameters; non-NULL: the gradients. */
static char GRAD[] = "grad";

static PyGetSetDef Head_getset[] = {
    {"flat_parameters", (getter)get_flat, NULL,
     "W then b as one float32 view (base: the head), for convirt.Adam", NULL},
    {"flat_gradients", (getter)get_flat, NULL, "the gradients, same layout", GRAD},
    {"weight", (getter)get_weight, NULL, "W, float32 (out_dim, in_dim), a view", NULL},
    {"bias", (getter)get_bias, NULL, "b, float32 (out_dim,), a view", NULL},
    {"weight_grad", (getter)get_weight, NULL, "dL/dW, a view", GRAD},
    {"bias_grad", (getter)get_bias, NULL, "dL/db, a view", GRAD},
    {"in_dim", (getter)get_in_dim, NULL, "width of the features", NULL},
    {"out_dim", (getter)get_out_dim, NULL, "number of logits (classes or labels)", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyMethodDef Head_methods[] = {
    {"forward", (PyCFunction)(void (*)(void))Head_forward, METH_VARARGS | METH_KEYWORDS,
     "forward($self, /, x, *, out=None)\n--\n\n"
     "Returns the logits, float32 (n, out_dim) = x W^T + b; x: float32\n"
     "(n, in_dim), C-contiguous; out (written) or a new array."},
    {"backward", (PyCFunction)(void (*)(void))Head_backward, METH_VARARGS | METH_KEYWORDS,
     "backward($self, /, d_logits, x, *, d_x=None, input_grad=True)\n--\n\n"
     "Returns d_x or None. ADDS dL/dW = d_logits^T x and dL/db = column sums of d_logits "
     "into the gradients;\n"
     "d_x (n, in_dim) is WRITTEN with d_logits W (a new array unless given)."},
    {"zero_grad", (PyCFunction)Head_zero_grad, METH_NOARGS,
     "zero_grad($self, /)\n--\n\nSet the gradients to zero."},
    {NULL, NULL, 0, NULL}};

PyDoc_STRVAR(
    Head_doc,
    "LinearHead(in_dim, out_dim, *, seed=0)\n"
    "--\n"
    "\n"
    "A linear layer, logits = x W^T + b (PyTorch's nn.Linear, initialised as it is:\n"
    "U(-1/sqrt(in_dim), 1/sqrt(in_dim)) from a counter-based generator keyed by seed), on\n"
    "the core's linear_forward / linear_backward: the classifier of fine-tuning. The\n"
    "parameters live in one flat buffer [W | b] (flat_parameters, and weight / bias views\n"
    "into it), the gradients in another of the same layout (flat_gradients); backward\n"
    "adds into them, so pass both to convirt.Adam. The head keeps no activations:\n"
    "backward takes the forward's features again. Calls release the GIL; a concurrent\n"
    "second call on the same head is refused.");

static PyTypeObject HeadType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "convirt._core.LinearHead",
    .tp_basicsize = sizeof(HeadObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = Head_doc,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Head_init,
    .tp_dealloc = (destructor)Head_dealloc,
    .tp_repr = (reprfunc)Head_repr,
    .tp_methods = Head_methods,
    .tp_getset = Head_getset,
};

int cv_register_linear_head(PyObject *module)
{
    if (PyType_Ready(&HeadType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "LinearHead", (PyObject *)&HeadType);
}
