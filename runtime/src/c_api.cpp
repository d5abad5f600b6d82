// The C ABI: converts kldiv_tensor to Tensor and exceptions to status codes.
#include <mutex>
#include <optional>

#include "dispatch.h"
#include "distill.h"
#include "errors.h"
#include "kldiv/kldiv.h"
#include "kldiv/kldiv.hpp"
#include "tensor_view.h"

using namespace kldiv;

namespace {

// Borrows the caller's sizes and strides for the call: nothing is copied.
runtime::TensorView to_view(const kldiv_tensor *t, const char *name) {
    if (t == nullptr) runtime::fail(ErrorCode::InvalidArgument, std::string(name) + " is null");
    if (t->rank < 0) runtime::fail(ErrorCode::InvalidArgument, std::string(name) + ": negative rank");
    if (t->rank > KLDIV_MAX_RANK) {
        runtime::fail(ErrorCode::InvalidArgument, std::string(name) + ": rank " + std::to_string(t->rank) +
                                                      " is over the limit of " + std::to_string(KLDIV_MAX_RANK));
    }
    if (t->rank > 0 && (t->sizes == nullptr || t->strides == nullptr)) {
        runtime::fail(ErrorCode::InvalidArgument, std::string(name) + ": sizes or strides is null");
    }
    runtime::TensorView out;
    out.data = t->data;
    switch ((int)t->dtype) {
    case KLDIV_FLOAT32: out.dtype = DType::Float32; break;
    case KLDIV_FLOAT64: out.dtype = DType::Float64; break;
    case KLDIV_FLOAT16: out.dtype = DType::Float16; break;
    case KLDIV_BFLOAT16: out.dtype = DType::BFloat16; break;
    default:
        runtime::fail(ErrorCode::DType, std::string(name) + ": unknown dtype " + std::to_string((int)t->dtype) +
                                            " (kl_div supports float32, float64, float16 and bfloat16)");
    }
    switch ((int)t->device) {
    case KLDIV_DEVICE_CPU: out.device = Device::CPU; break;
    case KLDIV_DEVICE_CUDA: out.device = Device::CUDA; break;
    default: runtime::fail(ErrorCode::Device, std::string(name) + ": unknown device " + std::to_string((int)t->device));
    }
    out.sizes = runtime::Extents(t->sizes, (size_t)t->rank);
    out.strides = runtime::Extents(t->strides, (size_t)t->rank);
    return out;
}

// For the distillation passes, which keep kldiv::Tensor.
Tensor to_tensor(const kldiv_tensor *t, const char *name) { return runtime::owned(to_view(t, name)); }

Reduction to_reduction(kldiv_reduction r) {
    switch ((int)r) {
    case KLDIV_REDUCTION_NONE: return Reduction::None;
    case KLDIV_REDUCTION_MEAN: return Reduction::Mean;
    case KLDIV_REDUCTION_SUM: return Reduction::Sum;
    case KLDIV_REDUCTION_BATCHMEAN: return Reduction::BatchMean;
    }
    runtime::fail(ErrorCode::InvalidArgument, std::to_string((int)r) + " is not a valid value for reduction");
}

template<typename F>
int guarded(F &&body) {
    try {
        body();
        runtime::clear_last_error();
        return KLDIV_OK;
    } catch (const Error &e) {
        runtime::set_last_error(e.what());
        return (int)e.code();
    } catch (const std::bad_alloc &) {
        runtime::set_last_error("out of memory");
        return KLDIV_ERROR_INTERNAL;
    } catch (const std::exception &e) {
        runtime::set_last_error(e.what());
        return KLDIV_ERROR_INTERNAL;
    }
}

Runtime &runtime_or_default(kldiv_runtime *runtime);

}  // namespace

struct kldiv_runtime {
    explicit kldiv_runtime(const RuntimeOptions &options) : runtime(options) {}
    Runtime runtime;
};

