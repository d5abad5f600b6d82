// Validation and execution of the three passes; kernels come from a KernelCache.
// kldiv::Tensor arguments convert to views of themselves.
#pragma once

#include "kernel_cache.h"
#include "kldiv/kldiv.hpp"
#include "tensor_view.h"

namespace kldiv::runtime {

// `warn_mean`: emit PyTorch's 'mean' warning (the functional form warns itself).
void forward(KernelCache &cache, const TensorView &input, const TensorView &target, Reduction reduction,
             bool log_target, const TensorView &out, bool warn_mean = true);

void backward(KernelCache &cache, const TensorView &grad_output, const TensorView &input, const TensorView &target,
              Reduction reduction, bool log_target, const TensorView *grad_input, const TensorView *grad_target);

void forward_backward(KernelCache &cache, const TensorView &input, const TensorView &target, Reduction reduction,
                      bool log_target, const TensorView &out, const TensorView &grad_input);

// Multiplies every element of `tensor` by `factor` (the functional form's
// batchmean quirk on a `none` result).
void scale_in_place(const TensorView &tensor, double factor);

}  // namespace kldiv::runtime
