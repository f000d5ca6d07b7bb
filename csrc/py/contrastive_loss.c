/* contrastive_loss.c - the Python type convirt.ContrastiveLoss and the LossResult it
 * returns (csrc/loss.c). */
#include "arrays.h"
#include "errors.h"
#include "module.h"

typedef struct {
    PyObject_HEAD double image_to_text_weight; /* the paper's lambda */
    double logit_scale;                        /* log(1 / temperature) */
    double max_logit_scale; /* clamp of exp(logit_scale) when learnable */
    int learnable;
    int busy;
    cv_loss_workspace ws;
} LossObject;

static PyTypeObject LossResultType;

static PyStructSequence_Field result_fields[] = {
    {"loss", "lambda * image_to_text + (1 - lambda) * text_to_image"},
    {"image_to_text", "mean over images of -log softmax over the texts (v -> u)"},
    {"text_to_image", "mean over texts of -log softmax over the images (u -> v)"},
    {"accuracy_image_to_text", "share of images whose most similar text is their own"},
    {"accuracy_text_to_image", "share of texts whose most similar image is their own"},
    {"grad_v", "dL/dv, float32 (N, d), or None"},
    {"grad_u", "dL/du, float32 (N, d), or None"},
    {"grad_logit_scale", "dL/d logit_scale when the temperature is learnable, else None"},
    {NULL, NULL}};

static PyStructSequence_Desc result_desc = {
    "convirt.LossResult",
    "What ContrastiveLoss returns: the losses, accuracies and gradients.", result_fields,
    8};

/* LossResult's repr: the numbers, and each gradient by its dtype and shape. (The
 * structseq's own repr prints both arrays: thousands of characters for a batch.) */
static PyObject *loss_result_repr(PyObject *self)
{
    PyObject *parts = NULL, *separator = NULL, *fields = NULL, *text = NULL;
    if (!(parts = PyList_New(0)))
        goto error;
    for (Py_ssize_t i = 0; result_fields[i].name; i++) {
        PyObject *value = PyStructSequence_GET_ITEM(self, i), *part = NULL;
        if (PyArray_Check(value)) {
            PyObject *shape = PyObject_GetAttrString(value, "shape");
            if (shape)
                part = PyUnicode_FromFormat(
                    "%s=<%S array, shape %R>", result_fields[i].name,
                    (PyObject *)PyArray_DESCR((PyArrayObject *)value), shape);
            Py_XDECREF(shape);
        } else {
            part = PyUnicode_FromFormat("%s=%R", result_fields[i].name, value);
        }
        if (!part || PyList_Append(parts, part) < 0) {
            Py_XDECREF(part);
            goto error;
        }
        Py_DECREF(part);
    }
    if (!(separator = PyUnicode_FromString(", ")) ||
        !(fields = PyUnicode_Join(separator, parts)))
        goto error;
    text = PyUnicode_FromFormat("%s(%U)", Py_TYPE(self)->tp_name, fields);
error:
    Py_XDECREF(parts);
    Py_XDECREF(separator);
    Py_XDECREF(fields);
    return text;
}

static PyObject *loss_result_repr_method(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return loss_result_repr(self);
}

static PyMethodDef loss_result_repr_def = {"__repr__", loss_result_repr_method, METH_NOARGS,
                                           "Return repr(self)."};

/* exp(logit_scale), clamped when the temperature is learnable. */
static double loss_scale(const LossObject *self)
{
    double scale = exp(self->logit_scale);
    if (self->learnable && scale > self->max_logit_scale)
        scale = self->max_logit_scale;
    return scale;
}

/* The logit scale exp(logit_scale) multiplies the cosine similarities in float32:
 * |logit_scale| <= 80 keeps it a normal float32 number (exp(80) = 5.5e34, exp(-80) =
 * 1.8e-35) with room below FLT_MAX (2**12) for the logits (at most the scale), the loss
 * (at most 2 scale + log N) and the gradients (a few times the scale for unit-norm
 * inputs). The paper's is 10 (temperature 0.1); CLIP's learnable one is clamped at
 * 100. */
#define MAX_ABS_LOGIT_SCALE 80.0

