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

/* gemm_small(A, B, C, accumulate=False) -> bool: C = A @ B (or C += A @ B) through
 * cv_gemm_small; B and C with contiguous rows. False (C untouched) when the kernel
 * does not take the shape on this CPU. */
static PyObject *py_gemm_small(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"A", "B", "C", "accumulate", NULL};
    PyObject *a_obj, *b_obj, *c_obj;
    int accumulate = 0;
    PyArrayObject *A, *B, *C;
    ptrdiff_t sa[2], sb[2], sc[2];
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|p:gemm_small", kwlist, &a_obj, &b_obj,
                                     &c_obj, &accumulate) ||
        cv_gemm_arrays(a_obj, b_obj, c_obj, &A, &B, &C, sa, sb, sc))
        return NULL;
    npy_intp m = PyArray_DIM(A, 0), k = PyArray_DIM(A, 1), n = PyArray_DIM(B, 1);
    const int empty = m == 0 || n == 0 || k == 0;
    if (!empty && ((n > 1 && (sb[1] != 1 || sc[1] != 1)) || sa[0] < 0 || sa[1] < 0 ||
                   sb[0] < 0 || sc[0] < 0)) {
        PyErr_SetString(PyExc_ValueError,
                        "gemm_small needs B and C with contiguous rows, strides >= 0");
        return NULL;
    }
    int ran;
    Py_BEGIN_ALLOW_THREADS;
    ran = !cv_gemm_small(m, n, k, PyArray_DATA(A), sa[0], sa[1], PyArray_DATA(B), sb[0],
                         accumulate, PyArray_DATA(C), sc[0]);
    Py_END_ALLOW_THREADS;
    return PyBool_FromLong(ran);
}

/* gemm_packed(A, B, C, accumulate=False, tile=0, rows=False, few_rows=False) -> bool:
 * C = A @ B (or C += A @ B) through cv_gemm_packed, or with tile > 0 through cv_pack_b
 * and one cv_gemm_prepacked per tile of that many rows (dealt to the threads), or with
 * rows through cv_tiles_b_init_rows and cv_tiles_b_gemm per tile, or with few_rows
 * through cv_gemm_few_rows; C with contiguous rows, B with a unit stride. False (C
 * untouched) when it does not take the shape on this CPU (rows: when B is not packed). */
static PyObject *py_gemm_packed(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"A", "B", "C", "accumulate", "tile", "rows", "few_rows", NULL};
    PyObject *a_obj, *b_obj, *c_obj;
    int accumulate = 0, rows = 0, few_rows = 0;
    Py_ssize_t tile = 0;
    PyArrayObject *A, *B, *C;
    ptrdiff_t sa[2], sb[2], sc[2];
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|pnpp:gemm_packed", kwlist, &a_obj,
                                     &b_obj, &c_obj, &accumulate, &tile, &rows,
                                     &few_rows) ||
        cv_gemm_arrays(a_obj, b_obj, c_obj, &A, &B, &C, sa, sb, sc))
        return NULL;
    npy_intp m = PyArray_DIM(A, 0), k = PyArray_DIM(A, 1), n = PyArray_DIM(B, 1);
    if ((n > 1 && sc[1] != 1) || sa[0] < 0 || sa[1] < 0 || sb[0] < 0 || sb[1] < 0 ||
        sc[0] < 0) {
        PyErr_SetString(PyExc_ValueError,
                        "gemm_packed needs C with contiguous rows, strides >= 0");
        return NULL;
    }
    if (tile < 0) {
        PyErr_SetString(PyExc_ValueError, "tile must be >= 0");
        return NULL;
    }
    int ran = 0;
    const float *a = PyArray_DATA(A);
    float *c = PyArray_DATA(C);
    Py_BEGIN_ALLOW_THREADS;
    cv_packed_b pb;
    cv_tiles_b tb;
    if (few_rows)
        ran = !cv_gemm_few_rows(m, n, k, a, sa[0], sa[1], PyArray_DATA(B), sb[0], sb[1],
                                accumulate, c, sc[0]);
    else if (rows && k > 0 && m > 0) {
        cv_tiles_b_init_rows(&tb, k, n, PyArray_DATA(B), sb[0], sb[1]);
        ran = tb.is_packed;
        const npy_intp step = tile > 0 ? tile : m;
#pragma omp parallel for num_threads(cv_get_num_threads()) schedule(dynamic, 1)
        for (npy_intp r0 = 0; r0 < (ran ? m : 0); r0 += step)
            cv_tiles_b_gemm(&tb, m - r0 < step ? m - r0 : step, a + r0 * sa[0], sa[0],
                            sa[1], accumulate, c + r0 * sc[0], sc[0]);
    } else if (!tile)
        ran = !cv_gemm_packed(m, n, k, a, sa[0], sa[1], PyArray_DATA(B), sb[0], sb[1],
                              accumulate, c, sc[0]);
    else if (k > 0 && m > 0 && !cv_pack_b(&pb, k, n, PyArray_DATA(B), sb[0], sb[1])) {
        ran = 1;
#pragma omp parallel for num_threads(cv_get_num_threads()) schedule(dynamic, 1)
        for (npy_intp r0 = 0; r0 < m; r0 += tile)
            cv_gemm_prepacked(&pb, m - r0 < tile ? m - r0 : tile, a + r0 * sa[0], sa[0],
                              sa[1], accumulate, c + r0 * sc[0], sc[0]);
    }
    Py_END_ALLOW_THREADS;
    return PyBool_FromLong(ran);
}

