/* optimizer.c - the Python type convirt.Adam (csrc/adam.c). */
#include "../adam.h"
#include "arrays.h"
#include "errors.h"
#include "module.h"

typedef struct {
    PyObject_HEAD cv_adam adam;
    int initialized;
    int busy;
    PyObject *parameters; /* tuple of the arrays updated in place */
    PyObject *gradients;  /* tuple of the arrays read */
} AdamObject;

/* lr in (0, CV_ADAM_MAX_LR], or [0, ...] when allow_zero (see adam.h for the bound). */
static int check_lr(double lr, int allow_zero)
{
    if (!(allow_zero ? lr >= 0.0 : lr > 0.0) || !(lr <= CV_ADAM_MAX_LR)) {
        char text[CV_DOUBLE_TEXT], max[CV_DOUBLE_TEXT];
        PyErr_Format(PyExc_ValueError, "lr must be in %s0, %s], got %s",
                     allow_zero ? "[" : "(", cv_double_text(CV_ADAM_MAX_LR, max),
                     cv_double_text(lr, text));
        return -1;
    }
    return 0;
}

/* A list (or tuple) of 1-D float32 C-contiguous arrays, or a single such array, as a
 * new tuple. */
static PyObject *array_tuple(PyObject *obj, const char *name)
{
    if (PyArray_Check(obj))
        return PyTuple_Pack(1, obj);
    if (!PyList_Check(obj) && !PyTuple_Check(obj)) {
        PyErr_Format(PyExc_TypeError,
                     "%s must be a list of 1-D float32 NumPy arrays, got %s", name,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return PySequence_Tuple(obj);
}

static int Adam_init(AdamObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"parameters",
                             "gradients",
                             "lr",
                             "betas",
                             "eps",
                             "weight_decay",
                             "decoupled_weight_decay",
                             "max_grad_norm",
                             NULL};
    PyObject *params_obj, *grads_obj, *max_norm_obj = Py_None;
    PyObject *params = NULL, *grads = NULL;
    cv_adam_config config = {1e-4, 0.9, 0.999, 1e-8, 1e-6, 0, 0.0};
    cv_adam_segment *segments = NULL;
    if (self->initialized) {
        PyErr_SetString(cv_error_state,
                        "an Adam object cannot be re-initialised (its state arrays may "
                        "be in use); make a new one");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|$d(dd)ddpO:Adam", kwlist, &params_obj,
                                     &grads_obj, &config.lr, &config.beta1, &config.beta2,
                                     &config.eps, &config.weight_decay, &config.decoupled,
                                     &max_norm_obj))
        return -1;
    if (check_lr(config.lr, 0))
        return -1;
    if (max_norm_obj != Py_None) {
        config.max_grad_norm = PyFloat_AsDouble(max_norm_obj);
        if (config.max_grad_norm == -1.0 && PyErr_Occurred())
            return -1;
        if (!(config.max_grad_norm > 0.0) || !isfinite(config.max_grad_norm)) {
            char text[CV_DOUBLE_TEXT];
            PyErr_Format(PyExc_ValueError,
                         "max_grad_norm must be None or a finite number > 0, got %s",
                         cv_double_text(config.max_grad_norm, text));
            return -1;
        }
    }
    if (cv_adam_check_config(&config) != CV_OK)
        return cv_raise(CV_ERR_VALUE);

    if (!(params = array_tuple(params_obj, "parameters")) ||
        !(grads = array_tuple(grads_obj, "gradients")))
        goto error;
    Py_ssize_t n = PyTuple_GET_SIZE(params);
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError,
                        "parameters is empty; Adam needs at least one array");
        goto error;
    }
    if (PyTuple_GET_SIZE(grads) != n) {
        PyErr_Format(PyExc_ValueError,
                     "parameters and gradients must be lists of the same length, got "
                     "%zd and %zd",
                     n, PyTuple_GET_SIZE(grads));
        goto error;
    }
    segments = PyMem_Malloc(sizeof(cv_adam_segment) * (size_t)n);
    if (!segments) {
        PyErr_NoMemory();
        goto error;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        char pname[40], gname[40];
        snprintf(pname, sizeof pname, "parameters[%zd]", k);
        snprintf(gname, sizeof gname, "gradients[%zd]", k);
        PyArrayObject *p, *g;
        cv_array_spec pspec = {pname, NPY_FLOAT32, 1, 1, {-1, -1, -1, -1}, 1, 1};
        if (cv_check_array(PyTuple_GET_ITEM(params, k), &pspec, &p))
            goto error;
        npy_intp size = PyArray_DIM(p, 0);
        cv_array_spec gspec = {gname, NPY_FLOAT32, 1, 1, {size, -1, -1, -1}, 0, 1};
        if (cv_check_array(PyTuple_GET_ITEM(grads, k), &gspec, &g))
            goto error;
        segments[k] = (cv_adam_segment){PyArray_DATA(p), PyArray_DATA(g), (size_t)size};
    }
    /* A parameter updated twice, or a gradient that is also a parameter, is a bug. */
    for (Py_ssize_t k = 0; k < n; k++) {
        PyArrayObject *p = (PyArrayObject *)PyTuple_GET_ITEM(params, k);
        for (Py_ssize_t l = 0; l < n; l++) {
            char a[40], b[40];
            snprintf(a, sizeof a, "parameters[%zd]", k);
            snprintf(b, sizeof b, "gradients[%zd]", l);
            if (cv_check_no_overlap(p, a, (PyArrayObject *)PyTuple_GET_ITEM(grads, l), b))
                goto error;
            if (l > k) {
                snprintf(b, sizeof b, "parameters[%zd]", l);
                PyArrayObject *other = (PyArrayObject *)PyTuple_GET_ITEM(params, l);
                if (cv_check_no_overlap(p, a, other, b))
                    goto error;
            }
        }
    }
    cv_status status = cv_adam_init(&self->adam, segments, n, &config);
    if (status != CV_OK) {
        cv_raise(status);
        goto error;
    }
    PyMem_Free(segments);
    self->parameters = params;
    self->gradients = grads;
    self->initialized = 1;
    return 0;

