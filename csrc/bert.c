/* bert.c - Hugging Face's BertModel (post-LayerNorm) as an encoder backbone, pooled
 * over the valid tokens of the last layer (bert.h).
 *
 * The batch is packed: the valid tokens of all sequences, one row each (layers.h), so
 * the projections are GEMMs over exactly the tokens that exist, and padding costs
 * nothing and changes nothing. Per layer, with m packed tokens, hidden size H,
 * intermediate size I:
 *
 *   qkv (m x 3H)  = x Wqkv^T + b               one GEMM when q, k, v sit back to back
 *   ctx (m x H)   = attention(qkv)             per (sequence, head), OpenMP over pairs
 *   h1  (m x H)   = LayerNorm(x + ctx Wo^T + bo)
 *   u   (m x I)   = h1 Wi^T + bi
 *   out (m x H)   = LayerNorm(h1 + GELU(u) Wo2^T + bo2)
 *
 * Training keeps, per trainable layer, x, qkv, the attention probabilities, ctx, the
 * normalised sums (xhat) and their 1/std, h1 and u; GELU(u) is recomputed in backward
 * rather than kept. Frozen layers (and every layer in inference) run through reused
 * scratch buffers and keep nothing; backward stops at the first trainable layer.
 * No dropout anywhere: training is the eval-mode function with gradients. */
#include <float.h>
#include <omp.h>
#include <stddef.h>
#include <stdio.h>

#include "bert.h"
#include "core.h"
#include "layers.h"
#include "random.h"

/* ---- tensors ---------------------------------------------------------------------- */

typedef struct {
    float *word, *position, *token_type, *ln_gamma, *ln_beta;
} bert_embeddings;

/* In table order: q, k and v weights back to back, so that they usually form one
 * (3H x H) matrix and the projection is one GEMM. */
typedef struct {
    float *query_w, *key_w, *value_w, *query_b, *key_b, *value_b;
    float *attn_out_w, *attn_out_b, *attn_ln_gamma, *attn_ln_beta;
    float *inter_w, *inter_b, *out_w, *out_b, *out_ln_gamma, *out_ln_beta;
} bert_layer;

enum { DIM_NONE, DIM_H, DIM_I, DIM_VOCAB, DIM_POSITIONS, DIM_TYPES };
enum { INIT_NORMAL, INIT_ZERO, INIT_ONE };

typedef struct {
    const char *name;
    size_t field; /* offsetof the pointer in its struct */
    int rows, cols;
    int init;
} tensor_spec;

#define EMB_TENSORS 5
static const tensor_spec emb_spec[EMB_TENSORS] = {
    {"embeddings.word_embeddings.weight", offsetof(bert_embeddings, word), DIM_VOCAB, DIM_H,
     INIT_NORMAL},
    {"embeddings.position_embeddings.weight", offsetof(bert_embeddings, position),
     DIM_POSITIONS, DIM_H, INIT_NORMAL},
    {"embeddings.token_type_embeddings.weight", offsetof(bert_embeddings, token_type),
     DIM_TYPES, DIM_H, INIT_NORMAL},
    {"embeddings.LayerNorm.weight", offsetof(bert_embeddings, ln_gamma), DIM_H, DIM_NONE,
     INIT_ONE},
    {"embeddings.LayerNorm.bias", offsetof(bert_embeddings, ln_beta), DIM_H, DIM_NONE,
     INIT_ZERO},
};

#define LAYER_TENSORS 16
static const tensor_spec layer_spec[LAYER_TENSORS] = {
    {"attention.self.query.weight", offsetof(bert_layer, query_w), DIM_H, DIM_H,
     INIT_NORMAL},
    {"attention.self.key.weight", offsetof(bert_layer, key_w), DIM_H, DIM_H, INIT_NORMAL},
    {"attention.self.value.weight", offsetof(bert_layer, value_w), DIM_H, DIM_H,
     INIT_NORMAL},
    {"attention.self.query.bias", offsetof(bert_layer, query_b), DIM_H, DIM_NONE,
     INIT_ZERO},
    {"attention.self.key.bias", offsetof(bert_layer, key_b), DIM_H, DIM_NONE, INIT_ZERO},
    {"attention.self.value.bias", offsetof(bert_layer, value_b), DIM_H, DIM_NONE,
     INIT_ZERO},
    {"attention.output.dense.weight", offsetof(bert_layer, attn_out_w), DIM_H, DIM_H,
     INIT_NORMAL},
    {"attention.output.dense.bias", offsetof(bert_layer, attn_out_b), DIM_H, DIM_NONE,
     INIT_ZERO},
    {"attention.output.LayerNorm.weight", offsetof(bert_layer, attn_ln_gamma), DIM_H,
     DIM_NONE, INIT_ONE},
    {"attention.output.LayerNorm.bias", offsetof(bert_layer, attn_ln_beta), DIM_H, DIM_NONE,
     INIT_ZERO},
    {"intermediate.dense.weight", offsetof(bert_layer, inter_w), DIM_I, DIM_H, INIT_NORMAL},
    {"intermediate.dense.bias", offsetof(bert_layer, inter_b), DIM_I, DIM_NONE, INIT_ZERO},
    {"output.dense.weight", offsetof(bert_layer, out_w), DIM_H, DIM_I, INIT_NORMAL},
    {"output.dense.bias", offsetof(bert_layer, out_b), DIM_H, DIM_NONE, INIT_ZERO},
    {"output.LayerNorm.weight", offsetof(bert_layer, out_ln_gamma), DIM_H, DIM_NONE,
     INIT_ONE},
    {"output.LayerNorm.bias", offsetof(bert_layer, out_ln_beta), DIM_H, DIM_NONE,
     INIT_ZERO},
};

/* ---- the model ---------------------------------------------------------------------- */

/* What a trainable layer keeps for backward (pointers into the arena). Its input x is
 * hidden[l], its output hidden[l + 1]. */
typedef struct {
    float *qkv, *probs, *ctx, *xhat1, *h1, *u, *xhat2, *rstd1, *rstd2;
} layer_saved;