static int check_logit_scale(double logit_scale)
{
    if (!(fabs(logit_scale) <= MAX_ABS_LOGIT_SCALE)) {
        char text[CV_DOUBLE_TEXT];
        PyErr_Format(PyExc_ValueError,
                     "logit_scale must be in [-80, 80] (its exp, the logit scale, "
                     "multiplies the similarities in float32), got %s",
                     cv_double_text(logit_scale, text));
        return -1;
    }
    return 0;
}

static int check_temperature(double temperature)
{
    if (!(temperature > 0.0) || !(fabs(log(1.0 / temperature)) <= MAX_ABS_LOGIT_SCALE)) {
        char text[CV_DOUBLE_TEXT];
        PyErr_Format(PyExc_ValueError,
                     "temperature must be a positive finite number in [exp(-80), "
                     "exp(80)] = [1.8e-35, 5.5e34] (logit_scale = log(1 / temperature) "
                     "in [-80, 80]), got %s",
                     cv_double_text(temperature, text));
        return -1;
    }
    return 0;
}

static int check_weight(double weight)
{
    char text[CV_DOUBLE_TEXT];
    if (!(weight >= 0.0 && weight <= 1.0)) {
        PyErr_Format(PyExc_ValueError,
                     "image_to_text_weight (lambda) must be in [0, 1], got %s",
                     cv_double_text(weight, text));
        return -1;
    }
    return 0;
}

static int Loss_init(LossObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"temperature", "image_to_text_weight", "learnable_temperature",
                             "max_logit_scale", NULL};
    double temperature = 0.1, weight = 0.75, max_logit_scale = 100.0;
    int learnable = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|d$dpd:ContrastiveLoss", kwlist,
                                     &temperature, &weight, &learnable, &max_logit_scale))
        return -1;
    if (check_temperature(temperature) || check_weight(weight))
        return -1;
    if (!(max_logit_scale > 0.0) || !isfinite(max_logit_scale)) {
        char text[CV_DOUBLE_TEXT];
        PyErr_Format(PyExc_ValueError,
                     "max_logit_scale must be positive and finite, got %s",
                     cv_double_text(max_logit_scale, text));
        return -1;
    }
    self->image_to_text_weight = weight;
    self->logit_scale = log(1.0 / temperature);
    self->max_logit_scale = max_logit_scale;
    self->learnable = learnable;
    return 0;
}

