/* gemm.c - the one file that includes blis.h.
 *
 * It decides four things for the whole core:
 *   1. which BLIS sub-configuration (kernel set) runs, before BLIS initialises;
 *   2. how many threads a GEMM gets (all of them from serial code, one inside the
 *      core's own parallel loops: never nested);
 *   3. the strided sgemm every layer calls;
 *   4. where BLIS is not worth its packing: convirt's own register-blocked kernel
 *      (AVX-512 or AVX2 + FMA, the width of the kernel set) reads the small GEMMs of a
 *      layer's tiles in place (cv_gemm_tile), and runs the larger ones on panels of B
 *      packed once per GEMM (cv_gemm_packed, cv_pack_b, cv_tiles_b); BLIS keeps the
 *      rest (alpha or beta other than 1 and 0, strided C, older CPUs).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <blis.h>
#include <omp.h>

#include "core.h"

#ifndef CV_BLIS_CONFIGS
#define CV_BLIS_CONFIGS "" /* unknown: the build could not read BLIS's config.mk */
#endif
#ifndef CV_BUILD_CFLAGS
#define CV_BUILD_CFLAGS "unknown"
#endif

/* ---- kernel choice --------------------------------------------------------- */

typedef struct {
    const char *name;
    arch_t id;
} arch_name;

/* Every x86-64 sub-configuration of BLIS 0.9 with the enum value of this blis.h. */
static const arch_name x86_archs[] = {
    {"skx", BLIS_ARCH_SKX},
    {"knl", BLIS_ARCH_KNL},
    {"haswell", BLIS_ARCH_HASWELL},
    {"sandybridge", BLIS_ARCH_SANDYBRIDGE},
    {"penryn", BLIS_ARCH_PENRYN},
    {"zen3", BLIS_ARCH_ZEN3},
    {"zen2", BLIS_ARCH_ZEN2},
    {"zen", BLIS_ARCH_ZEN},
    {"excavator", BLIS_ARCH_EXCAVATOR},
    {"steamroller", BLIS_ARCH_STEAMROLLER},
    {"piledriver", BLIS_ARCH_PILEDRIVER},
    {"bulldozer", BLIS_ARCH_BULLDOZER},
    {"generic", BLIS_ARCH_GENERIC},
};
#define N_ARCHS ((int)(sizeof x86_archs / sizeof x86_archs[0]))

static struct {
    int initialised;
    int threads;
    int cores;
    int forked;       /* this process is a child forked after cv_init: one thread only */
    int kernel_width; /* convirt's own GEMM kernel: 16 (AVX-512), 8 (AVX2), 0 (none) */
    arch_t arch;
    char reason[512];
    char features[256];
} state;

static int cpu_has_avx512(void)
{
    /* BLIS's skx kernels use AVX-512 F, DQ, BW and VL. libgcc's checks include the
     * OS having enabled the zmm state (XCR0). */
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}

