/* classify.c - convirt._core.softmax_cross_entropy and binary_cross_entropy: the
 * fine-tuning losses of csrc/classify.c as module-level functions. */
#include "../classify.h"
#include "arrays.h"
#include "errors.h"
#include "module.h"

/* The gradient output, (n, k) like the logits: the caller's array (validated, over none
 * of the inputs) or a new one. New reference, or NULL with an exception. */
static PyArrayObject *grad_output(PyObject *given, npy_intp n, npy_intp k,
                                  ptrdiff_t *strides, const cv_named_array *inputs,
                                  int n_inputs)
{
    cv_array_spec spec = {
        "grad (it must match logits' shape)", NPY_FLOAT32, 2, 2, {n, k, -1, -1}, 1, 0};
    return cv_output_array(given, &spec, "grad", inputs, n_inputs, strides);
}

/* (loss, grad) with grad None when it was not computed; steals grad. */
static PyObject *loss_and_grad(double loss, PyArrayObject *grad)
{
    PyObject *value = PyFloat_FromDouble(loss);
    if (!value) {
        Py_XDECREF(grad);
        return NULL;
    }
    return Py_BuildValue("(NN)", value, grad ? (PyObject *)grad : Py_NewRef(Py_None));
}

static int check_logits(PyObject *obj, PyArrayObject **logits, ptrdiff_t *strides)
{
    cv_array_spec spec = {"logits", NPY_FLOAT32, 2, 2, {-1, -1, -1, -1}, 0, 0};
    if (cv_check_array(obj, &spec, logits))
        return -1;
    /* Before the strides: NumPy gives empty arrays zero strides. */
    if (PyArray_DIM(*logits, 0) == 0 || PyArray_DIM(*logits, 1) == 0) {
        PyErr_Format(PyExc_ValueError,
                     "logits must have at least one row and one class, got (%ld, %ld)",
                     (long)PyArray_DIM(*logits, 0), (long)PyArray_DIM(*logits, 1));
        return -1;
    }
    return cv_element_strides(*logits, "logits", strides);
}

static PyObject *py_softmax_cross_entropy(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"logits", "labels", "grad", "compute_grad", NULL};
    PyObject *logits_obj, *labels_obj, *grad_obj = NULL;
    int compute_grad = 1;
    PyArrayObject *logits, *labels, *grad = NULL;
    ptrdiff_t sz[2], sy[1], sg[2] = {0, 0};
    double loss = 0.0;
    cv_status status;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|O$p:softmax_cross_entropy", kwlist,
                                     &logits_obj, &labels_obj, &grad_obj, &compute_grad))
        return NULL;
    if (check_logits(logits_obj, &logits, sz))
        return NULL;
    npy_intp n = PyArray_DIM(logits, 0), k = PyArray_DIM(logits, 1);
    cv_array_spec spec_y = {"labels (class indices, one per row of logits)",
                            NPY_INT32,
                            1,
                            1,
                            {n, -1, -1, -1},
                            0,
                            0};
    if (cv_check_array(labels_obj, &spec_y, &labels) ||
        cv_element_strides(labels, "labels", sy))
        return NULL;
    if (compute_grad) {
        const cv_named_array inputs[2] = {{logits, "logits"}, {labels, "labels"}};
        if (!(grad = grad_output(grad_obj, n, k, sg, inputs, 2)))
            return NULL;
    } else if (grad_obj && grad_obj != Py_None) {
        PyErr_SetString(PyExc_ValueError, "grad given with compute_grad=False");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS;
    status =
        cv_softmax_cross_entropy(&loss, grad ? (float *)PyArray_DATA(grad) : NULL, sg[0],
                                 sg[1], (const float *)PyArray_DATA(logits), sz[0], sz[1],
                                 (const int32_t *)PyArray_DATA(labels), sy[0], n, k);
    Py_END_ALLOW_THREADS;
    if (status != CV_OK) {
        Py_XDECREF(grad);
        cv_raise(status);
        return NULL;
    }
    return loss_and_grad(loss, grad);
}

