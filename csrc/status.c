/* status.c - per-thread error messages for the cv_status convention, and the
 * interrupt check long calls make between pieces of work. */
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "convirt.h"

static _Thread_local char last_error[1024];

const char *cv_last_error(void)
{
    return last_error;
}

cv_status cv_fail(cv_status status, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, args);
    va_end(args);
    return status;
}

/* ---- interruption ---------------------------------------------------------------- */

static cv_interrupt_hook interrupt_hook;
/* When this thread next asks the hook: the hook may take a lock (Python's GIL), so it
 * is asked at most every CV_INTERRUPT_INTERVAL seconds whatever the number of calls. */
static _Thread_local double next_poll;

void cv_set_interrupt_hook(cv_interrupt_hook hook)
{
    interrupt_hook = hook;
}

cv_status cv_check_interrupt(void)
{
    /* Thread 0 is the caller's own thread, inside a parallel region or not; the other
     * team threads have no business with the caller's hook. */
    if (!interrupt_hook || omp_get_thread_num() != 0)
        return CV_OK;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double t = (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
    if (t < next_poll)
        return CV_OK;
    next_poll = t + CV_INTERRUPT_INTERVAL;
    return interrupt_hook() ? cv_fail(CV_ERR_INTERRUPTED, "interrupted") : CV_OK;
}
