/* head.c - the projection head g(x) = W2 relu(W1 x + b1) + b2 of both towers
 * (ConVIRT's g_v and g_u), named like PyTorch's Sequential(Linear, ReLU, Linear):
 * projection.0.* and projection.2.*. */
#include "core.h"
#include "head.h"
#include "layers.h"
#include "random.h"

cv_status head_create(cv_head *head, cv_tensor_table *table, ptrdiff_t in_dim,
                      ptrdiff_t hidden_dim, ptrdiff_t out_dim)
{
    memset(head, 0, sizeof *head);
    if (in_dim < 1 || hidden_dim < 1 || out_dim < 1)
        return cv_fail(CV_ERR_VALUE, "projection sizes must be >= 1, got %td -> %td -> %td",
                       in_dim, hidden_dim, out_dim);
    head->in_dim = in_dim;
    head->hidden_dim = hidden_dim;
    head->out_dim = out_dim;
    int64_t w1[2] = {hidden_dim, in_dim}, b1[1] = {hidden_dim};
    int64_t w2[2] = {out_dim, hidden_dim}, b2[1] = {out_dim};
    cv_status status;
    if ((status = cv_table_add(table, "projection.0.weight", 2, w1, 0, CV_LAYOUT_TORCH,
                               &head->w1_offset)) != CV_OK ||
        (status = cv_table_add(table, "projection.0.bias", 1, b1, 0, CV_LAYOUT_TORCH,
                               &head->b1_offset)) != CV_OK ||
        (status = cv_table_add(table, "projection.2.weight", 2, w2, 0, CV_LAYOUT_TORCH,
                               &head->w2_offset)) != CV_OK ||
        (status = cv_table_add(table, "projection.2.bias", 1, b2, 0, CV_LAYOUT_TORCH,
                               &head->b2_offset)) != CV_OK)
        return status;
    return CV_OK;
}

void head_bind(cv_head *head, float *params, float *grads)
{
    head->w1 = params + head->w1_offset;
    head->b1 = params + head->b1_offset;
    head->w2 = params + head->w2_offset;
    head->b2 = params + head->b2_offset;
    head->dw1 = grads + head->w1_offset;
    head->db1 = grads + head->b1_offset;
    head->dw2 = grads + head->w2_offset;
    head->db2 = grads + head->b2_offset;
}

/* PyTorch's Linear default: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)). */
static void linear_init(float *w, float *b, ptrdiff_t out_dim, ptrdiff_t in_dim,
                        uint64_t seed, uint64_t stream)
{
    double bound = 1.0 / sqrt((double)in_dim);
    for (ptrdiff_t i = 0; i < out_dim * in_dim; i++)
        w[i] = (float)(bound * (2.0 * cv_random_uniform(seed, stream, (uint64_t)i) - 1.0));
    for (ptrdiff_t i = 0; i < out_dim; i++)
        b[i] =
            (float)(bound * (2.0 * cv_random_uniform(seed, stream + 1, (uint64_t)i) - 1.0));
}

void head_init(cv_head *head, uint64_t seed)
{
    linear_init(head->w1, head->b1, head->hidden_dim, head->in_dim, seed, 0x4845414431ULL);
    linear_init(head->w2, head->b2, head->out_dim, head->hidden_dim, seed, 0x4845414433ULL);
}

cv_status head_forward(cv_head *head, float *out, const float *in, ptrdiff_t n)
{
    if (cv_reserve((void **)&head->hidden, &head->hidden_cap,
                   cv_mul_sat((size_t)n, (size_t)head->hidden_dim), sizeof(float)))
        return cv_fail(CV_ERR_MEMORY, "out of memory for the projection head");
    linear_forward(head->hidden, in, head->w1, head->b1, n, head->in_dim, head->hidden_dim);
    relu_forward(head->hidden, head->hidden, (size_t)(n * head->hidden_dim));
    linear_forward(out, head->hidden, head->w2, head->b2, n, head->hidden_dim,
                   head->out_dim);
    head->input = in;
    head->n = n;
    return CV_OK;
}

cv_status head_backward(cv_head *head, float *d_in, const float *d_out)
{
    const ptrdiff_t n = head->n;
    size_t hidden_count = (size_t)(n * head->hidden_dim);
    if (cv_reserve((void **)&head->d_hidden, &head->d_hidden_cap, hidden_count,
                   sizeof(float)))
        return cv_fail(CV_ERR_MEMORY, "out of memory for the projection head");
    float *d_hidden = head->d_hidden;
    memset(d_hidden, 0, hidden_count * sizeof(float));
    linear_backward(d_hidden, head->dw2, head->db2, d_out, head->hidden, head->w2, n,
                    head->hidden_dim, head->out_dim);
    /* Through the ReLU in place: the kept output is > 0 exactly where it passed. */
    for (size_t i = 0; i < hidden_count; i++)
        d_hidden[i] = head->hidden[i] > 0.0f ? d_hidden[i] : 0.0f;
    if (d_in)
        memset(d_in, 0, (size_t)(n * head->in_dim) * sizeof(float));
    linear_backward(d_in, head->dw1, head->db1, d_hidden, head->input, head->w1, n,
                    head->in_dim, head->hidden_dim);
    return CV_OK;
}

void head_free(cv_head *head)
{
    free(head->hidden);
    free(head->d_hidden);
    head->hidden = head->d_hidden = NULL;
    head->hidden_cap = head->d_hidden_cap = 0;
}
