/* adam.c - Adam and AdamW over flat float32 buffers (see adam.h). */
#include <float.h>
#include <omp.h>

#include "adam.h"
#include "core.h"

/* Work is split into chunks of this many floats, fixed at set-up, so the gradient
 * norm is summed in the same order whatever the number of threads. */
#define CHUNK ((size_t)1 << 15)

cv_status cv_adam_check_config(const cv_adam_config *c)
{
    if (!(c->lr >= 0.0 && c->lr <= CV_ADAM_MAX_LR))
        return cv_fail(CV_ERR_VALUE, "lr must be in [0, %g], got %g", CV_ADAM_MAX_LR,
                       c->lr);
    if (!(c->beta1 >= 0.0 && c->beta1 < 1.0) || !(c->beta2 >= 0.0 && c->beta2 < 1.0))
        return cv_fail(CV_ERR_VALUE, "betas must be in [0, 1), got (%g, %g)", c->beta1,
                       c->beta2);
    if (!(c->eps >= CV_ADAM_MIN_EPS && c->eps <= FLT_MAX))
        return cv_fail(CV_ERR_VALUE, "eps must be in [%g, %g] (finite in float32), got %g",
                       CV_ADAM_MIN_EPS, (double)FLT_MAX, c->eps);
    if (!(c->weight_decay >= 0.0 && c->weight_decay <= CV_ADAM_MAX_WEIGHT_DECAY))
        return cv_fail(CV_ERR_VALUE, "weight_decay must be in [0, %g], got %g",
                       CV_ADAM_MAX_WEIGHT_DECAY, c->weight_decay);
    if (!(c->max_grad_norm >= 0.0) || !isfinite(c->max_grad_norm))
        return cv_fail(CV_ERR_VALUE, "max_grad_norm must be a finite number > 0, got %g",
                       c->max_grad_norm);
    return CV_OK;
}

void cv_adam_free(cv_adam *adam)
{
    free(adam->segments);
    free(adam->offsets);
    free(adam->exp_avg);
    free(adam->exp_avg_sq);
    free(adam->chunks);
    free(adam->partial);
    memset(adam, 0, sizeof *adam);
}

cv_status cv_adam_init(cv_adam *adam, const cv_adam_segment *segments, ptrdiff_t n_segments,
                       const cv_adam_config *config)
{
    memset(adam, 0, sizeof *adam);
    size_t total = 0;
    cv_status status = cv_adam_check_config(config);
    if (status != CV_OK)
        return status;
    if (n_segments <= 0)
        return cv_fail(CV_ERR_VALUE, "Adam needs at least one parameter buffer");
    adam->config = *config;
    adam->n_segments = n_segments;
    adam->segments = malloc(sizeof *segments * (size_t)n_segments);
    adam->offsets = malloc(sizeof(size_t) * (size_t)n_segments);
    if (!adam->segments || !adam->offsets)
        goto nomem;
    memcpy(adam->segments, segments, sizeof *segments * (size_t)n_segments);
    ptrdiff_t n_chunks = 0;
    for (ptrdiff_t k = 0; k < n_segments; k++) {
        adam->offsets[k] = total;
        if (cv_add_size(total, segments[k].count, &total)) {
            cv_adam_free(adam);
            return cv_fail(CV_ERR_VALUE, "the parameter buffers' sizes overflow");
        }
        n_chunks +=
            (ptrdiff_t)(segments[k].count / CHUNK + (segments[k].count % CHUNK != 0));
    }
    adam->total = total;
    adam->n_chunks = n_chunks;
    if (total > 0) {
        adam->exp_avg = cv_alloc_floats(total);
        adam->exp_avg_sq = cv_alloc_floats(total);
        adam->chunks = malloc(sizeof(cv_adam_chunk) * (size_t)n_chunks);
        adam->partial = malloc(sizeof(double) * (size_t)n_chunks);
        if (!adam->exp_avg || !adam->exp_avg_sq || !adam->chunks || !adam->partial)
            goto nomem;
        memset(adam->exp_avg, 0, total * sizeof(float));
        memset(adam->exp_avg_sq, 0, total * sizeof(float));
    }
    ptrdiff_t c = 0;
    for (ptrdiff_t k = 0; k < n_segments; k++)
        for (size_t begin = 0; begin < segments[k].count; begin += CHUNK) {
            size_t left = segments[k].count - begin;
            adam->chunks[c++] = (cv_adam_chunk){k, begin, left < CHUNK ? left : CHUNK};
        }
    return CV_OK;
nomem:
    cv_adam_free(adam);
    return cv_fail(CV_ERR_MEMORY, "cannot allocate Adam's state for %zu parameters", total);
}

