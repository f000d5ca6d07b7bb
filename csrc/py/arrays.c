/* arrays.c - the binding's arguments: arrays checked, outputs, owned views and ints
 * (arrays.h). */
#include "arrays.h"

static const char *dtype_name(int typenum)
{
    switch (typenum) {
    case NPY_FLOAT32:
        return "float32";
    case NPY_UINT8:
        return "uint8";
    case NPY_INT32:
        return "int32";
    case NPY_INT64:
        return "int64";
    case -1:
        return "float32 or uint8";
    default:
        return "?";
    }
}

static int shape_matches(PyArrayObject *arr, const cv_array_spec *spec)
{
    int nd = PyArray_NDIM(arr);
    for (int i = 0; i < nd && i < 4; i++)
        if (spec->shape[i] >= 0 && PyArray_DIM(arr, i) != spec->shape[i])
            return 0;
    return 1;
}

static void format_shape(char *buf, size_t len, int nd, const npy_intp *dims, int spec)
{
    size_t used = 0;
    used += snprintf(buf + used, len - used, "(");
    for (int i = 0; i < nd && used < len; i++) {
        if (spec && dims[i] < 0)
            used += snprintf(buf + used, len - used, "%s*", i ? ", " : "");
        else
            used += snprintf(buf + used, len - used, "%s%ld", i ? ", " : "", (long)dims[i]);
    }
    if (used < len)
        snprintf(buf + used, len - used, nd == 1 ? ",)" : ")");
}

int cv_check_array(PyObject *obj, const cv_array_spec *spec, PyArrayObject **out)
{
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a NumPy array of %s, got %s", spec->name,
                     dtype_name(spec->dtype), Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyArrayObject *arr = (PyArrayObject *)obj;
    int typenum = PyArray_TYPE(arr);
    int dtype_ok = spec->dtype == -1 ? (typenum == NPY_FLOAT32 || typenum == NPY_UINT8)
                                     : typenum == spec->dtype;
    if (!dtype_ok || !PyArray_ISNOTSWAPPED(arr)) {
        PyObject *descr = PyObject_Str((PyObject *)PyArray_DESCR(arr));
        PyErr_Format(PyExc_TypeError,
                     "%s must have dtype %s (native byte order), got %S; convert it "
                     "with .astype(np.%s)",
                     spec->name, dtype_name(spec->dtype), descr ? descr : Py_None,
                     spec->dtype == -1 ? "float32" : dtype_name(spec->dtype));
        Py_XDECREF(descr);
        return -1;
    }
    int nd = PyArray_NDIM(arr);
    if (nd < spec->ndim_min || nd > spec->ndim_max) {
        if (spec->ndim_min == spec->ndim_max)
            PyErr_Format(PyExc_ValueError, "%s must have %d dimensions, got %d", spec->name,
                         spec->ndim_min, nd);
        else
            PyErr_Format(PyExc_ValueError, "%s must have %d to %d dimensions, got %d",
                         spec->name, spec->ndim_min, spec->ndim_max, nd);
        return -1;
    }
    if (!shape_matches(arr, spec)) {
        char want[96], got[96];
        format_shape(want, sizeof want, nd, spec->shape, 1);
        format_shape(got, sizeof got, nd, PyArray_DIMS(arr), 0);
        PyErr_Format(PyExc_ValueError, "%s must have shape %s, got %s", spec->name, want,
                     got);
        return -1;
    }
    if (!PyArray_ISALIGNED(arr)) {
        PyErr_Format(
            PyExc_ValueError,
            "%s is not aligned to its item size; pass a copy (np.ascontiguousarray)",
            spec->name);
        return -1;
    }
    if (spec->writeable && !PyArray_ISWRITEABLE(arr)) {
        PyErr_Format(PyExc_ValueError, "%s is read-only; the result is written into it",
                     spec->name);
        return -1;
    }
    if (spec->contiguous && !PyArray_IS_C_CONTIGUOUS(arr)) {
        PyErr_Format(PyExc_ValueError,
                     "%s must be C-contiguous; pass np.ascontiguousarray(%s)", spec->name,
                     spec->name);
        return -1;
    }
    *out = arr;
    return 0;
}