typedef struct {
    cv_bert_config cfg;
    ptrdiff_t H, I, L, heads, head_dim;
    float eps;

    size_t emb_offset[EMB_TENSORS];
    size_t *layer_offset; /* L x LAYER_TENSORS */
    bert_embeddings emb, d_emb;
    bert_layer *layers, *d_layers; /* L each */

    /* the packed batch */
    ptrdiff_t n, t, m, max_len;
    ptrdiff_t *seq_start; /* n + 1 */
    size_t *probs_start;  /* n + 1 */
    size_t seq_cap, probs_start_cap;
    int32_t *ids, *positions, *types; /* m each */
    size_t ids_cap, positions_cap, types_cap;

    /* activations kept for backward (training) */
    float *arena;
    size_t arena_cap;
    float **hidden; /* L + 1: hidden[l] is layer l's input (kept from first trainable) */
    layer_saved *saved; /* L (entries below the first trainable are unused) */
    float *emb_xhat, *emb_rstd;
    int32_t *argmax; /* n x H: the row each max-pooled feature came from */
    size_t argmax_cap;

    /* scratch, reused by every layer that keeps nothing and by backward */
    float *scratch;
    size_t scratch_cap;
    float *x_a, *x_b, *qkv_s, *ctx_s, *h1_s, *inter_s;
    float *work; /* attention's scratch (attention_work_floats) */
    size_t work_cap;

    const float *last_hidden; /* packed (m x H) output of the last forward */
    int kept;                 /* the last forward was a training forward with saves */
} bert_model;

static ptrdiff_t spec_dim(const bert_model *b, int dim)
{
    switch (dim) {
    case DIM_H:
        return b->H;
    case DIM_I:
        return b->I;
    case DIM_VOCAB:
        return b->cfg.vocab_size;
    case DIM_POSITIONS:
        return b->cfg.max_position_embeddings;
    case DIM_TYPES:
        return b->cfg.type_vocab_size;
    default:
        return 1;
    }
}

static size_t spec_size(const bert_model *b, const tensor_spec *s)
{
    return (size_t)(spec_dim(b, s->rows) * spec_dim(b, s->cols));
}

static float **field(void *structure, const tensor_spec *s)
{
    return (float **)((char *)structure + s->field);
}

static void bert_bind(void *model, float *params, float *grads, float *buffers)
{
    (void)buffers;
    bert_model *b = model;
    for (int i = 0; i < EMB_TENSORS; i++) {
        *field(&b->emb, &emb_spec[i]) = params + b->emb_offset[i];
        *field(&b->d_emb, &emb_spec[i]) = grads + b->emb_offset[i];
    }
    for (ptrdiff_t l = 0; l < b->L; l++)
        for (int i = 0; i < LAYER_TENSORS; i++) {
            size_t offset = b->layer_offset[l * LAYER_TENSORS + i];
            *field(&b->layers[l], &layer_spec[i]) = params + offset;
            *field(&b->d_layers[l], &layer_spec[i]) = grads + offset;
        }
}

static void init_tensor(float *x, size_t count, int init, uint64_t seed, uint64_t stream)
{
    if (init == INIT_NORMAL) {
        int threads = cv_get_num_threads();
#pragma omp parallel for num_threads(threads) schedule(static)
        for (ptrdiff_t i = 0; i < (ptrdiff_t)count; i++)
            x[i] = (float)(0.02 * cv_random_normal(seed, stream, (uint64_t)i));
    } else {
        for (size_t i = 0; i < count; i++)
            x[i] = init == INIT_ONE ? 1.0f : 0.0f;
    }
}

/* Hugging Face's _init_weights: normal(0, 0.02) weights and embeddings, zero biases,
 * LayerNorm 1 and 0, and the padding row (id 0) of the word embeddings zero. Each
 * tensor draws from its own stream (its index in the table), so the values do not
 * depend on the thread count. */
static void bert_init(void *model, uint64_t seed)
{
    bert_model *b = model;
    const uint64_t base = 0x4245525400000000ULL; /* "BERT" */
    for (int i = 0; i < EMB_TENSORS; i++)
        init_tensor(*field(&b->emb, &emb_spec[i]), spec_size(b, &emb_spec[i]),
                    emb_spec[i].init, seed, base + (uint64_t)i);
    memset(b->emb.word, 0, (size_t)b->H * sizeof(float));
    for (ptrdiff_t l = 0; l < b->L; l++)
        for (int i = 0; i < LAYER_TENSORS; i++)
            init_tensor(*field(&b->layers[l], &layer_spec[i]), spec_size(b, &layer_spec[i]),
                        layer_spec[i].init, seed,
                        base + (uint64_t)(EMB_TENSORS + l * LAYER_TENSORS + i));
}

static void bert_free(void *model)
{
    bert_model *b = model;
    if (!b)
        return;
    free(b->layer_offset);
    free(b->layers);
    free(b->d_layers);
    free(b->seq_start);
    free(b->probs_start);
    free(b->ids);
    free(b->positions);
    free(b->types);
    free(b->arena);
    free(b->hidden);
    free(b->saved);
    free(b->argmax);
    free(b->scratch);
    free(b->work);
    free(b);
}

/* ---- GEMMs split into tiles over the threads
 * --------------------------------------------- BLIS threads a GEMM from inside, with a
 * busy-wait barrier at every packing step; when the cores are also busy with other work, a
 * descheduled thread stalls its partner at each of them (measured here: 10 to 1000 times
 * slower steps). Instead C is cut into tiles, one single-threaded BLIS call each, dealt
 * dynamically to the threads: one barrier per GEMM, and a running thread takes the tiles of
 * a stalled one. The larger of C's dimensions is cut, so the operand that every tile packs
 * again is the smaller. Where convirt's own kernel takes the GEMM (cv_gemm_packed), it is
 * dealt the same way, in chunks of columns that each pack only their own panels of B. */
static void tiled_gemm(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha, const float *A,
                       ptrdiff_t rsa, ptrdiff_t csa, const float *B, ptrdiff_t rsb,
                       ptrdiff_t csb, float beta, float *C, ptrdiff_t rsc, ptrdiff_t csc)
{
    /* The small-GEMM kernel on packed panels of B, dealt to the threads the same way. */
    if (alpha == 1.0f && (beta == 0.0f || beta == 1.0f) && csc == 1 &&
        !cv_gemm_packed(m, n, k, A, rsa, csa, B, rsb, csb, beta != 0.0f, C, rsc))
        return;
    const int threads = cv_get_num_threads();
    const int by_rows = m >= n;
    const ptrdiff_t extent = by_rows ? m : n;
    /* two tiles per thread, of at least 128 rows or columns, in multiples of 16 */
    ptrdiff_t tile = (extent + 2 * threads - 1) / (2 * threads);
    tile = tile < 128 ? 128 : (tile + 15) / 16 * 16;
    const ptrdiff_t tiles = (extent + tile - 1) / tile;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (ptrdiff_t t = 0; t < tiles; t++) {
        const ptrdiff_t s = t * tile, len = extent - s < tile ? extent - s : tile;
        if (by_rows)
            cv_gemm(len, n, k, alpha, A + s * rsa, rsa, csa, B, rsb, csb, beta, C + s * rsc,
                    rsc, csc);
        else
            cv_gemm(m, len, k, alpha, A, rsa, csa, B + s * csb, rsb, csb, beta, C + s * csc,
                    rsc, csc);
    }
}