/* The element-wise update of one buffer; step_size = lr / (1 - beta1^t), bias2 =
 * sqrt(1 - beta2^t). The operations, their order and their fused multiply-adds are
 * those of torch's single-tensor Adam on the CPU (ATen's add with alpha, lerp,
 * addcmul and addcdiv), and no others are contracted, so the rounding matches it
 * too; what remains is torch's sqrt, which is not correctly rounded (1 ulp). */
CV_VECTORIZE __attribute__((optimize("fp-contract=off"))) static void
adam_update(float *param, float *exp_avg, float *exp_avg_sq, const float *grad,
            size_t count, const cv_adam_config *config, double step_size, double bias2_sqrt,
            float clip)
{
    const float b1 = (float)(1.0 - config->beta1), beta2 = (float)config->beta2,
                b2 = (float)(1.0 - config->beta2), eps = (float)config->eps,
                bias2 = (float)bias2_sqrt, lr_step = (float)-step_size;
    const float l2 = config->decoupled ? 0.0f : (float)config->weight_decay;
    const float shrink =
        config->decoupled ? (float)(1.0 - config->lr * config->weight_decay) : 1.0f;
    for (size_t i = 0; i < count; i++) {
        float g = fmaf(l2, param[i], grad[i] * clip);     /* grad.add(p, alpha=wd) */
        float p = param[i] * shrink;                      /* p.mul_(1 - lr wd) */
        float m = fmaf(b1, g - exp_avg[i], exp_avg[i]);   /* m.lerp_(g, 1 - beta1) */
        float v = fmaf(b2 * g, g, exp_avg_sq[i] * beta2); /* v.mul_(beta2).addcmul_ */
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        param[i] = p + (lr_step * m) / (sqrtf(v) / bias2 + eps); /* p.addcdiv_ */
    }
}

CV_VECTORIZE static double sum_squares(const float *x, size_t count)
{
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0;
    for (; i + 8 <= count; i += 8)
        for (int k = 0; k < 8; k++)
            acc[k] += (double)x[i + k] * (double)x[i + k];
    for (; i < count; i++)
        acc[0] += (double)x[i] * (double)x[i];
    double low = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    return low + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* The global L2 norm of the gradients (params 0) or of the parameters (params 1). The
 * sum of squares is in double, where even float32's largest values squared and summed
 * cannot overflow: the norm is finite exactly when every value is. */
static double global_norm(cv_adam *adam, int threads, int params)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (ptrdiff_t c = 0; c < adam->n_chunks; c++) {
        const cv_adam_chunk *ch = &adam->chunks[c];
        const cv_adam_segment *seg = &adam->segments[ch->segment];
        adam->partial[c] =
            sum_squares((params ? seg->param : seg->grad) + ch->begin, ch->count);
    }
    double total = 0.0;
    for (ptrdiff_t c = 0; c < adam->n_chunks; c++)
        total += adam->partial[c];
    return sqrt(total);
}

/* The first gradient that is NaN or Inf or whose moment term, clip times it plus l2
 * (coupled weight decay) times its parameter, is NaN, Inf or larger than
 * CV_ADAM_MAX_GRAD (clip and l2 0: only the non-finite gradients), for the message;
 * CV_OK when there is none. The term is computed as adam_update computes it. */