static void Loss_dealloc(LossObject *self)
{
    cv_loss_workspace_free(&self->ws);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Validates one (N, d) input; fills strides. */
static int input_matrix(PyObject *obj, const char *name, npy_intp rows, npy_intp cols,
                        PyArrayObject **arr, ptrdiff_t *strides)
{
    cv_array_spec spec = {name, NPY_FLOAT32, 2, 2, {rows, cols, -1, -1}, 0, 0};
    if (cv_check_array(obj, &spec, arr) || cv_element_strides(*arr, name, strides))
        return -1;
    return 0;
}

/* An output gradient (rows, cols): the caller's array (validated, over none of the
 * inputs) or a new one. New reference, or NULL with an exception. */
static PyArrayObject *grad_output(PyObject *given, const char *name, npy_intp rows,
                                  npy_intp cols, ptrdiff_t *strides,
                                  const cv_named_array *inputs, int n_inputs)
{
    cv_array_spec spec = {name, NPY_FLOAT32, 2, 2, {rows, cols, -1, -1}, 1, 0};
    return cv_output_array(given, &spec, name, inputs, n_inputs, strides);
}

/* Fills a LossResult from a core result; steals grad_a / grad_b (either may be NULL). */
static PyObject *make_loss_result(LossObject *self, const cv_loss_result *out,
                                  PyArrayObject *grad_a, PyArrayObject *grad_b)
{
    PyObject *result = PyStructSequence_New(&LossResultType);
    if (!result) {
        Py_XDECREF(grad_a);
        Py_XDECREF(grad_b);
        return NULL;
    }
    PyStructSequence_SET_ITEM(result, 0, PyFloat_FromDouble(out->loss));
    PyStructSequence_SET_ITEM(result, 1, PyFloat_FromDouble(out->loss_rows));
    PyStructSequence_SET_ITEM(result, 2, PyFloat_FromDouble(out->loss_cols));
    PyStructSequence_SET_ITEM(result, 3, PyFloat_FromDouble(out->accuracy_rows));
    PyStructSequence_SET_ITEM(result, 4, PyFloat_FromDouble(out->accuracy_cols));
    PyStructSequence_SET_ITEM(result, 5, grad_a ? (PyObject *)grad_a : Py_NewRef(Py_None));
    PyStructSequence_SET_ITEM(result, 6, grad_b ? (PyObject *)grad_b : Py_NewRef(Py_None));
    if (self->learnable) {
        /* Past the clamp the scale no longer moves with logit_scale. */
        double g =
            exp(self->logit_scale) > self->max_logit_scale ? 0.0 : out->grad_logit_scale;
        PyStructSequence_SET_ITEM(result, 7, PyFloat_FromDouble(g));
    } else {
        PyStructSequence_SET_ITEM(result, 7, Py_NewRef(Py_None));
    }
    for (int i = 0; i < 8; i++)
        if (!PyStructSequence_GET_ITEM(result, i)) {
            Py_DECREF(result);
            return NULL;
        }
    return result;
}

static PyObject *Loss_call(LossObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"v", "u", "grad_v", "grad_u", "compute_grad", NULL};
    PyObject *v_obj, *u_obj, *gv_obj = NULL, *gu_obj = NULL;
    int compute_grad = 1;
    PyArrayObject *v, *u, *gv = NULL, *gu = NULL;
    ptrdiff_t sv[2], su[2], sgv[2] = {0, 0}, sgu[2] = {0, 0};
    cv_loss_result out;
    cv_status status;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|$OOp:ContrastiveLoss.__call__", kwlist,
                                     &v_obj, &u_obj, &gv_obj, &gu_obj, &compute_grad))
        return NULL;
    if (input_matrix(v_obj, "v", -1, -1, &v, sv))
        return NULL;
    npy_intp n = PyArray_DIM(v, 0), d = PyArray_DIM(v, 1);
    if (n == 0 || d == 0) {
        PyErr_Format(PyExc_ValueError,
                     "v must have at least one row and one column, got (%ld, %ld)", (long)n,
                     (long)d);
        return NULL;
    }
    if (input_matrix(u_obj, "u (it must match v's shape)", n, d, &u, su))
        return NULL;
    if (compute_grad) {
        const cv_named_array inputs[2] = {{v, "v"}, {u, "u"}};
        if (!(gv = grad_output(gv_obj, "grad_v", n, d, sgv, inputs, 2)) ||
            !(gu = grad_output(gu_obj, "grad_u", n, d, sgu, inputs, 2)))
            goto error;
        if (gv_obj && gu_obj && gv_obj != Py_None && gu_obj != Py_None &&
            cv_check_no_overlap(gv, "grad_v", gu, "grad_u"))
            goto error;
    } else if ((gv_obj && gv_obj != Py_None) || (gu_obj && gu_obj != Py_None)) {
        PyErr_SetString(PyExc_ValueError, "grad_v / grad_u given with compute_grad=False");
        goto error;
    }
    if (cv_claim(&self->busy, "ContrastiveLoss"))
        goto error;
    double scale = loss_scale(self), lambda = self->image_to_text_weight;
    Py_BEGIN_ALLOW_THREADS;
    status = cv_loss_forward_backward(&out, gv ? (float *)PyArray_DATA(gv) : NULL, sgv[0],
                                      sgv[1], gu ? (float *)PyArray_DATA(gu) : NULL, sgu[0],
                                      sgu[1], &self->ws, (const float *)PyArray_DATA(v),
                                      sv[0], sv[1], (const float *)PyArray_DATA(u), su[0],
                                      su[1], n, n, d, 0, scale, lambda, 1.0 - lambda);
    Py_END_ALLOW_THREADS;
    CV_RELEASE(&self->busy);
    if (status != CV_OK) {
        cv_raise(status);
        goto error;
    }

    return make_loss_result(self, &out, gv, gu);

error:
    Py_XDECREF(gv);
    Py_XDECREF(gu);
    return NULL;
}

