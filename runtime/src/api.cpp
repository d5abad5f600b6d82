// The C++ API: thin wrappers over dispatch.
#include "dispatch.h"
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
    runtime::forward(input, target, reduction, log_target, out);
}

void kl_div_backward(const Tensor &grad_output, const Tensor &input, const Tensor &target, Reduction reduction,
                     bool log_target, const Tensor *grad_input, const Tensor *grad_target) {
    runtime::backward(grad_output, input, target, reduction, log_target, grad_input, grad_target);
}

void kl_div_forward_backward(const Tensor &input, const Tensor &target, const Tensor &out, const Tensor &grad_input,
                             Reduction reduction, bool log_target) {
    runtime::forward_backward(input, target, reduction, log_target, out, grad_input);
}

void kl_div(const Tensor &input, const Tensor &target, const Tensor &out, const FunctionalOptions &options) {
    // The 'mean' warning comes from resolve_functional, so the kernel call
    // below must not warn again: route Mean through the same path silently.
    const ResolvedReduction resolved = resolve_functional(options);
    runtime::forward(input, target, resolved.reduction, options.log_target, out, /*warn_mean=*/false);
    if (resolved.divide_by_batch && !input.sizes.empty()) {
        runtime::scale_in_place(out, 1.0 / (double)input.sizes[0]);
    }
}

}  // namespace kldiv
