/* kldiv C ABI: PyTorch's KL-divergence loss (F.kl_div) and its gradients.
 *
 * Every function returns 0 on success and a nonzero kldiv_status on error;
 * kldiv_last_error() then describes the error (thread-local). On error no
 * output byte has been written. All functions are thread-safe. */
#ifndef KLDIV_KLDIV_H
#define KLDIV_KLDIV_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Each enum spans every int32 value (the *_RANGE_ names are not values to
 * pass): any int a caller stores is then a value of the type, which the
 * library refuses with an error if it is not one of the names, rather than
 * something a C++ compiler may assume cannot happen. */
typedef enum {
    KLDIV_FLOAT32,
    KLDIV_FLOAT64,
    KLDIV_FLOAT16,
    KLDIV_BFLOAT16,
    KLDIV_DTYPE_RANGE_MIN = -2147483647 - 1,
    KLDIV_DTYPE_RANGE_MAX = 2147483647
} kldiv_dtype;

typedef enum {
    KLDIV_REDUCTION_NONE,
    KLDIV_REDUCTION_MEAN,
    KLDIV_REDUCTION_SUM,
    KLDIV_REDUCTION_BATCHMEAN,
    KLDIV_REDUCTION_RANGE_MIN = -2147483647 - 1,
    KLDIV_REDUCTION_RANGE_MAX = 2147483647
} kldiv_reduction;

typedef enum {
    KLDIV_DEVICE_CPU,
    KLDIV_DEVICE_CUDA,
    KLDIV_DEVICE_RANGE_MIN = -2147483647 - 1,
    KLDIV_DEVICE_RANGE_MAX = 2147483647
} kldiv_device;

/* The highest rank a tensor may have. */
#define KLDIV_MAX_RANK 64

/* A strided view of memory. 16-bit data is given as raw uint16 bit patterns.
 * Strides are in elements; a rank-0 tensor has one element and may pass NULL
 * sizes and strides. KLDIV_DEVICE_CUDA: `data` is CUDA device memory (see
 * "CUDA tensors" below); all tensors of a call are on one device. */
typedef struct {
    void *data;
    kldiv_dtype dtype;
    int32_t rank;
    const int64_t *sizes;
    const int64_t *strides;
    kldiv_device device;
} kldiv_tensor;

/* Error codes (nonzero return values). */
typedef enum {
    KLDIV_OK = 0,
    KLDIV_ERROR_INVALID_ARGUMENT = 1, /* null pointer, rank < 0 or > KLDIV_MAX_RANK, negative size or
                                         stride, more elements than int64 counts, or sizes and strides
                                         that reach past the address space */
    KLDIV_ERROR_SHAPE = 2,            /* shapes do not broadcast, or an output has the wrong shape */
    KLDIV_ERROR_DTYPE = 3,            /* unknown or unsupported dtype, or mismatched dtypes */
    KLDIV_ERROR_ALIAS = 4,            /* an output overlaps an input or another output */
    KLDIV_ERROR_DEVICE = 5,           /* device not available or mixed devices */
    KLDIV_ERROR_INTERNAL = 6          /* a kernel failed */
} kldiv_status;

/* Loss: `out` has the broadcast shape of (input, target) for NONE, else rank 0.
 * MEAN reports PyTorch's warning through the warning handler. */
int kldiv_forward(const kldiv_tensor *input, const kldiv_tensor *target,
                  kldiv_reduction reduction, int log_target, const kldiv_tensor *out);

/* Gradients of the loss for upstream gradient `grad_output` (rank 0 for reduced
 * losses, the broadcast shape for NONE). Either gradient may be NULL; each has
 * the shape of its operand (a broadcast operand gets its gradient summed). */
int kldiv_backward(const kldiv_tensor *grad_output, const kldiv_tensor *input,
                   const kldiv_tensor *target, kldiv_reduction reduction, int log_target,
                   const kldiv_tensor *grad_input, const kldiv_tensor *grad_target);

/* Loss and grad_input (upstream gradient 1) from one read of input and target. */
int kldiv_forward_backward(const kldiv_tensor *input, const kldiv_tensor *target,
                           kldiv_reduction reduction, int log_target, const kldiv_tensor *out,
                           const kldiv_tensor *grad_input);

/* Description of the calling thread's last error ("" if none). */
const char *kldiv_last_error(void);

/* Warnings (PyTorch's 'mean' and legacy-argument warnings). By default they
 * are dropped; a handler receives each one. NULL restores the default. */
typedef void (*kldiv_warning_handler)(const char *message, void *user_data);
void kldiv_set_warning_handler(kldiv_warning_handler handler, void *user_data);

/* Threads used by the CPU kernels (0: one per core). */
void kldiv_set_num_threads(int threads);

/* Name of the x86 feature level the AOT kernels run with on this CPU: the
 * best it has, capped by KLDIV_CPU_TARGET (sse41 | avx2 | avx512). */