namespace {

Runtime &runtime_or_default(kldiv_runtime *runtime) {
    return runtime ? runtime->runtime : Runtime::process_default();
}

RuntimeOptions to_options(const kldiv_runtime_options &c) {
    RuntimeOptions o;
    if (c.cache_dir) o.cache_dir = c.cache_dir;
    if (c.disk_cache_bytes) o.disk_cache_bytes = c.disk_cache_bytes;
    if (c.memory_cache_entries) o.memory_cache_entries = c.memory_cache_entries;
    if (c.memory_cache_bytes) o.memory_cache_bytes = c.memory_cache_bytes;
    switch ((int)c.specialize) {
    case KLDIV_SPECIALIZE_DEFAULT: break;
    case KLDIV_SPECIALIZE_NEVER: o.specialize = Specialize::Never; break;
    case KLDIV_SPECIALIZE_ALWAYS: o.specialize = Specialize::Always; break;
    case KLDIV_SPECIALIZE_AUTO: o.specialize = Specialize::Auto; break;
    default:
        runtime::fail(ErrorCode::InvalidArgument,
                      std::to_string((int)c.specialize) + " is not a valid value for specialize");
    }
    if (c.specialize_after < 0) runtime::fail(ErrorCode::InvalidArgument, "specialize_after is negative");
    if (c.specialize_after) o.specialize_after = c.specialize_after;
    if (c.specialize_work) o.specialize_work = c.specialize_work;
    o.jit = c.aot_only == 0;
    o.generic_from_aot = c.jit_generic == 0;
    o.blocking = c.no_blocking == 0;
    if (c.target) o.target = c.target;
    if (c.cpu_target) o.cpu_target = c.cpu_target;
    if (c.threads < 0) runtime::fail(ErrorCode::InvalidArgument, "threads is negative");
    o.threads = c.threads;
    o.cuda_stream = c.cuda_stream;
    if (c.cuda_jit) o.cuda_jit = c.cuda_jit > 0;
    if (c.warning_handler) {
        kldiv_warning_handler handler = c.warning_handler;
        void *user_data = c.warning_user_data;
        o.warning_handler = [handler, user_data](const std::string &message) { handler(message.c_str(), user_data); };
    }
    return o;
}

}  // namespace

extern "C" {

int kldiv_forward(const kldiv_tensor *input, const kldiv_tensor *target, kldiv_reduction reduction, int log_target,
                  const kldiv_tensor *out) {
    return kldiv_runtime_forward(nullptr, input, target, reduction, log_target, out);
}

int kldiv_backward(const kldiv_tensor *grad_output, const kldiv_tensor *input, const kldiv_tensor *target,
                   kldiv_reduction reduction, int log_target, const kldiv_tensor *grad_input,
                   const kldiv_tensor *grad_target) {
    return kldiv_runtime_backward(nullptr, grad_output, input, target, reduction, log_target, grad_input,
                                  grad_target);
}

int kldiv_forward_backward(const kldiv_tensor *input, const kldiv_tensor *target, kldiv_reduction reduction,
                           int log_target, const kldiv_tensor *out, const kldiv_tensor *grad_input) {
    return kldiv_runtime_forward_backward(nullptr, input, target, reduction, log_target, out, grad_input);
}

kldiv_runtime *kldiv_runtime_create(const kldiv_runtime_options *options) {
    kldiv_runtime *created = nullptr;
    const int status = guarded([&] {
        const kldiv_runtime_options defaults{};
        created = new kldiv_runtime(to_options(options ? *options : defaults));
    });
    return status == KLDIV_OK ? created : nullptr;
}

void kldiv_runtime_destroy(kldiv_runtime *runtime) { delete runtime; }

// The loss's passes go to the dispatcher with views of the caller's tensors.
// The arguments are checked one at a time, last first: the order in which
// these calls have always reported a call with several faults.

int kldiv_runtime_forward(kldiv_runtime *runtime, const kldiv_tensor *input, const kldiv_tensor *target,
                          kldiv_reduction reduction, int log_target, const kldiv_tensor *out) {
    return guarded([&] {
        runtime::KernelCache &cache = runtime_or_default(runtime).cache();
        const Reduction r = to_reduction(reduction);
        const runtime::TensorView o = to_view(out, "out");
        const runtime::TensorView t = to_view(target, "target");
        const runtime::TensorView i = to_view(input, "input");
        runtime::forward(cache, i, t, r, log_target != 0, o);
    });
}

int kldiv_runtime_backward(kldiv_runtime *runtime, const kldiv_tensor *grad_output, const kldiv_tensor *input,
                           const kldiv_tensor *target, kldiv_reduction reduction, int log_target,
                           const kldiv_tensor *grad_input, const kldiv_tensor *grad_target) {
    return guarded([&] {
        runtime::TensorView gi, gt;
        if (grad_input) gi = to_view(grad_input, "grad_input");
        if (grad_target) gt = to_view(grad_target, "grad_target");
        runtime::KernelCache &cache = runtime_or_default(runtime).cache();
        const Reduction r = to_reduction(reduction);
        const runtime::TensorView t = to_view(target, "target");
        const runtime::TensorView i = to_view(input, "input");
        const runtime::TensorView go = to_view(grad_output, "grad_output");
        runtime::backward(cache, go, i, t, r, log_target != 0, grad_input ? &gi : nullptr,
                          grad_target ? &gt : nullptr);
    });
}

int kldiv_runtime_forward_backward(kldiv_runtime *runtime, const kldiv_tensor *input, const kldiv_tensor *target,
                                   kldiv_reduction reduction, int log_target, const kldiv_tensor *out,
                                   const kldiv_tensor *grad_input) {
    return guarded([&] {
        runtime::KernelCache &cache = runtime_or_default(runtime).cache();
        const Reduction r = to_reduction(reduction);
        const runtime::TensorView gi = to_view(grad_input, "grad_input");
        const runtime::TensorView o = to_view(out, "out");
        const runtime::TensorView t = to_view(target, "target");
        const runtime::TensorView i = to_view(input, "input");
        runtime::forward_backward(cache, i, t, r, log_target != 0, o, gi);
    });
}

int kldiv_cache_stats(const kldiv_runtime *runtime, kldiv_cache_stats_t *stats) {
    return guarded([&] {
        if (stats == nullptr) runtime::fail(ErrorCode::InvalidArgument, "stats is null");
        const CacheStats s = runtime_or_default(const_cast<kldiv_runtime *>(runtime)).stats();
        *stats = kldiv_cache_stats_t{s.hits,      s.misses,          s.disk_hits, s.compiles,
                                     s.failures,  s.evictions,       s.aot_calls, s.compile_seconds,
                                     s.entries,   s.code_bytes};
    });
}

const char *kldiv_last_error(void) { return runtime::last_error(); }

void kldiv_set_warning_handler(kldiv_warning_handler handler, void *user_data) {
    if (handler == nullptr) {
        set_warning_handler(nullptr);
        return;
    }
    set_warning_handler([handler, user_data](const std::string &message) { handler(message.c_str(), user_data); });
}

void kldiv_set_num_threads(int threads) { set_num_threads(threads); }

const char *kldiv_cpu_target(void) {
    static const std::string target = cpu_target();
    return target.c_str();
}

int kldiv_cuda_in_build(void) { return cuda_available_in_build() ? 1 : 0; }

int kldiv_runtime_set_cuda_stream(kldiv_runtime *runtime, void *stream) {
    return guarded([&] { runtime_or_default(runtime).set_cuda_stream(stream); });
}

void kldiv_set_thread_cuda_stream(void *stream) { set_thread_cuda_stream(stream); }

void kldiv_clear_thread_cuda_stream(void) { clear_thread_cuda_stream(); }

}  // extern "C"

