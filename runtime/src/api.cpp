// The C++ API: thin wrappers over dispatch.
#include <cstdlib>
#include <memory>

#include "cuda_device.h"
#include "dispatch.h"
#include "distill.h"
#include "errors.h"

namespace kldiv {

Tensor Tensor::contiguous(void *data, DType dtype, std::vector<int64_t> sizes) {
    Tensor t;
    t.data = data;
    t.dtype = dtype;
    t.strides.assign(sizes.size(), 1);
    for (int d = (int)sizes.size() - 2; d >= 0; d--) t.strides[d] = t.strides[d + 1] * std::max<int64_t>(sizes[d + 1], 1);
    t.sizes = std::move(sizes);
    return t;
}

int64_t Tensor::numel() const {
    int64_t n = 1;
    for (int64_t s : sizes) n *= s;
    return n;
}

void kl_div(const Tensor &input, const Tensor &target, const Tensor &out, Reduction reduction, bool log_target) {
    Runtime::process_default().kl_div(input, target, out, reduction, log_target);
}

void kl_div_backward(const Tensor &grad_output, const Tensor &input, const Tensor &target, Reduction reduction,
                     bool log_target, const Tensor *grad_input, const Tensor *grad_target) {
    Runtime::process_default().kl_div_backward(grad_output, input, target, reduction, log_target, grad_input,
                                               grad_target);
}

void kl_div_forward_backward(const Tensor &input, const Tensor &target, const Tensor &out, const Tensor &grad_input,
                             Reduction reduction, bool log_target) {
    Runtime::process_default().kl_div_forward_backward(input, target, out, grad_input, reduction, log_target);
}

Runtime::Runtime(RuntimeOptions options) : cache_(std::make_unique<runtime::KernelCache>(options)) {}

Runtime::~Runtime() = default;

void Runtime::kl_div(const Tensor &input, const Tensor &target, const Tensor &out, Reduction reduction,
                     bool log_target) {
    runtime::forward(*cache_, input, target, reduction, log_target, out);
}

void Runtime::kl_div_backward(const Tensor &grad_output, const Tensor &input, const Tensor &target,
                              Reduction reduction, bool log_target, const Tensor *grad_input,
                              const Tensor *grad_target) {
    const runtime::TensorView gi = grad_input ? runtime::TensorView(*grad_input) : runtime::TensorView();
    const runtime::TensorView gt = grad_target ? runtime::TensorView(*grad_target) : runtime::TensorView();
    runtime::backward(*cache_, grad_output, input, target, reduction, log_target, grad_input ? &gi : nullptr,
                      grad_target ? &gt : nullptr);
}

void Runtime::kl_div_forward_backward(const Tensor &input, const Tensor &target, const Tensor &out,
                                      const Tensor &grad_input, Reduction reduction, bool log_target) {
    runtime::forward_backward(*cache_, input, target, reduction, log_target, out, grad_input);
}

CacheStats Runtime::stats() const { return cache_->stats(); }
void Runtime::set_cuda_stream(void *stream) { cache_->set_cuda_stream(stream); }
void *Runtime::cuda_stream() const { return cache_->cuda_stream(); }

bool cuda_available_in_build() { return runtime::cuda::built_with_cuda(); }
void set_thread_cuda_stream(void *stream) { runtime::cuda::set_thread_stream(stream); }
void clear_thread_cuda_stream() { runtime::cuda::clear_thread_stream(); }
std::optional<void *> thread_cuda_stream() { return runtime::cuda::thread_stream(); }
const std::string &Runtime::target() const { return cache_->target(); }
const std::string &Runtime::cache_dir() const { return cache_->cache_dir(); }

namespace {

// Options of the process's default runtime: the defaults, with KLDIV_JIT
// choosing where kernels come from (KLDIV_SPECIALIZE and KLDIV_CACHE_DIR are
// read by every runtime).
RuntimeOptions process_default_options() {
    RuntimeOptions options;
    const char *jit = std::getenv("KLDIV_JIT");
    const std::string mode = jit ? jit : "";
    if (mode == "off") {
        options.jit = false;
    } else if (mode == "all") {
        options.generic_from_aot = false;
    } else if (!mode.empty() && mode != "auto") {
        runtime::warn("KLDIV_JIT: '" + mode + "' is not one of off, auto, all; using 'auto'");
    }
    return options;
}

}  // namespace

Runtime &Runtime::process_default() {
    // Never destroyed: kernels may still run during static destruction.
    static Runtime *instance = new Runtime(process_default_options());
    return *instance;
}

void Runtime::distill_kl(const Tensor &student, const Tensor &teacher, const Tensor &out,
                         const DistillOptions &options, double *row_stats) {
    runtime::distill_forward(*cache_, student, teacher, options, out, row_stats);
}

void Runtime::distill_kl_forward_backward(const Tensor &student, const Tensor &teacher, const Tensor &out,
                                          const Tensor &grad_student, const DistillOptions &options,
                                          double *row_stats) {
    runtime::distill_forward_backward(*cache_, student, teacher, options, out, grad_student, row_stats);
}

void Runtime::distill_kl_backward(const Tensor &grad_output, const Tensor &student, const Tensor &teacher,
                                  const DistillOptions &options, const double *row_stats, const Tensor *grad_student,
                                  const Tensor *grad_teacher) {
    runtime::distill_backward(*cache_, grad_output, student, teacher, options, row_stats, grad_student, grad_teacher);
}

void distill_kl(const Tensor &student, const Tensor &teacher, const Tensor &out, const DistillOptions &options,
                double *row_stats) {
    Runtime::process_default().distill_kl(student, teacher, out, options, row_stats);
}

void distill_kl_forward_backward(const Tensor &student, const Tensor &teacher, const Tensor &out,
                                 const Tensor &grad_student, const DistillOptions &options, double *row_stats) {
    Runtime::process_default().distill_kl_forward_backward(student, teacher, out, grad_student, options, row_stats);
}

void distill_kl_backward(const Tensor &grad_output, const Tensor &student, const Tensor &teacher,
                         const DistillOptions &options, const double *row_stats, const Tensor *grad_student,
                         const Tensor *grad_teacher) {
    Runtime::process_default().distill_kl_backward(grad_output, student, teacher, options, row_stats, grad_student,
                                                   grad_teacher);
}

void kl_div(const Tensor &input, const Tensor &target, const Tensor &out, const FunctionalOptions &options) {
    // The 'mean' warning comes from resolve_functional, so the kernel call
    // below must not warn again: route Mean through the same path silently.
    const ResolvedReduction resolved = resolve_functional(options);
    if (resolved.divide_by_batch && out.device == Device::CUDA) {
        runtime::fail(ErrorCode::InvalidArgument,
                      "the legacy size_average/reduce arguments with reduction='batchmean' are not supported for "
                      "CUDA tensors; pass reduction alone");
    }
    runtime::forward(Runtime::process_default().cache(), input, target, resolved.reduction, options.log_target, out,
                     /*warn_mean=*/false);
    if (resolved.divide_by_batch && !input.sizes.empty()) {
        runtime::scale_in_place(out, 1.0 / (double)input.sizes[0]);
    }
}

}  // namespace kldiv
