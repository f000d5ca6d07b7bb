/* convirt.h - the public C API of the convirt core.
 *
 * The core is C11 with GNU extensions (built with -std=gnu11: _Thread_local, GCC's
 * overflow and CPU builtins, target_clones) and OpenMP, on top of BLIS; it builds into
 * libconvirt.so, with no Python inside. It never prints, never exits and never
 * aborts: every fallible function returns a cv_status and leaves a message that
 * cv_last_error() returns (per thread). Python is a client like any other.
 *
 * Conventions
 *   - float32 everywhere; activations NHWC (images) or (tokens, hidden) (text).
 *   - Layer functions take outputs first, then saved state, then inputs and weights,
 *     then sizes. Backward functions ADD into gradients.
 *   - Strides are in elements, not bytes.
 */
#ifndef CONVIRT_H
#define CONVIRT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    CV_OK = 0,
    CV_ERR_VALUE = 1,     /* an argument is out of range or inconsistent */
    CV_ERR_MEMORY = 2,    /* an allocation failed */
    CV_ERR_NONFINITE = 3, /* NaN or Inf met in inputs or produced by the math */
    CV_ERR_STATE = 4,     /* the object is not in a state that allows the call */
    CV_ERR_INTERNAL = 5,
    CV_ERR_INTERRUPTED = 6 /* the interrupt hook asked a long call to stop */
} cv_status;