/* Row-major shorthands, as cv_gemm_nn/tn: nn C = A B, tn C = A^T B. */
static void gemm_nn(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t lda,
                    const float *B, ptrdiff_t ldb, float beta, float *C, ptrdiff_t ldc)
{
    tiled_gemm(m, n, k, 1.0f, A, lda, 1, B, ldb, 1, beta, C, ldc, 1);
}

static void gemm_tn(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t lda,
                    const float *B, ptrdiff_t ldb, float beta, float *C, ptrdiff_t ldc)
{
    tiled_gemm(m, n, k, 1.0f, A, 1, lda, B, ldb, 1, beta, C, ldc, 1);
}

/* ---- small fused pieces ----------------------------------------------------------------
 */

CV_VECTORIZE static void bias_residual_row(float *out, const float *bias,
                                           const float *residual, ptrdiff_t dim)
{
    if (residual)
        for (ptrdiff_t j = 0; j < dim; j++)
            out[j] = residual[j] + bias[j];
    else
        for (ptrdiff_t j = 0; j < dim; j++)
            out[j] = bias[j];
}

/* At most 128 rows (one sequence of up to 128 tokens), fewer than the layer's outputs,
 * against a weight too large for the tiles' kernel to read in place: the dense layers
 * run their GEMM from serial code through cv_gemm_few_rows (the threads share the
 * weight's rows, read once in place) instead of one or two tiles of rows, each packing
 * and sweeping all of it (below 64 rows one tile: one thread), with the tiles' sums.
 * On an Intel Xeon with AVX-512 (2026-12-04, 2 threads, bench_bert.py infer, one
 * sequence) that took BERT-base from 59.6 to 30.1 ms at 24 tokens and from 105.7 to
 * 82.4 at 128, MiniLM from 8.2 to 5.4 and 14.3 to 13.6 ms; at 256 rows MiniLM was
 * slower (23.2 -> 27.9 ms) and BERT-base level, and on one thread nothing moved. */
static int few_rows(ptrdiff_t m, ptrdiff_t in_dim, ptrdiff_t out_dim, int threads)
{
    return threads > 1 && m <= 128 && m < out_dim &&
           !cv_gemm_tile_is_small(out_dim, in_dim);
}

/* Rows per tile of a fused row loop writing `cols` columns: tiles of C that stay in L2
 * (about 512 KiB) for the epilogue, in whole blocks of the GEMM kernel's 72 rows (a
 * partial block costs a sweep of B's panels, or of a chunk of them with AVX-512, as a
 * whole one does), at least two tiles per thread. */
static ptrdiff_t row_tile(ptrdiff_t m, ptrdiff_t cols, int threads)
{
    ptrdiff_t tile = (ptrdiff_t)(131072 / (cols > 0 ? cols : 1)) / 72 * 72;
    const ptrdiff_t even = (m + 2 * threads - 1) / (2 * threads);
    tile = tile < 72 ? 72 : tile;
    return tile < even ? tile : (even < 64 ? 64 : (even + 15) / 16 * 16);
}

/* What a fused dense layer does to its rows after the GEMM, while they are in cache. */
enum { AFTER_NOTHING, AFTER_GELU, AFTER_LAYERNORM };
typedef struct {
    int kind;
    float *act;               /* GELU(y) goes here (may be y) */
    float *out, *xhat, *rstd; /* LayerNorm(y) -> out; xhat, rstd kept unless NULL */
    const float *gamma, *beta;
    float eps;
} dense_after;

/* y (m x out_dim) = [residual +] bias + x (m x in_dim) @ w^T, w (out_dim x in_dim), then
 * `after` on the same rows. One parallel loop over tiles of rows: each tile starts as
 * residual + bias, a single-threaded GEMM adds into it (beta = 1), and the epilogue
 * runs on it while it is in cache. w^T is packed once for all tiles (cv_tiles_b). */
static void dense_forward(float *y, const float *x, const float *w, const float *bias,
                          const float *residual, ptrdiff_t m, ptrdiff_t in_dim,
                          ptrdiff_t out_dim, const dense_after *after)
{
    const int threads = cv_get_num_threads();
    const ptrdiff_t tile = row_tile(m, out_dim, threads), tiles = (m + tile - 1) / tile;
    if (few_rows(m, in_dim, out_dim, threads)) {
        for (ptrdiff_t i = 0; i < m; i++)
            bias_residual_row(y + i * out_dim, bias,
                              residual ? residual + i * out_dim : NULL, out_dim);
        if (!cv_gemm_few_rows(m, out_dim, in_dim, x, in_dim, 1, w, 1, in_dim, 1, y,
                              out_dim)) {
            if (after && after->kind == AFTER_GELU)
                gelu_forward(after->act, y, (size_t)(m * out_dim));
            else if (after && after->kind == AFTER_LAYERNORM)
                layernorm_forward(after->out, after->xhat, after->rstd, y, after->gamma,
                                  after->beta, m, out_dim, after->eps);
            return;
        }
    }
    cv_tiles_b wt;
    cv_tiles_b_init(&wt, in_dim, out_dim, w, 1, in_dim);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (ptrdiff_t t = 0; t < tiles; t++) {
        const ptrdiff_t r0 = t * tile, rows = m - r0 < tile ? m - r0 : tile;
        float *yt = y + r0 * out_dim;
        for (ptrdiff_t i = 0; i < rows; i++)
            bias_residual_row(yt + i * out_dim, bias,
                              residual ? residual + (r0 + i) * out_dim : NULL, out_dim);
        cv_tiles_b_gemm(&wt, rows, x + r0 * in_dim, in_dim, 1, 1, yt, out_dim);
        if (after && after->kind == AFTER_GELU)
            gelu_forward(after->act + r0 * out_dim, yt, (size_t)(rows * out_dim));
        else if (after && after->kind == AFTER_LAYERNORM)
            layernorm_forward(after->out + r0 * out_dim,
                              after->xhat ? after->xhat + r0 * out_dim : NULL,
                              after->rstd ? after->rstd + r0 : NULL, yt, after->gamma,
                              after->beta, rows, out_dim, after->eps);
    }
}