static int cpu_has_avx2_fma(void)
{
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

/* Can this CPU execute the kernels of sub-configuration `name`? */
static int cpu_runs(const char *name)
{
    if (!strcmp(name, "skx"))
        return cpu_has_avx512();
    if (!strcmp(name, "knl"))
        return cpu_has_avx512() && __builtin_cpu_supports("avx512er");
    if (!strcmp(name, "haswell") || !strncmp(name, "zen", 3))
        return cpu_has_avx2_fma();
    if (!strcmp(name, "sandybridge"))
        return __builtin_cpu_supports("avx");
    if (!strcmp(name, "penryn"))
        return __builtin_cpu_supports("ssse3");
    if (!strcmp(name, "bulldozer"))
        return __builtin_cpu_supports("avx") && __builtin_cpu_supports("fma4");
    if (!strcmp(name, "piledriver") || !strcmp(name, "steamroller") ||
        !strcmp(name, "excavator"))
        return __builtin_cpu_supports("fma") && __builtin_cpu_supports("fma4");
    return !strcmp(name, "generic");
}

static int build_has(const char *name)
{
    const char *list = CV_BLIS_CONFIGS;
    size_t len = strlen(name);
    for (const char *p = strstr(list, name); p; p = strstr(p + 1, name)) {
        int starts = p == list || p[-1] == ' ';
        int ends = p[len] == '\0' || p[len] == ' ';
        if (starts && ends)
            return 1;
    }
    return 0;
}

static const arch_name *arch_by_name(const char *name)
{
    for (int i = 0; i < N_ARCHS; i++)
        if (!strcmp(x86_archs[i].name, name))
            return &x86_archs[i];
    return NULL;
}

static const arch_name *arch_by_id(long id)
{
    for (int i = 0; i < N_ARCHS; i++)
        if ((long)x86_archs[i].id == id)
            return &x86_archs[i];
    return NULL;
}

/* Fastest first. On AMD the zen blocksizes suit the cache sizes better. */
static const char *const rank_amd[] = {"skx",     "zen3",        "zen2",   "zen",
                                       "haswell", "sandybridge", "penryn", "generic"};
static const char *const rank_other[] = {"skx", "haswell",     "zen3",   "zen2",
                                         "zen", "sandybridge", "penryn", "generic"};

static const arch_name *choose_arch(void)
{
    int amd = __builtin_cpu_is("amd");
    const char *const *rank = amd ? rank_amd : rank_other;
    for (int i = 0; i < 8; i++)
        if (build_has(rank[i]) && cpu_runs(rank[i]))
            return arch_by_name(rank[i]);
    return NULL;
}

/* Interpret the user's BLIS_ARCH_TYPE (a number, or a name as a convenience).
 * Returns the arch, or NULL with *why filled when BLIS would abort or crash on it. */
static const arch_name *user_arch(const char *value, char *why, size_t why_len)
{
    char *end;
    long id = strtol(value, &end, 10);
    const arch_name *arch = (*value && *end == '\0') ? arch_by_id(id) : arch_by_name(value);
    if (!arch) {
        snprintf(why, why_len, "BLIS_ARCH_TYPE=%s names no x86-64 sub-configuration",
                 value);
        return NULL;
    }
    if (*CV_BLIS_CONFIGS && !build_has(arch->name)) {
        snprintf(why, why_len, "BLIS_ARCH_TYPE=%s (%s) is not in this BLIS build (%s)",
                 value, arch->name, CV_BLIS_CONFIGS);
        return NULL;
    }
    if (!cpu_runs(arch->name)) {
        snprintf(why, why_len, "BLIS_ARCH_TYPE=%s (%s) needs instructions this CPU lacks",
                 value, arch->name);
        return NULL;
    }
    return arch;
}

static int usable_cores(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        return CPU_COUNT(&set);
    return omp_get_num_procs();
}

size_t cv_physical_memory(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? (size_t)pages * (size_t)page : 0;
}

static void forked_child(void);

static void describe_cpu(void)
{
    snprintf(state.features, sizeof state.features,
             "vendor=%s avx512(f,dq,bw,vl)=%s avx2=%s fma=%s avx=%s",
             __builtin_cpu_is("amd")     ? "AMD"
             : __builtin_cpu_is("intel") ? "Intel"
                                         : "other",
             cpu_has_avx512() ? "yes" : "no", __builtin_cpu_supports("avx2") ? "yes" : "no",
             __builtin_cpu_supports("fma") ? "yes" : "no",
             __builtin_cpu_supports("avx") ? "yes" : "no");
}

/* convirt's own GEMM kernel goes with the kernel set, so that choosing a set (e.g.
 * BLIS_ARCH_TYPE=haswell on an AVX-512 CPU, as the tests do) runs and tests both at
 * its width: AVX-512 with skx and knl, AVX2 + FMA with haswell and the zen sets, the
 * widest the CPU runs with generic (BLIS's fallback on CPUs it does not know), none
 * with the older sets. */
static int own_kernel_width(void)
{
    switch (state.arch) {
    case BLIS_ARCH_SKX:
    case BLIS_ARCH_KNL:
        return cpu_has_avx512() ? 16 : 0;
    case BLIS_ARCH_HASWELL:
    case BLIS_ARCH_ZEN:
    case BLIS_ARCH_ZEN2:
    case BLIS_ARCH_ZEN3:
        return cpu_has_avx2_fma() ? 8 : 0;
    case BLIS_ARCH_GENERIC:
        return cpu_has_avx512() ? 16 : cpu_has_avx2_fma() ? 8 : 0;
    default:
        return 0;
    }
}

int cv_kernel_vector_bits(void)
{
    return state.initialised ? 32 * own_kernel_width() : 0;
}

/* Which build of the element-wise loops runs (core.h's CV_VECTORIZE): the clone the
 * loader picks, or the one level a CV_VECTOR_LEVEL build has. */
static const char *vector_loops(void)
{
#if !defined(__x86_64__) || !defined(__GNUC__) || defined(__clang__)
    return "the compiler's default";
#elif !defined(CV_VECTOR_LEVEL)
    return __builtin_cpu_supports("x86-64-v4")   ? "x86-64-v4 (AVX-512)"
           : __builtin_cpu_supports("x86-64-v3") ? "x86-64-v3 (AVX2 + FMA)"
                                                 : "x86-64 (baseline)";
#elif CV_VECTOR_LEVEL == 3
    return "x86-64-v3 (AVX2 + FMA), the only level this build has (CV_VECTOR_LEVEL=3)";
#else
    return "x86-64 (baseline), the only level this build has (CV_VECTOR_LEVEL=1)";
#endif
}

int cv_wide_lanes = 0;

cv_status cv_init(void)
{
    if (state.initialised)
        return CV_OK;
    __builtin_cpu_init();
#ifdef CV_VECTOR_CLONES
    cv_wide_lanes = __builtin_cpu_supports("x86-64-v4") != 0;
#endif
#if defined(CV_VECTOR_LEVEL) && CV_VECTOR_LEVEL == 3
    if (!__builtin_cpu_supports("x86-64-v3"))
        return cv_fail(CV_ERR_STATE, "this build of convirt's core was compiled for "
                                     "x86-64-v3 (AVX2 + FMA) alone (CV_VECTOR_LEVEL=3), "
                                     "which this CPU does not run: rebuild without it");
#endif
    describe_cpu();

    const char *env = getenv("BLIS_ARCH_TYPE");
    const arch_name *chosen = NULL;
    char why[256] = "";
    if (env && *env) {
        chosen = user_arch(env, why, sizeof why);
        if (chosen) {
            snprintf(state.reason, sizeof state.reason,
                     "set by the user: BLIS_ARCH_TYPE=%s", env);
        }
    }
    if (!chosen) {
        if (!*CV_BLIS_CONFIGS) {
            /* Without the build's list a choice could name a missing sub-configuration,
             * which makes BLIS abort: leave it to BLIS's own detection. */
            unsetenv("BLIS_ARCH_TYPE");
            snprintf(state.reason, sizeof state.reason,
                     "%s%sBLIS's own CPU detection (convirt could not read which "
                     "sub-configurations this BLIS build contains)",
                     why, *why ? "; ignored it and used " : "");
        } else {
            chosen = choose_arch();
            snprintf(state.reason, sizeof state.reason,
                     "%s%schosen by convirt: the fastest sub-configuration in this BLIS "
                     "build that this CPU runs (%s)",
                     why, *why ? "; ignored it, " : "", state.features);
        }
    }
    if (chosen) {
        char number[16];
        snprintf(number, sizeof number, "%d", (int)chosen->id);
        setenv("BLIS_ARCH_TYPE", number, 1);
    }
    bli_init();
    state.arch = bli_arch_query_id();
    if (chosen && state.arch != chosen->id) {
        /* Someone initialised BLIS in this process before us. */
        size_t used = strlen(state.reason);
        snprintf(state.reason + used, sizeof state.reason - used,
                 "; but BLIS was already initialised in this process with %s",
                 bli_arch_string(state.arch));
    }
    state.cores = usable_cores();
    /* OMP_NUM_THREADS may ask for more than the machine can run: keep to the limit. */
    state.threads = omp_get_max_threads();
    if (state.threads > cv_max_threads())
        state.threads = cv_max_threads();
    /* BLIS's own setting stays -1 (unset) unless BLIS_NUM_THREADS says otherwise, which
     * threadpoolctl reads as 1 and restores as 1 when a `threadpool_limits` block ends:
     * the core would then run on one thread for good. Give it the core's count. */
    if (bli_thread_get_num_threads() < 1)
        bli_thread_set_num_threads(state.threads);
    pthread_atfork(NULL, NULL, forked_child);
    (void)cv_get_winograd(); /* reads CONVIRT_WINOGRAD once, before any thread asks */
    const char *small = getenv("CONVIRT_SMALL_GEMM");
    state.kernel_width =
        small && small[0] == '0' && small[1] == '\0' ? 0 : own_kernel_width();
    state.initialised = 1;
    return CV_OK;
}

/* ---- threads ----------------------------------------------------------------- */

/* In the child of a fork (only the forking thread exists there). libgomp keeps the
 * parent's thread pool in its thread-local state, and a parallel region of more than
 * one thread would wait forever for pool threads that were not copied; a region of one
 * thread never touches the pool. Every parallel region of the core and every GEMM takes
 * its thread count from cv_get_num_threads(), so one store makes the child safe. Only
 * plain stores here: the child of a multi-threaded process may call little else. */
static void forked_child(void)
{
    state.forked = 1;
    state.threads = 1;
}

int cv_max_threads(void)
{
    if (state.forked)
        return 1;
    int cores = state.cores > 0 ? state.cores : usable_cores();
    return (cores > 0 ? cores : 1) * CV_THREADS_PER_CORE;
}

cv_status cv_set_num_threads(int n)
{
    if (n < 1 || n > cv_max_threads()) {
        if (state.forked)
            return cv_fail(CV_ERR_VALUE,
                           "this is a forked child process, where the core runs on 1 "
                           "thread (libgomp cannot start threads in the child of a "
                           "process whose OpenMP threads ran), got %d; start workers "
                           "with the 'spawn' or 'forkserver' method to use more",
                           n);
        return cv_fail(CV_ERR_VALUE,
                       "the number of threads must be 1..%d (%d per usable core, %d "
                       "cores), got %d",
                       cv_max_threads(), CV_THREADS_PER_CORE, state.cores, n);
    }
    state.threads = n;
    omp_set_num_threads(n);
    bli_thread_set_num_threads(n);
    return CV_OK;
}

/* The thread count for work started from the calling thread: the package setting,
 * lowered by an OpenMP or BLIS limit set from outside (OMP_NUM_THREADS,
 * threadpoolctl). */
int cv_get_num_threads(void)
{
    int n = state.threads > 0 ? state.threads : 1;
    int omp = omp_get_max_threads();
    if (omp < n)
        n = omp;
    int blis = (int)bli_thread_get_num_threads();
    if (blis > 0 && blis < n)
        n = blis;
    return n;
}

static const char *library_of(void *symbol)
{
    Dl_info info;
    if (dladdr(symbol, &info) && info.dli_fname)
        return info.dli_fname;
    return "unknown";
}

void cv_get_config(cv_config *config)
{
    config->blis_library = library_of((void *)bli_init);
    config->openmp_library = library_of((void *)omp_get_max_threads);
    config->blis_version = bli_info_get_version_str();
    config->blis_arch = bli_arch_string(state.arch);
    config->blis_arch_id = (int)state.arch;
    config->blis_arch_reason = state.reason;
    config->blis_configs = *CV_BLIS_CONFIGS ? CV_BLIS_CONFIGS : "unknown";
    config->cpu_features = state.features;
    config->blis_openmp = (int)bli_info_get_enable_openmp();
    config->num_threads = cv_get_num_threads();
    config->num_cores = state.cores;
    config->openmp_version = _OPENMP;
#ifdef __VERSION__
    config->compiler = __VERSION__;
#else
    config->compiler = "unknown";
#endif
    config->cflags = CV_BUILD_CFLAGS;
    config->vector_loops = vector_loops();
    config->gemm_kernel = state.kernel_width == 16  ? "avx512"
                          : state.kernel_width == 8 ? "avx2"
                                                    : "none";
}

/* ---- GEMM -------------------------------------------------------------------- */

void cv_gemm(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha, const float *A,
             ptrdiff_t rsa, ptrdiff_t csa, const float *B, ptrdiff_t rsb, ptrdiff_t csb,
             float beta, float *C, ptrdiff_t rsc, ptrdiff_t csc)
{
    if (m <= 0 || n <= 0)
        return;
    /* BLIS's kernels are only safe with non-negative strides (some sub-configurations
     * read and write outside the matrix with a negative one). A negative stride turns
     * positive by walking its dimension backwards, which reverses two operands at once:
     * along m the rows of A and C, along n the columns of B and C, along k the columns
     * of A and the rows of B. When a dimension's two strides differ in sign no walk
     * makes both positive, and the plain loop computes it (NumPy views with negative
     * strides only: the core's own calls never take that path). */
    if (rsa < 0 && rsc < 0) {
        A += (m - 1) * rsa, C += (m - 1) * rsc;
        rsa = -rsa, rsc = -rsc;
    }
    if (csb < 0 && csc < 0) {
        B += (n - 1) * csb, C += (n - 1) * csc;
        csb = -csb, csc = -csc;
    }
    if (k > 0 && csa < 0 && rsb < 0) {
        A += (k - 1) * csa, B += (k - 1) * rsb;
        csa = -csa, rsb = -rsb;
    }
    if (rsa < 0 || csa < 0 || rsb < 0 || csb < 0 || rsc < 0 || csc < 0) {
        cv_gemm_reference(m, n, k, alpha, A, rsa, csa, B, rsb, csb, beta, C, rsc, csc);
        return;
    }
    rntm_t rntm = BLIS_RNTM_INITIALIZER;
    bli_rntm_set_num_threads(omp_in_parallel() ? 1 : cv_get_num_threads(), &rntm);
    /* BLIS's typed API takes non-const pointers but does not write A or B. */
    bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, m, n, k, &alpha, (float *)A, rsa,
                 csa, (float *)B, rsb, csb, &beta, C, rsc, csc, NULL, &rntm);
}

