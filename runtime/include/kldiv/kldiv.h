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

typedef enum { KLDIV_FLOAT32, KLDIV_FLOAT64, KLDIV_FLOAT16, KLDIV_BFLOAT16 } kldiv_dtype;

typedef enum {
    KLDIV_REDUCTION_NONE,
    KLDIV_REDUCTION_MEAN,
    KLDIV_REDUCTION_SUM,
    KLDIV_REDUCTION_BATCHMEAN
} kldiv_reduction;

typedef enum { KLDIV_DEVICE_CPU, KLDIV_DEVICE_CUDA } kldiv_device;

/* A strided view of memory. 16-bit data is given as raw uint16 bit patterns.
 * Strides are in elements; a rank-0 tensor has one element and may pass NULL
 * sizes and strides. */
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
    KLDIV_ERROR_INVALID_ARGUMENT = 1, /* null pointer, bad rank, negative stride, ... */
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

/* Name of the x86 feature level the AOT kernels run with on this CPU. */
const char *kldiv_cpu_target(void);

#ifdef __cplusplus
}
#endif

#endif /* KLDIV_KLDIV_H */