CV_VECTORIZE static void column_sums_block(float *db, const float *x, ptrdiff_t rows,
                                           ptrdiff_t ld, ptrdiff_t width)
{
    float acc[64] = {0};
    for (ptrdiff_t i = 0; i < rows; i++)
        for (ptrdiff_t j = 0; j < width; j++)
            acc[j] += x[i * ld + j];
    for (ptrdiff_t j = 0; j < width; j++)
        db[j] += acc[j];
}

/* db (cols) += sum over rows of x (rows x cols, row stride ld). Threads own blocks of
 * 64 columns and sum in row order: the same result for any thread count. */
static void bias_grad(float *db, const float *x, ptrdiff_t rows, ptrdiff_t cols,
                      ptrdiff_t ld)
{
    const ptrdiff_t blocks = (cols + 63) / 64;
    int threads = cv_get_num_threads();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (ptrdiff_t b = 0; b < blocks; b++) {
        ptrdiff_t j0 = b * 64, width = cols - j0 < 64 ? cols - j0 : 64;
        column_sums_block(db + j0, x + j0, rows, ld, width);
    }
}

/* The three biases of q, k, v from dqkv (m x 3H), in one parallel loop. */
static void bias_grad3(float *const dbias[3], const float *dqkv, ptrdiff_t m, ptrdiff_t H)
{
    const ptrdiff_t blocks = (H + 63) / 64;
    int threads = cv_get_num_threads();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (ptrdiff_t b = 0; b < 3 * blocks; b++) {
        const ptrdiff_t part = b / blocks, j0 = (b % blocks) * 64;
        const ptrdiff_t width = H - j0 < 64 ? H - j0 : 64;
        column_sums_block(dbias[part] + j0, dqkv + part * H + j0, m, 3 * H, width);
    }
}

static int qkv_fused(const bert_model *b, const bert_layer *w)
{
    return w->key_w == w->query_w + b->H * b->H && w->value_w == w->key_w + b->H * b->H;
}

/* qkv (m x 3H) = [x Wq^T + bq | x Wk^T + bk | x Wv^T + bv], in tiles of rows as
 * dense_forward. */
static void qkv_forward(const bert_model *b, const bert_layer *w, float *qkv,
                        const float *x)
{
    const ptrdiff_t m = b->m, H = b->H;
    const float *bias[3] = {w->query_b, w->key_b, w->value_b};
    const float *weight[3] = {w->query_w, w->key_w, w->value_w};
    const int fused = qkv_fused(b, w), threads = cv_get_num_threads();
    const ptrdiff_t tile = row_tile(m, 3 * H, threads), tiles = (m + tile - 1) / tile;
    if (fused && few_rows(m, H, 3 * H, threads)) {
        for (ptrdiff_t i = 0; i < m; i++)
            for (int part = 0; part < 3; part++)
                bias_residual_row(qkv + i * 3 * H + part * H, bias[part], NULL, H);
        if (!cv_gemm_few_rows(m, 3 * H, H, x, H, 1, w->query_w, 1, H, 1, qkv, 3 * H))
            return;
    }
    cv_tiles_b wt;
    if (fused) /* one (3H x H) weight */
        cv_tiles_b_init(&wt, H, 3 * H, w->query_w, 1, H);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (ptrdiff_t t = 0; t < tiles; t++) {
        const ptrdiff_t r0 = t * tile, rows = m - r0 < tile ? m - r0 : tile;
        float *out = qkv + r0 * 3 * H;
        for (ptrdiff_t i = 0; i < rows; i++)
            for (int part = 0; part < 3; part++)
                bias_residual_row(out + i * 3 * H + part * H, bias[part], NULL, H);
        if (fused)
            cv_tiles_b_gemm(&wt, rows, x + r0 * H, H, 1, 1, out, 3 * H);
        else
            for (int part = 0; part < 3; part++)
                cv_gemm(rows, H, H, 1.0f, x + r0 * H, H, 1, weight[part], 1, H, 1.0f,
                        out + part * H, 3 * H, 1);
    }
}

/* Gradients of the q, k, v projections from dqkv (m x 3H); dx (m x H) += dqkv Wqkv
 * unless NULL. */
static void qkv_backward(const bert_model *b, const bert_layer *w, bert_layer *g, float *dx,
                         const float *dqkv, const float *x)
{
    const ptrdiff_t m = b->m, H = b->H;
    const float *weight[3] = {w->query_w, w->key_w, w->value_w};
    float *dweight[3] = {g->query_w, g->key_w, g->value_w};
    float *dbias[3] = {g->query_b, g->key_b, g->value_b};
    bias_grad3(dbias, dqkv, m, H);
    if (qkv_fused(b, w)) {
        gemm_tn(3 * H, H, m, dqkv, 3 * H, x, H, 1.0f, g->query_w, H);
        if (dx)
            gemm_nn(m, H, 3 * H, dqkv, 3 * H, w->query_w, H, 1.0f, dx, H);
    } else {
        for (int part = 0; part < 3; part++) {
            gemm_tn(H, H, m, dqkv + part * H, 3 * H, x, H, 1.0f, dweight[part], H);
            if (dx)
                gemm_nn(m, H, H, dqkv + part * H, 3 * H, weight[part], H, 1.0f, dx, H);
        }
    }
}

/* ---- pooling
 * ----------------------------------------------------------------------------- */