void cv_gemm_nn(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha, const float *A,
                ptrdiff_t lda, const float *B, ptrdiff_t ldb, float beta, float *C,
                ptrdiff_t ldc)
{
    cv_gemm(m, n, k, alpha, A, lda, 1, B, ldb, 1, beta, C, ldc, 1);
}

void cv_gemm_nt(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha, const float *A,
                ptrdiff_t lda, const float *B, ptrdiff_t ldb, float beta, float *C,
                ptrdiff_t ldc)
{
    cv_gemm(m, n, k, alpha, A, lda, 1, B, 1, ldb, beta, C, ldc, 1);
}

void cv_gemm_tn(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha, const float *A,
                ptrdiff_t lda, const float *B, ptrdiff_t ldb, float beta, float *C,
                ptrdiff_t ldc)
{
    cv_gemm(m, n, k, alpha, A, 1, lda, B, ldb, 1, beta, C, ldc, 1);
}

/* ---- small GEMMs, read in place ---------------------------------------------
 * An RB x (NV W) block of C lives in NV x RB vector registers while the k products
 * stream through it: per step, NV vectors of a row of B and RB broadcasts of A. With
 * AVX-512 (32 registers) 6 x 64 floats, 24 accumulators, and for 32 columns (attention's
 * heads) 12 x 32; with AVX2 (16) 6 x 16, 12. No packing: B's rows are read where they
 * are (a few KiB per step, in L1 for the 64-256 columns it is used for), A's elements
 * one by one. The rows past the last full block go in blocks of 8, 4, 2 and 1 rows,
 * each with its accumulators in registers too. The products are summed from zero and C
 * added to the sum at the end (accumulate), as BLIS's kernels do, so that C += A B
 * twice is C + 2 (A B) whenever A B is one call's sum; every element is the same sum in
 * the same order whichever block it falls in, and whatever order the blocks run in.
 * ROWS_OUTER (AVX2) runs each full 6-row block across all full column blocks before
 * the next rows, so that its rows of A stay in L1 across the n / 16 blocks; column
 * blocks outside re-read all of A (a tile straight from memory) once per 16 columns.
 * On a Zen 4 restricted to AVX2 (2026-12-02, 2 threads, alternating in one process)
 * that took ResNet-50's 1x1 convolutions from 256 channels to 64 and to 128 from 109
 * and 120 to 137 and 134 GFLOP/s (the others moved 0-8%, within the noise) and its
 * training step from 4.71-5.05 to 4.41-4.71 s; with AVX-512 (one block for 64
 * columns) the same order gained nothing measurable.
 * Each block's rows of C are prefetched (for writing) before its k steps: C is only
 * touched after them, and a block of a large C (every slab of k after the first adds
 * to it) is usually out of cache by then, a miss per row that nothing else hides. On
 * the Zen 4 (2026-12-02, alternating in one process, medians) that took the loss at
 * N = 1024 1.06-1.10x faster on AVX2 and 1.01-1.03x on AVX-512, the ResNet-50
 * training step 1.09-1.11x (AVX2) and 1.03x, BERT-base training 1.01-1.07x and
 * 1.06x; nothing was slower over 40 alternating rounds (one GEMM read 0.93x over 20).
 * On packed panels (panels_times), the first block of rows also prefetches the next
 * panel into L2, a row of it per step of k: a panel is used by every block of rows of A,
 * and the first one otherwise pulls it from L3 (all the panels of a slab of BERT's
 * 3072-column GEMMs are 4.5 MiB) faster than the hardware prefetchers fetch it. On the
 * Zen 4 restricted to AVX2 (2026-12-02, alternating in one process, medians) that took
 * BERT's feed-forward GEMMs from 76-83% to 89-90% of the peak and the BERT-base and
 * ResNet-50 training steps 1.07-1.09x and 1.07x faster (MiniLM 1.06x, the loss
 * 1.01x); with AVX-512 (panels of 64 columns, in L2 anyway) it changed nothing
 * measurable (0.98-1.04x). The sums are the same.
 * The k loop is unrolled twice: GCC then issues the next step's loads of B among the
 * current step's FMAs. On an Intel Xeon with AVX-512 (2026-12-03, 2 threads, the
 * packed path alternating with the rolled loop in separate processes, medians of 3-4
 * rounds) BERT's, MiniLM's and ResNet-50's GEMMs ran 3-7% faster, the loss's 1024 x
 * 1024 x 512 0-2%; with AVX2 nothing moved (0.99-1.02x); four times was no faster
 * than twice. In a stand-alone copy of the kernel on one thread, with 384 steps of B
 * from L2, rolled 172 and unrolled 184 GFLOP/s of a 213 peak. Same sums. */