static PyObject *Loss_nt_xent(LossObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"z", "grad", "compute_grad", NULL};
    PyObject *z_obj, *g_obj = NULL;
    int compute_grad = 1;
    PyArrayObject *z, *g = NULL;
    ptrdiff_t sz[2], sg[2] = {0, 0};
    cv_loss_result out;
    cv_status status;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$Op:nt_xent", kwlist, &z_obj, &g_obj,
                                     &compute_grad))
        return NULL;
    if (input_matrix(z_obj, "z", -1, -1, &z, sz))
        return NULL;
    npy_intp n2 = PyArray_DIM(z, 0), d = PyArray_DIM(z, 1);
    if (n2 < 2 || n2 % 2 || d == 0) {
        PyErr_Format(PyExc_ValueError,
                     "z must hold two views of each sample: an even number (>= 2) of rows "
                     "and at least one column, got (%ld, %ld)",
                     (long)n2, (long)d);
        return NULL;
    }
    if (compute_grad) {
        const cv_named_array inputs[1] = {{z, "z"}};
        if (!(g = grad_output(g_obj, "grad", n2, d, sg, inputs, 1)))
            return NULL;
    } else if (g_obj && g_obj != Py_None) {
        PyErr_SetString(PyExc_ValueError, "grad given with compute_grad=False");
        return NULL;
    }
    if (cv_claim(&self->busy, "ContrastiveLoss")) {
        Py_XDECREF(g);
        return NULL;
    }
    double scale = loss_scale(self);
    Py_BEGIN_ALLOW_THREADS;
    status = cv_ntxent_forward_backward(&out, g ? (float *)PyArray_DATA(g) : NULL, sg[0],
                                        sg[1], &self->ws, (const float *)PyArray_DATA(z),
                                        sz[0], sz[1], n2, d, scale);
    Py_END_ALLOW_THREADS;
    CV_RELEASE(&self->busy);
    if (status != CV_OK) {
        Py_XDECREF(g);
        cv_raise(status);
        return NULL;
    }
    return make_loss_result(self, &out, g, NULL);
}

static PyMethodDef Loss_methods[] = {
    {"nt_xent", (PyCFunction)(void (*)(void))Loss_nt_xent, METH_VARARGS | METH_KEYWORDS,
     "nt_xent($self, /, z, *, grad=None, compute_grad=True)\n--\n\n"
     "Returns a LossResult: SimCLR's NT-Xent loss at this temperature, the paper's "
     "image-only baseline: z is\n"
     "float32 (2N, d) holding two views of N images, rows i and i + N positives, every\n"
     "other row a negative. The result's loss (= image_to_text), accuracy_image_to_text\n"
     "and grad_v (dL/dz) are set; the text fields are NaN / None."},
    {NULL, NULL, 0, NULL}};

static PyObject *Loss_repr(LossObject *self)
{
    char buf[256];
    if (self->learnable)
        snprintf(buf, sizeof buf,
                 "ContrastiveLoss(temperature=%g, image_to_text_weight=%g, "
                 "learnable_temperature=True, max_logit_scale=%g)",
                 1.0 / loss_scale(self), self->image_to_text_weight, self->max_logit_scale);
    else
        snprintf(buf, sizeof buf,
                 "ContrastiveLoss(temperature=%g, image_to_text_weight=%g)",
                 1.0 / loss_scale(self), self->image_to_text_weight);
    return PyUnicode_FromString(buf);
}

static PyObject *get_temperature(LossObject *self, void *closure)
{
    (void)closure;
    return PyFloat_FromDouble(1.0 / loss_scale(self));
}

static int set_temperature(LossObject *self, PyObject *value, void *closure)
{
    (void)closure;
    double t = value ? PyFloat_AsDouble(value) : -1.0;
    if (!value || (t == -1.0 && PyErr_Occurred())) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "temperature cannot be deleted");
        return -1;
    }
    if (check_temperature(t))
        return -1;
    self->logit_scale = log(1.0 / t);
    return 0;
}

static PyObject *get_weight(LossObject *self, void *closure)
{
    (void)closure;
    return PyFloat_FromDouble(self->image_to_text_weight);
}

static int set_weight(LossObject *self, PyObject *value, void *closure)
{
    (void)closure;
    double w = value ? PyFloat_AsDouble(value) : -1.0;
    if (!value || (w == -1.0 && PyErr_Occurred())) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "image_to_text_weight cannot be deleted");
        return -1;
    }
    if (check_weight(w))
        return -1;
    self->image_to_text_weight = w;
    return 0;
}

static PyObject *get_logit_scale(LossObject *self, void *closure)
{
    (void)closure;
    return PyFloat_FromDouble(self->logit_scale);
}