void bert_pool_forward(float *out, int32_t *argmax, const float *hidden,
                       const ptrdiff_t *seq_start, ptrdiff_t n, ptrdiff_t dim, int pooling)
{
    int threads = cv_get_num_threads();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (ptrdiff_t s = 0; s < n; s++) {
        const ptrdiff_t r0 = seq_start[s], len = seq_start[s + 1] - r0;
        float *o = out + s * dim;
        if (pooling == CV_POOL_CLS) {
            memcpy(o, hidden + r0 * dim, (size_t)dim * sizeof(float));
        } else if (pooling == CV_POOL_MEAN) {
            memset(o, 0, (size_t)dim * sizeof(float));
            for (ptrdiff_t r = r0; r < r0 + len; r++)
                for (ptrdiff_t j = 0; j < dim; j++)
                    o[j] += hidden[r * dim + j];
            for (ptrdiff_t j = 0; j < dim; j++)
                o[j] /= (float)len;
        } else {
            int32_t *a = argmax ? argmax + s * dim : NULL;
            memcpy(o, hidden + r0 * dim, (size_t)dim * sizeof(float));
            if (a)
                for (ptrdiff_t j = 0; j < dim; j++)
                    a[j] = (int32_t)r0;
            for (ptrdiff_t r = r0 + 1; r < r0 + len; r++)
                for (ptrdiff_t j = 0; j < dim; j++)
                    if (hidden[r * dim + j] > o[j]) { /* first maximum wins ties */
                        o[j] = hidden[r * dim + j];
                        if (a)
                            a[j] = (int32_t)r;
                    }
        }
    }
}

void bert_pool_backward(float *dhidden, const float *dout, const int32_t *argmax,
                        const ptrdiff_t *seq_start, ptrdiff_t n, ptrdiff_t dim, int pooling)
{
    int threads = cv_get_num_threads();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (ptrdiff_t s = 0; s < n; s++) {
        const ptrdiff_t r0 = seq_start[s], len = seq_start[s + 1] - r0;
        const float *g = dout + s * dim;
        memset(dhidden + r0 * dim, 0, (size_t)(len * dim) * sizeof(float));
        if (pooling == CV_POOL_CLS) {
            memcpy(dhidden + r0 * dim, g, (size_t)dim * sizeof(float));
        } else if (pooling == CV_POOL_MEAN) {
            for (ptrdiff_t r = r0; r < r0 + len; r++)
                for (ptrdiff_t j = 0; j < dim; j++)
                    dhidden[r * dim + j] = g[j] / (float)len;
        } else {
            const int32_t *a = argmax + s * dim;
            for (ptrdiff_t j = 0; j < dim; j++)
                dhidden[(ptrdiff_t)a[j] * dim + j] += g[j];
        }
    }
}

/* ---- the batch
 * --------------------------------------------------------------------------- */

static int reserve(void *buf, size_t *cap, size_t n, size_t size)
{
    return cv_reserve((void **)buf, cap, n ? n : 1, size);
}

/* Validates the tokens (the core does not trust its caller) and packs the valid ones. */
static cv_status pack_batch(bert_model *b, const cv_batch *batch)
{
    if (batch->kind != CV_INPUT_TOKENS)
        return cv_fail(CV_ERR_VALUE, "a BERT encoder takes token ids, not images");
    const ptrdiff_t n = batch->n, t = batch->t;
    if (n < 1 || t < 1)
        return cv_fail(CV_ERR_VALUE, "empty token batch (%td x %td)", n, t);
    if (!batch->ids || !batch->mask)
        return cv_fail(CV_ERR_VALUE, "token ids and attention mask are both required");
    if (t > b->cfg.max_position_embeddings)
        return cv_fail(CV_ERR_VALUE,
                       "sequences of %td tokens are longer than the position table (%d)", t,
                       b->cfg.max_position_embeddings);
    if (reserve(&b->seq_start, &b->seq_cap, (size_t)n + 1, sizeof(ptrdiff_t)) ||
        reserve(&b->probs_start, &b->probs_start_cap, (size_t)n + 1, sizeof(size_t)) ||
        reserve(&b->ids, &b->ids_cap, cv_mul_sat((size_t)n, (size_t)t), sizeof(int32_t)) ||
        reserve(&b->positions, &b->positions_cap, cv_mul_sat((size_t)n, (size_t)t),
                sizeof(int32_t)) ||
        reserve(&b->types, &b->types_cap, cv_mul_sat((size_t)n, (size_t)t),
                sizeof(int32_t)))
        return cv_fail(CV_ERR_MEMORY, "out of memory for a batch of %td x %td tokens", n,
                       t);
    ptrdiff_t m = 0, max_len = 0;
    b->probs_start[0] = 0;
    for (ptrdiff_t s = 0; s < n; s++) {
        b->seq_start[s] = m;
        for (ptrdiff_t j = 0; j < t; j++) {
            int32_t mask =
                batch->mask[s * batch->mask_stride[0] + j * batch->mask_stride[1]];
            if (mask != 0 && mask != 1)
                return cv_fail(CV_ERR_VALUE,
                               "attention_mask[%td, %td] = %d; it must be 0 or 1", s, j,
                               mask);
            if (!mask)
                continue;
            int32_t id = batch->ids[s * batch->ids_stride[0] + j * batch->ids_stride[1]];
            int32_t ty = batch->token_types
                             ? batch->token_types[s * batch->types_stride[0] +
                                                  j * batch->types_stride[1]]
                             : 0;
            if (id < 0 || id >= b->cfg.vocab_size)
                return cv_fail(CV_ERR_VALUE,
                               "input_ids[%td, %td] = %d is outside the vocabulary [0, %d)",
                               s, j, id, b->cfg.vocab_size);
            if (ty < 0 || ty >= b->cfg.type_vocab_size)
                return cv_fail(CV_ERR_VALUE,
                               "token_type_ids[%td, %td] = %d is outside [0, %d)", s, j, ty,
                               b->cfg.type_vocab_size);
            b->ids[m] = id;
            b->positions[m] = (int32_t)j;
            b->types[m] = ty;
            m++;
        }
        ptrdiff_t len = m - b->seq_start[s];
        if (len == 0)
            return cv_fail(CV_ERR_VALUE,
                           "sequence %td has no valid token in attention_mask", s);
        max_len = len > max_len ? len : max_len;
        b->probs_start[s + 1] =
            cv_add_sat(b->probs_start[s],
                       cv_mul_sat(cv_mul_sat((size_t)b->heads, (size_t)len), (size_t)len));
    }
    b->seq_start[n] = m;
    b->n = n;
    b->t = t;
    b->m = m;
    b->max_len = max_len;
    return CV_OK;
}

/* Floats rounded up to whole 64-byte lines, so every carved buffer stays aligned
 * (saturating: a size that overflows can only fail to allocate). */