#define SMALL_GEMM_KERNEL(NAME, TARGET, W, NV, RB, ROWS_OUTER)                             \
    typedef float NAME##_vec __attribute__((vector_size(4 * W), aligned(4), may_alias));   \
    /* R rows (a constant where it is inlined, at most RB or 8) of NV vectors; PF (a       \
     * constant) says whether the k steps prefetch pf's rows */                            \
    __attribute__((target(TARGET), always_inline)) static inline void NAME##_block(        \
        const int R, const int PF, ptrdiff_t k, const float *a, ptrdiff_t rsa,             \
        ptrdiff_t csa, const float *b, ptrdiff_t ldb, int accumulate, float *c,            \
        ptrdiff_t ldc, const float *pf)                                                    \
    {                                                                                      \
        typedef NAME##_vec vec;                                                            \
        vec acc[RB > 8 ? RB : 8][NV];                                                      \
        /* C's block is read or written only after the k steps: fetch it now */            \
        for (int r = 0; r < R; r++) {                                                      \
            for (int v = 0; v < NV * W; v += 16)                                           \
                __builtin_prefetch(c + r * ldc + v, 1);                                    \
            __builtin_prefetch(c + r * ldc + NV * W - 1, 1);                               \
        }                                                                                  \
        for (int r = 0; r < R; r++)                                                        \
            for (int v = 0; v < NV; v++)                                                   \
                acc[r][v] = (vec){0};                                                      \
        _Pragma("GCC unroll 2") for (ptrdiff_t p = 0; p < k; p++, b += ldb)                \
        {                                                                                  \
            vec bv[NV];                                                                    \
            if (PF)                                                                        \
                for (int v = 0; v < NV * W; v += 16)                                       \
                    __builtin_prefetch(pf + p * ldb + v, 0, 2);                            \
            for (int v = 0; v < NV; v++)                                                   \
                bv[v] = *(const vec *)(b + v * W);                                         \
            for (int r = 0; r < R; r++) {                                                  \
                const float x = a[r * rsa + p * csa];                                      \
                for (int v = 0; v < NV; v++)                                               \
                    acc[r][v] += x * bv[v];                                                \
            }                                                                              \
        }                                                                                  \
        for (int r = 0; r < R; r++)                                                        \
            for (int v = 0; v < NV; v++) {                                                 \
                float *cp = c + r * ldc + v * W;                                           \
                if (accumulate)                                                            \
                    acc[r][v] += *(vec *)cp;                                               \
                *(vec *)cp = acc[r][v];                                                    \
            }                                                                              \
    }                                                                                      \
    /* The k loop of R rows (R a constant), compiled out of line per R, as four loops:     \
     * A's rows contiguous (csa = 1, every caller but the transposed ones) or not, each    \
     * with the prefetches of pf or without. Inlined into the whole kernel, with csa and   \
     * pf variables, GCC 12 ran short of registers: it reloaded row offsets from the       \
     * stack and copied an accumulator on every step (an Intel Xeon with AVX-512,          \
     * 2026-12-03, 6 x 64 x 2048 from L1, one thread: 160-167 GFLOP/s before, 173-175      \
     * after). Same products in the same order. */                                         \
    SMALL_GEMM_ROWS(NAME, TARGET, RB, rb)                                                  \
    SMALL_GEMM_ROWS(NAME, TARGET, 8, 8)                                                    \
    SMALL_GEMM_ROWS(NAME, TARGET, 4, 4)                                                    \
    SMALL_GEMM_ROWS(NAME, TARGET, 2, 2)                                                    \
    SMALL_GEMM_ROWS(NAME, TARGET, 1, 1)                                                    \
    __attribute__((target(TARGET), always_inline)) static inline void NAME##_rows(         \
        const int R, ptrdiff_t k, const float *a, ptrdiff_t rsa, ptrdiff_t csa,            \
        const float *b, ptrdiff_t ldb, int accumulate, float *c, ptrdiff_t ldc,            \
        const float *pf)                                                                   \
    {                                                                                      \
        if (R == RB)                                                                       \
            NAME##_rows_rb(k, a, rsa, csa, b, ldb, accumulate, c, ldc, pf);                \
        else if (R == 8)                                                                   \
            NAME##_rows_8(k, a, rsa, csa, b, ldb, accumulate, c, ldc, pf);                 \
        else if (R == 4)                                                                   \
            NAME##_rows_4(k, a, rsa, csa, b, ldb, accumulate, c, ldc, pf);                 \
        else if (R == 2)                                                                   \
            NAME##_rows_2(k, a, rsa, csa, b, ldb, accumulate, c, ldc, pf);                 \
        else                                                                               \
            NAME##_rows_1(k, a, rsa, csa, b, ldb, accumulate, c, ldc, pf);                 \
    }                                                                                      \
    __attribute__((target(TARGET))) static void NAME(                                      \
        ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t rsa,              \
        ptrdiff_t csa, const float *B, ptrdiff_t ldb, int accumulate, float *C,            \
        ptrdiff_t ldc, const float *pf)                                                    \
    {                                                                                      \
        typedef NAME##_vec vec;                                                            \
        const ptrdiff_t full = n / (NV * W) * (NV * W);                                    \
        if (ROWS_OUTER)                                                                    \
            for (ptrdiff_t i0 = 0; m - i0 >= RB; i0 += RB)                                 \
                for (ptrdiff_t j0 = 0; j0 < full; j0 += NV * W)                            \
                    NAME##_rows(RB, k, A + i0 * rsa, rsa, csa, B + j0, ldb, accumulate,    \
                                C + i0 * ldc + j0, ldc, i0 == 0 && j0 == 0 ? pf : NULL);   \
        for (ptrdiff_t j0 = 0; j0 < n; j0 += NV * W) {                                     \
            const int nv = n - j0 >= NV * W ? NV : (int)((n - j0) / W);                    \
            if (nv == NV) {                                                                \
                ptrdiff_t i0 = ROWS_OUTER ? m / RB * RB : 0;                               \
                for (; m - i0 >= RB; i0 += RB)                                             \
                    NAME##_rows(RB, k, A + i0 * rsa, rsa, csa, B + j0, ldb, accumulate,    \
                                C + i0 * ldc + j0, ldc, i0 == 0 && j0 == 0 ? pf : NULL);   \
                if (RB > 8 && m - i0 >= 8) {                                               \
                    NAME##_rows(8, k, A + i0 * rsa, rsa, csa, B + j0, ldb, accumulate,     \
                                C + i0 * ldc + j0, ldc, NULL);                             \
                    i0 += 8;                                                               \
                }                                                                          \
                if (RB > 4 && m - i0 >= 4) {                                               \
                    NAME##_rows(4, k, A + i0 * rsa, rsa, csa, B + j0, ldb, accumulate,     \
                                C + i0 * ldc + j0, ldc, NULL);                             \
                    i0 += 4;                                                               \
                }                                                                          \
                if (m - i0 >= 2) {                                                         \
                    NAME##_rows(2, k, A + i0 * rsa, rsa, csa, B + j0, ldb, accumulate,     \
                                C + i0 * ldc + j0, ldc, NULL);                             \
                    i0 += 2;                                                               \
                }                                                                          \
                if (m - i0 >= 1)                                                           \
                    NAME##_rows(1, k, A + i0 * rsa, rsa, csa, B + j0, ldb, accumulate,     \
                                C + i0 * ldc + j0, ldc, NULL);                             \
                continue;                                                                  \
            }                                                                              \
            /* the last, partial block of columns */                                       \
            for (ptrdiff_t i0 = 0; i0 < m; i0 += RB) {                                     \
                const int rb = m - i0 >= RB ? RB : (int)(m - i0);                          \
                vec acc[RB][NV];                                                           \
                for (int r = 0; r < RB; r++)                                               \
                    for (int v = 0; v < NV; v++)                                           \
                        acc[r][v] = (vec){0};                                              \
                const float *a = A + i0 * rsa;                                             \
                if (rb == RB) {                                                            \
                    for (ptrdiff_t p = 0; p < k; p++) {                                    \
                        vec b[NV];                                                         \
                        for (int v = 0; v < NV; v++)                                       \
                            if (v < nv)                                                    \
                                b[v] = *(const vec *)(B + p * ldb + j0 + v * W);           \
                        for (int r = 0; r < RB; r++) {                                     \
                            const float x = a[r * rsa + p * csa];                          \
                            for (int v = 0; v < NV; v++)                                   \
                                if (v < nv)                                                \
                                    acc[r][v] += x * b[v];                                 \
                        }                                                                  \
                    }                                                                      \
                } else {                                                                   \
                    for (ptrdiff_t p = 0; p < k; p++)                                      \
                        for (int v = 0; v < nv; v++) {                                     \
                            vec b;                                                         \
                            b = *(const vec *)(B + p * ldb + j0 + v * W);                  \
                            for (int r = 0; r < rb; r++)                                   \
                                acc[r][v] += a[r * rsa + p * csa] * b;                     \
                        }                                                                  \
                }                                                                          \
                for (int r = 0; r < rb; r++)                                               \
                    for (int v = 0; v < nv; v++) {                                         \
                        float *c = C + (i0 + r) * ldc + j0 + v * W;                        \
                        if (accumulate)                                                    \
                            acc[r][v] += *(vec *)c;                                        \
                        *(vec *)c = acc[r][v];                                             \
                    }                                                                      \
            }                                                                              \
        }                                                                                  \
    }

/* NAME's k loop of R rows (R a constant), out of line as NAME##_rows_SUFFIX, for
 * SMALL_GEMM_KERNEL's _rows (which says why); a macro of its own, as a macro cannot
 * define one */
