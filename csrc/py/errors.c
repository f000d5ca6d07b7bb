/* errors.c - the package's exception types, the core's status codes turned into them,
 * the in-use claims and the interrupt hook (errors.h). */
#include "errors.h"

PyObject *cv_error_base, *cv_error_nonfinite, *cv_error_state;

static PyObject *new_error(PyObject *module, const char *name, const char *doc,
                           PyObject *bases)
{
    char qualified[64];
    snprintf(qualified, sizeof qualified, "convirt.%s", name);
    PyObject *type = PyErr_NewExceptionWithDoc(qualified, doc, bases, NULL);
    if (type && PyModule_AddObjectRef(module, name, type) < 0)
        Py_CLEAR(type);
    return type;
}

int cv_create_errors(PyObject *module)
{
    PyObject *bases = NULL;
    cv_error_base =
        new_error(module, "ConvirtError", "The base of every convirt error.", NULL);
    if (!cv_error_base)
        return -1;
    bases = PyTuple_Pack(2, cv_error_base, PyExc_ValueError);
    cv_error_nonfinite =
        bases ? new_error(module, "NonFiniteError",
                          "NaN or Inf in the inputs, the weights or the gradients, or "
                          "produced by the math (an overflow). A ValueError.",
                          bases)
              : NULL;
    Py_XDECREF(bases);
    bases = cv_error_nonfinite ? PyTuple_Pack(2, cv_error_base, PyExc_RuntimeError) : NULL;
    cv_error_state =
        bases ? new_error(module, "StateError",
                          "The object cannot take this call now: it is in use by another "
                          "thread, the calls came in the wrong order, or it was not "
                          "initialised. A RuntimeError.",
                          bases)
              : NULL;
    Py_XDECREF(bases);
    return cv_error_state ? 0 : -1;
}

int cv_import_errors(PyObject *core)
{
    PyObject **types[3] = {&cv_error_base, &cv_error_nonfinite, &cv_error_state};
    const char *names[3] = {"ConvirtError", "NonFiniteError", "StateError"};
    for (int i = 0; i < 3; i++)
        if (!*types[i] && !(*types[i] = PyObject_GetAttrString(core, names[i])))
            return -1;
    return 0;
}

int cv_raise(cv_status status)
{
    PyObject *type;
    if (status == CV_ERR_INTERRUPTED) {
        if (!PyErr_Occurred())
            PyErr_SetNone(PyExc_KeyboardInterrupt);
        return -1;
    }
    switch (status) {
    case CV_ERR_VALUE:
        type = PyExc_ValueError;
        break;
    case CV_ERR_NONFINITE:
        type = cv_error_nonfinite;
        break;
    case CV_ERR_MEMORY:
        type = PyExc_MemoryError; /* with the core's message: what could not be had */
        break;
    case CV_ERR_STATE:
        type = cv_error_state;
        break;
    default:
        type = PyExc_RuntimeError;
        break;
    }
    PyErr_SetString(type, cv_last_error());
    return -1;
}

int cv_check_idle(int busy, const char *type_name)
{
    if (busy) {
        PyErr_Format(cv_error_state,
                     "this %s is in use by another thread; use one object per thread",
                     type_name);
        return -1;
    }
    return 0;
}

int cv_claim(int *busy, const char *type_name)
{
    if (cv_check_idle(*busy, type_name))
        return -1;
    *busy = 1;
    return 0;
}

/* ---- interruption ------------------------------------------------------------------- */

/* Python runs signal handlers in the main thread only; other threads never take the
 * GIL for nothing. */
static unsigned long main_thread_ident;

static int interrupt_hook(void);

void cv_interrupt_init(void)
{
    main_thread_ident = 0;
    PyObject *threading = PyImport_ImportModule("threading");
    PyObject *main = threading ? PyObject_CallMethod(threading, "main_thread", NULL) : NULL;
    PyObject *ident = main ? PyObject_GetAttrString(main, "ident") : NULL;
    if (ident)
        main_thread_ident = PyLong_AsUnsignedLong(ident);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        main_thread_ident = PyThread_get_thread_ident();
    }
    Py_XDECREF(ident);
    Py_XDECREF(main);
    Py_XDECREF(threading);
    cv_set_interrupt_hook(interrupt_hook);
}

/* Called by the core (cv_check_interrupt) from the thread that made the call, which
 * released the GIL around it: take the GIL back, let Python run its handlers
 * (SIGINT's raises KeyboardInterrupt), and release it again. The exception stays set
 * on this thread for the binding to return once the core has unwound. */
static int interrupt_hook(void)
{
    if (PyThread_get_thread_ident() != main_thread_ident)
        return 0;
    PyGILState_STATE gil = PyGILState_Ensure();
    int stop = PyErr_Occurred() != NULL || PyErr_CheckSignals() < 0;
    PyGILState_Release(gil);
    return stop;
}