static int set_logit_scale(LossObject *self, PyObject *value, void *closure)
{
    (void)closure;
    double s = value ? PyFloat_AsDouble(value) : NAN;
    if (!value || (s == -1.0 && PyErr_Occurred())) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "logit_scale cannot be deleted");
        return -1;
    }
    if (check_logit_scale(s))
        return -1;
    self->logit_scale = s;
    return 0;
}

static PyObject *get_learnable(LossObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->learnable);
}

static PyObject *get_max_logit_scale(LossObject *self, void *closure)
{
    (void)closure;
    return PyFloat_FromDouble(self->max_logit_scale);
}

static PyGetSetDef Loss_getset[] = {
    {"temperature", (getter)get_temperature, (setter)set_temperature,
     "tau: logits are cosine similarities divided by it (paper: 0.1)", NULL},
    {"image_to_text_weight", (getter)get_weight, (setter)set_weight,
     "lambda: the weight of the image -> text direction (paper: 0.75)", NULL},
    {"logit_scale", (getter)get_logit_scale, (setter)set_logit_scale,
     "log(1 / temperature), in [-80, 80]: the learnable parameter when "
     "learnable_temperature",
     NULL},
    {"learnable_temperature", (getter)get_learnable, NULL,
     "whether the call returns grad_logit_scale for training the temperature", NULL},
    {"max_logit_scale", (getter)get_max_logit_scale, NULL,
     "the clamp on exp(logit_scale) when the temperature is learnable", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

PyDoc_STRVAR(
    Loss_doc,
    "ContrastiveLoss(temperature=0.1, *, image_to_text_weight=0.75,\n"
    "                learnable_temperature=False, max_logit_scale=100.0)\n"
    "--\n"
    "\n"
    "ConVIRT's bidirectional contrastive loss (Zhang et al. 2020), fused in C:\n"
    "\n"
    "    L = lambda * mean_i l_i(v->u) + (1 - lambda) * mean_i l_i(u->v)\n"
    "\n"
    "with cosine similarities divided by the temperature as logits.\n"
    "\n"
    "Call it as ``loss(v, u, *, grad_v=None, grad_u=None, compute_grad=True)``:\n"
    "v and u are float32 arrays of shape (N, d), read in place with their strides\n"
    "(transposed or sliced views are not copied). The result is a LossResult with\n"
    "the loss, both directional losses, both top-1 accuracies and the gradients\n"
    "dL/dv and dL/du (written into grad_v / grad_u when given). With\n"
    "learnable_temperature=True the temperature is 1 / min(exp(logit_scale),\n"
    "max_logit_scale) and grad_logit_scale is returned for the optimiser.\n"
    "\n"
    "The temperature is in [exp(-80), exp(80)] and logit_scale in [-80, 80] (ValueError\n"
    "otherwise), so that the logit scale, the logits, the loss and the gradients stay\n"
    "finite in float32.");

static PyTypeObject LossType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "convirt.ContrastiveLoss",
    .tp_basicsize = sizeof(LossObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = Loss_doc,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Loss_init,
    .tp_dealloc = (destructor)Loss_dealloc,
    .tp_call = (ternaryfunc)Loss_call,
    .tp_repr = (reprfunc)Loss_repr,
    .tp_getset = Loss_getset,
    .tp_methods = Loss_methods,
};

int cv_register_contrastive_loss(PyObject *module)
{
    if (PyStructSequence_InitType2(&LossResultType, &result_desc) < 0)
        return -1;
    /* PyStructSequence_InitType2 gives the type the structseq repr; ours replaces it, in
     * the slot that repr() calls and as the __repr__ that type(r).__repr__ finds. */
    LossResultType.tp_repr = loss_result_repr;
    PyObject *repr = PyDescr_NewMethod(&LossResultType, &loss_result_repr_def);
    if (!repr || PyDict_SetItemString(LossResultType.tp_dict, "__repr__", repr) < 0) {
        Py_XDECREF(repr);
        return -1;
    }
    Py_DECREF(repr);
    PyType_Modified(&LossResultType);
    if (PyType_Ready(&LossType) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "ContrastiveLoss", (PyObject *)&LossType) < 0 ||
        PyModule_AddObjectRef(module, "LossResult", (PyObject *)&LossResultType) < 0)
        return -1;
    return 0;
}