#define SMALL_GEMM_ROWS(NAME, TARGET, R, SUFFIX)                                           \
    __attribute__((target(TARGET), noinline)) static void NAME##_rows_##SUFFIX(            \
        ptrdiff_t k, const float *a, ptrdiff_t rsa, ptrdiff_t csa, const float *b,         \
        ptrdiff_t ldb, int accumulate, float *c, ptrdiff_t ldc, const float *pf)           \
    {                                                                                      \
        if (csa == 1 && pf)                                                                \
            NAME##_block(R, 1, k, a, rsa, 1, b, ldb, accumulate, c, ldc, pf);              \
        else if (csa == 1)                                                                 \
            NAME##_block(R, 0, k, a, rsa, 1, b, ldb, accumulate, c, ldc, NULL);            \
        else if (pf)                                                                       \
            NAME##_block(R, 1, k, a, rsa, csa, b, ldb, accumulate, c, ldc, pf);            \
        else                                                                               \
            NAME##_block(R, 0, k, a, rsa, csa, b, ldb, accumulate, c, ldc, NULL);          \
    }

SMALL_GEMM_KERNEL(small_gemm_avx512, "avx512f,fma", 16, 4, 6, 0)
SMALL_GEMM_KERNEL(small_gemm_avx512_32, "avx512f,fma", 16, 2, 12, 0)
SMALL_GEMM_KERNEL(small_gemm_avx2, "arch=haswell", 8, 2, 6, 1)

typedef void small_gemm_fn(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A,
                           ptrdiff_t rsa, ptrdiff_t csa, const float *B, ptrdiff_t ldb,
                           int accumulate, float *C, ptrdiff_t ldc, const float *pf);

/* The kernel for n columns on this CPU, or NULL. */
static small_gemm_fn *small_gemm_for(ptrdiff_t n)
{
    if (state.kernel_width == 16 && n == 32)
        return small_gemm_avx512_32;
    if (state.kernel_width == 16 && n % 16 == 0)
        return small_gemm_avx512;
    if (state.kernel_width >= 8 && n % 8 == 0)
        return small_gemm_avx2;
    return NULL;
}

int cv_gemm_small(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t rsa,
                  ptrdiff_t csa, const float *B, ptrdiff_t ldb, int accumulate, float *C,
                  ptrdiff_t ldc)
{
    if (n <= 0)
        return 0;
    small_gemm_fn *kernel = small_gemm_for(n);
    if (!kernel)
        return -1;
    kernel(m, n, k, A, rsa, csa, B, ldb, accumulate, C, ldc, NULL);
    return 0;
}

int cv_gemm_small_takes(ptrdiff_t n)
{
    return n > 0 && small_gemm_for(n) != NULL;
}

static small_gemm_fn *tile_kernel(ptrdiff_t n, ptrdiff_t k)
{
    if (k * n > CV_SMALL_B_FLOATS || n <= 0)
        return NULL;
    return small_gemm_for(n);
}

int cv_gemm_tile_is_small(ptrdiff_t n, ptrdiff_t k)
{
    return tile_kernel(n, k) != NULL;
}

void cv_gemm_tile(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t rsa,
                  ptrdiff_t csa, const float *B, ptrdiff_t ldb, int accumulate, float *C,
                  ptrdiff_t ldc)
{
    small_gemm_fn *kernel = m > 0 ? tile_kernel(n, k) : NULL;
    if (!kernel) {
        if (cv_gemm_packed(m, n, k, A, rsa, csa, B, ldb, 1, accumulate, C, ldc))
            cv_gemm(m, n, k, 1.0f, A, rsa, csa, B, ldb, 1, accumulate ? 1.0f : 0.0f, C, ldc,
                    1);
        return;
    }
    /* Each element of C is the same sum in the same order however the rows are split,
     * so that serial code may share them among threads and get the same bits. */
    const int threads = omp_in_parallel() ? 1 : cv_get_num_threads();
    const ptrdiff_t rows = (m + threads - 1) / threads;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && m >= 64)
    for (ptrdiff_t i0 = 0; i0 < m; i0 += rows) {
        const ptrdiff_t len = m - i0 < rows ? m - i0 : rows;
        kernel(len, n, k, A + i0 * rsa, rsa, csa, B, ldb, accumulate, C + i0 * ldc, ldc,
               NULL);
    }
}

/* ---- transposes -------------------------------------------------------------
 * 8 x 8 blocks through registers: eight rows in, three rounds of shuffles (pairs of
 * rows interleaved, then pairs of pairs, then 128-bit halves), eight columns out. The
 * blocks of a 64 x 64 panel keep its rows and columns in L1. */
typedef float vec8 __attribute__((vector_size(32), aligned(4)));
typedef int vec8i __attribute__((vector_size(32)));

static inline __attribute__((always_inline)) void
transpose8(float *dst, ptrdiff_t ldd, const float *src, ptrdiff_t lds, int accumulate)
{
    vec8 r[8], t[8], u[8];
    for (int i = 0; i < 8; i++)
        memcpy(&r[i], src + i * lds, sizeof(vec8));
    for (int i = 0; i < 8; i += 2) {
        t[i] = __builtin_shuffle(r[i], r[i + 1], (vec8i){0, 8, 1, 9, 4, 12, 5, 13});
        t[i + 1] = __builtin_shuffle(r[i], r[i + 1], (vec8i){2, 10, 3, 11, 6, 14, 7, 15});
    }
    for (int i = 0; i < 8; i += 4)
        for (int j = 0; j < 2; j++) {
            u[i + 2 * j] = __builtin_shuffle(t[i + j], t[i + j + 2],
                                             (vec8i){0, 1, 8, 9, 4, 5, 12, 13});
            u[i + 2 * j + 1] = __builtin_shuffle(t[i + j], t[i + j + 2],
                                                 (vec8i){2, 3, 10, 11, 6, 7, 14, 15});
        }
    /* u[j] holds column j of rows 0-3 in its low half, column j + 4 in its high half;
     * u[j + 4] the same for rows 4-7. */
    for (int j = 0; j < 4; j++) {
        vec8 lo = __builtin_shuffle(u[j], u[j + 4], (vec8i){0, 1, 2, 3, 8, 9, 10, 11});
        vec8 hi = __builtin_shuffle(u[j], u[j + 4], (vec8i){4, 5, 6, 7, 12, 13, 14, 15});
        if (accumulate) {
            vec8 d;
            memcpy(&d, dst + j * ldd, sizeof(vec8));
            lo += d;
            memcpy(&d, dst + (j + 4) * ldd, sizeof(vec8));
            hi += d;
        }
        memcpy(dst + j * ldd, &lo, sizeof(vec8));
        memcpy(dst + (j + 4) * ldd, &hi, sizeof(vec8));
    }
}

/* The panel of rows [i0, i1) and columns [j0, j1). */
CV_VECTORIZE static void transpose_panel(float *dst, ptrdiff_t ldd, const float *src,
                                         ptrdiff_t lds, ptrdiff_t i0, ptrdiff_t i1,
                                         ptrdiff_t j0, ptrdiff_t j1, int accumulate)
{
    const ptrdiff_t i8 = i0 + (i1 - i0) / 8 * 8, j8 = j0 + (j1 - j0) / 8 * 8;
    for (ptrdiff_t i = i0; i < i8; i += 8)
        for (ptrdiff_t j = j0; j < j8; j += 8)
            transpose8(dst + j * ldd + i, ldd, src + i * lds + j, lds, accumulate);
    for (ptrdiff_t i = i0; i < i1; i++) /* the edges: rows below i8, columns past j8 */
        for (ptrdiff_t j = i < i8 ? j8 : j0; j < j1; j++)
            dst[j * ldd + i] = src[i * lds + j] + (accumulate ? dst[j * ldd + i] : 0.0f);
}

#define TRANSPOSE_PANEL 64

void cv_transpose(float *dst, ptrdiff_t ldd, const float *src, ptrdiff_t lds,
                  ptrdiff_t rows, ptrdiff_t cols, int accumulate)
{
    const ptrdiff_t panels = (cols + TRANSPOSE_PANEL - 1) / TRANSPOSE_PANEL;
    const int threads = omp_in_parallel() ? 1 : cv_get_num_threads();
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * cols >= 65536)
    for (ptrdiff_t jp = 0; jp < panels; jp++) {
        const ptrdiff_t j0 = jp * TRANSPOSE_PANEL;
        const ptrdiff_t j1 = cols - j0 < TRANSPOSE_PANEL ? cols : j0 + TRANSPOSE_PANEL;
        for (ptrdiff_t i0 = 0; i0 < rows; i0 += TRANSPOSE_PANEL)
            transpose_panel(dst, ldd, src, lds, i0,
                            rows - i0 < TRANSPOSE_PANEL ? rows : i0 + TRANSPOSE_PANEL, j0,
                            j1, accumulate);
    }
}