int cv_element_strides(PyArrayObject *arr, const char *name, ptrdiff_t *strides)
{
    npy_intp item = PyArray_ITEMSIZE(arr);
    for (int i = 0; i < PyArray_NDIM(arr); i++) {
        npy_intp s = PyArray_STRIDE(arr, i);
        if (s % item != 0) {
            PyErr_Format(PyExc_ValueError,
                         "%s has a stride of %ld bytes on axis %d, not a multiple of its "
                         "item size %ld",
                         name, (long)s, i, (long)item);
            return -1;
        }
        if (s == 0 && PyArray_DIM(arr, i) > 1 && PyArray_SIZE(arr) > 0) {
            PyErr_Format(PyExc_ValueError,
                         "%s has a zero stride on axis %d (a broadcast view); pass a "
                         "real array",
                         name, i);
            return -1;
        }
        strides[i] = (ptrdiff_t)(s / item);
    }
    return 0;
}

/* The byte range [*low, *high) that arr's elements occupy. */
static void byte_bounds(PyArrayObject *arr, char **low, char **high)
{
    char *lo = PyArray_BYTES(arr), *hi = lo;
    for (int i = 0; i < PyArray_NDIM(arr); i++) {
        npy_intp extent = (PyArray_DIM(arr, i) - 1) * PyArray_STRIDE(arr, i);
        if (PyArray_DIM(arr, i) == 0)
            extent = 0;
        if (extent < 0)
            lo += extent;
        else
            hi += extent;
    }
    *low = lo;
    *high = hi + PyArray_ITEMSIZE(arr);
}

int cv_check_no_overlap(PyArrayObject *out, const char *out_name, PyArrayObject *in,
                        const char *in_name)
{
    char *out_lo, *out_hi, *in_lo, *in_hi;
    byte_bounds(out, &out_lo, &out_hi);
    byte_bounds(in, &in_lo, &in_hi);
    if (PyArray_SIZE(out) > 0 && PyArray_SIZE(in) > 0 && out_lo < in_hi && in_lo < out_hi) {
        PyErr_Format(PyExc_ValueError, "%s overlaps %s in memory; pass a separate buffer",
                     out_name, in_name);
        return -1;
    }
    return 0;
}

int cv_check_not_in_buffer(PyArrayObject *arr, const char *name, const void *start,
                           size_t bytes, const char *what)
{
    char *lo, *hi;
    byte_bounds(arr, &lo, &hi);
    const char *b_lo = start, *b_hi = b_lo + bytes;
    if (start && bytes && PyArray_SIZE(arr) > 0 && lo < b_hi && b_lo < hi) {
        PyErr_Format(PyExc_ValueError, "%s overlaps %s in memory; pass a separate buffer",
                     name, what);
        return -1;
    }
    return 0;
}

PyArrayObject *cv_new_float_array(int ndim, const npy_intp *shape)
{
    return (PyArrayObject *)PyArray_SimpleNew(ndim, (npy_intp *)shape, NPY_FLOAT32);
}

