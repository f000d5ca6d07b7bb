/* errors.h - how the binding reports what went wrong: the package's exception types,
 * raised from the core's status codes, and the claims by which an object refuses a
 * second concurrent call. */
#ifndef CONVIRT_PY_ERRORS_H
#define CONVIRT_PY_ERRORS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "../convirt.h"

/* The package's exception types, created once when the module loads
 * (cv_create_errors) and raised from the core's status codes by cv_raise:
 *   convirt.ConvirtError                      the base of every convirt error
 *   convirt.NonFiniteError(ConvirtError, ValueError)   NaN or Inf in inputs, weights,
 *                                             gradients or produced by the math
 *   convirt.StateError(ConvirtError, RuntimeError)     the object cannot take the call
 *                                             now: in use by another thread, wrong
 *                                             call order, not initialised */
extern PyObject *cv_error_base, *cv_error_nonfinite, *cv_error_state;
int cv_create_errors(PyObject *module);
/* For another extension module (convirt._testing): take the types from convirt._core,
 * so that it raises the same classes. */
int cv_import_errors(PyObject *core);

/* Turn the core's status and message into a Python exception (CV_ERR_NONFINITE:
 * NonFiniteError, CV_ERR_STATE: StateError, CV_ERR_VALUE: ValueError, CV_ERR_MEMORY:
 * MemoryError); returns -1. An interrupted call (CV_ERR_INTERRUPTED) keeps the
 * exception the interrupt hook left (KeyboardInterrupt, or whatever a signal handler
 * raised). */
int cv_raise(cv_status status);

/* Install the core's interrupt hook (once, from convirt._core): long core calls run
 * Python's signal handlers, and stop with the handler's exception (Ctrl-C's
 * KeyboardInterrupt) set on the calling thread. */
void cv_interrupt_init(void);

/* Objects refuse a second concurrent call that would mutate them (the GIL is released
 * during the work): a call claims the object's busy flag and releases it when done.
 * cv_claim raises StateError when another thread holds it; cv_check_idle raises the
 * same without claiming, for what changes an object outside such a call (setters,
 * loading state). type_name names the object in the message. */
int cv_claim(int *busy, const char *type_name);
int cv_check_idle(int busy, const char *type_name);
#define CV_RELEASE(busy) (*(busy) = 0)

#endif