static size_t lines(size_t floats)
{
    return floats > SIZE_MAX - 15 ? SIZE_MAX : (floats + 15) / 16 * 16;
}

/* a * b, saturating (the sizes below only feed allocations). */
#define MUL cv_mul_sat
#define ADD cv_add_sat

static cv_status reserve_scratch(bert_model *b, int threads)
{
    const size_t m = (size_t)b->m, H = (size_t)b->H, I = (size_t)b->I;
    const size_t mH = MUL(m, H);
    size_t sizes[6] = {mH, mH, MUL(3, mH), mH, mH, MUL(m, I)};
    float **ptrs[6] = {&b->x_a, &b->x_b, &b->qkv_s, &b->ctx_s, &b->h1_s, &b->inter_s};
    size_t total = 0;
    for (int i = 0; i < 6; i++)
        total = ADD(total, lines(sizes[i]));
    size_t work = attention_work_floats(b->seq_start, b->n, b->head_dim, threads);
    if (reserve(&b->scratch, &b->scratch_cap, total, sizeof(float)) ||
        reserve(&b->work, &b->work_cap, work, sizeof(float)))
        return cv_fail(CV_ERR_MEMORY, "out of memory for the activations of %zu tokens", m);
    float *p = b->scratch;
    for (int i = 0; i < 6; i++) {
        *ptrs[i] = p;
        p += lines(sizes[i]);
    }
    return CV_OK;
}

/* Carves the arena into what training keeps: hidden[first..L], the saves of layers
 * first..L-1 and, when the embeddings train, their LayerNorm state. */
static cv_status reserve_arena(bert_model *b, ptrdiff_t first)
{
    const size_t m = (size_t)b->m, H = (size_t)b->H, I = (size_t)b->I;
    const size_t probs = b->probs_start[b->n];
    const size_t mH = lines(MUL(m, H));
    const size_t per_layer =
        ADD(ADD(ADD(lines(MUL(3, MUL(m, H))), lines(probs)), MUL(4, mH)),
            ADD(lines(MUL(m, I)), MUL(2, lines(m))));
    size_t total =
        ADD(MUL((size_t)(b->L - first + 1), mH), MUL((size_t)(b->L - first), per_layer));
    if (first == 0)
        total = ADD(total, ADD(mH, lines(m)));
    if (reserve(&b->arena, &b->arena_cap, total, sizeof(float)) ||
        reserve(&b->argmax, &b->argmax_cap, MUL((size_t)b->n, (size_t)b->H),
                sizeof(int32_t)))
        return cv_fail(CV_ERR_MEMORY,
                       "out of memory keeping the activations of %td trainable layers for "
                       "%zu tokens",
                       b->L - first, m);
    float *p = b->arena;
#define CARVE(ptr, floats)                                                                 \
    do {                                                                                   \
        (ptr) = p;                                                                         \
        p += lines(floats);                                                                \
    } while (0)
    if (first == 0) {
        CARVE(b->emb_xhat, m * H);
        CARVE(b->emb_rstd, m);
    }
    for (ptrdiff_t l = first; l <= b->L; l++)
        CARVE(b->hidden[l], m * H);
    for (ptrdiff_t l = first; l < b->L; l++) {
        layer_saved *s = &b->saved[l];
        CARVE(s->qkv, 3 * m * H);
        CARVE(s->probs, probs);
        CARVE(s->ctx, m * H);
        CARVE(s->xhat1, m * H);
        CARVE(s->h1, m * H);
        CARVE(s->u, m * I);
        CARVE(s->xhat2, m * H);
        CARVE(s->rstd1, m);
        CARVE(s->rstd2, m);
    }
#undef CARVE
    return CV_OK;
}

/* du (m x I) = (dy (m x H) @ w (H x I)) * GELU'(u): the output dense's input gradient
 * and the GELU's, fused per tile of rows. */
static void gelu_input_grad(float *du, const float *dy, const float *w, const float *u,
                            ptrdiff_t m, ptrdiff_t H, ptrdiff_t I)
{
    const int threads = cv_get_num_threads();
    const ptrdiff_t tile = row_tile(m, I, threads), tiles = (m + tile - 1) / tile;
    cv_tiles_b wt;
    cv_tiles_b_init(&wt, H, I, w, I, 1);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (ptrdiff_t t = 0; t < tiles; t++) {
        const ptrdiff_t r0 = t * tile, rows = m - r0 < tile ? m - r0 : tile;
        cv_tiles_b_gemm(&wt, rows, dy + r0 * H, H, 1, 0, du + r0 * I, I);
        gelu_backward(du + r0 * I, du + r0 * I, u + r0 * I, (size_t)(rows * I));
    }
}

/* ---- one layer
 * ---------------------------------------------------------------------------- */

/* out (m x H) = layer(x). With s, keeps what backward needs there; without, runs in
 * the scratch buffers (out must then be neither x nor a scratch buffer but x_a/x_b). */
static void layer_forward(bert_model *b, const bert_layer *w, float *out, const float *x,
                          layer_saved *s, int threads)
{
    const ptrdiff_t m = b->m, H = b->H, I = b->I;
    float *qkv = s ? s->qkv : b->qkv_s, *ctx = s ? s->ctx : b->ctx_s;
    qkv_forward(b, w, qkv, x);
    attention_forward(ctx, s ? s->probs : NULL, qkv, b->seq_start, b->probs_start, b->n,
                      b->heads, b->head_dim, b->work, threads);
    /* h1 = LayerNorm(x + ctx Wo^T + bo): the sum goes where its normalised form is kept
     * (xhat1) in training, or straight into h1 in inference (normalised in place). */
    float *h1 = s ? s->h1 : b->h1_s;
    dense_after ln1 = {AFTER_LAYERNORM,
                       NULL,
                       h1,
                       s ? s->xhat1 : NULL,
                       s ? s->rstd1 : NULL,
                       w->attn_ln_gamma,
                       w->attn_ln_beta,
                       b->eps};
    dense_forward(s ? s->xhat1 : h1, ctx, w->attn_out_w, w->attn_out_b, x, m, H, H, &ln1);
    /* u = h1 Wi^T + bi, kept in training; GELU(u) into scratch (in place in inference) */
    dense_after gelu = {AFTER_GELU, b->inter_s, NULL, NULL, NULL, NULL, NULL, 0.0f};
    dense_forward(s ? s->u : b->inter_s, h1, w->inter_w, w->inter_b, NULL, m, H, I, &gelu);
    /* out = LayerNorm(h1 + GELU(u) Wo2^T + bo2) */
    dense_after ln2 = {
        AFTER_LAYERNORM, NULL,           out,   s ? s->xhat2 : NULL, s ? s->rstd2 : NULL,
        w->out_ln_gamma, w->out_ln_beta, b->eps};
    dense_forward(s ? s->xhat2 : out, b->inter_s, w->out_w, w->out_b, h1, m, I, H, &ln2);
}

