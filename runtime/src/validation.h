// Checks of tensors at the library boundary, shared by the loss's passes and
// the distillation passes (kldiv::Tensor arguments convert to views). Each
// fails with PyTorch's wording where PyTorch has one.
#pragma once

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "kldiv/kldiv.hpp"
#include "tensor_view.h"

namespace kldiv::runtime {

bool known_dtype(DType dtype);
// Rank, dtype, device, sizes, strides and reach of one tensor.
void check_tensor(const TensorView &t, const char *name);
void check_same_dtype(const TensorView &a, const char *a_name, const TensorView &b, const char *b_name);
const char *device_name(Device device);
std::string shape_text(Extents sizes);
void check_shape(const TensorView &t, const char *name, Extents expected);
bool overlaps(const TensorView &a, const TensorView &b);
bool same_view(const TensorView &a, const TensorView &b);
// Outputs must not write one element twice, and may share memory with an
// input only as the very same view.
void check_outputs(NamedViews outputs, NamedViews inputs);
void check_reduction(Reduction reduction);

}  // namespace kldiv::runtime
