/* random.h - a counter-based random generator.
 *
 * Every random number is a pure function of (seed, stream, index): no state is
 * carried from one draw to the next, so results do not depend on the number of
 * threads or on the order in which work is done. Streams name what the numbers are
 * for (a step, a sample, a parameter tensor); indices count within a stream. */
#ifndef CONVIRT_RANDOM_H
#define CONVIRT_RANDOM_H

#include <math.h>
#include <stdint.h>

/* SplitMix64's finaliser: a bijective mix with good avalanche. */
static inline uint64_t cv_mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* 64 random bits for (seed, stream, index). */
static inline uint64_t cv_random_bits(uint64_t seed, uint64_t stream, uint64_t index)
{
    uint64_t x = cv_mix64(seed + 0x9e3779b97f4a7c15ULL);
    x = cv_mix64(x ^ (stream + 0x632be59bd9b4e019ULL));
    return cv_mix64(x ^ (index * 0x9e3779b97f4a7c15ULL + 0x85ebca6b0bd5d4c1ULL));
}

/* Uniform in [0, 1) with 53 random bits. */
static inline double cv_random_uniform(uint64_t seed, uint64_t stream, uint64_t index)
{
    return (double)(cv_random_bits(seed, stream, index) >> 11) * 0x1.0p-53;
}

/* Standard normal (Box-Muller on two uniforms of the same index). */
static inline double cv_random_normal(uint64_t seed, uint64_t stream, uint64_t index)
{
    uint64_t bits = cv_random_bits(seed, stream, index);
    double u1 = ((double)(bits >> 11) + 0.5) * 0x1.0p-53; /* (0, 1) */
    double u2 = (double)(cv_mix64(bits) >> 11) * 0x1.0p-53;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

#endif
