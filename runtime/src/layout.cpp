#include "layout.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "errors.h"

namespace kldiv::runtime {

std::vector<int64_t> broadcast_shapes(const std::vector<int64_t> &a, const std::vector<int64_t> &b) {
    const size_t rank = std::max(a.size(), b.size());
    std::vector<int64_t> shape(rank);
    // From the right, as PyTorch's infer_size: the rightmost mismatch is reported.
    for (size_t i = rank; i-- > 0;) {
        const size_t from_end = rank - 1 - i;
        const int64_t size_a = from_end < a.size() ? a[a.size() - 1 - from_end] : 1;
        const int64_t size_b = from_end < b.size() ? b[b.size() - 1 - from_end] : 1;
        if (size_a != size_b && size_a != 1 && size_b != 1) {
            fail(ErrorCode::Shape, "The size of tensor a (" + std::to_string(size_a) +
                                       ") must match the size of tensor b (" + std::to_string(size_b) +
                                       ") at non-singleton dimension " + std::to_string(i));
        }
        shape[i] = size_a == 1 ? size_b : size_a;
    }
    return shape;
}

std::vector<int64_t> expand_strides(const std::vector<int64_t> &sizes, const std::vector<int64_t> &strides,
                                    const std::vector<int64_t> &shape) {
    std::vector<int64_t> out(shape.size(), 0);
    const size_t lead = shape.size() - sizes.size();
    for (size_t i = 0; i < sizes.size(); i++) {
        out[lead + i] = (sizes[i] == 1 && shape[lead + i] != 1) ? 0 : strides[i];
    }
    return out;
}

namespace {

struct Dim {
    int64_t size;
    std::vector<int64_t> stride;  // per operand
};

// Innermost first: unit dimensions dropped, ordered by operand `order_by`'s
// stride (then the others'), adjacent dimensions merged where every operand allows.
std::vector<Dim> normalise(const std::vector<int64_t> &shape, const std::vector<std::vector<int64_t>> &strides,
                           size_t order_by) {
    std::vector<Dim> dims;
    for (int d = (int)shape.size() - 1; d >= 0; d--) {
        if (shape[d] == 1) continue;
        Dim dim{shape[d], {}};
        for (const auto &s : strides) dim.stride.push_back(s[d]);
        dims.push_back(dim);
    }
    // A broadcast (stride 0) dimension sorts outermost for that operand: the
    // other operands' memory order then decides.
    auto key = [](int64_t stride) { return stride == 0 ? INT64_MAX : stride; };
    std::stable_sort(dims.begin(), dims.end(), [&](const Dim &a, const Dim &b) {
        if (key(a.stride[order_by]) != key(b.stride[order_by])) return key(a.stride[order_by]) < key(b.stride[order_by]);
        for (size_t k = 0; k < a.stride.size(); k++) {
            if (key(a.stride[k]) != key(b.stride[k])) return key(a.stride[k]) < key(b.stride[k]);
        }
        return false;
    });
    std::vector<Dim> merged;
    for (const Dim &dim : dims) {
        if (!merged.empty()) {
            Dim &inner = merged.back();
            bool mergeable = true;
            for (size_t k = 0; k < dim.stride.size(); k++) {
                mergeable = mergeable && dim.stride[k] == inner.stride[k] * inner.size;
            }
            if (mergeable) {
                inner.size *= dim.size;
                continue;
            }
        }
        merged.push_back(dim);
    }
    return merged;
}

}  // namespace

void for_each_piece(const std::vector<int64_t> &shape, const std::vector<std::vector<int64_t>> &strides,
                    size_t order_by, const std::function<void(const Piece &)> &run, const PieceLimits &limits) {
    const size_t operands = strides.size();
    std::vector<Dim> dims = normalise(shape, strides, order_by);

    // The kernel takes the innermost dimensions while they fit; a dimension that
    // fits only in part is cut, and it and everything outside become loops here.
    std::vector<Dim> kernel_dims;
    std::vector<Dim> loops;  // innermost first; size = number of steps
    std::vector<int64_t> loop_step;
    int64_t elements = 1;
    std::vector<int64_t> span(operands, 0);
    bool full = false;
    for (const Dim &dim : dims) {
        if (full || (int)kernel_dims.size() == kKernelRank) {
            loops.push_back(dim);
            loop_step.push_back(1);
            continue;
        }
        int64_t fit = std::min({dim.size, limits.max_extent, limits.max_elements / elements});
        if (kernel_dims.size() >= limits.outer_from) fit = std::min(fit, limits.max_outer_extent);
        for (size_t k = 0; k < operands; k++) {
            const int64_t s = std::llabs(dim.stride[k]);
            if (s > 0) fit = std::min(fit, (limits.max_span - span[k]) / s + 1);
        }
        if (fit >= dim.size) {
            kernel_dims.push_back(dim);
            elements *= dim.size;
            for (size_t k = 0; k < operands; k++) span[k] += (dim.size - 1) * std::llabs(dim.stride[k]);
            continue;
        }
        full = true;
        if (fit <= 1) {  // nothing of it fits: loop over it entirely
            loops.push_back(dim);
            loop_step.push_back(1);
            continue;
        }
        Dim piece = dim;
        piece.size = fit;
        kernel_dims.push_back(piece);
        Dim outer = dim;
        outer.size = (dim.size + fit - 1) / fit;
        for (auto &s : outer.stride) s *= fit;
        loops.push_back(outer);
        loop_step.push_back(fit);
    }

    Piece piece;
    piece.offset.assign(operands, 0);
    piece.stride.assign(operands, {0, 0, 0, 0});
    for (int d = 0; d < kKernelRank; d++) {
        piece.extent[d] = d < (int)kernel_dims.size() ? (int32_t)kernel_dims[d].size : 1;
        for (size_t k = 0; k < operands; k++) {
            piece.stride[k][d] = d < (int)kernel_dims.size() ? (int32_t)kernel_dims[d].stride[k] : 0;
        }
    }
    // The cut dimension (if any) is kernel_dims.back() when loops[0] came from it.
    const bool cut = !loops.empty() && loop_step[0] > 1;
    const int64_t cut_size = cut ? dims[kernel_dims.size() - 1].size : 0;
    const int32_t cut_extent = cut ? piece.extent[kernel_dims.size() - 1] : 0;

    std::vector<int64_t> index(loops.size(), 0);
    while (true) {
        Piece current = piece;
        for (size_t l = 0; l < loops.size(); l++) {
            for (size_t k = 0; k < operands; k++) current.offset[k] += index[l] * loops[l].stride[k];
        }
        if (cut) {
            const int64_t remaining = cut_size - index[0] * loop_step[0];
            current.extent[kernel_dims.size() - 1] = (int32_t)std::min<int64_t>(cut_extent, remaining);
        }
        run(current);
        size_t l = 0;
        while (l < loops.size() && ++index[l] == loops[l].size) index[l++] = 0;
        if (l == loops.size()) break;
    }
}

bool aligned_run(const Piece &piece, const std::vector<const void *> &starts, int alignment) {
    if (piece.extent[1] != 1 || piece.extent[2] != 1 || piece.extent[3] != 1) return false;
    if (starts.size() != piece.stride.size()) return false;
    for (size_t j = 0; j < starts.size(); j++) {
        if (piece.stride[j][0] != 1 || reinterpret_cast<uintptr_t>(starts[j]) % alignment != 0) return false;
    }
    return true;
}

}  // namespace kldiv::runtime