error:
    PyMem_Free(segments);
    Py_XDECREF(params);
    Py_XDECREF(grads);
    return -1;
}

static void Adam_dealloc(AdamObject *self)
{
    cv_adam_free(&self->adam);
    Py_CLEAR(self->parameters);
    Py_CLEAR(self->gradients);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int check_ready(AdamObject *self)
{
    if (!self->initialized) {
        PyErr_SetString(cv_error_state, "the Adam object was not initialised");
        return -1;
    }
    return 0;
}

static int check_idle(AdamObject *self)
{
    return check_ready(self) || cv_check_idle(self->busy, "Adam") ? -1 : 0;
}

/* ---- step ----------------------------------------------------------------------- */

static PyObject *Adam_step(AdamObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"return_norm", NULL};
    int want_norm = 0;
    double norm;
    cv_status status;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$p:step", kwlist, &want_norm))
        return NULL;
    if (check_ready(self) || cv_claim(&self->busy, "Adam"))
        return NULL;
    Py_BEGIN_ALLOW_THREADS;
    status = cv_adam_step(&self->adam, &norm, want_norm);
    Py_END_ALLOW_THREADS;
    CV_RELEASE(&self->busy);
    if (status != CV_OK)
        return cv_raise(status), NULL;
    if (self->adam.config.max_grad_norm > 0.0 || want_norm)
        return PyFloat_FromDouble(norm);
    Py_RETURN_NONE;
}

