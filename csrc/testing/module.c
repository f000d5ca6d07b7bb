/* module.c - convirt._testing: the core's layers one at a time and its naive reference
 * kernels, which the tests compare with PyTorch, NumPy and finite differences. Not the
 * package's API: convirt._core is the product, and nothing in convirt imports this.
 *
 * It links the same libconvirt as convirt._core and imports convirt._core first, so
 * the core is initialised once (cv_init: the BLIS kernel set, the threads) and both
 * modules share its state: the thread count convirt.set_num_threads sets, the error
 * message of the last failure, and the exception types, which come from _core. */
#define CONVIRT_MODULE_MAIN
#include "../py/arrays.h"
#include "../py/errors.h"
#include "testing.h"

/* gemm_reference(A, B, C, alpha=1.0, beta=0.0): C = alpha A @ B + beta C by the naive
 * triple loop, with the argument rules of convirt._core.gemm. */
static PyObject *py_gemm_reference(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    return cv_call_gemm(args, kwds, "OOO|dd:gemm_reference", cv_gemm_reference);
}

/* The core's thread count as calls from this module get it: convirt.set_num_threads
 * reaches it, the state being libconvirt's (tests check that it is one state). */
static PyObject *py_get_num_threads(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyLong_FromLong(cv_get_num_threads());
}

static PyMethodDef module_methods[] = {
    {"get_num_threads", py_get_num_threads, METH_NOARGS,
     "get_num_threads() -> int: the threads the core gives this module's calls (the "
     "number convirt.set_num_threads set: the modules share the core)."},
    {"gemm_reference", (PyCFunction)(void (*)(void))py_gemm_reference,
     METH_VARARGS | METH_KEYWORDS,
     "gemm_reference(A, B, C, alpha=1.0, beta=0.0): C = alpha A @ B + beta C by the "
     "core's naive reference, for comparison with convirt._core.gemm."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "convirt._testing",
    .m_doc = "The C core's single layers and naive reference kernels, for convirt's "
             "tests. Private: not part of the package's API.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__testing(void)
{
    import_array();
    PyObject *core = PyImport_ImportModule("convirt._core");
    if (!core)
        return NULL;
    int status = cv_import_errors(core);
    Py_DECREF(core);
    if (status < 0)
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (!module)
        return NULL;
    if (cv_testing_add_image_layers(module) < 0 || cv_testing_add_text_layers(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
