// Checks of tensors at the library boundary, shared by the loss's passes and
// the distillation passes. Each fails with PyTorch's wording where PyTorch
// has one.
#pragma once

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "kldiv/kldiv.hpp"

namespace kldiv::runtime {

bool known_dtype(DType dtype);
int64_t checked_numel(const Tensor &t, const char *name);
// Bytes from `data` to one past the furthest element (nothing on overflow).
std::optional<int64_t> reach_bytes(const Tensor &t);
// Rank, dtype, device, sizes, strides and reach of one tensor.
void check_tensor(const Tensor &t, const char *name);
void check_same_dtype(const Tensor &a, const char *a_name, const Tensor &b, const char *b_name);
const char *device_name(Device device);
std::string shape_text(const std::vector<int64_t> &sizes);
void check_shape(const Tensor &t, const char *name, const std::vector<int64_t> &expected);
bool overlaps(const Tensor &a, const Tensor &b);
bool same_view(const Tensor &a, const Tensor &b);
// Outputs must not write one element twice, and may share memory with an
// input only as the very same view.
void check_outputs(const std::vector<std::pair<const Tensor *, const char *>> &outputs,
                   const std::vector<std::pair<const Tensor *, const char *>> &inputs);
void check_reduction(Reduction reduction);

}  // namespace kldiv::runtime
