/* gelu.c - the exact GELU, x * Phi(x) = x / 2 * (1 + erf(x / sqrt 2)), as BERT's
 * hidden_act "gelu" (not the tanh approximation). */
/* Without this, GCC 12 does not vectorise the loops that call cv_expf: its clamps
 * followed by a float -> int conversion need if-conversion, which -ftrapping-math (the
 * default) forbids ("control flow in loop"). The core never relies on FP traps. */
#pragma GCC optimize("no-trapping-math")

#include <omp.h>

#include "core.h"
#include "layers.h"

/* erf(x) = x P(x^2) / Q(x^2) on [-4, 4] (|erf| rounds to 1 in float outside), the
 * rational approximation Eigen and XLA use: branch-free, so loops calling it
 * vectorise. Its own error is below 7e-8; in float arithmetic below 5e-7. */
static inline float erf_rational(float x)
{
    x = x < -4.0f ? -4.0f : x;
    x = x > 4.0f ? 4.0f : x;
    const float x2 = x * x;
    float p = -2.72614225801306e-10f;
    p = p * x2 + 2.77068142495902e-08f;
    p = p * x2 + -2.10102402082508e-06f;
    p = p * x2 + -5.69250639462346e-05f;
    p = p * x2 + -7.34990630326855e-04f;
    p = p * x2 + -2.95459980854025e-03f;
    p = p * x2 + -1.60960333262415e-02f;
    float q = -1.45660718464996e-05f;
    q = q * x2 + -2.13374055278905e-04f;
    q = q * x2 + -1.68282697438203e-03f;
    q = q * x2 + -7.37332916720468e-03f;
    q = q * x2 + -1.42647390514189e-02f;
    return x * p / q;
}

float gelu_erf(float x)
{
    return erf_rational(x);
}

#define INV_SQRT2 0.70710678118654752f
#define INV_SQRT_2PI 0.39894228040143268f

CV_VECTORIZE static void gelu_block(float *out, const float *inp, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + erf_rational(x * INV_SQRT2));
    }
}

/* GELU'(x) = Phi(x) + x phi(x), phi the standard normal density. */
CV_VECTORIZE static void gelu_backward_block(float *dinp, const float *dout,
                                             const float *inp, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        float x = inp[i];
        float cdf = 0.5f * (1.0f + erf_rational(x * INV_SQRT2));
        float pdf = INV_SQRT_2PI * cv_expf(-0.5f * x * x);
        dinp[i] = dout[i] * (cdf + x * pdf);
    }
}

/* Blocks of 16 Ki elements (64 KiB) split statically over the threads. */
#define GELU_BLOCK ((size_t)16384)

void gelu_forward(float *out, const float *inp, size_t count)
{
    const ptrdiff_t blocks = (ptrdiff_t)((count + GELU_BLOCK - 1) / GELU_BLOCK);
    int threads = layer_threads();
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (ptrdiff_t b = 0; b < blocks; b++) {
        size_t start = (size_t)b * GELU_BLOCK;
        size_t len = count - start < GELU_BLOCK ? count - start : GELU_BLOCK;
        gelu_block(out + start, inp + start, len);
    }
}

void gelu_backward(float *dinp, const float *dout, const float *inp, size_t count)
{
    const ptrdiff_t blocks = (ptrdiff_t)((count + GELU_BLOCK - 1) / GELU_BLOCK);
    int threads = layer_threads();
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (ptrdiff_t b = 0; b < blocks; b++) {
        size_t start = (size_t)b * GELU_BLOCK;
        size_t len = count - start < GELU_BLOCK ? count - start : GELU_BLOCK;
        gelu_backward_block(dinp + start, dout + start, inp + start, len);
    }
}
