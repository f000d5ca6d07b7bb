/* module.c - convirt._core: module init, configuration, threads, and the GEMM, peak
 * and ResNet-profile entry points the benchmarks use. Each Python type lives in its
 * own file and registers itself from here. (The tests' single-layer entry points are
 * the separate module convirt._testing, csrc/testing/.) */
#define CONVIRT_MODULE_MAIN
#include <limits.h>

#include "../random.h"
#include "../resnet.h"
#include "arrays.h"
#include "errors.h"
#include "module.h"

static PyObject *py_config(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    cv_config c;
    cv_get_config(&c);
    return Py_BuildValue(
        "{s:s,s:s,s:i,s:s,s:s,s:s,s:s,s:s,s:O,s:i,s:i,s:s,s:i,s:s,s:s,s:s,s:s}",
        "blis_version", c.blis_version, "blis_arch", c.blis_arch, "blis_arch_id",
        c.blis_arch_id, "blis_arch_reason", c.blis_arch_reason, "blis_configs",
        c.blis_configs, "cpu_features", c.cpu_features, "blis_library", c.blis_library,
        "openmp_library", c.openmp_library, "blis_openmp",
        c.blis_openmp ? Py_True : Py_False, "num_threads", c.num_threads, "num_cores",
        c.num_cores, "openmp_runtime",
#if defined(__GNUC__) && !defined(__clang__)
        "libgomp (GCC)",
#else
        "unknown",
#endif
        "openmp_version", c.openmp_version, "compiler", c.compiler, "cflags", c.cflags,
        "gemm_kernel", c.gemm_kernel, "vector_loops", c.vector_loops);
}

static PyObject *py_set_num_threads(PyObject *self, PyObject *arg)
{
    (void)self;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_OverflowError))
        return NULL;
    if (PyErr_Occurred() || n < INT_MIN || n > INT_MAX) {
        /* beyond int: refused here, with the number given (the core takes an int) */
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "the number of threads must be 1..%d, got %R",
                     cv_max_threads(), arg);
        return NULL;
    }
    cv_status status = cv_set_num_threads((int)n);
    if (status != CV_OK)
        return cv_raise(status), NULL;
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyLong_FromLong(cv_get_num_threads());
}

/* set_winograd(on): True, False, 2 or 4, as documented (and 0 and 1, the ints equal to
 * False and True); NumPy's bools and integers equal to one of them too. Anything else is
 * refused: a string or a 3 used to switch F(2x2, 3x3) on through its truth value. */
static PyObject *py_set_winograd(PyObject *self, PyObject *arg)
{
    (void)self;
    long mode;
    if (PyBool_Check(arg) || PyArray_IsScalar(arg, Bool)) {
        mode = PyObject_IsTrue(arg); /* cannot fail on a bool */
    } else if (PyIndex_Check(arg)) {
        PyObject *index = PyNumber_Index(arg);
        if (!index)
            return NULL;
        int overflow;
        mode = PyLong_AsLongAndOverflow(index, &overflow);
        Py_DECREF(index);
        if (mode == -1 && PyErr_Occurred())
            return NULL;
        if (overflow)
            mode = -1; /* refused below */
    } else {
        PyErr_Format(PyExc_TypeError,
                     "set_winograd takes True, False, 2 or 4 (the block size), got %s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    if (mode != 0 && mode != 1 && mode != 2 && mode != 4) {
        PyErr_Format(PyExc_ValueError,
                     "set_winograd takes True, False, 2 or 4 (the block size), got %R",
                     arg);
        return NULL;
    }
    cv_set_winograd((int)mode);
    Py_RETURN_NONE;
}

static PyObject *py_get_winograd(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    int mode = cv_get_winograd();
    return mode > 1 ? PyLong_FromLong(mode) : PyBool_FromLong(mode);
}

/* The threads and seconds fma_peak and gemm_kernel_peak take; 0 threads: all. */
static int peak_arguments(int *threads, double seconds)
{
    char text[CV_DOUBLE_TEXT];
    if (*threads <= 0)
        *threads = cv_get_num_threads();
    if (*threads > cv_max_threads()) {
        PyErr_Format(PyExc_ValueError,
                     "threads must be at most %d (%d per usable core), got %d",
                     cv_max_threads(), CV_THREADS_PER_CORE, *threads);
        return -1;
    }
    if (!(seconds > 0.0 && seconds < 600.0)) {
        PyErr_Format(PyExc_ValueError, "seconds must be in (0, 600), got %s",
                     cv_double_text(seconds, text));
        return -1;
    }
    return 0;
}

static PyObject *py_fma_peak(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"threads", "seconds", "bits", NULL};
    int threads = 0, bits = 0, ran;
    double seconds = 0.5, gflops;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|idi:fma_peak", kwlist, &threads,
                                     &seconds, &bits) ||
        peak_arguments(&threads, seconds))
        return NULL;
    if (bits != 0 && bits != 32 && bits != 256 && bits != 512) {
        PyErr_Format(PyExc_ValueError,
                     "bits must be 512, 256, 32 or 0 (the width of the GEMM kernels in "
                     "use), got %d",
                     bits);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS;
    gflops = cv_fma_peak(threads, seconds, bits, &ran);
    Py_END_ALLOW_THREADS;
    if (gflops < 0.0) {
        PyErr_Format(PyExc_ValueError, "this CPU does not run %d-bit FMA vectors", bits);
        return NULL;
    }
    return Py_BuildValue("(di)", gflops, ran);
}

