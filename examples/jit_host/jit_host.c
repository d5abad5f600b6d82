/* A host application that JIT-compiles kldiv kernels through the C ABI.
 *
 * It creates a runtime whose kernels all come from the JIT (specialised to the
 * shape of each call), runs the loss, its gradients and the fused pass on
 * generated data, checks every result against a float64 reference computed
 * here, and prints where the kernels came from. Exit status 0 when every
 * check passes.
 *
 *   jit_host [rows cols]        (default 64 x 1000; KLDIV_CACHE_DIR picks the cache) */
#include <kldiv/kldiv.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static double pointwise(double x, double t) { return t > 0 ? t * (log(t) - x) : 0.0; }

static int close_enough(const char *what, double got, double want, double tolerance) {
    const double error = fabs(got - want);
    if (error <= tolerance * (1.0 + fabs(want))) return 1;
    fprintf(stderr, "jit_host: %s = %.9g, reference %.9g\n", what, got, want);
    return 0;
}

static int check(int status, const char *call) {
    if (status == KLDIV_OK) return 1;
    fprintf(stderr, "jit_host: %s failed (%d): %s\n", call, status, kldiv_last_error());
    return 0;
}

static void print_warning(const char *message, void *user_data) {
    (void)user_data;
    fprintf(stderr, "jit_host: warning: %s\n", message);
}

int main(int argc, char **argv) {
    const int64_t rows = argc > 2 ? atoll(argv[1]) : 64, cols = argc > 2 ? atoll(argv[2]) : 1000;
    const int64_t n = rows * cols;
    if (rows <= 0 || cols <= 0) {
        fprintf(stderr, "usage: jit_host [rows cols]\n");
        return 2;
    }
    float *input = malloc(n * sizeof(float)), *target = malloc(n * sizeof(float));
    float *loss = malloc(n * sizeof(float)), *grad = malloc(n * sizeof(float)), *grad_fused = malloc(n * sizeof(float));
    if (!input || !target || !loss || !grad || !grad_fused) return 1;
    unsigned state = 12345u;
    for (int64_t i = 0; i < n; i++) {
        state = state * 1664525u + 1013904223u;
        const double u = (state >> 8) / 16777216.0;
        input[i] = (float)(log(u + 0.01) - 1.0);
        target[i] = (float)(u / cols);
    }

    kldiv_runtime_options options = {0};
    options.specialize = KLDIV_SPECIALIZE_ALWAYS;
    options.jit_generic = 1;
    options.warning_handler = print_warning;
    kldiv_runtime *runtime = kldiv_runtime_create(&options);
    if (!runtime) {
        fprintf(stderr, "jit_host: kldiv_runtime_create failed: %s\n", kldiv_last_error());
        return 1;
    }

    const int64_t sizes[2] = {rows, cols}, strides[2] = {cols, 1};
    const kldiv_tensor x = {input, KLDIV_FLOAT32, 2, sizes, strides, KLDIV_DEVICE_CPU};
    const kldiv_tensor t = {target, KLDIV_FLOAT32, 2, sizes, strides, KLDIV_DEVICE_CPU};
    const kldiv_tensor l = {loss, KLDIV_FLOAT32, 2, sizes, strides, KLDIV_DEVICE_CPU};
    const kldiv_tensor gi = {grad, KLDIV_FLOAT32, 2, sizes, strides, KLDIV_DEVICE_CPU};
    const kldiv_tensor gf = {grad_fused, KLDIV_FLOAT32, 2, sizes, strides, KLDIV_DEVICE_CPU};
    float batchmean = 0, fused = 0, one = 1;
    const kldiv_tensor scalar = {&batchmean, KLDIV_FLOAT32, 0, NULL, NULL, KLDIV_DEVICE_CPU};
    const kldiv_tensor fused_scalar = {&fused, KLDIV_FLOAT32, 0, NULL, NULL, KLDIV_DEVICE_CPU};
    const kldiv_tensor grad_output = {&one, KLDIV_FLOAT32, 0, NULL, NULL, KLDIV_DEVICE_CPU};

    int ok = check(kldiv_runtime_forward(runtime, &x, &t, KLDIV_REDUCTION_NONE, 0, &l), "forward none") &&
             check(kldiv_runtime_forward(runtime, &x, &t, KLDIV_REDUCTION_BATCHMEAN, 0, &scalar), "forward batchmean") &&
             check(kldiv_runtime_backward(runtime, &grad_output, &x, &t, KLDIV_REDUCTION_BATCHMEAN, 0, &gi, NULL),
                   "backward batchmean") &&
             check(kldiv_runtime_forward_backward(runtime, &x, &t, KLDIV_REDUCTION_BATCHMEAN, 0, &fused_scalar, &gf),
                   "forward_backward batchmean");

    double sum = 0;
    for (int64_t i = 0; ok && i < n; i++) {
        const double p = pointwise(input[i], target[i]);
        sum += p;
        ok = close_enough("loss element", loss[i], p, 1e-5) &&
             close_enough("grad_input element", grad[i], -(double)target[i] / rows, 1e-6) &&
             close_enough("fused grad_input element", grad_fused[i], -(double)target[i] / rows, 1e-6);
    }
    ok = ok && close_enough("batchmean loss", batchmean, sum / rows, 1e-5) &&
         close_enough("fused batchmean loss", fused, sum / rows, 1e-5);

    kldiv_cache_stats_t stats;
    if (ok && check(kldiv_cache_stats(runtime, &stats), "cache_stats")) {
        printf("jit_host: %lld x %lld float32: loss %.6f; kernels: %llu compiled, %llu from disk, %llu memory hits "
               "(%.3f s compiling)\n",
               (long long)rows, (long long)cols, batchmean, (unsigned long long)stats.compiles,
               (unsigned long long)stats.disk_hits, (unsigned long long)stats.hits, stats.compile_seconds);
    }
    kldiv_runtime_destroy(runtime);
    free(input), free(target), free(loss), free(grad), free(grad_fused);
    if (!ok) return 1;
    printf("jit_host: all results match the float64 reference\n");
    return 0;
}