/* ---- GEMMs on packed panels of B ----------------------------------------------
 * Past the small kernel's size, the same kernel runs on B copied into panels of one
 * slab of k (at most PACK_KC rows, slabs of equal depth) by one kernel width (64
 * columns with AVX-512, 16 with AVX2), each contiguous (up to 96 KiB with AVX-512, in
 * L2), while the kernel sweeps PACK_MC rows of A past it (with AVX-512, all of a
 * thread's rows past one chunk of panels before the next: PANEL_CHUNK_BYTES); A is read
 * in place, or a block at a time row-major when it is column-major. The depth was measured
 * on Zen 5 (one thread, BERT's, ResNet's and the loss's shapes): slabs of 128 -> 384 rows
 * took the GEMMs from 82-88% to 93-98% of the FMA peak (C is read and written once per
 * slab); 512 was no faster and slowed a column-major A. BLIS 0.9 packs both operands
 * at every call (on skx through a generic copy loop), so a GEMM cut into row tiles
 * packs all of B once per tile: here B can be packed once (cv_pack_b) for every tile
 * (cv_gemm_prepacked). Each element of C is C + S0 + S1 + ..., Si the sum of slab i's
 * products in order (as BLIS adds its kc slabs), the same however C is split: the
 * slabs follow k alone.
 *
 * Packed layout: slab s (rows [s kc, s kc + kc) of B, kc = slab_depth(k)) starts at
 * s kc npad (npad: n rounded up to panels); in it, panel q (columns [q pw, q pw + pw))
 * is kc' x pw, kc' the slab's own depth (the last may be shallower). */
#define PACK_KC 384
#define PACK_MC 72
/* cv_tiles_b_init_rows packs k <= PACK_KC_ROWS in one slab, for an A with contiguous
 * rows. On Zen 5 (1 and 2 threads, in-process A/B) the k = 512 GEMMs with a row-major A
 * ran 3-12% faster in one slab of 512 than in two of 256 (C read and written once), and
 * the loss at N = 4096 was faster in 5 of 5 alternating pairs (median 134 against 139
 * ms); a column-major A ran 15% slower, and ResNet-50's profile did not move. Only the
 * loss takes it: elsewhere the other sums would move trajectories for no gain measured. */
#define PACK_KC_ROWS 512

/* The depth of every slab but the last: k in the fewest slabs of at most PACK_KC rows,
 * as even as multiples of 8 make them. */
static ptrdiff_t slab_depth(ptrdiff_t k)
{
    const ptrdiff_t slabs = (k + PACK_KC - 1) / PACK_KC;
    const ptrdiff_t depth = ((k + slabs - 1) / slabs + 7) / 8 * 8;
    return depth < PACK_KC ? depth : PACK_KC;
}

/* Five buffers per thread, kept until it ends: 0 for cv_gemm_packed's own panels, 1
 * for cv_pack_b's, 2 for copies of a column-major A (a block, or all of it), 3 and 4
 * for cv_gemm_few_rows' panels of A^T and its C^T. */
#define PACK_SLOTS 5
typedef struct {
    float *data[PACK_SLOTS];
    size_t cap[PACK_SLOTS];
} pack_buffers;

static pthread_key_t pack_key;
static pthread_once_t pack_once = PTHREAD_ONCE_INIT;
static int pack_key_ok;

static void pack_buffers_free(void *p)
{
    pack_buffers *b = p;
    for (int slot = 0; slot < PACK_SLOTS; slot++)
        free(b->data[slot]);
    free(b);
}

static void pack_key_create(void)
{
    pack_key_ok = !pthread_key_create(&pack_key, pack_buffers_free);
}

/* This thread's buffer `slot` of at least `floats`; NULL when out of memory. */
static float *panel_buffer(int slot, size_t floats)
{
    pthread_once(&pack_once, pack_key_create);
    if (!pack_key_ok)
        return NULL;
    pack_buffers *b = pthread_getspecific(pack_key);
    if (!b) {
        if (!(b = calloc(1, sizeof *b)) || pthread_setspecific(pack_key, b)) {
            free(b);
            return NULL;
        }
    }
    if (b->cap[slot] < floats) {
        free(b->data[slot]);
        size_t bytes = cv_aligned_bytes(floats, sizeof(float));
        b->data[slot] = bytes ? cv_alloc_bytes(bytes) : NULL;
        b->cap[slot] = b->data[slot] ? floats : 0;
    }
    return b->data[slot];
}

/* Panel (kc x width, rows pw apart) = B's rows [p0, p0 + kc), columns [j0, j0 + width);
 * B has unit stride along one of its dimensions. */
CV_VECTORIZE static void pack_panel(float *panel, ptrdiff_t pw, const float *B,
                                    ptrdiff_t rsb, ptrdiff_t csb, ptrdiff_t p0,
                                    ptrdiff_t kc, ptrdiff_t j0, ptrdiff_t width)
{
    const float *b = B + p0 * rsb + j0 * csb;
    if (csb == 1) /* rows of 16-64 floats: a loop, not a call to memcpy per row */
        for (ptrdiff_t p = 0; p < kc; p++)
            for (ptrdiff_t j = 0; j < width; j++)
                panel[p * pw + j] = b[p * rsb + j];
    else /* rsb == 1: B^T's rows [j0, j0 + width) are B's columns */
        transpose_panel(panel, pw, b, csb, 0, width, 0, kc, 0);
}

/* Packed panels a chunk of columns of C holds at most: the rows of a thread's part sweep
 * one chunk of B's panels (up to 512 KiB, in L2) before the next, instead of every panel
 * of the slab per block of rows (all of B's 384-row slab, 2.3 MiB for MiniLM's 1536
 * columns, more than L2: each block of rows read it again from L3). A is read once per
 * chunk instead (a block of PACK_MC rows, from L2 after its first panel). On an Intel
 * Xeon with AVX-512 (2026-12-03, 2 threads, separate processes alternating, medians of
 * 3 rounds) GEMMs of 1568 x 2048 x 512, 4096 x 2304 x 768 and 4096 x 1536 x 384 ran
 * 3.5-5.7% faster (to 81% of the FMA peak), the rest within +-1%; chunks of 1 MiB were
 * no faster, of 256 KiB mixed (-2% to +5%). A stand-alone copy of the loops on one thread,
 * 4096 x 1536 x 384: 155 -> 164 GFLOP/s. The sums are the same: every element of C is
 * still one kernel call per slab. */
#define PANEL_CHUNK_BYTES (512 * 1024)

/* C's rows [r0, r1), columns [c0, c1) (c0 on a panel boundary) for B's rows
 * [p0, p0 + kc), from the packed panels of those columns (panel q at q kc pw; each call
 * of the kernel prefetches the one after it, or the first of its chunk for the next
 * block of rows, into L2); A points at A's column p0 (rows i at A + i rsa). Each
 * PACK_MC x kc block of A is copied row-major (rows kc apart) first when A is
 * column-major: read in place, every step of k would be a new cache line and page. */
