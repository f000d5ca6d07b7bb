/* resnet.c - torchvision's ResNet v1.5 (18, 34, 50), NHWC, forward and backward.
 *
 *   images -> conv1 7x7/2 -> bn1 -> relu -> maxpool 3x3/2 -> layer1..layer4 -> avgpool
 *
 * A "unit" is a convolution with the batch norm after it; a block is two (BasicBlock)
 * or three (Bottleneck) units plus an optional downsample unit, ending in
 *   out = relu(bn(y_last) + (downsample ? bn_d(y_d) : block input)).
 *
 * Training keeps, per unit, the convolution's output y and the batch norm's output a
 * (the block output for the last unit), all in one arena sized per batch shape.
 * Batch statistics are summed on each GEMM tile while it is in cache; the
 * normalisation with its ReLU (and residual add) is one pass. Evaluation folds the
 * running statistics into the GEMM tile's epilogue, so each unit is one pass over
 * memory, and rotates four buffers instead of keeping everything.
 *
 * Backward of a block (4 gradient buffers rotate): mask by the block output's ReLU,
 * then the downsample's and the last unit's batch norms (both see the same gradient),
 * then the units back to front; the first unit's input gradient is added onto the
 * shortcut's, which is already in place. A batch norm's backward is a pass of sums,
 * then dy made a tile of rows at a time inside the backward of the convolution that
 * reads it (conv_prologue), so that dy is never written whole where that convolution
 * reads it by tiles: the same bits as the separate pass, and 2% off a ResNet-50 step.
 */
#include <omp.h>
#include <stdio.h>
#include <time.h>

#include "core.h"
#include "layers.h"
#include "random.h"
#include "resnet.h"

#define MAX_UNITS 64
#define MAX_BLOCKS 16
#define BN_MOMENTUM 0.1
#define BN_EPS 1e-5

typedef struct {
    char name[48];
    ptrdiff_t in_c, out_c, kernel, stride, pad;
    size_t w_off, g_off, b_off, rm_off, rv_off;
    float *weight, *dweight, *gamma, *dgamma, *beta, *dbeta, *running_mean, *running_var;
    /* per output channel: batch statistics of the last training forward, and the
     * affine map (scale, shift) the last forward applied */
    float *mean, *invstd, *scale, *shift;
    /* A transposed copy (r*s*c, k) of the weights, made at each forward (they may have
     * changed) for layers whose GEMMs BLIS runs unpacked: with a row-major B its
     * unpacked kernels use their fast row-times-panel form instead of dot products. */
    float *weight_t;
    conv_shape shape;
    float *y, *a;      /* convolution output; batch norm (+ReLU) output */
    double total_rows; /* rows of the last training forward's statistics, all processes */
} unit;

typedef struct {
    int main[3], n_main, down; /* unit indices; down = -1: identity shortcut */
    float *in, *out;
} block;

typedef struct {
    cv_resnet_config config;
    unit units[MAX_UNITS];
    int n_units;
    block blocks[MAX_BLOCKS];
    int n_blocks;
    ptrdiff_t feature_dim;
    float *channel_data; /* mean, invstd, scale, shift of every unit */
    float *weight_t_data;
    double *stat_mean, *stat_var, *stat_extra; /* max channels each */
    float *bn_coef; /* a batch norm's backward coefficients, 3 x max channels */
    ptrdiff_t max_channels;

    /* the plan for the current batch shape */
    ptrdiff_t n, h, w;
    int planned, plan_training;
    ptrdiff_t pool_h, pool_w;   /* maxpool output */
    float *pool;                /* maxpool output = layer1's input */
    unsigned char *pool_argmax; /* training: where each maximum came from */
    float *arena;
    size_t arena_cap;
    size_t max_act;   /* floats of the largest activation */
    float *grad[4];   /* training: gradient buffers, max_act each */
    double *partials; /* batch-statistics partials (tiles x 2 x channels) */
    size_t partials_cap;
    ptrdiff_t *counts;
    size_t counts_cap;
    conv_workspace ws;

    conv_input input; /* the images of the last forward */
    int has_training_forward;

    /* synchronised batch norm: the sum over processes, and its buffer (1 + 3 channels) */
    cv_reduce_fn reduce;
    void *reduce_user;
    double *reduce_buf;
} resnet_model;

/* ---- profile ------------------------------------------------------------------------- */

static struct {
    int on;
    int cpu_time; /* process CPU time instead of wall time */
    int count;
    resnet_profile_entry entries[MAX_UNITS + 4];
} profile;

void resnet_profile_enable(int on)
{
    if (on)
        memset(&profile, 0, sizeof profile);
    profile.on = on != 0;
    if (on)
        profile.cpu_time = on == RESNET_PROFILE_CPU_TIME;
}

int resnet_profile_enabled(void)
{
    return profile.on;
}

const resnet_profile_entry *resnet_profile(int *count)
{
    *count = profile.count;
    return profile.entries;
}

/* The entry of unit u (index u) or of the extra layers after the units. */
static resnet_profile_entry *profile_entry(int index, const char *name)
{
    if (!profile.on || index < 0 || index >= MAX_UNITS + 4)
        return NULL;
    while (profile.count <= index)
        profile.count++;
    resnet_profile_entry *e = &profile.entries[index];
    if (!e->name[0])
        snprintf(e->name, sizeof e->name, "%s", name);
    return e;
}

