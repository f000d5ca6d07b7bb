/* adam.h - Adam and AdamW over flat float32 buffers (as torch.optim.Adam / AdamW).
 *
 * One step, per element, with t the step count after the increment:
 *   g = grad * clip                              (clip: global-norm clipping, else 1)
 *   g += weight_decay * p                        (L2, torch.optim.Adam)   or
 *   p *= 1 - lr * weight_decay                   (decoupled, torch.optim.AdamW)
 *   m = m + (1 - beta1) (g - m)
 *   v = beta2 v + (1 - beta2) g^2
 *   p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 * Clipping as torch.nn.utils.clip_grad_norm_: norm = ||all gradients||_2,
 * clip = min(1, max_norm / (norm + 1e-6)). The gradients are read, never written
 * (the clip is applied on the fly). */
#ifndef CONVIRT_ADAM_H
#define CONVIRT_ADAM_H

#include "convirt.h"

typedef struct {
    double lr, beta1, beta2, eps, weight_decay;
    int decoupled;        /* AdamW's decoupled weight decay, else L2 */
    double max_grad_norm; /* 0: no clipping */
} cv_adam_config;

/* One parameter buffer and its gradient, count floats each. */
typedef struct {
    float *param;
    const float *grad;
    size_t count;
} cv_adam_segment;

typedef struct {
    ptrdiff_t segment;
    size_t begin, count;
} cv_adam_chunk;

typedef struct {
    cv_adam_config config;
    cv_adam_segment *segments;
    ptrdiff_t n_segments;
    size_t *offsets; /* segment k's state is exp_avg[offsets[k] ...] */
    size_t total;
    float *exp_avg, *exp_avg_sq; /* total floats each, zero at the start */
    int64_t step;                /* steps taken */
    cv_adam_chunk *chunks;       /* fixed work split: results do not depend on threads */
    ptrdiff_t n_chunks;
    double *partial; /* per chunk sums of squares for the norm */
} cv_adam;

/* The hyperparameters' ranges. An element's step is lr m^ / (sqrt(v^) + eps), m^ and
 * v^ the bias-corrected averages of g and g^2, so it is at most lr max|g| / eps: with
 * lr <= 1 and eps >= 1e-16, at most 1e16 max|g|, finite in float32 for every gradient
 * whose square is: |g| <= CV_ADAM_MAX_GRAD. A larger one (after clipping) is refused as
 * a non-finite one is: v would be Inf from then on, the parameter's step 0 for good,
 * and the state could not be loaded back. eps is added in
 * float32, so at most FLT_MAX. weight_decay <= 1 adds at most |p| to the gradient (L2),
 * and with lr <= 1 AdamW's factor 1 - lr wd stays in [0, 1]: the decay never flips or
 * grows a weight. The typical values (lr 1e-5..1e-2, eps 1e-8, weight decay 1e-6..0.1)
 * are far inside. */
#define CV_ADAM_MAX_LR 1.0
#define CV_ADAM_MIN_EPS 1e-16
#define CV_ADAM_MAX_WEIGHT_DECAY 1.0
/* The largest gradient Adam takes: its square, 3.24e38, is below FLT_MAX (3.40e38), so
 * v, an average of such squares, stays finite. With coupled (L2) weight decay the bound
 * holds for the gradient plus weight_decay times the parameter, what v averages. */
#define CV_ADAM_MAX_GRAD 1.8e19
/* The most steps: the bias corrections use (double)step, exact up to 2**53. */
#define CV_ADAM_MAX_STEP ((int64_t)1 << 53)

/* CV_ERR_VALUE naming the bad hyperparameter (lr = 0 is allowed here: schedules may
 * reach 0; constructors that want lr > 0 check it themselves). */
cv_status cv_adam_check_config(const cv_adam_config *config);

/* Copies the segment table; allocates zeroed state. */
cv_status cv_adam_init(cv_adam *adam, const cv_adam_segment *segments, ptrdiff_t n_segments,
                       const cv_adam_config *config);
void cv_adam_free(cv_adam *adam);

/* One update of every segment. *grad_norm (may be NULL) receives the global L2 norm
 * of the gradients when clipping is on or want_norm is set, else NaN. OpenMP over
 * fixed chunks of the buffers. CV_ERR_NONFINITE, with nothing updated (not the step
 * count either), when any gradient is NaN or Inf or, once clipped, larger than
 * CV_ADAM_MAX_GRAD (with coupled weight decay: clipped gradient plus weight_decay times
 * the parameter); CV_ERR_STATE after CV_ADAM_MAX_STEP
 * steps. */
cv_status cv_adam_step(cv_adam *adam, double *grad_norm, int want_norm);

#endif