namespace {

DistillOptions to_distill_options(const kldiv_distill_options *options) {
    if (options == nullptr) runtime::fail(ErrorCode::InvalidArgument, "options is null");
    DistillOptions o;
    o.temperature = options->temperature == 0.0 ? 1.0 : options->temperature;
    o.reduction = to_reduction(options->reduction);
    o.reverse = options->reverse != 0;
    o.temperature_squared = options->temperature_squared != 0;
    o.row_mask = options->row_mask;
    return o;
}

}  // namespace

int kldiv_distill_forward(const kldiv_tensor *student, const kldiv_tensor *teacher,
                          const kldiv_distill_options *options, const kldiv_tensor *out, double *row_stats) {
    return guarded([&] {
        Runtime::process_default().distill_kl(to_tensor(student, "student"), to_tensor(teacher, "teacher"),
                                              to_tensor(out, "out"), to_distill_options(options), row_stats);
    });
}

int kldiv_distill_forward_backward(const kldiv_tensor *student, const kldiv_tensor *teacher,
                                   const kldiv_distill_options *options, const kldiv_tensor *out,
                                   const kldiv_tensor *grad_student, double *row_stats) {
    return guarded([&] {
        Runtime::process_default().distill_kl_forward_backward(
            to_tensor(student, "student"), to_tensor(teacher, "teacher"), to_tensor(out, "out"),
            to_tensor(grad_student, "grad_student"), to_distill_options(options), row_stats);
    });
}

int kldiv_distill_backward(const kldiv_tensor *grad_output, const kldiv_tensor *student,
                           const kldiv_tensor *teacher, const kldiv_distill_options *options,
                           const double *row_stats, const kldiv_tensor *grad_student,
                           const kldiv_tensor *grad_teacher) {
    return guarded([&] {
        std::optional<Tensor> gs, gt;
        if (grad_student) gs = to_tensor(grad_student, "grad_student");
        if (grad_teacher) gt = to_tensor(grad_teacher, "grad_teacher");
        Runtime::process_default().distill_kl_backward(to_tensor(grad_output, "grad_output"),
                                                       to_tensor(student, "student"), to_tensor(teacher, "teacher"),
                                                       to_distill_options(options), row_stats, gs ? &*gs : nullptr,
                                                       gt ? &*gt : nullptr);
    });
}
