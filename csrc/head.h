/* head.h - the projection head g(x) = W2 relu(W1 x + b1) + b2 of both towers
 * (ConVIRT's g_v and g_u), over tensors declared in a tensor table. */
#ifndef CONVIRT_HEAD_H
#define CONVIRT_HEAD_H

#include "convirt.h"
#include "tensor_table.h"

typedef struct {
    ptrdiff_t in_dim, hidden_dim, out_dim;
    /* parameters and gradients (PyTorch Linear layout: weight is (out, in)) */
    float *w1, *b1, *w2, *b2;
    float *dw1, *db1, *dw2, *db2;
    size_t w1_offset, b1_offset, w2_offset, b2_offset;
    /* saved by forward for backward */
    float *hidden; /* n x hidden_dim, after the ReLU */
    size_t hidden_cap;
    const float *input; /* the features of the last forward (owned by the encoder) */
    ptrdiff_t n;
    float *d_hidden;
    size_t d_hidden_cap;
} cv_head;

/* Declares projection.0.weight/bias and projection.2.weight/bias. */
cv_status head_create(cv_head *head, cv_tensor_table *table, ptrdiff_t in_dim,
                      ptrdiff_t hidden_dim, ptrdiff_t out_dim);
void head_bind(cv_head *head, float *params, float *grads);
void head_init(cv_head *head, uint64_t seed);
/* out (n x out_dim) = g(in); keeps in and the hidden layer for backward. */
cv_status head_forward(cv_head *head, float *out, const float *in, ptrdiff_t n);
/* Adds parameter gradients; d_in (n x in_dim) is OVERWRITTEN unless NULL. */
cv_status head_backward(cv_head *head, float *d_in, const float *d_out);
void head_free(cv_head *head);

#endif