PyArrayObject *cv_output_array(PyObject *given, const cv_array_spec *spec, const char *name,
                               const cv_named_array *inputs, int n_inputs,
                               ptrdiff_t *strides)
{
    PyArrayObject *arr;
    if (!given || given == Py_None) {
        if (!(arr = cv_new_float_array(spec->ndim_min, spec->shape)))
            return NULL;
    } else {
        if (cv_check_array(given, spec, &arr))
            return NULL;
        for (int i = 0; i < n_inputs; i++)
            if (inputs[i].array &&
                cv_check_no_overlap(arr, name, inputs[i].array, inputs[i].name))
                return NULL;
        Py_INCREF(arr);
    }
    if (strides && cv_element_strides(arr, name, strides)) {
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

PyObject *cv_owned_view(PyObject *owner, float *data, int ndim, const npy_intp *shape,
                        int writeable)
{
    static float
        empty; /* NumPy allocates for a NULL data pointer: an empty view has none */
    PyObject *arr = PyArray_New(&PyArray_Type, ndim, (npy_intp *)shape, NPY_FLOAT32, NULL,
                                data ? (void *)data : (void *)&empty, 0,
                                writeable ? NPY_ARRAY_CARRAY : NPY_ARRAY_CARRAY_RO, NULL);
    if (!arr)
        return NULL;
    if (PyArray_SetBaseObject((PyArrayObject *)arr, Py_NewRef(owner)) < 0) {
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

const char *cv_double_text(double value, char buf[CV_DOUBLE_TEXT])
{
    char *text = PyOS_double_to_string(value, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (text) {
        snprintf(buf, CV_DOUBLE_TEXT, "%s", text);
        PyMem_Free(text);
    } else {
        PyErr_Clear();
        snprintf(buf, CV_DOUBLE_TEXT, "%g", value);
    }
    return buf;
}

int cv_read_size(PyObject *obj, const char *name, Py_ssize_t *out)
{
    if (!obj)
        return 0;
    if (!PyIndex_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, got %s", name,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyObject *index = PyNumber_Index(obj);
    if (!index)
        return -1;
    Py_ssize_t v = PyLong_AsSsize_t(index);
    Py_DECREF(index);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s = %R is out of range", name, obj);
        return -1;
    }
    *out = v;
    return 0;
}

int cv_read_uint64(PyObject *obj, const char *name, uint64_t *out)
{
    if (PyBool_Check(obj) || !PyIndex_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, got %s", name,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyObject *index = PyNumber_Index(obj); /* NumPy integers too */
    if (!index)
        return -1;
    unsigned long long v = PyLong_AsUnsignedLongLong(index);
    Py_DECREF(index);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be an int in [0, 2**64), got %R", name,
                     obj);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

int cv_gemm_arrays(PyObject *a_obj, PyObject *b_obj, PyObject *c_obj, PyArrayObject **A,
                   PyArrayObject **B, PyArrayObject **C, ptrdiff_t sa[2], ptrdiff_t sb[2],
                   ptrdiff_t sc[2])
{
    cv_array_spec spec_a = {"A", NPY_FLOAT32, 2, 2, {-1, -1, -1, -1}, 0, 0};
    if (cv_check_array(a_obj, &spec_a, A) || cv_element_strides(*A, "A", sa))
        return -1;
    npy_intp m = PyArray_DIM(*A, 0), k = PyArray_DIM(*A, 1);
    cv_array_spec spec_b = {"B", NPY_FLOAT32, 2, 2, {k, -1, -1, -1}, 0, 0};
    if (cv_check_array(b_obj, &spec_b, B) || cv_element_strides(*B, "B", sb))
        return -1;
    cv_array_spec spec_c = {"C", NPY_FLOAT32, 2, 2, {m, PyArray_DIM(*B, 1), -1, -1}, 1, 0};
    if (cv_check_array(c_obj, &spec_c, C) || cv_element_strides(*C, "C", sc) ||
        cv_check_no_overlap(*C, "C", *A, "A") || cv_check_no_overlap(*C, "C", *B, "B"))
        return -1;
    return 0;
}

PyObject *cv_call_gemm(PyObject *args, PyObject *kwds, const char *format, cv_gemm_fn gemm)
{
    static char *kwlist[] = {"A", "B", "C", "alpha", "beta", NULL};
    PyObject *a_obj, *b_obj, *c_obj;
    double alpha = 1.0, beta = 0.0;
    PyArrayObject *A, *B, *C;
    ptrdiff_t sa[2], sb[2], sc[2];
    if (!PyArg_ParseTupleAndKeywords(args, kwds, format, kwlist, &a_obj, &b_obj, &c_obj,
                                     &alpha, &beta) ||
        cv_gemm_arrays(a_obj, b_obj, c_obj, &A, &B, &C, sa, sb, sc))
        return NULL;
    npy_intp m = PyArray_DIM(A, 0), k = PyArray_DIM(A, 1), n = PyArray_DIM(B, 1);
    const float *pa = PyArray_DATA(A), *pb = PyArray_DATA(B);
    float *pc = PyArray_DATA(C);
    Py_BEGIN_ALLOW_THREADS;
    gemm(m, n, k, (float)alpha, pa, sa[0], sa[1], pb, sb[0], sb[1], (float)beta, pc, sc[0],
         sc[1]);
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}
