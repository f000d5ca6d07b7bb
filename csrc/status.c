/* status.c - per-thread error messages for the cv_status convention. */
#include <stdarg.h>
#include <stdio.h>

#include "convirt.h"

static _Thread_local char last_error[1024];

const char *cv_last_error(void) { return last_error; }

cv_status cv_fail(cv_status status, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, args);
    va_end(args);
    return status;
}