const char *kldiv_cpu_target(void);

/* ---- Distillation from logits ----------------------------------------------
 *
 * The KL divergence between the teacher's and the student's softmax at
 * temperature T over the last dimension (the vocabulary), per row of the
 * leading dimensions: with p = softmax(teacher / T), q = softmax(student / T),
 *   forward KL: sum_j p_j (log p_j - log q_j)  (reverse: sum_j q_j (log q_j - log p_j)),
 * which equals kl_div(log_softmax(student / T), log_softmax(teacher / T),
 * log_target=True) summed over the row, except that a token the teacher
 * gives probability 0 (logit -inf) adds 0 where that composite gives NaN.
 * Logits: float32, float64, float16 or bfloat16 CPU tensors of one shape and
 * dtype, whose leading dimensions can be viewed as one strided dimension;
 * the loss and gradients have their dtype. Sums and exps are float32
 * (float64 for float64), and no [rows, vocab] intermediate is made.
 * CUDA logits (and loss and gradients) run CUDA kernels when the library has
 * them and the environment sets KLDIV_DISTILL_CUDA=1 (experimental: not yet
 * tested on a GPU), with rows of at least 32 logits; the row mask and the
 * row statistics stay in host memory, a CUDA grad_output must be
 * contiguous, and each call waits for its stream to read the statistics. */

typedef struct {
    double temperature;          /* > 0; 0 in a zero-initialised struct means 1 */
    kldiv_reduction reduction;   /* NONE: the loss per row (the leading shape); SUM; BATCHMEAN:
                                    divided by the unmasked rows; MEAN: by unmasked rows x vocabulary */
    int32_t reverse;             /* nonzero: reverse KL */
    int32_t temperature_squared; /* nonzero: the loss (and gradients) times T^2 */
    const uint8_t *row_mask;     /* NULL: every row; else one byte per row, 0 = the row adds
                                    nothing, is left out of the divisors and gets gradient 0 */
} kldiv_distill_options;

/* Row statistics a forward call may save for backward: this many doubles per row. */
#define KLDIV_DISTILL_STATS_PER_ROW 5

/* The loss into `out`. `row_stats`: NULL, or room for
 * KLDIV_DISTILL_STATS_PER_ROW doubles per row, which kldiv_distill_backward
 * takes to skip a pass. */
int kldiv_distill_forward(const kldiv_tensor *student, const kldiv_tensor *teacher,
                          const kldiv_distill_options *options, const kldiv_tensor *out, double *row_stats);

/* The loss and the student's gradient for upstream gradient 1, in one pass
 * over each row. `grad_student` may be `student` itself (the same data,
 * shape and strides): the gradient is then written over the logits. */
int kldiv_distill_forward_backward(const kldiv_tensor *student, const kldiv_tensor *teacher,
                                   const kldiv_distill_options *options, const kldiv_tensor *out,
                                   const kldiv_tensor *grad_student, double *row_stats);

/* Gradients for upstream gradient `grad_output` (the loss's shape). Either
 * gradient may be NULL; neither may share memory with an input. `row_stats`:
 * from kldiv_distill_forward on the same logits and options, or NULL. */
int kldiv_distill_backward(const kldiv_tensor *grad_output, const kldiv_tensor *student,
                           const kldiv_tensor *teacher, const kldiv_distill_options *options,
                           const double *row_stats, const kldiv_tensor *grad_student,
                           const kldiv_tensor *grad_teacher);

/* ---- Runtimes: JIT-compiled kernels and kernel caches ----------------------
 *
 * The functions above use the process's default runtime. A runtime of one's
 * own sets where compiled kernels are cached and when kernels are compiled
 * for a call's exact shape. Environment: KLDIV_CACHE_DIR (a directory, or
 * "off"), KLDIV_SPECIALIZE (never | always | auto), and for the default
 * runtime KLDIV_JIT (off: AOT kernels only; auto: AOT kernels for
 * shape-generic calls, the default; all: every kernel from the JIT). */

typedef struct kldiv_runtime kldiv_runtime;

typedef enum {
    KLDIV_SPECIALIZE_DEFAULT = 0, /* KLDIV_SPECIALIZE, else AUTO */
    KLDIV_SPECIALIZE_NEVER,       /* shape-generic kernels only */
    KLDIV_SPECIALIZE_ALWAYS,      /* a shape-specialised kernel for every new shape */
    KLDIV_SPECIALIZE_AUTO,        /* once a shape has been seen a few times over many elements */
    KLDIV_SPECIALIZE_RANGE_MIN = -2147483647 - 1,
    KLDIV_SPECIALIZE_RANGE_MAX = 2147483647
} kldiv_specialize;