static PyObject *py_binary_cross_entropy(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"logits",     "targets",      "grad",
                             "pos_weight", "compute_grad", NULL};
    PyObject *logits_obj, *targets_obj, *grad_obj = NULL, *weight_obj = NULL;
    int compute_grad = 1;
    PyArrayObject *logits, *targets, *weight = NULL, *grad = NULL;
    ptrdiff_t sz[2], st[2], sw[1] = {0}, sg[2] = {0, 0};
    double loss = 0.0;
    cv_status status;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|OO$p:binary_cross_entropy", kwlist,
                                     &logits_obj, &targets_obj, &grad_obj, &weight_obj,
                                     &compute_grad))
        return NULL;
    if (check_logits(logits_obj, &logits, sz))
        return NULL;
    npy_intp n = PyArray_DIM(logits, 0), k = PyArray_DIM(logits, 1);
    cv_array_spec spec_t = {
        "targets (it must match logits' shape)", NPY_FLOAT32, 2, 2, {n, k, -1, -1}, 0, 0};
    if (cv_check_array(targets_obj, &spec_t, &targets) ||
        cv_element_strides(targets, "targets", st))
        return NULL;
    if (weight_obj && weight_obj != Py_None) {
        cv_array_spec spec_w = {
            "pos_weight (one weight per class)", NPY_FLOAT32, 1, 1, {k, -1, -1, -1}, 0, 0};
        if (cv_check_array(weight_obj, &spec_w, &weight) ||
            cv_element_strides(weight, "pos_weight", sw))
            return NULL;
    }
    if (compute_grad) {
        const cv_named_array inputs[3] = {
            {logits, "logits"}, {targets, "targets"}, {weight, "pos_weight"}};
        if (!(grad = grad_output(grad_obj, n, k, sg, inputs, 3)))
            return NULL;
    } else if (grad_obj && grad_obj != Py_None) {
        PyErr_SetString(PyExc_ValueError, "grad given with compute_grad=False");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS;
    status = cv_binary_cross_entropy(
        &loss, grad ? (float *)PyArray_DATA(grad) : NULL, sg[0], sg[1],
        (const float *)PyArray_DATA(logits), sz[0], sz[1],
        (const float *)PyArray_DATA(targets), st[0], st[1],
        weight ? (const float *)PyArray_DATA(weight) : NULL, sw[0], n, k);
    Py_END_ALLOW_THREADS;
    if (status != CV_OK) {
        Py_XDECREF(grad);
        cv_raise(status);
        return NULL;
    }
    return loss_and_grad(loss, grad);
}

PyDoc_STRVAR(
    softmax_doc,
    "softmax_cross_entropy(logits, labels, grad=None, *, compute_grad=True)\n"
    "--\n"
    "\n"
    "Returns (loss, grad): softmax cross-entropy, mean over rows, forward and backward "
    "fused in C:\n"
    "loss = mean_i [logsumexp(logits[i]) - logits[i, labels[i]]] (PyTorch's\n"
    "F.cross_entropy). logits: float32 (N, K), read in place with its strides; labels:\n"
    "int32 (N,) class indices in [0, K). grad: a writeable float32 (N, K) array that is\n"
    "OVERWRITTEN with dloss/dlogits = (softmax(logits) - onehot(labels)) / N, or None for\n"
    "a new array; with compute_grad=False only the loss is computed and grad is None.\n"
    "NaN or Inf logits and out-of-range labels raise ValueError and write nothing.");

PyDoc_STRVAR(
    binary_doc,
    "binary_cross_entropy(logits, targets, grad=None, pos_weight=None, *, "
    "compute_grad=True)\n"
    "--\n"
    "\n"
    "Returns (loss, grad): sigmoid binary cross-entropy (PyTorch's "
    "F.binary_cross_entropy_with_logits), mean "
    "over\n"
    "all N * K elements, forward and backward fused in C, in the stable log-sum-exp form:\n"
    "l = (1 - y) z + (1 + (w - 1) y) (log1p(exp(-|z|)) + max(-z, 0)). logits: float32\n"
    "(N, K); targets: float32 (N, K) in [0, 1] (1 positive, 0 negative; map uncertain or\n"
    "missing labels first); pos_weight: float32 (K,) weights >= 0 of the positive term, "
    "or\n"
    "None for 1. grad: a writeable float32 (N, K) array OVERWRITTEN with dloss/dlogits, "
    "or\n"
    "None for a new array; compute_grad=False: loss only, grad None.");

static PyMethodDef classify_methods[] = {
    {"softmax_cross_entropy", (PyCFunction)(void (*)(void))py_softmax_cross_entropy,
     METH_VARARGS | METH_KEYWORDS, softmax_doc},
    {"binary_cross_entropy", (PyCFunction)(void (*)(void))py_binary_cross_entropy,
     METH_VARARGS | METH_KEYWORDS, binary_doc},
    {NULL, NULL, 0, NULL}};

int cv_register_classify(PyObject *module)
{
    return PyModule_AddFunctions(module, classify_methods);
}