/* d (m x H): in, the gradient of the layer's output; out, that of its input x when
 * need_dx (otherwise left as the gradient of the attention block's sum). Adds the
 * layer's parameter gradients into g. */
static void layer_backward(bert_model *b, const bert_layer *w, bert_layer *g, float *d,
                           const float *x, layer_saved *s, int need_dx, int threads)
{
    const ptrdiff_t m = b->m, H = b->H, I = b->I;
    float *inter = b->inter_s;
    /* out = LN(sum2), sum2 = h1 + GELU(u) Wo2^T + bo2 */
    layernorm_backward(d, g->out_ln_gamma, g->out_ln_beta, d, s->xhat2, s->rstd2,
                       w->out_ln_gamma, m, H);
    gelu_forward(inter, s->u, (size_t)(m * I)); /* the output dense's input, recomputed */
    gemm_tn(H, I, m, d, H, inter, I, 1.0f, g->out_w, I);
    bias_grad(g->out_b, d, m, H, H);
    gelu_input_grad(inter, d, w->out_w, s->u, m, H, I); /* d u */
    /* u = h1 Wi^T + bi; d h1 = d sum2 (residual) + du Wi */
    gemm_tn(I, H, m, inter, I, s->h1, H, 1.0f, g->inter_w, H);
    bias_grad(g->inter_b, inter, m, I, I);
    gemm_nn(m, H, I, inter, I, w->inter_w, H, 1.0f, d, H);
    /* h1 = LN(sum1), sum1 = x + ctx Wo^T + bo */
    layernorm_backward(d, g->attn_ln_gamma, g->attn_ln_beta, d, s->xhat1, s->rstd1,
                       w->attn_ln_gamma, m, H);
    gemm_tn(H, H, m, d, H, s->ctx, H, 1.0f, g->attn_out_w, H);
    bias_grad(g->attn_out_b, d, m, H, H);
    gemm_nn(m, H, H, d, H, w->attn_out_w, H, 0.0f, b->ctx_s, H); /* d ctx */
    attention_backward(b->qkv_s, s->probs, b->ctx_s, s->qkv, b->seq_start, b->probs_start,
                       b->n, b->heads, b->head_dim, b->work, threads);
    /* d x = d sum1 (residual) + dqkv Wqkv */
    qkv_backward(b, w, g, need_dx ? d : NULL, b->qkv_s, x);
}

/* ---- forward / backward
 * --------------------------------------------------------------------- */

static cv_status bert_forward(void *model, float *features, const cv_batch *batch,
                              int training)
{
    bert_model *b = model;
    b->kept = 0;
    b->last_hidden = NULL;
    cv_status status = pack_batch(b, batch);
    if (status != CV_OK)
        return status;
    const int threads = cv_get_num_threads();
    const ptrdiff_t first = b->cfg.freeze_layers, L = b->L, m = b->m, H = b->H;
    const int keep = training && first < L; /* something below the head trains */
    if ((status = reserve_scratch(b, threads)) != CV_OK)
        return status;
    if (keep && (status = reserve_arena(b, first)) != CV_OK)
        return status;

    /* embeddings */
    float *x = keep && first == 0 ? b->hidden[0] : b->x_a;
    embedding_forward(x, b->ids, b->positions, b->types, b->emb.word, b->emb.position,
                      b->emb.token_type, m, H);
    const int keep_emb = keep && first == 0;
    layernorm_forward(x, keep_emb ? b->emb_xhat : NULL, keep_emb ? b->emb_rstd : NULL, x,
                      b->emb.ln_gamma, b->emb.ln_beta, m, H, b->eps);

    for (ptrdiff_t l = 0; l < L; l++) {
        if ((status = cv_check_interrupt()) != CV_OK)
            return status;
        const int trains = keep && l >= first;
        float *out;
        if (keep && l + 1 >= first)
            out = b->hidden[l + 1]; /* the input of a trainable layer, or the last output */
        else
            out = x == b->x_a ? b->x_b : b->x_a;
        layer_forward(b, &b->layers[l], out, x, trains ? &b->saved[l] : NULL, threads);
        x = out;
    }
    b->last_hidden = x;
    bert_pool_forward(features, keep && b->cfg.pooling == CV_POOL_MAX ? b->argmax : NULL, x,
                      b->seq_start, b->n, H, b->cfg.pooling);
    b->kept = keep;
    return CV_OK;
}

static cv_status bert_backward(void *model, float *d_input, const float *d_features)
{
    bert_model *b = model;
    (void)d_input; /* token ids have no gradient */
    const ptrdiff_t first = b->cfg.freeze_layers, L = b->L, m = b->m, H = b->H;
    if (first >= L)
        return CV_OK; /* every backbone tensor is frozen */
    if (!b->kept)
        return cv_fail(CV_ERR_STATE, "BERT backward needs a training forward first");
    const int threads = cv_get_num_threads();
    cv_status status = reserve_scratch(b, threads);
    if (status != CV_OK)
        return status;
    float *d = b->x_a; /* the gradient flowing down, updated in place layer by layer */
    bert_pool_backward(d, d_features, b->argmax, b->seq_start, b->n, H, b->cfg.pooling);
    for (ptrdiff_t l = L - 1; l >= first; l--) {
        if ((status = cv_check_interrupt()) != CV_OK)
            return status;
        layer_backward(b, &b->layers[l], &b->d_layers[l], d, b->hidden[l], &b->saved[l],
                       l > first || first == 0, threads);
    }
    if (first == 0) {
        layernorm_backward(d, b->d_emb.ln_gamma, b->d_emb.ln_beta, d, b->emb_xhat,
                           b->emb_rstd, b->emb.ln_gamma, m, H);
        embedding_backward(b->d_emb.word, b->d_emb.position, b->d_emb.token_type, d, b->ids,
                           b->positions, b->types, m, H);
    }
    return CV_OK;
}