static PyObject *Adam_zero_grad(AdamObject *self, PyObject *unused)
{
    (void)unused;
    if (check_idle(self))
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(self->gradients);
    for (Py_ssize_t k = 0; k < n; k++)
        if (!PyArray_ISWRITEABLE((PyArrayObject *)PyTuple_GET_ITEM(self->gradients, k))) {
            PyErr_Format(PyExc_ValueError, "gradients[%zd] is read-only; cannot zero it",
                         k);
            return NULL;
        }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyArrayObject *g = (PyArrayObject *)PyTuple_GET_ITEM(self->gradients, k);
        memset(PyArray_DATA(g), 0, (size_t)PyArray_NBYTES(g));
    }
    Py_RETURN_NONE;
}

/* ---- state ---------------------------------------------------------------------- */

/* A moment estimate, float32 (total,), as a view (base: the Adam object). */
static PyObject *state_view(AdamObject *self, float *data)
{
    npy_intp shape[1] = {(npy_intp)self->adam.total};
    return cv_owned_view((PyObject *)self, data, 1, shape, 1);
}

static PyObject *segment_sizes(AdamObject *self)
{
    PyObject *sizes = PyList_New(self->adam.n_segments);
    if (!sizes)
        return NULL;
    for (ptrdiff_t k = 0; k < self->adam.n_segments; k++) {
        PyObject *v = PyLong_FromSize_t(self->adam.segments[k].count);
        if (!v) {
            Py_DECREF(sizes);
            return NULL;
        }
        PyList_SET_ITEM(sizes, k, v);
    }
    return sizes;
}

static PyObject *max_norm_object(AdamObject *self)
{
    if (self->adam.config.max_grad_norm > 0.0)
        return PyFloat_FromDouble(self->adam.config.max_grad_norm);
    Py_RETURN_NONE;
}

static PyObject *Adam_state_dict(AdamObject *self, PyObject *unused)
{
    (void)unused;
    if (check_idle(self))
        return NULL;
    PyObject *m_view = NULL, *v_view = NULL, *m = NULL, *v = NULL, *result = NULL;
    PyObject *max_norm = NULL, *sizes = NULL;
    if (!(m_view = state_view(self, self->adam.exp_avg)) ||
        !(v_view = state_view(self, self->adam.exp_avg_sq)) ||
        !(m = PyArray_NewCopy((PyArrayObject *)m_view, NPY_CORDER)) ||
        !(v = PyArray_NewCopy((PyArrayObject *)v_view, NPY_CORDER)) ||
        !(max_norm = max_norm_object(self)) || !(sizes = segment_sizes(self)))
        goto done;
    const cv_adam_config *c = &self->adam.config;
    result = Py_BuildValue(
        "{s:L,s:O,s:O,s:d,s:(dd),s:d,s:d,s:O,s:O,s:O}", "step", (long long)self->adam.step,
        "exp_avg", m, "exp_avg_sq", v, "lr", c->lr, "betas", c->beta1, c->beta2, "eps",
        c->eps, "weight_decay", c->weight_decay, "decoupled_weight_decay",
        c->decoupled ? Py_True : Py_False, "max_grad_norm", max_norm, "sizes", sizes);
done:
    Py_XDECREF(m_view);
    Py_XDECREF(v_view);
    Py_XDECREF(m);
    Py_XDECREF(v);
    Py_XDECREF(max_norm);
    Py_XDECREF(sizes);
    return result;
}

/* A required float32 (total,) state array from the dict; borrowed. */
static PyArrayObject *state_array(AdamObject *self, PyObject *dict, const char *key)
{
    PyObject *obj = PyDict_GetItemString(dict, key);
    if (!obj) {
        PyErr_Format(PyExc_KeyError, "the Adam state dict has no '%s'", key);
        return NULL;
    }
    char name[64];
    snprintf(name, sizeof name, "state_dict['%s']", key);
    PyArrayObject *arr;
    npy_intp total = (npy_intp)self->adam.total;
    cv_array_spec spec = {name, NPY_FLOAT32, 1, 1, {total, -1, -1, -1}, 0, 0};
    if (cv_check_array(obj, &spec, &arr))
        return NULL;
    return arr;
}

