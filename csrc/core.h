/* core.h - helpers shared by the core's .c files (not part of the public API). */
#ifndef CONVIRT_CORE_H
#define CONVIRT_CORE_H

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "convirt.h"

/* Element-wise loops are compiled for AVX-512, AVX2+FMA and the baseline; the loader
 * picks the widest this CPU runs (GCC function multiversioning). A build with
 * CV_VECTOR_LEVEL=3 or 1 (CONVIRT_CFLAGS=-DCV_VECTOR_LEVEL=3) compiles them for that
 * x86-64 level alone (3: AVX2 + FMA, 1: the baseline), so that a CPU with AVX-512 runs
 * and tests the loops an older CPU runs (tests/test_kernel_sets.py). */
#if !defined(__x86_64__) || !defined(__GNUC__) || defined(__clang__)
#define CV_VECTORIZE
#elif !defined(CV_VECTOR_LEVEL)
#define CV_VECTOR_CLONES 1 /* the loader picks the clone: cv_wide_lanes, vector_loops() */
#define CV_VECTORIZE                                                                       \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif CV_VECTOR_LEVEL == 3
#define CV_VECTORIZE __attribute__((target("arch=x86-64-v3")))
#elif CV_VECTOR_LEVEL == 1
#define CV_VECTORIZE
#else
#error "CV_VECTOR_LEVEL: 3 (AVX2 + FMA) or 1 (the x86-64 baseline)"
#endif

#define CV_ALIGN 64

/* Reductions run in CV_LANES independent lanes, so that GCC vectorises them without
 * reassociating float sums (no -ffast-math), and give the same result on every
 * instruction set the loops are compiled for: lane l sums elements l, l + 16, ...,
 * then cv_lanes_total adds the lanes in order. */
#define CV_LANES 16

static inline float cv_lanes_total(const float *lane)
{
    float total = 0.0f;
    for (int l = 0; l < CV_LANES; l++)
        total += lane[l];
    return total;
}

/* CV_LANES floats as one GCC vector, read and written in place at any float alignment:
 * one register in the AVX-512 build, where it beats a lane array that GCC vectorises (a
 * running maximum: 3x). Without 512-bit vectors GCC keeps it in memory (the AVX2 build's
 * running maximum: 11x slower than AVX-512's), so loops that run in every build use
 * float arrays of CV_LANES, or choose by cv_wide_lanes. */
typedef float cv_lanes_f __attribute__((vector_size(4 * CV_LANES), aligned(4), may_alias));
typedef int32_t cv_lanes_i
    __attribute__((vector_size(4 * CV_LANES), aligned(4), may_alias));

/* best = x > best ? x : best, lane by lane (pointers: vectors in arguments would
 * make the baseline build's ABI depend on AVX-512). For the AVX-512 build
 * (cv_wide_lanes below): GCC 12 compiles a comparison of two 64-byte vectors lane by
 * lane, in scalar code, for a CPU without 512-bit vectors; loops that run in every build
 * keep their lanes in float arrays, which GCC vectorises at each build's width. */
static inline void cv_lanes_max(cv_lanes_f *best, const cv_lanes_f *x)
{
    cv_lanes_i take = *x > *best;
    *best = (cv_lanes_f)(((cv_lanes_i)*x & take) | ((cv_lanes_i)*best & ~take));
}

/* The tree reductions below: lane l and lane l + 8, then those results four apart, two,
 * one. Written on floats, not as shuffles of the 64-byte vector: GCC 12 turned a 16-lane
 * shuffle into scalar extracts and inserts on a CPU without 512-bit vectors, and
 * vectorises these loops at the width each build has. */

/* The largest of the lanes; a maximum does not depend on the order. */
static inline float cv_lanes_max_total(const float *v)
{
    float half[8], quarter[4];
    for (int l = 0; l < 8; l++)
        half[l] = v[l + 8] > v[l] ? v[l + 8] : v[l];
    for (int l = 0; l < 4; l++)
        quarter[l] = half[l + 4] > half[l] ? half[l + 4] : half[l];
    const float even = quarter[2] > quarter[0] ? quarter[2] : quarter[0];
    const float odd = quarter[3] > quarter[1] ? quarter[3] : quarter[1];
    return odd > even ? odd : even;
}

/* The lanes' sum in that order on every instruction set, shorter than cv_lanes_total's
 * chain of fifteen additions. */
