/* peak.c - the machine's FP32 FMA throughput, the limit benchmarks compare with.
 *
 * Each thread runs independent FMA chains (more chains than latency x FMA ports, so
 * the ports never wait) at one vector width: by default the width of the GEMM kernels
 * that run (512 bits with BLIS's skx set, 256 with haswell or the zen sets), so that a
 * CPU restricted to AVX2 (BLIS_ARCH_TYPE=haswell on an AVX-512 CPU) is measured against
 * what AVX2 code can reach there. */
#include <immintrin.h>
#include <omp.h>

#include "core.h"

#define CHAINS 12

__attribute__((target("avx512f"))) static float fma_loop_512(long iterations)
{
    __m512 acc[CHAINS];
    const __m512 mul = _mm512_set1_ps(0.999999f), add = _mm512_set1_ps(1e-7f);
    for (int c = 0; c < CHAINS; c++)
        acc[c] = _mm512_set1_ps((float)c);
    for (long it = 0; it < iterations; it++) {
#pragma GCC unroll 12
        for (int c = 0; c < CHAINS; c++)
            acc[c] = _mm512_fmadd_ps(acc[c], mul, add);
    }
    for (int c = 1; c < CHAINS; c++)
        acc[0] = _mm512_add_ps(acc[0], acc[c]);
    return _mm512_reduce_add_ps(acc[0]);
}

__attribute__((target("avx2,fma"))) static float fma_loop_256(long iterations)
{
    __m256 acc[CHAINS];
    const __m256 mul = _mm256_set1_ps(0.999999f), add = _mm256_set1_ps(1e-7f);
    for (int c = 0; c < CHAINS; c++)
        acc[c] = _mm256_set1_ps((float)c);
    for (long it = 0; it < iterations; it++) {
#pragma GCC unroll 12
        for (int c = 0; c < CHAINS; c++)
            acc[c] = _mm256_fmadd_ps(acc[c], mul, add);
    }
    for (int c = 1; c < CHAINS; c++)
        acc[0] = _mm256_add_ps(acc[0], acc[c]);
    float lanes[8];
    _mm256_storeu_ps(lanes, acc[0]);
    return lanes[0];
}

/* Scalar fallback: counts as 1 lane. */
static float fma_loop_scalar(long iterations)
{
    float acc[CHAINS];
    for (int c = 0; c < CHAINS; c++)
        acc[c] = (float)c;
    for (long it = 0; it < iterations; it++)
        for (int c = 0; c < CHAINS; c++)
            acc[c] = acc[c] * 0.999999f + 1e-7f;
    return acc[0];
}

/* Threads clamped to what libgomp can start: it needs stack for every thread it starts
 * (and ends the process when it cannot have them), so never more than the machine runs. */
static int usable_threads(int threads)
{
    if (threads < 1)
        return 1;
    return threads > cv_max_threads() ? cv_max_threads() : threads;
}

/* Best GFLOP/s of three rounds of `run(work)` on every thread at once, each doing
 * flops_per_unit * work; the work calibrated on one thread to about seconds / 6. */
static double best_rate(int threads, double seconds, float (*run)(long),
                        double flops_per_unit)
{
    long work = 1 << 10;
    for (;;) {
        double t0 = omp_get_wtime();
        volatile float sink = run(work);
        (void)sink;
        double dt = omp_get_wtime() - t0;
        if (dt > seconds / 6 || work > (1L << 40))
            break;
        work *= 2;
    }
    double best = 0.0;
    for (int round = 0; round < 3; round++) {
        double t0 = omp_get_wtime();
        float total = 0.0f;
#pragma omp parallel num_threads(threads) reduction(+ : total)
        total += run(work);
        double dt = omp_get_wtime() - t0;
        volatile float sink = total;
        (void)sink;
        double flops = flops_per_unit * (double)work * threads;
        if (flops / dt > best)
            best = flops / dt;
    }
    return best / 1e9;
}

double cv_fma_peak(int threads, double seconds, int bits, int *vector_bits)
{
    __builtin_cpu_init();
    const int widest = __builtin_cpu_supports("avx512f") ? 512
                       : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
                           ? 256
                           : 32;
    if (bits == 0) /* the width of the GEMM kernels in use, else the widest */
        bits = cv_kernel_vector_bits();
    if (bits == 0)
        bits = widest;
    if ((bits != 512 && bits != 256 && bits != 32) || bits > widest)
        return -1.0;
    if (vector_bits)
        *vector_bits = bits;
    float (*loop)(long) = bits == 512   ? fma_loop_512
                          : bits == 256 ? fma_loop_256
                                        : fma_loop_scalar;
    return best_rate(usable_threads(threads), seconds, loop, 2.0 * CHAINS * (bits / 32));
}

/* ---- the GEMM kernel on operands in L1 --------------------------------------------
 * The register-blocked kernel that every packed GEMM of the core runs (cv_gemm_small on
 * one panel of cv_gemm_panel_width columns: 64 with AVX-512, 16 with AVX2), on a block of
 * KERNEL_ROWS rows of A and a k-deep panel of B that together stay in a 32 KiB L1: what the
 * kernel reaches when no cache miss slows it, the ceiling of every GEMM built on it. */
#define KERNEL_ROWS 24

/* A and the panel of B in at most KERNEL_AB floats (24 KiB), k a multiple of 16. */
#define KERNEL_AB 6144

static ptrdiff_t kernel_depth(ptrdiff_t panel)
{
    return KERNEL_AB / (panel + KERNEL_ROWS) / 16 * 16;
}

static float kernel_loop(long calls)
{
    /* A, then B, then C (at most 64 columns), on the thread's stack: nothing to fail */
    float buf[KERNEL_AB + KERNEL_ROWS * 64] __attribute__((aligned(64)));
    const ptrdiff_t n = cv_gemm_panel_width(), k = kernel_depth(n);
    float *A = buf, *B = A + KERNEL_ROWS * k, *C = B + k * n;
    for (ptrdiff_t i = 0; i < KERNEL_ROWS * k; i++)
        A[i] = 1e-3f * (float)(i % 7);
    for (ptrdiff_t i = 0; i < k * n; i++)
        B[i] = 1e-3f * (float)(i % 5);
    memset(C, 0, (size_t)(KERNEL_ROWS * n) * sizeof(float));
    for (long c = 0; c < calls; c++)
        cv_gemm_small(KERNEL_ROWS, n, k, A, k, 1, B, n, 1, C, n);
    return C[0];
}

double cv_gemm_kernel_peak(int threads, double seconds, int *vector_bits)
{
    const ptrdiff_t n = cv_gemm_panel_width();
    if (n == 0)
        return -1.0;
    if (vector_bits)
        *vector_bits = cv_kernel_vector_bits();
    return best_rate(usable_threads(threads), seconds, kernel_loop,
                     2.0 * KERNEL_ROWS * (double)n * (double)kernel_depth(n));
}