/* A number from the state dict: a TypeError naming the key for anything else. */
static int read_double(PyObject *obj, const char *key, double *out)
{
    double v = PyFloat_AsDouble(obj);
    if (v == -1.0 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError))
            return -1;
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "state_dict['%s'] must be a number, got %R", key,
                     obj);
        return -1;
    }
    *out = v;
    return 0;
}

static int optional_double(PyObject *dict, const char *key, double *out)
{
    PyObject *obj = PyDict_GetItemString(dict, key);
    return obj ? read_double(obj, key, out) : 0;
}

/* betas: any sequence of two numbers (a tuple from state_dict(), a list after a JSON
 * round trip). */
static int read_betas(PyObject *obj, double *beta1, double *beta2)
{
    if (!PySequence_Check(obj) || PyUnicode_Check(obj) || PyBytes_Check(obj) ||
        PySequence_Size(obj) != 2) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "state_dict['betas'] must be a pair of numbers (beta1, beta2), got %R",
                     obj);
        return -1;
    }
    PyObject *first = PySequence_GetItem(obj, 0);
    PyObject *second = first ? PySequence_GetItem(obj, 1) : NULL;
    int status = second && !read_double(first, "betas", beta1) &&
                         !read_double(second, "betas", beta2)
                     ? 0
                     : -1;
    Py_XDECREF(first);
    Py_XDECREF(second);
    return status;
}

/* The step count: an int in [0, CV_ADAM_MAX_STEP], past which (double)step, which the
 * bias corrections use, is not exact (and the counter would overflow at 2**63). */