static PyObject *py_gemm_kernel_peak(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"threads", "seconds", NULL};
    int threads = 0, ran = 0;
    double seconds = 0.5, gflops;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|id:gemm_kernel_peak", kwlist, &threads,
                                     &seconds) ||
        peak_arguments(&threads, seconds))
        return NULL;
    Py_BEGIN_ALLOW_THREADS;
    gflops = cv_gemm_kernel_peak(threads, seconds, &ran);
    Py_END_ALLOW_THREADS;
    if (gflops < 0.0) {
        PyErr_SetString(PyExc_ValueError,
                        "the BLIS kernel set in use has no GEMM kernel of convirt's own "
                        "(config()['gemm_kernel'] is 'none'): BLIS runs every GEMM");
        return NULL;
    }
    return Py_BuildValue("(di)", gflops, ran);
}

/* gemm(A, B, C, alpha=1.0, beta=0.0): C = alpha A @ B + beta C. */
static PyObject *py_gemm(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    return cv_call_gemm(args, kwds, "OOO|dd:gemm", cv_gemm);
}

/* random_uniform(seed, stream, index): the core's counter-based uniform draw, so that
 * Python code that must draw the same numbers (the report sentence sampler) calls the
 * one implementation instead of a port of it. */
static PyObject *py_random_uniform(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *seed_obj, *stream_obj, *index_obj;
    uint64_t seed, stream, index;
    if (!PyArg_ParseTuple(args, "OOO:random_uniform", &seed_obj, &stream_obj, &index_obj))
        return NULL;
    if (cv_read_uint64(seed_obj, "seed", &seed) ||
        cv_read_uint64(stream_obj, "stream", &stream) ||
        cv_read_uint64(index_obj, "index", &index))
        return NULL;
    return PyFloat_FromDouble(cv_random_uniform(seed, stream, index));
}

/* _resnet_profile(enable=None, *, cpu_time=False) -> [(name, conv_fwd, bn_fwd, conv_bwd,
 * bn_bwd, flops_fwd, flops_bwd, calls_fwd, calls_bwd)]: the per-layer times of the
 * encoders' ResNet forward and backward (resnet.h), for benchmarks/bench_resnet.py. */
static PyObject *py_resnet_profile(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"enable", "cpu_time", NULL};
    PyObject *enable = Py_None;
    int cpu_time = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O$p:_resnet_profile", kwlist, &enable,
                                     &cpu_time))
        return NULL;
    if (enable != Py_None) {
        int on = PyObject_IsTrue(enable);
        if (on < 0)
            return NULL;
        resnet_profile_enable(on ? (cpu_time ? RESNET_PROFILE_CPU_TIME : 1) : 0);
    }
    int count;
    const resnet_profile_entry *e = resnet_profile(&count);
    PyObject *list = PyList_New(0);
    if (!list)
        return NULL;
    for (int i = 0; i < count; i++) {
        if (!e[i].name[0])
            continue;
        PyObject *row =
            Py_BuildValue("(sddddddll)", e[i].name, e[i].conv_forward, e[i].bn_forward,
                          e[i].conv_backward, e[i].bn_backward, e[i].flops_forward,
                          e[i].flops_backward, e[i].forward_calls, e[i].backward_calls);
        if (!row || PyList_Append(list, row) < 0) {
            Py_XDECREF(row);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(row);
    }
    return list;
}