/* The message of the last failure on this thread ("" when none). */
const char *cv_last_error(void);
/* Record a message and return status (for use inside the core). */
cv_status cv_fail(cv_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* ---- interruption (status.c) -------------------------------------------------
 * Long calls (the contrastive losses, encoder forward and backward, the image
 * transforms) call cv_check_interrupt() between pieces of work of a few tens of
 * milliseconds. It asks the hook, at most every CV_INTERRUPT_INTERVAL seconds and only
 * from the thread that made the call (thread 0 inside a parallel region); when the
 * hook returns non-zero the call stops with CV_ERR_INTERRUPTED and its outputs are
 * unspecified (partly written; a stopped training forward may have updated some batch
 * norm running statistics, a stopped backward added some gradients, as a PyTorch
 * step stopped between layers would). No hook (the default) never stops a call. The
 * Python binding's hook runs Python's signal handlers, so Ctrl-C lands promptly. */
#define CV_INTERRUPT_INTERVAL 0.1
typedef int (*cv_interrupt_hook)(void);
void cv_set_interrupt_hook(cv_interrupt_hook hook);
cv_status cv_check_interrupt(void);

/* ---- set-up, threads and configuration (gemm.c) ---------------------------- */

/* Choose BLIS's sub-configuration (unless BLIS_ARCH_TYPE is set) and initialise
 * BLIS. Must run before any other BLIS use; idempotent. It also registers a fork
 * handler: libgomp cannot start threads in a child forked from a process whose
 * OpenMP threads ran (GCC bug 60035: the child's next parallel region waits forever
 * for threads that do not exist there), so a forked child runs the core on one thread
 * and cv_set_num_threads refuses more. */
cv_status cv_init(void);
/* The most threads the core accepts: CV_THREADS_PER_CORE per usable core. More cannot
 * help, and libgomp ends the process when it cannot create them. */
#define CV_THREADS_PER_CORE 8
int cv_max_threads(void);
/* CV_ERR_VALUE (nothing changed) unless 1 <= n <= cv_max_threads() (1 in a forked
 * child). */
cv_status cv_set_num_threads(int n);
int cv_get_num_threads(void);
/* Winograd for 3x3 stride-1 convolutions (winograd.c): 1, F(2x2, 3x3), unless
 * CONVIRT_WINOGRAD is 0 (off) or 4 (F(4x4, 3x3) on outputs of at least 8 x 8) in the
 * environment, or cv_set_winograd said otherwise; cv_set_winograd takes the same values
 * (any other nonzero: 1). */
void cv_set_winograd(int mode);
int cv_get_winograd(void);
/* This machine's physical memory in bytes (0 when unknown): constructors refuse
 * models whose buffers could never fit. */
size_t cv_physical_memory(void);

typedef struct {
    const char *blis_version;
    const char *blis_arch;        /* sub-configuration in use, e.g. "skx" */
    int blis_arch_id;             /* its BLIS_ARCH_TYPE number */
    const char *blis_arch_reason; /* why it is in use */
    const char *blis_configs;     /* sub-configurations this BLIS build contains */
    const char *cpu_features;     /* what the kernel choice looked at */
    const char *blis_library;     /* the libblis file loaded */
    const char *openmp_library;   /* the OpenMP runtime loaded (shared with BLIS) */
    int blis_openmp;              /* BLIS built with OpenMP threading */
    int num_threads;
    int num_cores;        /* usable cores (affinity mask) */
    int openmp_version;   /* _OPENMP of the compiler */
    const char *compiler; /* the compiler that built the core, and its flags */
    const char *cflags;
    const char *gemm_kernel;  /* convirt's own GEMM kernel: "avx512", "avx2" or "none" */
    const char *vector_loops; /* the build of the element-wise loops that runs */
} cv_config;

void cv_get_config(cv_config *config);

/* ---- GEMM (gemm.c) ----------------------------------------------------------
 * C (m x n) = alpha * A (m x k) @ B (k x n) + beta * C, every matrix given by a
 * pointer and a row and a column stride (a transpose is a swap of strides).
 * Runs on all threads from serial code and on one thread inside a parallel
 * region: never nested. */
void cv_gemm(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha, const float *A,
             ptrdiff_t rsa, ptrdiff_t csa, const float *B, ptrdiff_t rsb, ptrdiff_t csb,
             float beta, float *C, ptrdiff_t rsc, ptrdiff_t csc);

/* Row-major shorthands: lda etc. are row lengths of the stored matrices.
 * nn: C = A B, nt: C = A B^T, tn: C = A^T B. */
void cv_gemm_nn(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha, const float *A,
                ptrdiff_t lda, const float *B, ptrdiff_t ldb, float beta, float *C,
                ptrdiff_t ldc);
void cv_gemm_nt(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha, const float *A,
                ptrdiff_t lda, const float *B, ptrdiff_t ldb, float beta, float *C,
                ptrdiff_t ldc);
void cv_gemm_tn(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha, const float *A,
                ptrdiff_t lda, const float *B, ptrdiff_t ldb, float beta, float *C,
                ptrdiff_t ldc);

/* C (m x n, rows ldc apart, contiguous) = A B, or C += A B with accumulate; A's
 * elements rsa and csa apart, B row-major (rows ldb apart). A register-blocked kernel
 * that reads A and B in place, for the many small GEMMs of Winograd's transformed
 * domain (tens to hundreds of rows, 64-256 columns), where BLIS 0.9's packing costs
 * about as much as the multiplies. One thread. Returns 0 when it ran; -1 (nothing
 * done: call cv_gemm) when the kernel set has no such kernel (config()'s gemm_kernel
 * "none": CPUs without AVX2 and FMA, the older sets, CONVIRT_SMALL_GEMM=0) or n is not
 * a multiple of its vector width (16 floats with AVX-512, 8 with AVX2). The products
 * are summed from zero; accumulate adds C to the sum at the end (as BLIS does). */
int cv_gemm_small(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t rsa,
                  ptrdiff_t csa, const float *B, ptrdiff_t ldb, int accumulate, float *C,
                  ptrdiff_t ldc);
/* Whether cv_gemm_small runs n columns on this kernel set. */
int cv_gemm_small_takes(ptrdiff_t n);
/* Columns per panel of B on cv_gemm_packed's path for wide B (64 with AVX-512, 16 with
 * AVX2), 0 when the kernel set in use has no kernel of the core's own. */
ptrdiff_t cv_gemm_panel_width(void);

/* C (m x n, rows ldc apart) = A B, or += with accumulate; B row-major (rows ldb
 * apart): the GEMM of one tile of a layer. cv_gemm_small where B is at most
 * CV_SMALL_B_FLOATS (the 64-256-channel layers, where BLIS's packing of both operands
 * for every tile cost about what the multiplies did; from serial code its rows are
 * shared among the threads), else cv_gemm_packed, else cv_gemm. Which one runs depends
 * on the shape and the kernel set, never on the thread count; CONVIRT_SMALL_GEMM=0 in
 * the environment (read at cv_init) sends every GEMM to BLIS. */
#define CV_SMALL_B_FLOATS (256 * 256)
void cv_gemm_tile(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t rsa,
                  ptrdiff_t csa, const float *B, ptrdiff_t ldb, int accumulate, float *C,
                  ptrdiff_t ldc);

/* dst (cols x rows, rows ldd apart) = src (rows x cols, rows lds apart) transposed, or
 * dst += it with accumulate. All threads from serial code, one inside a parallel
 * region. */
void cv_transpose(float *dst, ptrdiff_t ldd, const float *src, ptrdiff_t lds,
                  ptrdiff_t rows, ptrdiff_t cols, int accumulate);

/* C (m x n, rows ldc apart) = A B, or += with accumulate, through the small-GEMM kernel
 * on panels of B copied into a per-thread buffer: for GEMMs past the small kernel's
 * size. B with unit stride along its rows or its columns; all threads from serial code,
 * one inside a parallel region; each element the same sum whatever the split. Returns
 * 0 when it ran, -1 (nothing written: call cv_gemm) when the kernel does not take n on
 * this CPU, B has no unit stride or memory ran out. */
int cv_gemm_packed(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t rsa,
                   ptrdiff_t csa, const float *B, ptrdiff_t rsb, ptrdiff_t csb,
                   int accumulate, float *C, ptrdiff_t ldc);

/* B (k x n, unit stride along its rows or its columns) packed once for many GEMMs by
 * cv_gemm_prepacked, e.g. one per row tile of C: cv_pack_b from serial code (all
 * threads pack) or one thread. The panels live in a buffer of the calling thread, valid
 * until its next cv_pack_b. Returns 0, or -1 (nothing packed: use cv_gemm) when the
 * kernel does not take n on this CPU, B has no unit stride or memory ran out. */
typedef struct {
    const float *panels;
    ptrdiff_t k, n, depth; /* depth: rows of B per slab */
} cv_packed_b;
int cv_pack_b(cv_packed_b *pb, ptrdiff_t k, ptrdiff_t n, const float *B, ptrdiff_t rsb,
              ptrdiff_t csb);
/* C (m x n, rows ldc apart) = A pb (+ C with accumulate), A's elements rsa and csa
 * apart; one thread, the same bits as cv_gemm_packed. */
void cv_gemm_prepacked(const cv_packed_b *pb, ptrdiff_t m, const float *A, ptrdiff_t rsa,
                       ptrdiff_t csa, int accumulate, float *C, ptrdiff_t ldc);

/* C (m x n) = A B (+ C with accumulate) for A of a few rows (fewer than n: one small
 * image's pixels, one short sequence's tokens) and a large B with rsb == 1 (a layer's
 * weight, n x k row-major): B read once, in place, all threads from serial code. The
 * same sums as cv_tiles_b_init's packed panels. Returns 0, or -1 (nothing written) when
 * that path would not pack B (other sums), A has no unit stride or memory ran out. */
int cv_gemm_few_rows(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t rsa,
                     ptrdiff_t csa, const float *B, ptrdiff_t rsb, ptrdiff_t csb,
                     int accumulate, float *C, ptrdiff_t ldc);

/* The B of a loop over row tiles of C (each tile one thread): read in place by the small
 * kernel where cv_gemm_tile would (B row-major, small), else packed once for all tiles
 * where the kernel takes it, else left to BLIS, which packs it again in every tile.
 * cv_tiles_b_init from serial code (or one thread); the packing lives until this
 * thread's next cv_pack_b. cv_tiles_b_gemm: C (m x n) = A B, or += with accumulate. */
typedef struct {
    cv_packed_b packed;
    int is_packed, in_place;
    const float *B;
    ptrdiff_t k, n, rsb, csb;
} cv_tiles_b;
void cv_tiles_b_init(cv_tiles_b *tb, ptrdiff_t k, ptrdiff_t n, const float *B,
                     ptrdiff_t rsb, ptrdiff_t csb);
/* The same for tiles whose A has contiguous rows, packed in one slab up to a depth of
 * 512 (the loss's similarities at d = 512: see gemm.c, PACK_KC_ROWS). Other sums than
 * cv_tiles_b_init's where 384 < k <= 512. */
void cv_tiles_b_init_rows(cv_tiles_b *tb, ptrdiff_t k, ptrdiff_t n, const float *B,
                          ptrdiff_t rsb, ptrdiff_t csb);
void cv_tiles_b_gemm(const cv_tiles_b *tb, ptrdiff_t m, const float *A, ptrdiff_t rsa,
                     ptrdiff_t csa, int accumulate, float *C, ptrdiff_t ldc);

/* Does cv_gemm_tile take an n-column, k-deep tile to the small kernel? */
int cv_gemm_tile_is_small(ptrdiff_t n, ptrdiff_t k);

/* The slow, obviously correct GEMM the tests compare with (same contract). */
void cv_gemm_reference(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha, const float *A,
                       ptrdiff_t rsa, ptrdiff_t csa, const float *B, ptrdiff_t rsb,
                       ptrdiff_t csb, float beta, float *C, ptrdiff_t rsc, ptrdiff_t csc);

/* ---- machine peak (peak.c) ------------------------------------------------- */

/* FP32 FMA throughput of an FMA loop of `bits`-bit vectors (512, 256 or 32; 0: the
 * width of the GEMM kernels in use, cv_kernel_vector_bits, or the widest this CPU runs
 * when that is 0) on `threads` threads (clamped to 1..cv_max_threads()) for about
 * `seconds`; GFLOP/s (an FMA counts 2), the width in *vector_bits. -1 when this CPU does
 * not run that width. */
double cv_fma_peak(int threads, double seconds, int bits, int *vector_bits);

/* GFLOP/s of the core's own GEMM kernel (the one every packed GEMM runs) on operands
 * that stay in L1, on `threads` threads (clamped as above) for about `seconds`: the
 * ceiling of the GEMMs built on it, below the FMA peak by what its loads and stores
 * cost. Its vector width in *vector_bits; -1 when the kernel set in use has no kernel of
 * the core's own (BLIS runs every GEMM). */
double cv_gemm_kernel_peak(int threads, double seconds, int *vector_bits);

/* The vector width of the GEMM kernels of the kernel set in use: 512 (skx, or generic
 * on an AVX-512 CPU), 256 (haswell, the zen sets, or generic on an AVX2 CPU), 0
 * (another set, or before cv_init). (gemm.c) */
int cv_kernel_vector_bits(void);

/* ---- contrastive loss (loss.c) ---------------------------------------------- */

typedef struct {
    double loss;          /* row_weight * loss_rows + col_weight * loss_cols */
    double loss_rows;     /* mean over rows of -log softmax_row(S)[i, i + offset] */
    double loss_cols;     /* mean over columns of -log softmax_col(S)[j - offset, j];
                             NaN unless the square is whole */
    double accuracy_rows; /* share of rows whose largest logit is the positive */
    double accuracy_cols;
    double grad_logit_scale; /* dL / d log(scale), where S = scale * cosine */
} cv_loss_result;

/* Workspace reused across calls (grown on demand). */
typedef struct {
    float *logits;    /* n_rows x n_cols */
    float *row_stat;  /* per row: inverse norm, then the log-sum-exp (shift by the
                         maxima) or the positive's logit (shift by the scale) */
    float *col_stat;  /* per column: inverse norm, max, then log-sum-exp and sum, or
                         sum, sum of E S and the gradient's weight */
    float *tile_stat; /* per column tile and row: partial sum, dot and max */
    size_t logits_cap, row_cap, col_cap, tile_cap;
} cv_loss_workspace;

void cv_loss_workspace_free(cv_loss_workspace *ws);

/* Contrastive (InfoNCE) loss of a block of rows a (n_rows x d) against columns b
 * (n_cols x d) with cosine similarity times `scale` (= 1 / temperature) as logits.
 * Row i's positive is column i + offset. The row direction (a -> b) is weighted by
 * row_weight; the column direction (b -> a) by col_weight, which needs the whole
 * square (n_rows == n_cols, offset == 0) or col_weight == 0.
 * ConVIRT: a = v, b = u, row_weight = lambda, col_weight = 1 - lambda.
 * grad_a / grad_b (either may be NULL) are OVERWRITTEN with dL/da, dL/db, the
 * gradient through the L2 normalisation to the raw inputs. Inputs are read with
 * their strides and never written. */
cv_status cv_loss_forward_backward(cv_loss_result *result, float *grad_a, ptrdiff_t rsga,
                                   ptrdiff_t csga, float *grad_b, ptrdiff_t rsgb,
                                   ptrdiff_t csgb, cv_loss_workspace *ws, const float *a,
                                   ptrdiff_t rsa, ptrdiff_t csa, const float *b,
                                   ptrdiff_t rsb, ptrdiff_t csb, ptrdiff_t n_rows,
                                   ptrdiff_t n_cols, ptrdiff_t d, ptrdiff_t offset,
                                   double scale, double row_weight, double col_weight);

/* SimCLR's NT-Xent loss (the image-only baseline) on the same machinery: z holds two
 * views of n2 / 2 samples, rows i and i + n2/2 are positives, every other row is a
 * negative and a row is never its own candidate. grad_z (may be NULL) is overwritten. */
cv_status cv_ntxent_forward_backward(cv_loss_result *result, float *grad_z, ptrdiff_t rsg,
                                     ptrdiff_t csg, cv_loss_workspace *ws, const float *z,
                                     ptrdiff_t rs, ptrdiff_t cs, ptrdiff_t n2, ptrdiff_t d,
                                     double scale);

#ifdef __cplusplus
}
#endif
#endif