static inline float cv_lanes_tree_total(const float *v)
{
    float half[8], quarter[4];
    for (int l = 0; l < 8; l++)
        half[l] = v[l] + v[l + 8];
    for (int l = 0; l < 4; l++)
        quarter[l] = half[l] + half[l + 4];
    return (quarter[0] + quarter[2]) + (quarter[1] + quarter[3]);
}

/* Overflow-checked size arithmetic: every size that reaches an allocation is computed
 * with these, because sizes come from callers and from checkpoint files and are never
 * trusted. cv_mul_size / cv_add_size return 1 (and leave *out unspecified) when the
 * result does not fit in size_t. The _sat forms saturate at SIZE_MAX instead, for size
 * expressions that only feed an allocation: SIZE_MAX can never be allocated, so an
 * overflow becomes an out-of-memory error, never a short buffer. */
static inline int cv_mul_size(size_t a, size_t b, size_t *out)
{
    return __builtin_mul_overflow(a, b, out);
}

static inline int cv_add_size(size_t a, size_t b, size_t *out)
{
    return __builtin_add_overflow(a, b, out);
}

static inline size_t cv_mul_sat(size_t a, size_t b)
{
    size_t r;
    return __builtin_mul_overflow(a, b, &r) ? SIZE_MAX : r;
}

static inline size_t cv_add_sat(size_t a, size_t b)
{
    size_t r;
    return __builtin_add_overflow(a, b, &r) ? SIZE_MAX : r;
}

/* n elements of `size` bytes rounded up to whole 64-byte lines; 0 on overflow. */
static inline size_t cv_aligned_bytes(size_t n, size_t size)
{
    size_t bytes;
    if (cv_mul_size(n, size, &bytes) || cv_add_size(bytes, CV_ALIGN - 1, &bytes))
        return 0;
    return bytes / CV_ALIGN * CV_ALIGN;
}

/* Buffers of CV_HUGE_PAGE bytes or more (activation arenas, similarity matrices,
 * packed panels) are whole 2 MiB pages on a 2 MiB boundary, marked for transparent
 * huge pages: Linux's default THP mode, madvise, gives them only to regions that ask,
 * and the core walks these buffers by rows or columns that are kilobytes apart, one
 * 4 KiB page and TLB entry per row. */
#define CV_HUGE_PAGE ((size_t)2 << 20)

/* `bytes` (a multiple of CV_ALIGN, > 0) at 64-byte or, when large, 2 MiB alignment;
 * NULL on failure. Freed with free(). */
static inline void *cv_alloc_bytes(size_t bytes)
{
    if (bytes < CV_HUGE_PAGE)
        return aligned_alloc(CV_ALIGN, bytes);
    size_t whole;
    if (cv_add_size(bytes, CV_HUGE_PAGE - 1, &whole))
        return NULL;
    whole = whole / CV_HUGE_PAGE * CV_HUGE_PAGE;
    void *p = aligned_alloc(CV_HUGE_PAGE, whole);
#ifdef MADV_HUGEPAGE
    if (p)
        madvise(p, whole, MADV_HUGEPAGE); /* advice only: 4 KiB pages if refused */
#endif
    return p;
}

/* 64-byte aligned allocation of n floats (NULL on failure, overflow or n == 0). */
static inline float *cv_alloc_floats(size_t n)
{
    size_t bytes = cv_aligned_bytes(n, sizeof(float));
    return bytes ? (float *)cv_alloc_bytes(bytes) : NULL;
}

/* Grow *buf to hold at least n elements of `size` bytes; contents are not kept.
 * Returns 0 on success, -1 on allocation failure or overflow (the old buffer is
 * freed). */
static inline int cv_reserve(void **buf, size_t *cap, size_t n, size_t size)
{
    if (n <= *cap && *buf)
        return 0;
    free(*buf);
    size_t bytes = cv_aligned_bytes(n, size);
    *buf = bytes ? cv_alloc_bytes(bytes) : NULL;
    *cap = *buf ? n : 0;
    return *buf ? 0 : -1;
}

