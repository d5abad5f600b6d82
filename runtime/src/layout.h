// From PyTorch-style strided tensors to the 4-d views the kernels take:
// broadcasting, dropping unit dimensions, ordering and coalescing dimensions,
// and cutting the work into pieces within Halide 14's int32 limits.
#pragma once

#include <cstdint>
#include <array>
#include <functional>
#include <vector>

namespace kldiv::runtime {

constexpr int kKernelRank = 4;

// Broadcast shape of two shapes, or fail with PyTorch's message.
std::vector<int64_t> broadcast_shapes(const std::vector<int64_t> &a, const std::vector<int64_t> &b);

// Strides of a tensor of `sizes` viewed in the broadcast `shape` (0 where broadcast).
std::vector<int64_t> expand_strides(const std::vector<int64_t> &sizes, const std::vector<int64_t> &strides,
                                    const std::vector<int64_t> &shape);

// One kernel call: every operand viewed with the same 4 extents.
struct Piece {
    int32_t extent[kKernelRank];
    std::vector<int64_t> offset;                      // per operand, in elements
    std::vector<std::array<int32_t, kKernelRank>> stride;  // per operand
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
// k's strides in that shape. Operand `order_by` decides the dimension order
// (an output's gives the best write pattern), the others break ties.
void for_each_piece(const std::vector<int64_t> &shape, const std::vector<std::vector<int64_t>> &strides,
                    size_t order_by, const std::function<void(const Piece &)> &run,
                    const PieceLimits &limits = {});

// Whether a CUDA call may take an `aligned` kernel (KernelSpec::aligned): the
// piece is one run (dimensions 1 to 3 of extent 1) with unit stride in every
// operand, and each operand's first element (`starts`, in operand order) is at
// a multiple of `alignment` bytes.
bool aligned_run(const Piece &piece, const std::vector<const void *> &starts, int alignment);

// Calls fn(i, offset) for every element of `sizes` in row-major order i, with
// its offset under `strides` (host loops over results and gradients).
template<typename F>
void for_each_offset(const std::vector<int64_t> &sizes, const std::vector<int64_t> &strides, F &&fn) {
    std::vector<int64_t> idx(sizes.size(), 0);
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
