/* arrays.h - the binding's arguments: NumPy arrays handed to the core, the outputs it
 * writes (the caller's or new), views of the memory an object owns, and the numbers
 * (sizes, seeds) that arrive as Python ints.
 *
 * Arrays are never converted: a wrong dtype, rank, shape, stride or flag is a
 * TypeError or ValueError that names what was expected and what was given. */
#ifndef CONVIRT_PY_ARRAYS_H
#define CONVIRT_PY_ARRAYS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL convirt_ARRAY_API
#ifndef CONVIRT_MODULE_MAIN
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "../convirt.h"

/* What an argument must be. shape[i] < 0 means any size; ndim_min..ndim_max. */
typedef struct {
    const char *name; /* the argument's name in messages */
    int dtype;        /* NPY_FLOAT32, NPY_UINT8, NPY_INT32 ...; -1: float32 or uint8 */
    int ndim_min, ndim_max;
    npy_intp shape[4];
    int writeable;  /* an output the core writes */
    int contiguous; /* must be C-contiguous (else any positive or negative stride) */
} cv_array_spec;

/* Check obj against spec; on success *out is a borrowed reference to the array.
 * Returns 0 or -1 with an exception set. */
int cv_check_array(PyObject *obj, const cv_array_spec *spec, PyArrayObject **out);

/* Strides of arr in elements; errors on strides that are not a multiple of the item
 * size or that are zero on an axis longer than 1 (a broadcast view). */
int cv_element_strides(PyArrayObject *arr, const char *name, ptrdiff_t *strides);

/* ValueError when two arrays may share memory (an output over an input). */
int cv_check_no_overlap(PyArrayObject *out, const char *out_name, PyArrayObject *in,
                        const char *in_name);

/* ValueError when arr may share memory with the object's own buffer [start, start +
 * bytes) (a view of flat_parameters given as an output, say), named `what`. */
int cv_check_not_in_buffer(PyArrayObject *arr, const char *name, const void *start,
                           size_t bytes, const char *what);

/* The signature of cv_gemm and cv_gemm_reference. */
typedef void (*cv_gemm_fn)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha,
                           const float *A, ptrdiff_t rsa, ptrdiff_t csa, const float *B,
                           ptrdiff_t rsb, ptrdiff_t csb, float beta, float *C,
                           ptrdiff_t rsc, ptrdiff_t csc);

/* The body of a Python gemm(A, B, C, alpha=1.0, beta=0.0) entry point: reads and checks
 * the arguments (float32 2-D, any strides, C writable and not over A or B; format is
 * "OOO|dd:name") and runs gemm without the GIL. Returns None or NULL with an
 * exception set. */
PyObject *cv_call_gemm(PyObject *args, PyObject *kwds, const char *format, cv_gemm_fn gemm);
/* The operands of a GEMM call: A (m, k), B (k, n) float32, C (m, n) float32 writeable and
 * overlapping neither, their element strides. 0, or -1 with the exception set. */
int cv_gemm_arrays(PyObject *a_obj, PyObject *b_obj, PyObject *c_obj, PyArrayObject **A,
                   PyArrayObject **B, PyArrayObject **C, ptrdiff_t sa[2], ptrdiff_t sb[2],
                   ptrdiff_t sc[2]);

/* A new C-contiguous float32 array of the given shape, or NULL with an exception. */
PyArrayObject *cv_new_float_array(int ndim, const npy_intp *shape);

/* An input an output may not overlap, and its name in messages. array may be NULL (an
 * optional input that was not given): it is skipped. */
typedef struct {
    PyArrayObject *array;
    const char *name;
} cv_named_array;

/* An output argument: the caller's array, or a new one when `given` is NULL or None.
 * A new array is C-contiguous float32 with spec's shape (spec->ndim_min dimensions,
 * every size given). The caller's is checked against spec (say writeable there) and
 * refused when it may share memory with any of the n_inputs inputs; messages about
 * overlap and strides call it `name` (spec->name may carry a hint, e.g. "grad (it
 * must match logits' shape)"). strides, when not NULL, receives its strides in
 * elements. A new reference, or NULL with an exception. */
PyArrayObject *cv_output_array(PyObject *given, const cv_array_spec *spec, const char *name,
                               const cv_named_array *inputs, int n_inputs,
                               ptrdiff_t *strides);

/* A float32 array over memory that `owner` holds (its parameters, gradients, state):
 * the array's base is owner, so the memory lives as long as any view of it does.
 * data may be NULL only when the view is empty. A new reference, or NULL with an
 * exception. */
PyObject *cv_owned_view(PyObject *owner, float *data, int ndim, const npy_intp *shape,
                        int writeable);

/* A double as Python's repr writes it ("0.0", "nan", "1e-06"): PyErr_Format has no
 * %g (Python 3.11 prints it literally, 3.12 raises SystemError), so numbers are
 * formatted first and passed as %s. Returns buf. */
#define CV_DOUBLE_TEXT 40
const char *cv_double_text(double value, char buf[CV_DOUBLE_TEXT]);

/* A size argument: any int (NumPy's too) that fits Py_ssize_t, else a ValueError
 * naming it, where the "n" conversion raises OverflowError; the range is the caller's
 * to check. NULL leaves *out as it is (the default). Returns 0 or -1. */
int cv_read_size(PyObject *obj, const char *name, Py_ssize_t *out);

/* A seed, step or counter: an int (NumPy's too, not a bool) in [0, 2**64);
 * ValueError otherwise, where the C conversion would silently wrap -1 or 2**64.
 * Returns 0 or -1. */
int cv_read_uint64(PyObject *obj, const char *name, uint64_t *out);

#endif
