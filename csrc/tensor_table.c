/* tensor_table.c - declaring tensors in a model's flat buffers (tensor_table.h). */
#include <stdio.h>

#include "core.h"
#include "tensor_table.h"

cv_status cv_table_add(cv_tensor_table *table, const char *name, int ndim,
                       const int64_t *shape, int is_buffer, int layout, size_t *offset)
{
    if (ndim < 1 || ndim > 4)
        return cv_fail(CV_ERR_INTERNAL, "tensor %s has %d dimensions", name, ndim);
    size_t size = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 1)
            return cv_fail(CV_ERR_VALUE,
                           "tensor %s: dimension %d is %lld; sizes must be >= 1", name, i,
                           (long long)shape[i]);
        if ((uint64_t)shape[i] > SIZE_MAX || cv_mul_size(size, (size_t)shape[i], &size))
            return cv_fail(CV_ERR_VALUE,
                           "tensor %s is too large: the product of its dimensions does "
                           "not fit in memory addresses",
                           name);
    }
    size_t *total = is_buffer ? &table->n_buffers : &table->n_params;
    /* 16-float (64-byte) alignment for every tensor */
    size_t start, end;
    if (cv_add_size(*total, 15, &start) || cv_add_size(start / 16 * 16, size, &end))
        return cv_fail(CV_ERR_VALUE,
                       "the model is too large: its %s do not fit in memory addresses "
                       "(at tensor %s)",
                       is_buffer ? "buffers" : "parameters", name);
    if (table->count == table->cap) {
        if (table->cap > INT32_MAX / 2)
            return cv_fail(CV_ERR_MEMORY, "too many tensors (at %s)", name);
        int cap = table->cap ? 2 * table->cap : 64;
        cv_tensor *grown = realloc(table->tensors, (size_t)cap * sizeof *grown);
        if (!grown)
            return cv_fail(CV_ERR_MEMORY, "out of memory declaring %s", name);
        table->tensors = grown;
        table->cap = cap;
    }
    cv_tensor *t = &table->tensors[table->count++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    t->size = size;
    t->is_buffer = is_buffer;
    t->layout = layout;
    t->offset = start / 16 * 16;
    *total = end;
    *offset = t->offset;
    return CV_OK;
}

void cv_table_free(cv_tensor_table *table)
{
    free(table->tensors);
    memset(table, 0, sizeof *table);
}