/* Inside a parallel loop, for long calls that must stop on an interrupt:
 *     int stop = 0;
 *     #pragma omp parallel for ...
 *     for (i ...) { if (cv_stopping(&stop, i)) continue; ... }
 *     if (stop) return CV_ERR_INTERRUPTED;
 * Thread 0 (the caller's own thread) checks every 16th of its iterations (pass i = 0
 * to check every one, e.g. under a dynamic schedule); once one check says stop, every
 * thread skips what it has left. The loop's partition over the threads is unchanged,
 * so are its results when nothing stops it. */
static inline int cv_stopping(int *stop, ptrdiff_t i)
{
    if ((i & 15) == 0 && omp_get_thread_num() == 0 && cv_check_interrupt() != CV_OK)
        __atomic_store_n(stop, 1, __ATOMIC_RELAXED);
    return __atomic_load_n(stop, __ATOMIC_RELAXED);
}

/* The core of cv_expf and cv_lanes_exp, for a float or a cv_lanes_f x already clamped:
 * x = n ln2 + r, |r| <= ln2 / 2 (n rounded to nearest with the 1.5 * 2^23 trick, ln2
 * split in a high and a low part), p = exp(r) by its Taylor polynomial to degree 6 in
 * Horner form. Declares n and p. */
#define CV_EXP_REDUCED(T, x, n, p)                                                         \
    T n = ((x) * 1.44269504088896341f + 12582912.0f) - 12582912.0f;                        \
    T p##_r = (x) - n * 0.693145751953125f;                                                \
    p##_r = p##_r - n * 1.428606765330187e-06f;                                            \
    T p = p##_r * (1.0f / 720.0f) + 1.0f / 120.0f;                                         \
    p = p * p##_r + 1.0f / 24.0f;                                                          \
    p = p * p##_r + 1.0f / 6.0f;                                                           \
    p = p * p##_r + 0.5f;                                                                  \
    p = p * p##_r + 1.0f;                                                                  \
    p = p * p##_r + 1.0f

/* exp(x) for float, branch-free so that loops calling it vectorise. Relative error
 * below 2e-7 on [-87.3, 88]; 0 below (where exp(x) < 1.2e-38), exp(88) above, NaN
 * for NaN. */
static inline float cv_expf(float x)
{
    const float underflow = x < -87.3f ? 0.0f : 1.0f;
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.0f ? 88.0f : x;
    CV_EXP_REDUCED(float, x, n, p);
    union {
        int32_t i;
        float f;
    } scale;
    /* NaN in x: p is NaN already; n = 0 keeps the conversion and the shift defined */
    scale.i = ((int32_t)(n == n ? n : 0.0f) + 127) << 23;
    return p * scale.f * underflow;
}

/* mask (all ones or zero, lane by lane) ? a : b (a macro: vectors in arguments would
 * make the baseline build's ABI depend on AVX-512) */
#define cv_lanes_select(mask, a, b)                                                        \
    ((cv_lanes_f)(((cv_lanes_i)(a) & (mask)) | ((cv_lanes_i)(b) & ~(mask))))

/* 1 when the element-wise loops that run are the AVX-512 build (cv_init sets it). There
 * the 64-byte vectors below are registers; the AVX2 and baseline builds keep them in
 * memory and compile their comparisons in scalar code, so loops that run in every build
 * and are hot enough choose their form by this (attention's softmax). */
extern int cv_wide_lanes;

/* cv_expf on CV_LANES floats, the same operations lane by lane (the same results), for
 * loops that go on using exp(x): cv_expf's results, vectorised by GCC, reach such a
 * vector only through memory (a 64-byte store and its load back; in attention's
 * softmax on Zen 5 those loads were the hottest instructions of the loop). For the
 * AVX-512 build (cv_wide_lanes): elsewhere its comparisons are scalar code. */
static inline void cv_lanes_exp(cv_lanes_f *y, const cv_lanes_f *xp)
{
    const cv_lanes_f zero = {0}, one = zero + 1.0f;
    cv_lanes_f x = *xp;
    const cv_lanes_i under = x < -87.3f;
    x = cv_lanes_select(under, zero - 87.3f, x);
    x = cv_lanes_select(x > 88.0f, zero + 88.0f, x);
    CV_EXP_REDUCED(cv_lanes_f, x, n, p);
    const cv_lanes_i k =
        __builtin_convertvector(cv_lanes_select(n == n, n, zero), cv_lanes_i);
    const cv_lanes_f scale = (cv_lanes_f)((k + 127) << 23);
    *y = p * scale * cv_lanes_select(under, zero, one);
}

#endif
