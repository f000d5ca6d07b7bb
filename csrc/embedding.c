/* embedding.c - BERT's input embeddings: word + token type + position, one row per
 * (packed) token. */
#include <omp.h>

#include "core.h"
#include "layers.h"

CV_VECTORIZE static void sum3(float *out, const float *a, const float *b, const float *c,
                              ptrdiff_t dim)
{
    for (ptrdiff_t j = 0; j < dim; j++)
        out[j] = (a[j] + b[j]) + c[j];
}

void embedding_forward(float *out, const int32_t *ids, const int32_t *positions,
                       const int32_t *types, const float *word, const float *pos,
                       const float *type, ptrdiff_t m, ptrdiff_t dim)
{
    int threads = layer_threads();
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (ptrdiff_t i = 0; i < m; i++) {
        const int32_t ty = types ? types[i] : 0;
        sum3(out + i * dim, word + (ptrdiff_t)ids[i] * dim, type + (ptrdiff_t)ty * dim,
             pos + (ptrdiff_t)positions[i] * dim, dim);
    }
}

CV_VECTORIZE static void add_into(float *acc, const float *x, ptrdiff_t count)
{
    for (ptrdiff_t j = 0; j < count; j++)
        acc[j] += x[j];
}

/* Columns are split into blocks of 64; the thread owning a block adds every token's
 * slice of it in token order, so no two threads touch one gradient element and the
 * result is the same for any thread count. */
void embedding_backward(float *dword, float *dpos, float *dtype, const float *dout,
                        const int32_t *ids, const int32_t *positions, const int32_t *types,
                        ptrdiff_t m, ptrdiff_t dim)
{
    const ptrdiff_t block = 64, blocks = (dim + block - 1) / block;
    int threads = layer_threads();
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (ptrdiff_t b = 0; b < blocks; b++) {
        const ptrdiff_t j0 = b * block, width = dim - j0 < block ? dim - j0 : block;
        for (ptrdiff_t i = 0; i < m; i++) {
            const float *g = dout + i * dim + j0;
            if (dword)
                add_into(dword + (ptrdiff_t)ids[i] * dim + j0, g, width);
            if (dpos)
                add_into(dpos + (ptrdiff_t)positions[i] * dim + j0, g, width);
            if (dtype)
                add_into(dtype + (ptrdiff_t)(types ? types[i] : 0) * dim + j0, g, width);
        }
    }
}