/* A float32 matrix with contiguous, aligned rows (a row stride in floats), or NULL and
 * a TypeError/ValueError. */
static PyArrayObject *matrix_rows(PyObject *obj, const char *name, int writeable,
                                  ptrdiff_t *ld)
{
    if (!PyArray_Check(obj) || PyArray_TYPE((PyArrayObject *)obj) != NPY_FLOAT32 ||
        PyArray_NDIM((PyArrayObject *)obj) != 2) {
        PyErr_Format(PyExc_TypeError, "%s must be a 2-D float32 ndarray", name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    const npy_intp *st = PyArray_STRIDES(a);
    if ((PyArray_DIM(a, 1) > 1 && st[1] != 4) || st[0] < 0 || st[0] % 4 ||
        !PyArray_ISALIGNED(a) || (writeable && !PyArray_ISWRITEABLE(a))) {
        PyErr_Format(PyExc_ValueError, "%s needs aligned contiguous rows%s", name,
                     writeable ? " and to be writeable" : "");
        return NULL;
    }
    *ld = st[0] / 4;
    return a;
}

/* transpose(src, dst, accumulate=False): dst = src.T (or dst += src.T) through
 * cv_transpose; both with contiguous rows. */
static PyObject *py_transpose(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"src", "dst", "accumulate", NULL};
    PyObject *src_obj, *dst_obj;
    int accumulate = 0;
    ptrdiff_t lds, ldd;
    PyArrayObject *src, *dst;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|p:transpose", kwlist, &src_obj,
                                     &dst_obj, &accumulate) ||
        !(src = matrix_rows(src_obj, "src", 0, &lds)) ||
        !(dst = matrix_rows(dst_obj, "dst", 1, &ldd)))
        return NULL;
    npy_intp rows = PyArray_DIM(src, 0), cols = PyArray_DIM(src, 1);
    if (PyArray_DIM(dst, 0) != cols || PyArray_DIM(dst, 1) != rows) {
        PyErr_SetString(PyExc_ValueError, "dst must have src's shape reversed");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS;
    cv_transpose(PyArray_DATA(dst), ldd, PyArray_DATA(src), lds, rows, cols, accumulate);
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
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
    {"gemm_packed", (PyCFunction)(void (*)(void))py_gemm_packed,
     METH_VARARGS | METH_KEYWORDS,
     "gemm_packed(A, B, C, accumulate=False, tile=0, rows=False, few_rows=False) -> bool: "
     "C = A @ B (+ C) through the core's small-GEMM kernel on packed panels of B (packed "
     "once for row tiles of C with tile > 0, in one slab up to k = 512 with rows), or on "
     "packed panels of A^T with few_rows (B read in place); False when it does not take "
     "the shape."},
    {"transpose", (PyCFunction)(void (*)(void))py_transpose, METH_VARARGS | METH_KEYWORDS,
     "transpose(src, dst, accumulate=False): dst = src.T (or dst += src.T) through the "
     "core's blocked transpose; both 2-D float32 with contiguous rows."},
    {"gemm_small", (PyCFunction)(void (*)(void))py_gemm_small, METH_VARARGS | METH_KEYWORDS,
     "gemm_small(A, B, C, accumulate=False) -> bool: C = A @ B (+ C) through the core's "
     "unpacked small-GEMM kernel; False when it does not take the shape here."},
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
