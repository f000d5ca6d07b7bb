/* peak.c - the machine's FP32 FMA throughput, the limit benchmarks compare with.
 *
 * Each thread runs independent FMA chains (more chains than latency x FMA ports, so
 * the ports never wait) at one vector width: by default the width of the GEMM kernels
 * that run (512 bits with BLIS's skx set, 256 with haswell or the zen sets), so that a
 * CPU restricted to AVX2 (BLIS_ARCH_TYPE=haswell on an AVX-512 CPU) is measured against
 * what AVX2 code can reach there. */
#include <immintrin.h>
#include <omp.h>

#include "convirt.h"

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
    /* libgomp needs stack for every thread it starts (and ends the process when it
     * cannot have them): never more than the machine can run. */
    if (threads < 1)
        threads = 1;
    if (threads > cv_max_threads())
        threads = cv_max_threads();
    float (*loop)(long) = bits == 512   ? fma_loop_512
                          : bits == 256 ? fma_loop_256
                                        : fma_loop_scalar;

    /* Calibrate the iteration count on one thread, then time all threads together
     * and keep the best of three rounds. */
    long iterations = 1 << 16;
    for (;;) {
        double t0 = omp_get_wtime();
        volatile float sink = loop(iterations);
        (void)sink;
        double dt = omp_get_wtime() - t0;
        if (dt > seconds / 6 || iterations > (1L << 40))
            break;
        iterations *= 2;
    }
    double best = 0.0;
    for (int round = 0; round < 3; round++) {
        double t0 = omp_get_wtime();
        float total = 0.0f;
#pragma omp parallel num_threads(threads) reduction(+ : total)
        total += loop(iterations);
        double dt = omp_get_wtime() - t0;
        volatile float sink = total;
        (void)sink;
        double flops = 2.0 * CHAINS * (bits / 32) * (double)iterations * threads;
        if (flops / dt > best)
            best = flops / dt;
    }
    return best / 1e9;
}