static double clock_seconds(void)
{
    if (!profile.cpu_time)
        return omp_get_wtime();
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double now(void)
{
    return profile.on ? clock_seconds() : 0.0;
}

enum { P_CONV_FWD, P_BN_FWD, P_CONV_BWD, P_BN_BWD };

static void profile_add(int index, const char *name, int what, double since, double flops)
{
    resnet_profile_entry *e = profile_entry(index, name);
    if (!e)
        return;
    double dt = clock_seconds() - since;
    switch (what) {
    case P_CONV_FWD:
        e->conv_forward += dt;
        e->flops_forward += flops;
        e->forward_calls++;
        break;
    case P_BN_FWD:
        e->bn_forward += dt;
        break;
    case P_CONV_BWD:
        e->conv_backward += dt;
        e->flops_backward += flops;
        e->backward_calls++;
        break;
    default:
        e->bn_backward += dt;
    }
}

/* ---- building ------------------------------------------------------------------------ */

static cv_status add_unit(resnet_model *m, cv_tensor_table *table, const char *conv_name,
                          const char *bn_name, ptrdiff_t in_c, ptrdiff_t out_c,
                          ptrdiff_t kernel, ptrdiff_t stride, ptrdiff_t pad)
{
    if (m->n_units == MAX_UNITS)
        return cv_fail(CV_ERR_INTERNAL, "too many ResNet units");
    unit *u = &m->units[m->n_units++];
    memset(u, 0, sizeof *u);
    snprintf(u->name, sizeof u->name, "%s", conv_name);
    u->in_c = in_c;
    u->out_c = out_c;
    u->kernel = kernel;
    u->stride = stride;
    u->pad = pad;
    char name[CV_NAME_LEN];
    int64_t wshape[4] = {out_c, in_c, kernel, kernel}, cshape[1] = {out_c};
    /* names and offsets of conv.weight, bn.weight, bn.bias, bn.running_mean/var */
    const struct {
        const char *layer, *what;
        size_t *offset;
        int ndim, is_buffer, layout;
    } tensors[5] = {
        {conv_name, "weight", &u->w_off, 4, 0, CV_LAYOUT_KRSC},
        {bn_name, "weight", &u->g_off, 1, 0, CV_LAYOUT_TORCH},
        {bn_name, "bias", &u->b_off, 1, 0, CV_LAYOUT_TORCH},
        {bn_name, "running_mean", &u->rm_off, 1, 1, CV_LAYOUT_TORCH},
        {bn_name, "running_var", &u->rv_off, 1, 1, CV_LAYOUT_TORCH},
    };
    for (int i = 0; i < 5; i++) {
        snprintf(name, sizeof name, "%s.%s", tensors[i].layer, tensors[i].what);
        cv_status st =
            cv_table_add(table, name, tensors[i].ndim, i == 0 ? wshape : cshape,
                         tensors[i].is_buffer, tensors[i].layout, tensors[i].offset);
        if (st != CV_OK)
            return st;
    }
    if (out_c > m->max_channels)
        m->max_channels = out_c;
    return CV_OK;
}

static cv_status build(resnet_model *m, cv_tensor_table *table)
{
    static const int layers18[4] = {2, 2, 2, 2}, layers34[4] = {3, 4, 6, 3};
    const int *layers = m->config.depth == 18 ? layers18 : layers34;
    const int bottleneck = m->config.depth == 50, expansion = bottleneck ? 4 : 1;
    cv_status st = add_unit(m, table, "conv1", "bn1", m->config.in_channels, 64, 7, 2, 3);
    if (st != CV_OK)
        return st;
    ptrdiff_t in_planes = 64;
    for (int stage = 0; stage < 4; stage++) {
        ptrdiff_t planes = 64 << stage;
        for (int b = 0; b < layers[stage]; b++) {
            ptrdiff_t stride = (b == 0 && stage > 0) ? 2 : 1, out = planes * expansion;
            block *blk = &m->blocks[m->n_blocks++];
            char conv[48], bn[48];
            blk->n_main = bottleneck ? 3 : 2;
            for (int i = 0; i < blk->n_main; i++) {
                ptrdiff_t cin = i == 0 ? in_planes : planes,
                          cout = i == blk->n_main - 1 ? out : planes;
                /* Bottleneck: 1x1, 3x3 (stride here: v1.5), 1x1. Basic: 3x3 (stride), 3x3.
                 */
                ptrdiff_t k = bottleneck ? (i == 1 ? 3 : 1) : 3;
                ptrdiff_t s = bottleneck ? (i == 1 ? stride : 1) : (i == 0 ? stride : 1);
                snprintf(conv, sizeof conv, "layer%d.%d.conv%d", stage + 1, b, i + 1);
                snprintf(bn, sizeof bn, "layer%d.%d.bn%d", stage + 1, b, i + 1);
                blk->main[i] = m->n_units;
                if ((st = add_unit(m, table, conv, bn, cin, cout, k, s, k / 2)) != CV_OK)
                    return st;
            }
            blk->down = -1;
            if (stride != 1 || in_planes != out) {
                snprintf(conv, sizeof conv, "layer%d.%d.downsample.0", stage + 1, b);
                snprintf(bn, sizeof bn, "layer%d.%d.downsample.1", stage + 1, b);
                blk->down = m->n_units;
                if ((st = add_unit(m, table, conv, bn, in_planes, out, 1, stride, 0)) !=
                    CV_OK)
                    return st;
            }
            in_planes = out;
        }
    }
    m->feature_dim = in_planes;
    /* Per-channel state and transposed weights do not depend on the batch. */
    size_t channels = 0, transposed = 0;
    for (int i = 0; i < m->n_units; i++) {
        const unit *u = &m->units[i];
        channels += 4 * (size_t)u->out_c;
        transposed += (size_t)(u->out_c * u->kernel * u->kernel * u->in_c);
    }
    m->channel_data = cv_alloc_floats(channels);
    m->weight_t_data = cv_alloc_floats(transposed ? transposed : 1);
    m->stat_mean = malloc((size_t)m->max_channels * sizeof(double));
    m->stat_var = malloc((size_t)m->max_channels * sizeof(double));
    m->stat_extra = malloc((size_t)m->max_channels * sizeof(double));
    m->reduce_buf = malloc((size_t)(1 + 3 * m->max_channels) * sizeof(double));
    m->bn_coef = malloc((size_t)(3 * m->max_channels) * sizeof(float));
    if (!m->channel_data || !m->weight_t_data || !m->stat_mean || !m->stat_var ||
        !m->stat_extra || !m->reduce_buf || !m->bn_coef)
        return cv_fail(CV_ERR_MEMORY, "out of memory building the ResNet");
    memset(m->channel_data, 0, channels * sizeof(float));
    float *c = m->channel_data, *t = m->weight_t_data;
    for (int i = 0; i < m->n_units; i++) {
        unit *u = &m->units[i];
        u->mean = c;
        u->invstd = c + u->out_c;
        u->scale = c + 2 * u->out_c;
        u->shift = c + 3 * u->out_c;
        c += 4 * u->out_c;
        u->weight_t = t;
        t += u->out_c * u->kernel * u->kernel * u->in_c;
    }
    return CV_OK;
}

static void resnet_bind(void *model, float *params, float *grads, float *buffers)
{
    resnet_model *m = model;
    for (int i = 0; i < m->n_units; i++) {
        unit *u = &m->units[i];
        u->weight = params + u->w_off;
        u->dweight = grads + u->w_off;
        u->gamma = params + u->g_off;
        u->dgamma = grads + u->g_off;
        u->beta = params + u->b_off;
        u->dbeta = grads + u->b_off;
        u->running_mean = buffers + u->rm_off;
        u->running_var = buffers + u->rv_off;
    }
}

/* torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu") for convolutions,
 * batch norm weight 1, bias 0, running statistics 0 and 1. */
static void resnet_init(void *model, uint64_t seed)
{
    resnet_model *m = model;
    for (int i = 0; i < m->n_units; i++) {
        unit *u = &m->units[i];
        ptrdiff_t count = u->out_c * u->kernel * u->kernel * u->in_c;
        double std = sqrt(2.0 / (double)(u->out_c * u->kernel * u->kernel));
        uint64_t stream = 0x5245534e4554ULL + (uint64_t)i; /* "RESNET" + unit */
#pragma omp parallel for num_threads(cv_get_num_threads()) schedule(static)
        for (ptrdiff_t j = 0; j < count; j++)
            u->weight[j] = (float)(std * cv_random_normal(seed, stream, (uint64_t)j));
        for (ptrdiff_t j = 0; j < u->out_c; j++) {
            u->gamma[j] = 1.0f;
            u->beta[j] = 0.0f;
            u->running_mean[j] = 0.0f;
            u->running_var[j] = 1.0f;
        }
    }
}

static void resnet_free(void *model)
{
    resnet_model *m = model;
    if (!m)
        return;
    free(m->channel_data);
    free(m->weight_t_data);
    free(m->stat_mean);
    free(m->stat_var);
    free(m->stat_extra);
    free(m->reduce_buf);
    free(m->bn_coef);
    free(m->arena);
    free(m->partials);
    free(m->counts);
    conv_workspace_free(&m->ws);
    free(m);
}

/* ---- the plan for a batch shape ------------------------------------------------------ */

/* Sizes saturate at SIZE_MAX (an allocation that can only fail) rather than wrap:
 * the batch shape comes from the caller. */
static size_t act_size(const conv_shape *s)
{
    return cv_mul_sat(cv_mul_sat(cv_mul_sat((size_t)s->n, (size_t)s->p), (size_t)s->q),
                      (size_t)s->k);
}

static size_t aligned(size_t n)
{
    return n > SIZE_MAX - 15 ? SIZE_MAX : (n + 15) / 16 * 16;
}

/* Shapes of every unit for images (n, h, w); then pointers into the arena: every
 * tensor apart for training, four rotating buffers for evaluation. */
static cv_status plan(resnet_model *m, ptrdiff_t n, ptrdiff_t h, ptrdiff_t w, int training)
{
    if (m->planned && m->n == n && m->h == h && m->w == w && m->plan_training == training)
        return CV_OK;
    m->planned = 0;
    cv_status st;
    unit *stem = &m->units[0];
    if ((st = conv_shape_init(&stem->shape, n, h, w, stem->in_c, stem->out_c, 7, 7, 2, 3)))
        return st;
    m->pool_h = window_out(stem->shape.p, 3, 2, 1);
    m->pool_w = window_out(stem->shape.q, 3, 2, 1);
    size_t max_act = act_size(&stem->shape),
           pool_size = cv_mul_sat(
               cv_mul_sat(cv_mul_sat((size_t)n, (size_t)m->pool_h), (size_t)m->pool_w), 64);
    ptrdiff_t bh = m->pool_h, bw = m->pool_w;
    for (int b = 0; b < m->n_blocks; b++) {
        block *blk = &m->blocks[b];
        ptrdiff_t ch = bh, cw = bw;
        for (int i = 0; i < blk->n_main; i++) {
            unit *u = &m->units[blk->main[i]];
            if ((st = conv_shape_init(&u->shape, n, ch, cw, u->in_c, u->out_c, u->kernel,
                                      u->kernel, u->stride, u->pad)))
                return st;
            ch = u->shape.p;
            cw = u->shape.q;
            if (act_size(&u->shape) > max_act)
                max_act = act_size(&u->shape);
        }
        if (blk->down >= 0) {
            unit *u = &m->units[blk->down];
            if ((st = conv_shape_init(&u->shape, n, bh, bw, u->in_c, u->out_c, 1, 1,
                                      u->stride, 0)))
                return st;
        }
        bh = ch;
        bw = cw;
    }
    if (training)
        for (int i = 0; i < m->n_units; i++) {
            const conv_shape *s = &m->units[i].shape;
            if (s->n * s->p * s->q < 2)
                return cv_fail(CV_ERR_VALUE,
                               "batch norm in training mode needs more than one value per "
                               "channel, but %s has a %td x %td output for a batch of %td: "
                               "use a larger batch or larger images",
                               m->units[i].name, s->p, s->q, s->n);
        }
    /* Arena layout. */
    size_t total;
    if (training) {
        total = cv_add_sat(
            cv_add_sat(cv_mul_sat(2, aligned(act_size(&stem->shape))), aligned(pool_size)),
            cv_add_sat(aligned(pool_size / 4 + (pool_size % 4 != 0)),
                       cv_mul_sat(4, aligned(max_act))));
        for (int b = 0; b < m->n_blocks; b++) {
            const block *blk = &m->blocks[b];
            for (int i = 0; i < blk->n_main; i++)
                total = cv_add_sat(
                    total, cv_mul_sat(2, aligned(act_size(&m->units[blk->main[i]].shape))));
            if (blk->down >= 0)
                total = cv_add_sat(total, aligned(act_size(&m->units[blk->down].shape)));
        }
    } else {
        total = cv_mul_sat(4, aligned(max_act > pool_size ? max_act : pool_size));
    }
    if (cv_reserve((void **)&m->arena, &m->arena_cap, total, sizeof(float)))
        return cv_fail(CV_ERR_MEMORY, "out of memory for the activations (%.1f MiB)",
                       (double)total * 4.0 / 1048576.0);
    /* Statistics partials: the most tiles times channels of any unit. */
    size_t partials = 0, tiles = 0;
    for (int i = 0; i < m->n_units; i++) {
        conv_input probe;
        conv_input_tensor(&probe, i == 0 ? NULL : m->arena);
        size_t t = (size_t)conv2d_tile_bound(&probe, &m->units[i].shape);
        if (t * 2 * (size_t)m->units[i].out_c > partials)
            partials = t * 2 * (size_t)m->units[i].out_c;
        if (t > tiles)
            tiles = t;
    }
    if (cv_reserve((void **)&m->partials, &m->partials_cap, partials, sizeof(double)) ||
        cv_reserve((void **)&m->counts, &m->counts_cap, tiles, sizeof(ptrdiff_t)))
        return cv_fail(CV_ERR_MEMORY, "out of memory for batch statistics");

    float *next = m->arena;
    if (training) {
#define TAKE(size) (next += aligned(size), next - aligned(size))
        stem->y = TAKE(act_size(&stem->shape));
        stem->a = TAKE(act_size(&stem->shape));
        m->pool = TAKE(pool_size);
        m->pool_argmax = (unsigned char *)TAKE((pool_size + 3) / 4);
        float *in = m->pool;
        for (int b = 0; b < m->n_blocks; b++) {
            block *blk = &m->blocks[b];
            blk->in = in;
            for (int i = 0; i < blk->n_main; i++) {
                unit *u = &m->units[blk->main[i]];
                u->y = TAKE(act_size(&u->shape));
                u->a = TAKE(act_size(&u->shape));
            }
            if (blk->down >= 0) {
                unit *u = &m->units[blk->down];
                u->y = TAKE(act_size(&u->shape));
                u->a = NULL;
            }
            blk->out = m->units[blk->main[blk->n_main - 1]].a;
            in = blk->out;
        }
        for (int g = 0; g < 4; g++)
            m->grad[g] = TAKE(max_act);
#undef TAKE
    } else {
        size_t each = aligned(max_act > pool_size ? max_act : pool_size);
        float *buf[4] = {next, next + each, next + 2 * each, next + 3 * each};
        stem->y = stem->a = buf[0];
        m->pool = buf[1];
        m->pool_argmax = NULL;
        int x = 1; /* the buffer holding the block input */
        for (int b = 0; b < m->n_blocks; b++) {
            block *blk = &m->blocks[b];
            int f[3], nf = 0;
            for (int j = 0; j < 4; j++)
                if (j != x)
                    f[nf++] = j;
            blk->in = buf[x];
            /* unit outputs: f0, f1 (bottleneck); downsample f2; the last unit writes
             * over the first unit's output, which its input no longer needs. */
            for (int i = 0; i < blk->n_main; i++) {
                unit *u = &m->units[blk->main[i]];
                int dst = i == blk->n_main - 1 ? (blk->n_main == 3 ? f[0] : f[1]) : f[i];
                u->y = u->a = buf[dst];
            }
            if (blk->down >= 0) {
                unit *u = &m->units[blk->down];
                u->y = u->a = buf[f[2]];
            }
            blk->out = m->units[blk->main[blk->n_main - 1]].a;
            x = blk->n_main == 3 ? f[0] : f[1];
        }
        for (int g = 0; g < 4; g++)
            m->grad[g] = NULL;
    }
    m->max_act = max_act;
    m->n = n;
    m->h = h;
    m->w = w;
    m->plan_training = training;
    m->planned = 1;
    return CV_OK;
}

/* ---- forward ------------------------------------------------------------------------- */

typedef struct {
    double *partials;
    ptrdiff_t *counts;
    ptrdiff_t k;
} stats_ctx;

static void stats_epilogue(void *ctx, float *out, ptrdiff_t row0, ptrdiff_t rows,
                           ptrdiff_t tile)
{
    (void)row0;
    stats_ctx *c = ctx;
    c->counts[tile] = rows;
    bn_tile_statistics(c->partials + 2 * c->k * tile, out, rows, c->k);
}

typedef struct {
    const float *scale, *shift, *residual;
    int relu;
    ptrdiff_t k;
} affine_ctx;

static void affine_epilogue(void *ctx, float *out, ptrdiff_t row0, ptrdiff_t rows,
                            ptrdiff_t tile)
{
    (void)tile;
    affine_ctx *c = ctx;
    bn_apply_rows(out, out, c->scale, c->shift,
                  c->residual ? c->residual + row0 * c->k : NULL, NULL, NULL, NULL, c->relu,
                  rows, c->k);
}

/* y = conv(input); training: batch statistics into u->mean/invstd/scale/shift and the
 * running statistics; eval: the running statistics' affine map (and residual, ReLU)
 * applied in the GEMM epilogue, so u->y == u->a holds the unit's output. */
/* ---- synchronised batch norm ---------------------------------------------------------
 * With a reduce hook, K processes each holding b of the batch's images compute what one
 * process computes on all K b. Forward: each sends (rows, rows mean, rows (var + mean^2))
 * per channel; the sums give the batch's mean and (biased) variance, in double. Backward:
 * bn_backward_coefficients needs sum(dz) / rows and sum(dz (y - mean)) / rows over the
 * batch (mean and invstd being the batch's already); each process's sums are summed,
 * then scaled by rows / total_rows, so that its division by its own rows gives the
 * batch's means, and the dgamma, dbeta it adds (those sums) are this process's share,
 * rows / total_rows of the batch's: the all-reduce of the gradient buffers adds the
 * shares back to the whole. */

static cv_status reduce_failed(void)
{
    return cv_fail(CV_ERR_STATE, "the batch-norm reduce across processes failed");
}

static cv_status reduce_statistics(resnet_model *m, double *total, ptrdiff_t rows,
                                   ptrdiff_t c)
{
    double *buf = m->reduce_buf, *mean = m->stat_mean, *var = m->stat_var;
    buf[0] = (double)rows;
    for (ptrdiff_t j = 0; j < c; j++) {
        buf[1 + j] = rows * mean[j];
        buf[1 + c + j] = rows * (var[j] + mean[j] * mean[j]);
    }
    if (m->reduce(m->reduce_user, buf, 1 + 2 * c))
        return reduce_failed();
    *total = buf[0];
    for (ptrdiff_t j = 0; j < c; j++) {
        mean[j] = buf[1 + j] / buf[0];
        double v = buf[1 + c + j] / buf[0] - mean[j] * mean[j];
        var[j] = v > 0.0 ? v : 0.0;
    }
    return CV_OK;
}

/* sums[0..count-1] (c each), summed over the processes and scaled by rows / total. */
static cv_status reduce_sums(resnet_model *m, double *const *sums, int count, ptrdiff_t c,
                             ptrdiff_t rows, double total)
{
    double *buf = m->reduce_buf;
    for (int s = 0; s < count; s++)
        memcpy(buf + s * c, sums[s], (size_t)c * sizeof(double));
    if (m->reduce(m->reduce_user, buf, count * c))
        return reduce_failed();
    const double share = (double)rows / total;
    for (int s = 0; s < count; s++)
        for (ptrdiff_t j = 0; j < c; j++)
            sums[s][j] = buf[s * c + j] * share;
    return CV_OK;
}

static void resnet_set_batchnorm_reduce(void *model, cv_reduce_fn fn, void *user)
{
    resnet_model *m = model;
    m->reduce = fn;
    m->reduce_user = fn ? user : NULL;
}

static cv_status unit_forward(resnet_model *m, int index, const conv_input *in,
                              const float *residual, int relu, int training)
{
    unit *u = &m->units[index];
    const conv_shape *s = &u->shape;
    const ptrdiff_t k = u->out_c, rsc = s->r * s->s * s->c;
    double t0 = now();
    const float *weight_t = NULL;
    if (u->weight_t && conv2d_wants_weight_t(in, s)) {
        cv_transpose(u->weight_t, k, u->weight, rsc, k, rsc, 0);
        weight_t = u->weight_t;
    }
    cv_status st;
    if (training) {
        stats_ctx ctx = {m->partials, m->counts, k};
        conv_epilogue epi = {stats_epilogue, &ctx};
        if ((st = conv2d_forward(u->y, in, u->weight, weight_t, s, &epi, &m->ws)))
            return st;
        if (profile.on)
            profile_add(index, u->name, P_CONV_FWD, t0, 2.0 * act_size(s) * rsc);
        t0 = now();
        ptrdiff_t tiles = conv2d_tile_count(in, s), rows = s->n * s->p * s->q;
        bn_combine_statistics(m->stat_mean, m->stat_var, m->partials, m->counts, 0, tiles,
                              k);
        u->total_rows = (double)rows;
        if (m->reduce && (st = reduce_statistics(m, &u->total_rows, rows, k)))
            return st;
        bn_finish_statistics(u->mean, u->invstd, u->scale, u->shift, u->running_mean,
                             u->running_var, m->stat_mean, m->stat_var, u->gamma, u->beta,
                             (ptrdiff_t)u->total_rows, k, BN_MOMENTUM, BN_EPS);
        if (profile.on)
            profile_add(index, u->name, P_BN_FWD, t0, 0.0);
    } else {
        bn_eval_affine(u->scale, u->shift, u->running_mean, u->running_var, u->gamma,
                       u->beta, k, BN_EPS);
        affine_ctx ctx = {u->scale, u->shift, residual, relu, k};
        conv_epilogue epi = {affine_epilogue, &ctx};
        if ((st = conv2d_forward(u->y, in, u->weight, weight_t, s, &epi, &m->ws)))
            return st;
        if (profile.on)
            profile_add(index, u->name, P_CONV_FWD, t0, 2.0 * act_size(s) * rsc);
    }
    return CV_OK;
}

static cv_status block_forward(resnet_model *m, block *blk, int training)
{
    cv_status st;
    conv_input in;
    if (blk->down >= 0) {
        conv_input_tensor(&in, blk->in);
        if ((st = unit_forward(m, blk->down, &in, NULL, 0, training)))
            return st;
    }
    const float *x = blk->in;
    for (int i = 0; i < blk->n_main; i++) {
        if ((st = cv_check_interrupt()))
            return st;
        unit *u = &m->units[blk->main[i]];
        conv_input_tensor(&in, x);
        const int final = i == blk->n_main - 1;
        const float *residual = !final           ? NULL
                                : blk->down >= 0 ? m->units[blk->down].a
                                                 : blk->in;
        if ((st = unit_forward(m, blk->main[i], &in, residual, 1, training)))
            return st;
        if (training) {
            double t0 = now();
            const unit *d = blk->down >= 0 ? &m->units[blk->down] : NULL;
            bn_apply_forward(u->a, u->y, u->scale, u->shift, final && !d ? blk->in : NULL,
                             final && d ? d->y : NULL, d ? d->scale : NULL,
                             d ? d->shift : NULL, 1, u->shape.n * u->shape.p * u->shape.q,
                             u->out_c);
            if (profile.on)
                profile_add(blk->main[i], u->name, P_BN_FWD, t0, 0.0);
        }
        x = u->a;
    }
    return CV_OK;
}

static int all_finite(const float *x, size_t count)
{
    int ok = 1;
    for (size_t i = 0; i < count; i++)
        ok &= isfinite(x[i]) != 0;
    return ok;
}

static cv_status resnet_forward(void *model, float *features, const cv_batch *batch,
                                int training)
{
    resnet_model *m = model;
    cv_status st;
    m->has_training_forward = 0;
    if (batch->kind != CV_INPUT_IMAGES)
        return cv_fail(CV_ERR_VALUE, "a ResNet encoder takes images, not tokens");
    if (batch->c != m->config.in_channels)
        return cv_fail(CV_ERR_VALUE, "images have %td channels, the ResNet expects %d",
                       batch->c, m->config.in_channels);
    if (batch->h < 32 || batch->w < 32)
        return cv_fail(CV_ERR_VALUE, "images must be at least 32 x 32, got %td x %td",
                       batch->h, batch->w);
    if ((st = conv_input_pixels(&m->input, batch->pixels, batch->is_uint8, batch->stride,
                                batch->c, batch->mean, batch->std)))
        return st;
    if ((st = plan(m, batch->n, batch->h, batch->w, training)))
        return st;

    /* stem: conv1, bn1, relu, maxpool */
    unit *stem = &m->units[0];
    if ((st = unit_forward(m, 0, &m->input, NULL, 1, training)))
        return st;
    const conv_shape *s = &stem->shape;
    double t0 = now();
    if (training) {
        bn_apply_forward(stem->a, stem->y, stem->scale, stem->shift, NULL, NULL, NULL, NULL,
                         1, s->n * s->p * s->q, 64);
        if (profile.on)
            profile_add(0, stem->name, P_BN_FWD, t0, 0.0);
        t0 = now();
    }
    maxpool_forward(m->pool, training ? m->pool_argmax : NULL, stem->a, s->n, s->p, s->q,
                    64, 3, 2, 1);
    if (profile.on)
        profile_add(m->n_units, "maxpool", P_BN_FWD, t0, 0.0);

    for (int b = 0; b < m->n_blocks; b++)
        if ((st = cv_check_interrupt()) || (st = block_forward(m, &m->blocks[b], training)))
            return st;

    t0 = now();
    const block *last = &m->blocks[m->n_blocks - 1];
    const conv_shape *ls = &m->units[last->main[last->n_main - 1]].shape;
    avgpool_forward(features, last->out, ls->n, ls->p * ls->q, m->feature_dim);
    if (profile.on)
        profile_add(m->n_units + 1, "avgpool", P_BN_FWD, t0, 0.0);
    if (!all_finite(features, (size_t)(batch->n * m->feature_dim)))
        return cv_fail(CV_ERR_NONFINITE,
                       "the ResNet features contain NaN or Inf (are the weights finite?)");
    m->has_training_forward = training;
    return CV_OK;
}

/* ---- backward ------------------------------------------------------------------------ */

/* The sums of unit index's batch-norm backward over dout (masked by out when given),
 * summed across processes with a reduce hook: sum dz into m->stat_mean, sum dz xhat
 * into m->stat_var. */
static cv_status unit_bn_sums(resnet_model *m, int index, const float *dout,
                              const float *out)
{
    unit *u = &m->units[index];
    const ptrdiff_t rows = u->shape.n * u->shape.p * u->shape.q;
    double t0 = now();
    bn_backward_reduce(m->stat_mean, m->stat_var, dout, out, u->y, u->mean, u->invstd, rows,
                       u->out_c);
    if (m->reduce) {
        double *sums[2] = {m->stat_mean, m->stat_var};
        cv_status st = reduce_sums(m, sums, 2, u->out_c, rows, u->total_rows);
        if (st)
            return st;
    }
    if (profile.on)
        profile_add(index, u->name, P_BN_BWD, t0, 0.0);
    return CV_OK;
}

/* A batch norm's dy, made a tile of rows at a time inside the backward of the
 * convolution that reads it (conv_prologue): bn_backward_rows on those rows. */
typedef struct {
    const float *dout, *out, *y, *mean, *coef;
    ptrdiff_t c;
} bn_rows_ctx;

static void bn_rows(void *ctx, float *dy, ptrdiff_t row0, ptrdiff_t rows)
{
    const bn_rows_ctx *b = ctx;
    const ptrdiff_t at = row0 * b->c;
    bn_backward_rows(dy, b->dout + at, b->out ? b->out + at : NULL, b->y + at, b->mean,
                     b->coef, rows, b->c);
}

/* The prologue making unit index's dy from dout (masked by out when given) and the
 * sums: its coefficients go into m->bn_coef, the sums into dgamma and dbeta. spill:
 * where the whole dy goes if the convolution needs it at once (may be dout). */
static conv_prologue unit_bn_prologue(resnet_model *m, int index, bn_rows_ctx *ctx,
                                      const float *dout, const float *out, float *spill,
                                      const double *sum_dz, const double *sum_dzx)
{
    unit *u = &m->units[index];
    const ptrdiff_t rows = u->shape.n * u->shape.p * u->shape.q;
    bn_backward_coefficients(m->bn_coef, u->dgamma, u->dbeta, u->invstd, u->gamma, sum_dz,
                             sum_dzx, rows, u->out_c);
    *ctx = (bn_rows_ctx){dout, out, u->y, u->mean, m->bn_coef, u->out_c};
    return (conv_prologue){bn_rows, ctx, spill};
}

/* Unit index's convolution backward from its batch norm's backward (pro), which runs
 * tile by tile inside it: the profile's convolution time includes it. */
static cv_status unit_conv_backward(resnet_model *m, int index, float *dinp,
                                    const conv_prologue *pro, const conv_input *in, int add)
{
    unit *u = &m->units[index];
    double t0 = now();
    cv_status st =
        conv2d_backward(dinp, u->dweight, NULL, in, u->weight, &u->shape, add, pro, &m->ws);
    if (profile.on) {
        const conv_shape *s = &u->shape;
        double gemm = 2.0 * act_size(s) * s->r * s->s * s->c;
        profile_add(index, u->name, P_CONV_BWD, t0, dinp ? 2.0 * gemm : gemm);
    }
    return st;
}

/* Gradient of block b's output in m->grad[gin]; leaves the gradient of its input in
 * m->grad[*gx]. */
static cv_status block_backward(resnet_model *m, const block *blk, int gin, int *gx)
{
    cv_status st;
    float **g = m->grad;
    int other[3], no = 0;
    for (int j = 0; j < 4; j++)
        if (j != gin)
            other[no++] = j;
    const int final = blk->main[blk->n_main - 1];
    const unit *uf = &m->units[final];
    const unit *ud = blk->down >= 0 ? &m->units[blk->down] : NULL;
    const ptrdiff_t rows = uf->shape.n * uf->shape.p * uf->shape.q;
    /* dS = dOut * (out > 0) in place, and both batch norms' sums, in one pass. */
    double *sum_dz = m->stat_mean, *sum_f = m->stat_var, *sum_d = m->stat_extra;
    double t0 = now();
    bn_backward_mask_reduce2(sum_dz, sum_f, sum_d, g[gin], blk->out, uf->y, uf->mean,
                             uf->invstd, ud ? ud->y : NULL, ud ? ud->mean : NULL,
                             ud ? ud->invstd : NULL, rows, uf->out_c);
    if (profile.on)
        profile_add(final, uf->name, P_BN_BWD, t0, 0.0);
    if (m->reduce) {
        double *sums[3] = {sum_dz, sum_f, sum_d};
        if ((st = reduce_sums(m, sums, ud ? 3 : 2, uf->out_c, rows, uf->total_rows)))
            return st;
    }
    conv_input in;
    bn_rows_ctx ctx;
    conv_prologue pro;
    int cur = other[1], spare = other[2];
    if (ud) {
        *gx = other[0];
        pro = unit_bn_prologue(m, blk->down, &ctx, g[gin], NULL, g[cur], sum_dz, sum_d);
        conv_input_tensor(&in, blk->in);
        if ((st = unit_conv_backward(m, blk->down, g[*gx], &pro, &in, 0)))
            return st;
    } else {
        *gx = gin; /* the shortcut's gradient is dS itself; the first unit adds onto it */
        spare = other[0];
    }
    /* dS stays in g[gin]: the final unit's dy is made from it (spilled into g[cur]) */
    pro = unit_bn_prologue(m, final, &ctx, g[gin], NULL, g[cur], sum_dz, sum_f);
    for (int i = blk->n_main - 1; i >= 0; i--) {
        if ((st = cv_check_interrupt()))
            return st;
        const float *x = i == 0 ? blk->in : m->units[blk->main[i - 1]].a;
        conv_input_tensor(&in, x);
        float *dinp = i == 0 ? g[*gx] : g[spare];
        if ((st = unit_conv_backward(m, blk->main[i], dinp, &pro, &in, i == 0)))
            return st;
        if (i > 0) {
            /* the previous unit's batch norm, masked by its ReLU output x, in place */
            if ((st = unit_bn_sums(m, blk->main[i - 1], g[spare], x)))
                return st;
            pro = unit_bn_prologue(m, blk->main[i - 1], &ctx, g[spare], x, g[spare],
                                   m->stat_mean, m->stat_var);
            int t = cur;
            cur = spare;
            spare = t;
        }
    }
    return CV_OK;
}

static cv_status resnet_backward(void *model, float *d_input, const float *d_features)
{
    resnet_model *m = model;
    cv_status st;
    if (!m->has_training_forward || !m->plan_training)
        return cv_fail(CV_ERR_STATE, "backward needs a training forward first");
    const block *last = &m->blocks[m->n_blocks - 1];
    const conv_shape *ls = &m->units[last->main[last->n_main - 1]].shape;
    double t0 = now();
    int gin = 0, gx;
    avgpool_backward(m->grad[gin], d_features, ls->n, ls->p * ls->q, m->feature_dim, 0);
    if (profile.on)
        profile_add(m->n_units + 1, "avgpool", P_BN_BWD, t0, 0.0);
    for (int b = m->n_blocks - 1; b >= 0; b--) {
        if ((st = cv_check_interrupt()) ||
            (st = block_backward(m, &m->blocks[b], gin, &gx)))
            return st;
        gin = gx;
    }
    /* stem */
    if ((st = cv_check_interrupt()))
        return st;
    unit *stem = &m->units[0];
    const conv_shape *s = &stem->shape;
    float *da = m->grad[(gin + 1) % 4];
    t0 = now();
    memset(da, 0, act_size(s) * sizeof(float));
    maxpool_backward(da, m->grad[gin], m->pool_argmax, s->n, s->p, s->q, 64, 3, 2, 1);
    if (profile.on)
        profile_add(m->n_units, "maxpool", P_BN_BWD, t0, 0.0);
    if ((st = unit_bn_sums(m, 0, da, stem->a)))
        return st;
    bn_rows_ctx ctx;
    conv_prologue pro =
        unit_bn_prologue(m, 0, &ctx, da, stem->a, da, m->stat_mean, m->stat_var);
    return unit_conv_backward(m, 0, d_input, &pro, &m->input, 0);
}

/* ---- create -------------------------------------------------------------------------- */

cv_status resnet_create(cv_backbone *backbone, cv_tensor_table *table,
                        const cv_resnet_config *config)
{
    if (config->depth != 18 && config->depth != 34 && config->depth != 50)
        return cv_fail(CV_ERR_VALUE, "ResNet depth must be 18, 34 or 50, got %d",
                       config->depth);
    if (config->in_channels < 1 || config->in_channels > CONV_MAX_PIXEL_CHANNELS)
        return cv_fail(CV_ERR_VALUE, "in_channels must be 1..%d, got %d",
                       CONV_MAX_PIXEL_CHANNELS, config->in_channels);
    resnet_model *m = calloc(1, sizeof *m);
    if (!m)
        return cv_fail(CV_ERR_MEMORY, "out of memory for the ResNet");
    m->config = *config;
    cv_status st = build(m, table);
    if (st != CV_OK) {
        resnet_free(m);
        return st;
    }
    memset(backbone, 0, sizeof *backbone);
    backbone->kind = "resnet";
    backbone->feature_dim = m->feature_dim;
    backbone->model = m;
    backbone->bind = resnet_bind;
    backbone->init = resnet_init;
    backbone->forward = resnet_forward;
    backbone->backward = resnet_backward;
    backbone->free = resnet_free;
    backbone->set_batchnorm_reduce = resnet_set_batchnorm_reduce;
    return CV_OK;
}