static void panels_times(small_gemm_fn *kernel, ptrdiff_t pw, const float *panels,
                         ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t c0, ptrdiff_t c1,
                         ptrdiff_t p0, ptrdiff_t kc, const float *A, ptrdiff_t rsa,
                         ptrdiff_t csa, int accumulate, float *C, ptrdiff_t ldc)
{
    float *block = csa != 1 && rsa == 1 ? panel_buffer(2, PACK_MC * kc) : NULL;
    /* One chunk when A is copied a block at a time (the copies are not repeated) and
     * for AVX2's panels (16 columns, which L1 holds): chunks of those ran 1-2% slower
     * on two of BERT's shapes, reading A again per chunk, and faster on none. */
    ptrdiff_t chunk = (ptrdiff_t)(PANEL_CHUNK_BYTES / sizeof(float)) / (kc * pw) * pw;
    if (block || chunk < pw || pw < 64)
        chunk = c1 - c0;
    for (ptrdiff_t h0 = c0; h0 < c1; h0 += chunk) {
        const ptrdiff_t h1 = c1 - h0 < chunk ? c1 : h0 + chunk;
        const float *first = panels + (h0 - c0) / pw * kc * pw;
        for (ptrdiff_t i0 = r0; i0 < r1; i0 += PACK_MC) {
            const ptrdiff_t mc = r1 - i0 < PACK_MC ? r1 - i0 : PACK_MC;
            const float *a = A + i0 * rsa;
            ptrdiff_t ra = rsa, ca = csa;
            if (block) {
                transpose_panel(block, kc, a, csa, 0, kc, 0, mc, 0);
                a = block;
                ra = kc;
                ca = 1;
            }
            for (ptrdiff_t j0 = h0; j0 < h1; j0 += pw) {
                const float *panel = panels + (j0 - c0) / pw * kc * pw;
                const float *next = j0 + pw < h1        ? panel + kc * pw
                                    : i0 + PACK_MC < r1 ? first
                                    : h1 < c1           ? panel + kc * pw
                                                        : NULL;
                kernel(mc, h1 - j0 < pw ? h1 - j0 : pw, kc, a, ra, ca, panel, pw,
                       accumulate || p0 > 0, C + i0 * ldc + j0, ldc, next);
            }
        }
    }
}

/* The kernel and its panel width for n columns, or NULL. */
static small_gemm_fn *packed_kernel(ptrdiff_t n, ptrdiff_t *pw)
{
    small_gemm_fn *kernel = n > 0 ? small_gemm_for(n) : NULL;
    *pw = kernel == small_gemm_avx512 ? 64 : kernel == small_gemm_avx512_32 ? 32 : 16;
    return kernel;
}

ptrdiff_t cv_gemm_panel_width(void)
{
    ptrdiff_t pw;
    return packed_kernel(1024, &pw) ? pw : 0; /* any wide n: the full-width panels */
}

int cv_gemm_packed(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t rsa,
                   ptrdiff_t csa, const float *B, ptrdiff_t rsb, ptrdiff_t csb,
                   int accumulate, float *C, ptrdiff_t ldc)
{
    ptrdiff_t pw;
    small_gemm_fn *kernel = packed_kernel(n, &pw);
    /* AVX2's 6 x 16 block does half the work per step of A: an A with no unit stride
     * (one new cache line per step) runs at 2/3 of BLIS's speed. */
    if (!kernel || m <= 0 || k <= 0 || (csb != 1 && rsb != 1) ||
        (pw < 64 && csa != 1 && rsa != 1 && k > 1))
        return -1;
    const ptrdiff_t panels = (n + pw - 1) / pw, depth = slab_depth(k);
    const ptrdiff_t kc_max = k < depth ? k : depth;
    const int threads = omp_in_parallel() ? 1 : cv_get_num_threads();
    /* One part per thread: a chunk of whole panels (each packs only its own), when there
     * are enough panels and A is not the larger operand (every chunk reads all of A);
     * else rows, each part packing all of B. Chunks differ by one panel at most: two per
     * thread dealt dynamically, 5 + 4 + 5 + 4 panels, ran 10% slower than 9 + 9. */
    const int team = (double)m * n * k < 4 * 65536.0 ? 1 : threads;
    const int by_columns = panels >= 2 * team && n >= m;
    const ptrdiff_t chunks = team;
    const ptrdiff_t per_chunk = by_columns ? (panels + chunks - 1) / chunks : panels;
    /* A column-major A that several chunks read (a weight gradient's X^T) is copied once,
     * slab by slab, each row-major with rows kc apart, as panels_times would copy it a
     * block at a time in every chunk: slab s at s depth m. (All of A row-major with its
     * rows k apart instead ran slower than the block copies: 4096 floats apart, the six
     * rows the kernel reads share cache sets.) */
    const float *a_slabs = NULL;
    if (by_columns && chunks > 1 && rsa == 1 && csa != 1) {
        float *slabs = panel_buffer(2, (size_t)(m * k));
        for (ptrdiff_t p0 = 0; slabs && p0 < k; p0 += depth)
            cv_transpose(slabs + p0 * m, k - p0 < depth ? k - p0 : depth, A + p0 * csa, csa,
                         k - p0 < depth ? k - p0 : depth, m, 0);
        a_slabs = slabs;
    }
    int failed = 0;
#pragma omp parallel num_threads(team) if (team > 1)
    {
        float *buf = panel_buffer(0, (size_t)(kc_max * per_chunk * pw));
        if (!buf) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp barrier /* every buffer or none: C is written only if every part can run */
        int stop;
#pragma omp atomic read
        stop = failed;
#pragma omp for schedule(static, 1)
        for (ptrdiff_t ch = 0; ch < chunks; ch++) {
            if (stop)
                continue;
            ptrdiff_t r0 = 0, r1 = m, c0 = 0, c1 = n;
            if (by_columns) {
                c0 = ch * panels / chunks * pw;
                c1 = (ch + 1) * panels / chunks * pw < n ? (ch + 1) * panels / chunks * pw
                                                         : n;
            } else {
                r0 = ch * m / chunks;
                r1 = (ch + 1) * m / chunks;
            }
            for (ptrdiff_t p0 = 0; p0 < k && r1 > r0; p0 += depth) {
                const ptrdiff_t kc = k - p0 < depth ? k - p0 : depth;
                for (ptrdiff_t j0 = c0, q = 0; j0 < c1; j0 += pw, q++)
                    pack_panel(buf + q * kc * pw, pw, B, rsb, csb, p0, kc, j0,
                               c1 - j0 < pw ? c1 - j0 : pw);
                const float *a = a_slabs ? a_slabs + p0 * m : A + p0 * csa;
                panels_times(kernel, pw, buf, r0, r1, c0, c1, p0, kc, a, a_slabs ? kc : rsa,
                             a_slabs ? 1 : csa, accumulate, C, ldc);
            }
        }
    }
    return failed ? -1 : 0;
}

/* cv_pack_b with slabs of `depth` rows (the last may be shallower). */
static int pack_b(cv_packed_b *pb, ptrdiff_t k, ptrdiff_t n, const float *B, ptrdiff_t rsb,
                  ptrdiff_t csb, ptrdiff_t depth)
{
    ptrdiff_t pw;
    small_gemm_fn *kernel = packed_kernel(n, &pw);
    if (!kernel || k <= 0 || (csb != 1 && rsb != 1))
        return -1;
    const ptrdiff_t panels = (n + pw - 1) / pw, npad = panels * pw;
    float *buf = panel_buffer(1, (size_t)(k * npad));
    if (!buf)
        return -1;
    const ptrdiff_t slabs = (k + depth - 1) / depth;
    const int threads = omp_in_parallel() ? 1 : cv_get_num_threads();
#pragma omp parallel for collapse(2) num_threads(threads)                                  \
    schedule(static) if (k * n >= 65536)
    for (ptrdiff_t s = 0; s < slabs; s++)
        for (ptrdiff_t q = 0; q < panels; q++) {
            const ptrdiff_t p0 = s * depth, kc = k - p0 < depth ? k - p0 : depth;
            const ptrdiff_t j0 = q * pw;
            pack_panel(buf + p0 * npad + q * kc * pw, pw, B, rsb, csb, p0, kc, j0,
                       n - j0 < pw ? n - j0 : pw);
        }
    pb->panels = buf;
    pb->k = k;
    pb->n = n;
    pb->depth = depth;
    return 0;
}

int cv_pack_b(cv_packed_b *pb, ptrdiff_t k, ptrdiff_t n, const float *B, ptrdiff_t rsb,
              ptrdiff_t csb)
{
    return pack_b(pb, k, n, B, rsb, csb, slab_depth(k));
}

/* C's columns [c0, c1) (c0 on a panel boundary) of A pb, on one thread. */
static void prepacked_columns(const cv_packed_b *pb, ptrdiff_t m, ptrdiff_t c0,
                              ptrdiff_t c1, const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                              int accumulate, float *C, ptrdiff_t ldc)
{
    ptrdiff_t pw;
    small_gemm_fn *kernel = packed_kernel(pb->n, &pw);
    const ptrdiff_t npad = (pb->n + pw - 1) / pw * pw;
    const ptrdiff_t depth = pb->depth;
    for (ptrdiff_t p0 = 0; p0 < pb->k; p0 += depth) {
        const ptrdiff_t kc = pb->k - p0 < depth ? pb->k - p0 : depth;
        panels_times(kernel, pw, pb->panels + p0 * npad + c0 / pw * kc * pw, 0, m, c0, c1,
                     p0, kc, A + p0 * csa, rsa, csa, accumulate, C, ldc);
    }
}