/* Zero-initialise, then set what differs from the defaults. */
typedef struct {
    const char *cache_dir;         /* NULL: the default location; "off": memory only */
    uint64_t disk_cache_bytes;     /* 0: 1 GiB */
    uint64_t memory_cache_entries; /* 0: 1024 */
    uint64_t memory_cache_bytes;   /* 0: 256 MiB of object code */
    kldiv_specialize specialize;
    int32_t specialize_after;      /* 0: 3 calls with one shape */
    int32_t aot_only;              /* nonzero: never compile */
    int32_t jit_generic;           /* nonzero: shape-generic kernels from the JIT too */
    int32_t no_blocking;           /* nonzero: run AOT kernels while a kernel compiles */
    const char *target;            /* NULL or "host": this CPU; else a Halide target string */
    int32_t threads;               /* 0: leave the kernel thread pool as it is */
    kldiv_warning_handler warning_handler; /* NULL: the process-wide handler */
    void *warning_user_data;
    void *cuda_stream;             /* CUstream / cudaStream_t of CUDA calls; NULL: the legacy default stream */
    int32_t cuda_jit;              /* 0: KLDIV_CUDA_JIT, else off; 1: CUDA kernels from the JIT too; -1: AOT only */
    const char *cpu_target;        /* NULL: KLDIV_CPU_TARGET; "sse41", "avx2", "avx512": highest x86 level of "host" */
    uint64_t specialize_work;      /* 0: 2^32; AUTO also waits until a shape's calls cover this many elements */
} kldiv_runtime_options;

/* NULL options: the defaults. Returns NULL on error (see kldiv_last_error). */
kldiv_runtime *kldiv_runtime_create(const kldiv_runtime_options *options);
void kldiv_runtime_destroy(kldiv_runtime *runtime);

/* As kldiv_forward, kldiv_backward and kldiv_forward_backward, on `runtime`
 * (NULL: the default runtime). */
int kldiv_runtime_forward(kldiv_runtime *runtime, const kldiv_tensor *input, const kldiv_tensor *target,
                          kldiv_reduction reduction, int log_target, const kldiv_tensor *out);
int kldiv_runtime_backward(kldiv_runtime *runtime, const kldiv_tensor *grad_output,
                           const kldiv_tensor *input, const kldiv_tensor *target,
                           kldiv_reduction reduction, int log_target,
                           const kldiv_tensor *grad_input, const kldiv_tensor *grad_target);
int kldiv_runtime_forward_backward(kldiv_runtime *runtime, const kldiv_tensor *input,
                                   const kldiv_tensor *target, kldiv_reduction reduction,
                                   int log_target, const kldiv_tensor *out,
                                   const kldiv_tensor *grad_input);

typedef struct {
    uint64_t hits;        /* calls served by a kernel already in memory */
    uint64_t misses;      /* JIT kernels not in memory when asked for */
    uint64_t disk_hits;   /* ... of which loaded from the disk cache */
    uint64_t compiles;    /* ... of which compiled */
    uint64_t failures;    /* compiles that failed */
    uint64_t evictions;   /* kernels dropped from memory */
    uint64_t aot_calls;   /* calls served by AOT kernels */
    double compile_seconds;
    uint64_t entries;     /* kernels in memory now */
    uint64_t code_bytes;  /* their object code */
} kldiv_cache_stats_t;

/* Statistics of `runtime`'s kernel caches (NULL: the default runtime). */
int kldiv_cache_stats(const kldiv_runtime *runtime, kldiv_cache_stats_t *stats);

/* ---- CUDA tensors -------------------------------------------------------
 *
 * Tensors with KLDIV_DEVICE_CUDA hold device memory from the CUDA runtime or
 * driver (cudaMalloc, PyTorch's allocator), all on one GPU. Kernels run in
 * that GPU's primary context (the CUDA runtime API's) on the call's stream and
 * return without waiting for the GPU, as PyTorch's CUDA operators do; a
 * reduced loss is written to device memory, nothing passes through the host.
 * The driver is loaded when a CUDA tensor is first passed; without a driver or
 * GPU the call fails with KLDIV_ERROR_DEVICE. As with any asynchronous CUDA
 * work, a fault on the GPU after a call has returned is reported by later
 * CUDA calls on that context. */

/* 1 when this build has CUDA kernels (it says nothing of a GPU being present). */
int kldiv_cuda_in_build(void);

/* The stream of `runtime`'s CUDA calls (NULL runtime: the default runtime). */
int kldiv_runtime_set_cuda_stream(kldiv_runtime *runtime, void *stream);

/* The calling thread's stream for its CUDA calls, over the runtime's (per
 * thread, like PyTorch's current stream); clear to return to the runtime's. */
void kldiv_set_thread_cuda_stream(void *stream);
void kldiv_clear_thread_cuda_stream(void);

#ifdef __cplusplus
}
#endif

#endif /* KLDIV_KLDIV_H */
