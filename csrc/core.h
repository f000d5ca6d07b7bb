/* core.h - helpers shared by the core's .c files (not part of the public API). */
#ifndef CONVIRT_CORE_H
#define CONVIRT_CORE_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "convirt.h"

/* Element-wise loops are compiled for AVX-512, AVX2+FMA and the baseline; the loader
 * picks the widest this CPU runs (GCC function multiversioning). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CV_VECTORIZE __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CV_VECTORIZE
#endif

#define CV_ALIGN 64

/* 64-byte aligned allocation of n floats (NULL on failure or n == 0). */
static inline float *cv_alloc_floats(size_t n)
{
    if (n == 0)
        return NULL;
    size_t bytes = (n * sizeof(float) + CV_ALIGN - 1) / CV_ALIGN * CV_ALIGN;
    return (float *)aligned_alloc(CV_ALIGN, bytes);
}

/* Grow *buf to hold at least n elements of `size` bytes; contents are not kept.
 * Returns 0 on success, -1 on allocation failure (the old buffer is freed). */
static inline int cv_reserve(void **buf, size_t *cap, size_t n, size_t size)
{
    if (n <= *cap && *buf)
        return 0;
    free(*buf);
    size_t bytes = (n * size + CV_ALIGN - 1) / CV_ALIGN * CV_ALIGN;
    *buf = bytes ? aligned_alloc(CV_ALIGN, bytes) : NULL;
    *cap = *buf ? n : 0;
    return *buf ? 0 : -1;
}

/* exp(x) for float, branch-free so that loops calling it vectorise. Relative error
 * below 2e-7 on [-87.3, 88]; 0 below (where exp(x) < 1.2e-38), exp(88) above. */
static inline float cv_expf(float x)
{
    const float underflow = x < -87.3f ? 0.0f : 1.0f;
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.0f ? 88.0f : x;
    /* x = n ln2 + r, |r| <= ln2 / 2; round to nearest with the 1.5 * 2^23 trick. */
    const float shifter = 12582912.0f;
    float n = (x * 1.44269504088896341f + shifter) - shifter;
    float r = x - n * 0.693145751953125f; /* ln2 split in a high and a low part */
    r = r - n * 1.428606765330187e-06f;
    /* exp(r) by its Taylor polynomial to degree 6, Horner form. */
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union {
        int32_t i;
        float f;
    } scale;
    scale.i = ((int32_t)n + 127) << 23;
    return p * scale.f * underflow;
}

#endif