void cv_gemm_prepacked(const cv_packed_b *pb, ptrdiff_t m, const float *A, ptrdiff_t rsa,
                       ptrdiff_t csa, int accumulate, float *C, ptrdiff_t ldc)
{
    prepacked_columns(pb, m, 0, pb->n, A, rsa, csa, accumulate, C, ldc);
}

/* A few rows of A against a large B, the other way round: C^T = B^T A^T. A^T (k x m,
 * m rounded up to 16 columns with zeros) is packed into panels, small, and B^T, whose
 * rows are contiguous when B's columns are (rsb == 1: a layer's weight, out x in), is
 * the kernel's broadcast operand, read once from memory in place, its rows shared among
 * the threads. The packed path instead copies all of B (a ResNet-50 forward, 94 MB of
 * weights) into panels and sweeps them with those few rows, on one thread when there
 * are fewer than 64. C^T goes to a buffer, then transposed into C. The sums are the
 * packed path's (cv_tiles_b_init: slabs of slab_depth(k), each product the same, C
 * added first), so the results do not depend on which path ran. */
int cv_gemm_few_rows(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t rsa,
                     ptrdiff_t csa, const float *B, ptrdiff_t rsb, ptrdiff_t csb,
                     int accumulate, float *C, ptrdiff_t ldc)
{
    ptrdiff_t pw;
    const ptrdiff_t mp = (m + 15) / 16 * 16;
    small_gemm_fn *kernel = m > 0 && k > 0 && rsb == 1 && (csa == 1 || rsa == 1)
                                ? packed_kernel(mp, &pw)
                                : NULL;
    if (!kernel || !small_gemm_for(n) || tile_kernel(n, k))
        return -1; /* the tiles' path would not pack B: other sums */
    const ptrdiff_t panels = (mp + pw - 1) / pw, mpad = panels * pw, depth = slab_depth(k);
    float *at = panel_buffer(3, (size_t)(k * mpad)),
          *ct = panel_buffer(4, (size_t)(n * mp));
    if (!at || !ct)
        return -1;
    for (ptrdiff_t p0 = 0; p0 < k; p0 += depth) {
        const ptrdiff_t kc = k - p0 < depth ? k - p0 : depth;
        for (ptrdiff_t q = 0; q < panels; q++) {
            float *panel = at + p0 * mpad + q * kc * pw;
            const ptrdiff_t j0 = q * pw, width = mp - j0 < pw ? mp - j0 : pw;
            const ptrdiff_t real = m - j0 < width ? m - j0 : width;
            for (ptrdiff_t p = 0; p < kc; p++)
                for (ptrdiff_t j = real; j < width; j++)
                    panel[p * pw + j] = 0.0f;
            if (csa == 1) /* A^T's rows [p0, p0 + kc) are A's columns */
                transpose_panel(panel, pw, A + j0 * rsa + p0, rsa, 0, real, 0, kc, 0);
            else
                pack_panel(panel, pw, A, csa, rsa, p0, kc, j0, real);
        }
    }
    /* each thread its rows of C^T: C's columns [r0, r1) in, the products, and out */
    const int threads = omp_in_parallel() ? 1 : cv_get_num_threads();
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && n >= 64)
    for (int t = 0; t < threads; t++) {
        const ptrdiff_t r0 = t * n / threads, r1 = (t + 1) * n / threads;
        if (accumulate)
            cv_transpose(ct + r0 * mp, mp, C + r0, ldc, m, r1 - r0, 0);
        for (ptrdiff_t p0 = 0; p0 < k && r1 > r0; p0 += depth)
            panels_times(kernel, pw, at + p0 * mpad, r0, r1, 0, mp, p0,
                         k - p0 < depth ? k - p0 : depth, B + p0, csb, 1, accumulate, ct,
                         mp);
        cv_transpose(C + r0, ldc, ct + r0 * mp, mp, r1 - r0, m, 0);
    }
    return 0;
}

static void tiles_b_init(cv_tiles_b *tb, ptrdiff_t k, ptrdiff_t n, const float *B,
                         ptrdiff_t rsb, ptrdiff_t csb, ptrdiff_t depth)
{
    tb->B = B;
    tb->k = k;
    tb->n = n;
    tb->rsb = rsb;
    tb->csb = csb;
    tb->in_place = csb == 1 && tile_kernel(n, k) != NULL;
    tb->is_packed = !tb->in_place && !pack_b(&tb->packed, k, n, B, rsb, csb, depth);
}

void cv_tiles_b_init(cv_tiles_b *tb, ptrdiff_t k, ptrdiff_t n, const float *B,
                     ptrdiff_t rsb, ptrdiff_t csb)
{
    tiles_b_init(tb, k, n, B, rsb, csb, slab_depth(k));
}

void cv_tiles_b_init_rows(cv_tiles_b *tb, ptrdiff_t k, ptrdiff_t n, const float *B,
                          ptrdiff_t rsb, ptrdiff_t csb)
{
    tiles_b_init(tb, k, n, B, rsb, csb,
                 k <= PACK_KC_ROWS ? (k + 7) / 8 * 8 : slab_depth(k));
}

void cv_tiles_b_gemm(const cv_tiles_b *tb, ptrdiff_t m, const float *A, ptrdiff_t rsa,
                     ptrdiff_t csa, int accumulate, float *C, ptrdiff_t ldc)
{
    if (tb->is_packed) {
        /* From serial code, the threads share the columns when there are at least two
         * panels each and fewer rows than a block of PACK_MC each (a tile of a few dozen
         * rows against a large weight, where cv_gemm_few_rows does not take it), else
         * the rows. The same sums either way. */
        const int threads = omp_in_parallel() ? 1 : cv_get_num_threads();
        ptrdiff_t pw;
        packed_kernel(tb->n, &pw);
        const ptrdiff_t panels = (tb->n + pw - 1) / pw;
        if (threads > 1 && panels >= 2 * threads && m < PACK_MC * threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
            for (int t = 0; t < threads; t++) {
                const ptrdiff_t c0 = t * panels / threads * pw,
                                c1 = (t + 1) * panels / threads * pw;
                prepacked_columns(&tb->packed, m, c0, c1 < tb->n ? c1 : tb->n, A, rsa, csa,
                                  accumulate, C, ldc);
            }
            return;
        }
        const ptrdiff_t rows = (m + threads - 1) / threads;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && m >= 64)
        for (ptrdiff_t i0 = 0; i0 < m; i0 += rows)
            cv_gemm_prepacked(&tb->packed, m - i0 < rows ? m - i0 : rows, A + i0 * rsa, rsa,
                              csa, accumulate, C + i0 * ldc, ldc);
    } else if (tb->in_place)
        cv_gemm_tile(m, tb->n, tb->k, A, rsa, csa, tb->B, tb->rsb, accumulate, C, ldc);
    else
        cv_gemm(m, tb->n, tb->k, 1.0f, A, rsa, csa, tb->B, tb->rsb, tb->csb,
                accumulate ? 1.0f : 0.0f, C, ldc, 1);
}

void cv_gemm_reference(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha, const float *A,
                       ptrdiff_t rsa, ptrdiff_t csa, const float *B, ptrdiff_t rsb,
                       ptrdiff_t csb, float beta, float *C, ptrdiff_t rsc, ptrdiff_t csc)
{
    for (ptrdiff_t i = 0; i < m; i++)
        for (ptrdiff_t j = 0; j < n; j++) {
            double sum = 0.0;
            for (ptrdiff_t p = 0; p < k; p++)
                sum += (double)A[i * rsa + p * csa] * B[p * rsb + j * csb];
            float *c = &C[i * rsc + j * csc];
            *c = (float)(alpha * sum + (beta == 0.0f ? 0.0 : (double)beta * *c));
        }
}
