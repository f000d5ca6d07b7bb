/* tensor_table.h - the names, shapes and places of a model's tensors in its flat
 * buffers: one float32 buffer of parameters (and one of gradients with the same
 * layout) and one of state buffers (batch-norm running statistics). The backbones and
 * the projection head declare their tensors here; the encoder allocates the buffers
 * from the totals. */
#ifndef CONVIRT_TENSOR_TABLE_H
#define CONVIRT_TENSOR_TABLE_H

#include "convirt.h"

#define CV_NAME_LEN 96

typedef struct {
    char name[CV_NAME_LEN]; /* e.g. "layer1.0.conv1.weight" */
    int ndim;
    int64_t shape[4]; /* PyTorch's shape for the tensor (see the layout note) */
    size_t offset;    /* in floats, into params (or buffers when is_buffer) */
    size_t size;
    int is_buffer; /* a running statistic, kept in `buffers`, not trained */
    int frozen;    /* a parameter that gets no gradient */
    int layout;    /* how the stored order differs from PyTorch's (CV_LAYOUT_*) */
} cv_tensor;

/* Stored order of a tensor's elements. Convolution weights are kept GEMM-ready:
 * PyTorch's (K, C, R, S) is stored as (K, R, S, C), Python's views show it in the
 * stored order with shape (K, R, S, C), and import/export convert. */
enum { CV_LAYOUT_TORCH = 0, CV_LAYOUT_KRSC = 1 };

typedef struct {
    cv_tensor *tensors;
    int count, cap;
    size_t n_params, n_buffers;
} cv_tensor_table;

/* Declare a tensor; *offset receives its offset in floats. shape has ndim entries
 * (1 <= ndim <= 4), each >= 1. CV_ERR_VALUE when a size is below 1 or the size or the
 * buffer's total does not fit in size_t (checked, never wrapped: sizes may come from a
 * checkpoint file), CV_ERR_MEMORY when the table cannot grow. Frozen-ness is set
 * afterwards, before the buffers are allocated. */
cv_status cv_table_add(cv_tensor_table *table, const char *name, int ndim,
                       const int64_t *shape, int is_buffer, int layout, size_t *offset);
void cv_table_free(cv_tensor_table *table);

#endif