static cv_status bad_gradient(const cv_adam *adam, float clip, float l2)
{
    for (ptrdiff_t k = 0; k < adam->n_segments; k++)
        for (size_t i = 0; i < adam->segments[k].count; i++) {
            const float g = adam->segments[k].grad[i], p = adam->segments[k].param[i];
            if (!isfinite(g))
                return cv_fail(CV_ERR_NONFINITE,
                               "non-finite gradient: gradients[%td][%zu] is %s; no "
                               "parameter was updated",
                               k, i, isnan(g) ? "NaN" : "Inf");
            const float term = l2 != 0.0f ? fmaf(l2, p, g * clip) : g * clip;
            if (fabsf(term) <= (float)CV_ADAM_MAX_GRAD)
                continue;
            if (l2 != 0.0f && !(fabsf(g * clip) > (float)CV_ADAM_MAX_GRAD))
                return cv_fail(
                    CV_ERR_NONFINITE,
                    "gradient too large: gradients[%td][%zu] is %g and weight_decay "
                    "(%g, coupled) times its parameter %g adds to it; the sum's square "
                    "overflows float32 (Adam's second moment would become Inf or NaN "
                    "and stop the parameter for good); no parameter was updated",
                    k, i, (double)g, (double)l2, (double)p);
            return cv_fail(CV_ERR_NONFINITE,
                           "gradient too large: gradients[%td][%zu] is %g, whose square "
                           "overflows float32 (Adam's second moment would become Inf "
                           "and stop the parameter for good); no parameter was "
                           "updated. Set max_grad_norm to clip the gradients",
                           k, i, (double)g);
        }
    return CV_OK;
}

cv_status cv_adam_step(cv_adam *adam, double *grad_norm, int want_norm)
{
    const cv_adam_config *config = &adam->config;
    cv_status status = cv_adam_check_config(config);
    if (status != CV_OK)
        return status;
    if (adam->step >= CV_ADAM_MAX_STEP)
        return cv_fail(CV_ERR_STATE, "Adam has taken %lld steps, the most it counts",
                       (long long)adam->step);
    const int threads = cv_get_num_threads();
    float clip = 1.0f;
    /* Every step reads the gradients once first: a NaN or Inf would spread into the
     * moments and parameters for good, so the step is refused before anything moves
     * (clip_grad_norm_ with error_if_nonfinite, for every step). */
    double norm = global_norm(adam, threads, 0);
    if (!isfinite(norm))
        return (status = bad_gradient(adam, 0.0f, 0.0f))
                   ? status
                   : cv_fail(CV_ERR_NONFINITE,
                             "non-finite gradient; no parameter was updated");
    if (config->max_grad_norm > 0.0) {
        /* as clip_grad_norm_: the factor in float32 from the float32 norm */
        float coef = (float)config->max_grad_norm / ((float)norm + 1e-6f);
        clip = coef < 1.0f ? coef : 1.0f;
    }
    /* No moment term |clip g + l2 p| is larger than clip |g|_2 + l2 |p|_2: the scan
     * for one too large runs only when that bound is (with coupled weight decay, the
     * parameters' norm costs one more read of them). */
    const float l2 = config->decoupled ? 0.0f : (float)config->weight_decay;
    const double bound =
        norm * clip + (l2 != 0.0f ? l2 * global_norm(adam, threads, 1) : 0.0);
    if (!(bound <= CV_ADAM_MAX_GRAD) && (status = bad_gradient(adam, clip, l2)))
        return status;
    if (!(config->max_grad_norm > 0.0 || want_norm))
        norm = NAN;
    if (grad_norm)
        *grad_norm = norm;

    adam->step++;
    const double t = (double)adam->step;
    const double step_size = config->lr / (1.0 - pow(config->beta1, t));
    const double bias2_sqrt = sqrt(1.0 - pow(config->beta2, t));
#pragma omp parallel for num_threads(threads) schedule(static)
    for (ptrdiff_t c = 0; c < adam->n_chunks; c++) {
        const cv_adam_chunk *ch = &adam->chunks[c];
        const cv_adam_segment *seg = &adam->segments[ch->segment];
        size_t at = adam->offsets[ch->segment] + ch->begin;
        adam_update(seg->param + ch->begin, adam->exp_avg + at, adam->exp_avg_sq + at,
                    seg->grad + ch->begin, ch->count, config, step_size, bias2_sqrt, clip);
    }
    return CV_OK;
}