static PyMethodDef module_methods[] = {
    {"config", py_config, METH_NOARGS,
     "config($module, /)\n--\n\n"
     "Returns a dict: BLIS version and sub-configuration (and why), threads, OpenMP "
     "runtime, compiler and flags."},
    {"set_num_threads", py_set_num_threads, METH_O,
     "set_num_threads($module, n, /)\n--\n\n"
     "Threads for the core's loops and for BLIS, 1..8 per usable "
     "core (ValueError beyond). In a child forked from a process whose threads ran, "
     "the core runs on one thread (libgomp cannot start threads there) and n > 1 is "
     "refused: use the 'spawn' or 'forkserver' start method for multi-threaded "
     "workers."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS,
     "get_num_threads($module, /)\n--\n\n"
     "Returns the number of threads the next call will use."},
    {"set_winograd", py_set_winograd, METH_O,
     "set_winograd($module, on, /)\n--\n\n"
     "Whether 3x3 stride-1 convolutions run through Winograd's minimal filtering: True "
     "or 2 (the default: F(2x2, 3x3), 2.25x fewer multiplies, errors the direct path's "
     "size), 4 (F(4x4, 3x3) on outputs of at least 8 x 8: 4x fewer, errors up to 1.2e-5 "
     "of the output's scale, 10-40x the direct path's; F(2x2, 3x3) on smaller ones), or "
     "False (the direct im2col + GEMM path). CONVIRT_WINOGRAD=0 or 4 in the environment "
     "sets the same at import. Anything else (a string, 3, None) is a TypeError or "
     "ValueError; NumPy bools and integers are taken by value."},
    {"get_winograd", py_get_winograd, METH_NOARGS,
     "get_winograd($module, /)\n--\n\n"
     "The Winograd switch: True (F(2x2, 3x3)), 4 (F(4x4, 3x3) where it pays), or False "
     "(off)."},
    {"fma_peak", (PyCFunction)(void (*)(void))py_fma_peak, METH_VARARGS | METH_KEYWORDS,
     "fma_peak($module, /, threads=0, seconds=0.5, bits=0)\n--\n\n"
     "Returns (GFLOP/s, vector bits): FP32 FMA throughput of a register-only loop, the "
     "machine's limit for GEMM, on vectors of `bits` bits (512, 256 or 32); 0, the "
     "default, takes the width of the GEMM kernels in use (256 with BLIS_ARCH_TYPE="
     "haswell on an AVX-512 CPU). ValueError for a width this CPU does not run."},
    {"gemm_kernel_peak", (PyCFunction)(void (*)(void))py_gemm_kernel_peak,
     METH_VARARGS | METH_KEYWORDS,
     "gemm_kernel_peak($module, /, threads=0, seconds=0.5)\n--\n\n"
     "Returns (GFLOP/s, vector bits): convirt's own GEMM kernel, the one every packed GEMM "
     "of the towers and the loss runs, on a block of A and a panel of B that stay in L1: "
     "the ceiling of those GEMMs, below fma_peak() by what the kernel's loads and stores "
     "cost. ValueError when the kernel set in use has none (BLIS runs every GEMM)."},
    {"gemm", (PyCFunction)(void (*)(void))py_gemm, METH_VARARGS | METH_KEYWORDS,
     "gemm($module, /, A, B, C, alpha=1.0, beta=0.0)\n--\n\n"
     "C = alpha A @ B + beta C on float32 arrays "
     "with any strides, through the core's BLIS wrapper (convirt._testing has the naive "
     "reference)."},
    {"_resnet_profile", (PyCFunction)(void (*)(void))py_resnet_profile,
     METH_VARARGS | METH_KEYWORDS,
     "_resnet_profile($module, /, enable=None, *, cpu_time=False)\n--\n\n"
     "Returns per-layer times of the ResNet "
     "forward and backward; enable=True clears and starts, False stops"},
    {"random_uniform", py_random_uniform, METH_VARARGS,
     "random_uniform($module, seed, stream, index, /)\n--\n\n"
     "Returns a float in [0, 1): the core's counter-based "
     "draw for (seed, stream, index), each an integer in [0, 2**64)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, .m_name = "convirt._core",   .m_doc = "The C core of convirt.",
    .m_size = -1,          .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__core(void)
{
    import_array();
    if (cv_init() != CV_OK) {
        PyErr_SetString(PyExc_ImportError, cv_last_error());
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (!module)
        return NULL;
    cv_interrupt_init(); /* long calls run Python's signal handlers: Ctrl-C lands */
    if (cv_create_errors(module) < 0 || cv_register_contrastive_loss(module) < 0 ||
        cv_register_encoder(module) < 0 || cv_register_image_augment(module) < 0 ||
        cv_register_optimizer(module) < 0 || cv_register_classify(module) < 0 ||
        cv_register_linear_head(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