static int read_step(PyObject *obj, int64_t *out)
{
    if (PyBool_Check(obj) || !PyIndex_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "state_dict['step'] must be an int, got %s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyObject *index = PyNumber_Index(obj); /* NumPy integers too */
    if (!index)
        return -1;
    int overflow;
    long long step = PyLong_AsLongLongAndOverflow(index, &overflow);
    Py_DECREF(index);
    if (step == -1 && PyErr_Occurred())
        return -1;
    if (overflow || step < 0 || step > CV_ADAM_MAX_STEP) {
        PyErr_Format(PyExc_ValueError,
                     "state_dict['step'] must be an int in [0, 2**53] (the step count), "
                     "got %R",
                     obj);
        return -1;
    }
    *out = step;
    return 0;
}

static void copy_strided(float *dst, PyArrayObject *src, size_t n)
{
    const char *p = PyArray_BYTES(src);
    npy_intp stride = PyArray_STRIDE(src, 0);
    for (size_t i = 0; i < n; i++)
        dst[i] = *(const float *)(p + (npy_intp)i * stride);
}

static PyObject *Adam_load_state_dict(AdamObject *self, PyObject *dict)
{
    if (check_idle(self))
        return NULL;
    if (!PyDict_Check(dict)) {
        PyErr_Format(PyExc_TypeError,
                     "load_state_dict takes a dict (from state_dict()), got %s",
                     Py_TYPE(dict)->tp_name);
        return NULL;
    }
    PyArrayObject *m, *v;
    if (!(m = state_array(self, dict, "exp_avg")) ||
        !(v = state_array(self, dict, "exp_avg_sq")))
        return NULL;
    PyObject *step_obj = PyDict_GetItemString(dict, "step");
    if (!step_obj) {
        PyErr_SetString(PyExc_KeyError, "the Adam state dict has no 'step'");
        return NULL;
    }
    int64_t step;
    if (read_step(step_obj, &step))
        return NULL;
    PyObject *sizes = PyDict_GetItemString(dict, "sizes");
    if (sizes) {
        PyObject *ours = segment_sizes(self);
        if (!ours)
            return NULL;
        PyObject *theirs = PySequence_Check(sizes) ? PySequence_List(sizes) : NULL;
        int same = theirs ? PyObject_RichCompareBool(ours, theirs, Py_EQ) : 0;
        if (!theirs)
            PyErr_Clear();
        if (same != 1) {
            if (same == 0 || !PyErr_Occurred())
                PyErr_Format(PyExc_ValueError,
                             "the state dict is for parameter arrays of sizes %R, this "
                             "Adam has %R",
                             sizes, ours);
            Py_DECREF(ours);
            Py_XDECREF(theirs);
            return NULL;
        }
        Py_DECREF(ours);
        Py_DECREF(theirs);
    }
    /* A NaN or Inf moment would poison every later step: refuse it here, as step()
     * refuses non-finite gradients. */
    for (size_t i = 0; i < self->adam.total; i++) {
        float mi = *(const float *)(PyArray_BYTES(m) + (npy_intp)i * PyArray_STRIDE(m, 0));
        float vi = *(const float *)(PyArray_BYTES(v) + (npy_intp)i * PyArray_STRIDE(v, 0));
        char text[CV_DOUBLE_TEXT];
        if (!isfinite(mi)) {
            PyErr_Format(cv_error_nonfinite,
                         "state_dict['exp_avg'] must be finite; element %zu is %s", i,
                         cv_double_text(mi, text));
            return NULL;
        }
        if (!(vi >= 0.0f) || !isfinite(vi)) {
            PyErr_Format(isfinite(vi) ? PyExc_ValueError : cv_error_nonfinite,
                         "state_dict['exp_avg_sq'] must be finite and >= 0; element %zu "
                         "is %s",
                         i, cv_double_text(vi, text));
            return NULL;
        }
    }
    cv_adam_config config = self->adam.config;
    PyObject *betas = PyDict_GetItemString(dict, "betas");
    if (betas && read_betas(betas, &config.beta1, &config.beta2))
        return NULL;
    if (optional_double(dict, "lr", &config.lr) ||
        optional_double(dict, "eps", &config.eps) ||
        optional_double(dict, "weight_decay", &config.weight_decay))
        return NULL;
    PyObject *decoupled = PyDict_GetItemString(dict, "decoupled_weight_decay");
    if (decoupled) {
        int d = PyObject_IsTrue(decoupled);
        if (d < 0)
            return NULL;
        config.decoupled = d;
    }
    PyObject *max_norm = PyDict_GetItemString(dict, "max_grad_norm");
    if (max_norm == Py_None)
        config.max_grad_norm = 0.0;
    else if (max_norm && optional_double(dict, "max_grad_norm", &config.max_grad_norm))
        return NULL;
    if (cv_adam_check_config(&config) != CV_OK)
        return cv_raise(CV_ERR_VALUE), NULL;

    self->adam.config = config;
    self->adam.step = step;
    copy_strided(self->adam.exp_avg, m, self->adam.total);
    copy_strided(self->adam.exp_avg_sq, v, self->adam.total);
    Py_RETURN_NONE;
}

/* ---- attributes ----------------------------------------------------------------- */

static PyObject *get_lr(AdamObject *self, void *closure)
{
    (void)closure;
    return PyFloat_FromDouble(self->adam.config.lr);
}

static int set_lr(AdamObject *self, PyObject *value, void *closure)
{
    (void)closure;
    if (!value) {
        PyErr_SetString(PyExc_AttributeError, "lr cannot be deleted");
        return -1;
    }
    double lr = PyFloat_AsDouble(value);
    if ((lr == -1.0 && PyErr_Occurred()) || check_lr(lr, 1) || check_idle(self))
        return -1;
    self->adam.config.lr = lr;
    return 0;
}

static PyObject *get_betas(AdamObject *self, void *closure)
{
    (void)closure;
    return Py_BuildValue("(dd)", self->adam.config.beta1, self->adam.config.beta2);
}

static PyObject *get_eps(AdamObject *self, void *closure)
{
    (void)closure;
    return PyFloat_FromDouble(self->adam.config.eps);
}

static PyObject *get_weight_decay(AdamObject *self, void *closure)
{
    (void)closure;
    return PyFloat_FromDouble(self->adam.config.weight_decay);
}

static PyObject *get_decoupled(AdamObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->adam.config.decoupled);
}

