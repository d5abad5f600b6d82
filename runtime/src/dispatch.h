// Validation and execution of the three passes; kernels come from a KernelCache.
#pragma once

#include "kernel_cache.h"
#include "kldiv/kldiv.hpp"

namespace kldiv::runtime {

// `warn_mean`: emit PyTorch's 'mean' warning (the functional form warns itself).
void forward(KernelCache &cache, const Tensor &input, const Tensor &target, Reduction reduction, bool log_target,
             const Tensor &out, bool warn_mean = true);

void backward(KernelCache &cache, const Tensor &grad_output, const Tensor &input, const Tensor &target, Reduction reduction,
              bool log_target, const Tensor *grad_input, const Tensor *grad_target);

void forward_backward(KernelCache &cache, const Tensor &input, const Tensor &target, Reduction reduction, bool log_target,
                      const Tensor &out, const Tensor &grad_input);

// Multiplies every element of `tensor` by `factor` (the functional form's
// batchmean quirk on a `none` result).
void scale_in_place(const Tensor &tensor, double factor);

}  // namespace kldiv::runtime