/* ---- creation
 * ---------------------------------------------------------------------------------- */

static cv_status declare(cv_tensor_table *table, const bert_model *b, const char *prefix,
                         const tensor_spec *s, size_t *offset)
{
    char name[CV_NAME_LEN];
    snprintf(name, sizeof name, "%s%s", prefix, s->name);
    int64_t shape[2] = {spec_dim(b, s->rows), spec_dim(b, s->cols)};
    return cv_table_add(table, name, s->cols == DIM_NONE ? 1 : 2, shape, 0, CV_LAYOUT_TORCH,
                        offset);
}

cv_status bert_create(cv_backbone *backbone, cv_tensor_table *table,
                      const cv_bert_config *config, int *frozen_tensors)
{
    const cv_bert_config *c = config;
    if (c->vocab_size < 1 || c->hidden_size < 1 || c->num_layers < 1 || c->num_heads < 1 ||
        c->intermediate_size < 1 || c->max_position_embeddings < 1 ||
        c->type_vocab_size < 1)
        return cv_fail(CV_ERR_VALUE, "BERT sizes must all be >= 1");
    if (c->hidden_size % c->num_heads)
        return cv_fail(CV_ERR_VALUE, "hidden_size %d is not a multiple of num_heads %d",
                       c->hidden_size, c->num_heads);
    if (c->pooling < CV_POOL_MAX || c->pooling > CV_POOL_CLS)
        return cv_fail(CV_ERR_VALUE, "unknown pooling code %d", c->pooling);
    if (c->freeze_layers < 0 || c->freeze_layers > c->num_layers)
        return cv_fail(CV_ERR_VALUE, "freeze_layers must be 0..%d, got %d", c->num_layers,
                       c->freeze_layers);
    if (c->num_layers > CV_BERT_MAX_LAYERS)
        return cv_fail(CV_ERR_VALUE, "num_hidden_layers must be 1..%d, got %d",
                       CV_BERT_MAX_LAYERS, c->num_layers);
    /* eps is added to a float32 variance: infinity (or more than float32 holds) would
     * make every normalised value 0 */
    if (!(c->layer_norm_eps > 0.0) || !(c->layer_norm_eps <= FLT_MAX))
        return cv_fail(CV_ERR_VALUE, "layer_norm_eps must be a finite number > 0, got %g",
                       c->layer_norm_eps);
    bert_model *b = calloc(1, sizeof *b);
    if (!b)
        return cv_fail(CV_ERR_MEMORY, "out of memory creating a BERT model");
    b->cfg = *c;
    b->H = c->hidden_size;
    b->I = c->intermediate_size;
    b->L = c->num_layers;
    b->heads = c->num_heads;
    b->head_dim = c->hidden_size / c->num_heads;
    b->eps = (float)c->layer_norm_eps;
    b->layer_offset = calloc((size_t)(b->L * LAYER_TENSORS), sizeof(size_t));
    b->layers = calloc((size_t)b->L, sizeof(bert_layer));
    b->d_layers = calloc((size_t)b->L, sizeof(bert_layer));
    b->hidden = calloc((size_t)b->L + 1, sizeof(float *));
    b->saved = calloc((size_t)b->L, sizeof(layer_saved));
    if (!b->layer_offset || !b->layers || !b->d_layers || !b->hidden || !b->saved) {
        bert_free(b);
        return cv_fail(CV_ERR_MEMORY, "out of memory creating a BERT model");
    }
    /* Embeddings, then layer 0, 1, ...: frozen tensors come first by construction. */
    cv_status status = CV_OK;
    for (int i = 0; i < EMB_TENSORS && status == CV_OK; i++)
        status = declare(table, b, "", &emb_spec[i], &b->emb_offset[i]);
    for (ptrdiff_t l = 0; l < b->L && status == CV_OK; l++) {
        char prefix[48];
        snprintf(prefix, sizeof prefix, "encoder.layer.%d.", (int)l);
        for (int i = 0; i < LAYER_TENSORS && status == CV_OK; i++)
            status = declare(table, b, prefix, &layer_spec[i],
                             &b->layer_offset[l * LAYER_TENSORS + i]);
    }
    if (status != CV_OK) {
        bert_free(b);
        return status;
    }
    *frozen_tensors = c->freeze_layers ? EMB_TENSORS + LAYER_TENSORS * c->freeze_layers : 0;
    memset(backbone, 0, sizeof *backbone);
    backbone->kind = "bert";
    backbone->feature_dim = b->H;
    backbone->model = b;
    backbone->bind = bert_bind;
    backbone->init = bert_init;
    backbone->forward = bert_forward;
    backbone->backward = bert_backward;
    backbone->free = bert_free;
    return CV_OK;
}

cv_status bert_last_hidden(const cv_backbone *backbone, float *out, ptrdiff_t n,
                           ptrdiff_t t)
{
    if (!backbone->kind || strcmp(backbone->kind, "bert"))
        return cv_fail(CV_ERR_STATE, "token outputs exist only for a BERT encoder");
    const bert_model *b = backbone->model;
    if (!b->last_hidden)
        return cv_fail(CV_ERR_STATE, "no forward has run yet (or the last one failed)");
    if (n != b->n || t != b->t)
        return cv_fail(CV_ERR_VALUE, "the last forward had %td x %td tokens, not %td x %td",
                       b->n, b->t, n, t);
    const ptrdiff_t H = b->H;
    memset(out, 0, (size_t)(n * t * H) * sizeof(float));
    for (ptrdiff_t s = 0; s < n; s++)
        for (ptrdiff_t r = b->seq_start[s]; r < b->seq_start[s + 1]; r++)
            memcpy(out + (s * t + b->positions[r]) * H, b->last_hidden + r * H,
                   (size_t)H * sizeof(float));
    return CV_OK;
}

cv_status bert_last_shape(const cv_backbone *backbone, ptrdiff_t *n, ptrdiff_t *t,
                          ptrdiff_t *hidden)
{
    if (!backbone->kind || strcmp(backbone->kind, "bert"))
        return cv_fail(CV_ERR_STATE, "token outputs exist only for a BERT encoder");
    const bert_model *b = backbone->model;
    if (!b->last_hidden)
        return cv_fail(CV_ERR_STATE, "no forward has run yet (or the last one failed)");
    *n = b->n;
    *t = b->t;
    *hidden = b->H;
    return CV_OK;
}