static PyObject *get_max_grad_norm(AdamObject *self, void *closure)
{
    (void)closure;
    return max_norm_object(self);
}

static PyObject *get_step_count(AdamObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromLongLong((long long)self->adam.step);
}

static PyObject *get_exp_avg(AdamObject *self, void *closure)
{
    (void)closure;
    return check_ready(self) ? NULL : state_view(self, self->adam.exp_avg);
}

static PyObject *get_exp_avg_sq(AdamObject *self, void *closure)
{
    (void)closure;
    return check_ready(self) ? NULL : state_view(self, self->adam.exp_avg_sq);
}

static PyObject *get_parameters(AdamObject *self, void *closure)
{
    (void)closure;
    if (check_ready(self))
        return NULL;
    return PySequence_List(self->parameters);
}

static PyObject *get_gradients(AdamObject *self, void *closure)
{
    (void)closure;
    if (check_ready(self))
        return NULL;
    return PySequence_List(self->gradients);
}

static PyObject *get_size(AdamObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSize_t(self->adam.total);
}

static PyObject *Adam_repr(AdamObject *self)
{
    const cv_adam_config *c = &self->adam.config;
    char buf[320];
    char clip[48] = "None";
    if (c->max_grad_norm > 0.0)
        snprintf(clip, sizeof clip, "%g", c->max_grad_norm);
    snprintf(buf, sizeof buf,
             "Adam(<%zu parameters in %td arrays>, lr=%g, betas=(%g, %g), eps=%g, "
             "weight_decay=%g, decoupled_weight_decay=%s, max_grad_norm=%s)",
             self->adam.total, self->adam.n_segments, c->lr, c->beta1, c->beta2, c->eps,
             c->weight_decay, c->decoupled ? "True" : "False", clip);
    return PyUnicode_FromString(buf);
}

