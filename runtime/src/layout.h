// From PyTorch-style strided tensors to the 4-d views the kernels take:
// broadcasting, dropping unit dimensions, ordering and coalescing dimensions,
// and cutting the work into pieces within Halide 14's int32 limits.
#pragma once

#include <array>
#include <cstdint>

#include "function_ref.h"
#include "tensor_view.h"

namespace kldiv::runtime {

constexpr int kKernelRank = 4;
// Operands of one kernel call: a backward pass's per-element grad_output,
// input, target and both gradients.
constexpr size_t kMaxOperands = 5;

// Broadcast shape of two shapes, or fail with PyTorch's message.
Dims broadcast_shapes(Extents a, Extents b);

// Strides of a tensor of `sizes` viewed in the broadcast `shape` (0 where broadcast).
void expand_strides(Extents sizes, Extents strides, Extents shape, Dims &out);
inline Dims expand_strides(Extents sizes, Extents strides, Extents shape) {
    Dims out;
    expand_strides(sizes, strides, shape, out);
    return out;
}

// One kernel call: every operand viewed with the same 4 extents.
struct Piece {
    int32_t extent[kKernelRank];
    InlineVector<int64_t, kMaxOperands> offset;                               // per operand, in elements
    InlineVector<std::array<int32_t, kKernelRank>, kMaxOperands> stride;      // per operand
};

// Limits of one kernel call (Halide 14 without large_buffers): elements in a
// call and the span of indices an operand covers both fit in int32, and an
// extent leaves room for the summation tree's rounding up to whole chunks.
struct PieceLimits {
    int64_t max_extent = int64_t(1) << 30;
    // Dimensions `outer_from` and up (CUDA grids hold at most 65535 blocks
    // in y and z).
    int64_t max_outer_extent = int64_t(1) << 30;
    size_t outer_from = 1;
    int64_t max_elements = (int64_t(1) << 31) - 1;
    int64_t max_span = (int64_t(1) << 31) - 1;
};

// Calls `run` for pieces covering `shape` (numel > 0); `strides[k]` are operand
// k's strides in that shape (at most kMaxOperands operands). Operand
// `order_by` decides the dimension order (an output's gives the best write
// pattern), the others break ties.
void for_each_piece(Extents shape, Span<const Extents> strides, size_t order_by,
                    FunctionRef<void(const Piece &)> run, const PieceLimits &limits = {});

// Whether a CUDA call may take an `aligned` kernel (KernelSpec::aligned): the
// piece is one run (dimensions 1 to 3 of extent 1) with unit stride in every
// operand, and each operand's first element (`starts`, in operand order) is at
// a multiple of `alignment` bytes.
bool aligned_run(const Piece &piece, Span<const void *const> starts, int alignment);

// Calls fn(i, offset) for every element of `sizes` in row-major order i, with
// its offset under `strides` (host loops over results and gradients).
template<typename F>
void for_each_offset(Extents sizes, Extents strides, F &&fn) {
    Dims idx(sizes.size(), 0);
    int64_t n = 1;
    for (int64_t s : sizes) n *= s;
    for (int64_t i = 0; i < n; i++) {
        int64_t offset = 0;
        for (size_t d = 0; d < idx.size(); d++) offset += idx[d] * strides[d];
        fn(i, offset);
        for (int d = (int)idx.size() - 1; d >= 0 && ++idx[d] == sizes[d]; d--) idx[d] = 0;
    }
}

}  // namespace kldiv::runtime