static PyGetSetDef Adam_getset[] = {
    {"lr", (getter)get_lr, (setter)set_lr,
     "learning rate (settable: schedules change it; in [0, 1])", NULL},
    {"betas", (getter)get_betas, NULL, "(beta1, beta2): decay of the moment estimates",
     NULL},
    {"eps", (getter)get_eps, NULL, "added to the denominator", NULL},
    {"weight_decay", (getter)get_weight_decay, NULL, "L2 (or decoupled) weight decay",
     NULL},
    {"decoupled_weight_decay", (getter)get_decoupled, NULL,
     "True: AdamW's decay p *= 1 - lr wd; False: L2, g += wd p", NULL},
    {"max_grad_norm", (getter)get_max_grad_norm, NULL,
     "clip the global gradient norm to this (None: no clipping)", NULL},
    {"step_count", (getter)get_step_count, NULL, "the number of steps taken", NULL},
    {"exp_avg", (getter)get_exp_avg, NULL,
     "first moment, float32 (size,): a view of the state (base: this object)", NULL},
    {"exp_avg_sq", (getter)get_exp_avg_sq, NULL,
     "second moment, float32 (size,): a view of the state (base: this object)", NULL},
    {"parameters", (getter)get_parameters, NULL, "the parameter arrays updated in place",
     NULL},
    {"gradients", (getter)get_gradients, NULL, "the gradient arrays read by step()", NULL},
    {"size", (getter)get_size, NULL, "total number of parameters", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyMethodDef Adam_methods[] = {
    {"step", (PyCFunction)(void (*)(void))Adam_step, METH_VARARGS | METH_KEYWORDS,
     "step($self, /, *, return_norm=False)\n--\n\n"
     "Returns a float or None. One update of every parameter in place. Returns the global "
     "L2 norm of the\n"
     "gradients (before clipping) when max_grad_norm is set or return_norm=True."},
    {"zero_grad", (PyCFunction)Adam_zero_grad, METH_NOARGS,
     "zero_grad($self, /)\n--\n\n"
     "Set the gradient arrays to zero (they must be writeable)."},
    {"state_dict", (PyCFunction)Adam_state_dict, METH_NOARGS,
     "state_dict($self, /)\n--\n\n"
     "Returns a dict: step, exp_avg and exp_avg_sq (float32 copies), the\n"
     "hyperparameters (lr, betas, eps, weight_decay, decoupled_weight_decay,\n"
     "max_grad_norm) and the sizes of the parameter arrays"},
    {"load_state_dict", (PyCFunction)Adam_load_state_dict, METH_O,
     "load_state_dict($self, d, /)\n--\n\n"
     "Restore what state_dict() returned (the moments are copied in;\n"
     "the sizes must match; hyperparameters present in d are restored and\n"
     "checked as the constructor's; betas may be any pair, e.g. a list after a JSON\n"
     "round trip; step is an int in [0, 2**53]). Nothing changes when it raises."},
    {NULL, NULL, 0, NULL}};

PyDoc_STRVAR(
    Adam_doc,
    "Adam(parameters, gradients, *, lr=1e-4, betas=(0.9, 0.999), eps=1e-8,\n"
    "     weight_decay=1e-6, decoupled_weight_decay=False, max_grad_norm=None)\n"
    "--\n"
    "\n"
    "Adam as torch.optim.Adam (L2 weight decay, the paper's: lr 1e-4, weight decay 1e-6),\n"
    "or AdamW with decoupled_weight_decay=True, in one C loop over flat buffers.\n"
    "\n"
    "parameters and gradients are lists of 1-D float32 C-contiguous arrays of equal sizes\n"
    "(typically slices of Encoder.flat_parameters[trainable_offset:] and of\n"
    "flat_gradients): step() updates the parameters IN PLACE and reads the gradients; the\n"
    "object keeps references to them. max_grad_norm clips the global gradient norm as\n"
    "torch.nn.utils.clip_grad_norm_, on the fly (the gradient arrays are not written).\n"
    "The moments exp_avg / exp_avg_sq are views of the state; state_dict() and\n"
    "load_state_dict() save and restore it. step() releases the GIL and uses OpenMP over\n"
    "fixed chunks, so results do not depend on the number of threads.\n"
    "\n"
    "lr is in (0, 1] (the lr setter takes [0, 1]), eps in [1e-16, 3.4e38] and\n"
    "weight_decay in [0, 1]; anything else is a ValueError. An element's step is\n"
    "lr m^ / (sqrt(v^) + eps), at most lr max|g| / eps <= 1e16 max|g|: the\n"
    "hyperparameters cannot make a finite gradient's step overflow (while its square\n"
    "is finite in float32, |g| <= 1.8e19), and AdamW's factor 1 - lr weight_decay stays\n"
    "in [0, 1]. step() raises NonFiniteError and changes nothing when a gradient is NaN\n"
    "or Inf, or larger than 1.8e19 once clipped (its square would make exp_avg_sq Inf\n"
    "for good); with coupled weight decay, when the clipped gradient plus weight_decay\n"
    "times its parameter is (what exp_avg_sq averages). load_state_dict() takes a step\n"
    "count in [0, 2**53].");

static PyTypeObject AdamType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "convirt.Adam",
    .tp_basicsize = sizeof(AdamObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = Adam_doc,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Adam_init,
    .tp_dealloc = (destructor)Adam_dealloc,
    .tp_repr = (reprfunc)Adam_repr,
    .tp_methods = Adam_methods,
    .tp_getset = Adam_getset,
};

int cv_register_optimizer(PyObject *module)
{
    if (PyType_Ready(&AdamType) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "Adam", (PyObject *)&AdamType);
}
