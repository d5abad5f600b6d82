#include "layout.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "errors.h"

namespace kldiv::runtime {

Dims broadcast_shapes(Extents a, Extents b) {
    const size_t rank = std::max(a.size(), b.size());
    Dims shape(rank, 0);
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

void expand_strides(Extents sizes, Extents strides, Extents shape, Dims &out) {
    out.assign(shape.size(), 0);
    const size_t lead = shape.size() - sizes.size();
    for (size_t i = 0; i < sizes.size(); i++) {
        out[lead + i] = (sizes[i] == 1 && shape[lead + i] != 1) ? 0 : strides[i];
    }
}

namespace {

struct Dim {
    int64_t size;
    int64_t stride[kMaxOperands];  // per operand
};

// A broadcast (stride 0) dimension sorts outermost for that operand: the
// other operands' memory order then decides.
int64_t sort_key(int64_t stride) { return stride == 0 ? INT64_MAX : stride; }

bool inner_before(const Dim &a, const Dim &b, size_t order_by, size_t operands) {
    if (sort_key(a.stride[order_by]) != sort_key(b.stride[order_by])) {
        return sort_key(a.stride[order_by]) < sort_key(b.stride[order_by]);
    }
    for (size_t k = 0; k < operands; k++) {
        if (sort_key(a.stride[k]) != sort_key(b.stride[k])) return sort_key(a.stride[k]) < sort_key(b.stride[k]);
    }
    return false;
}

// Writes `dims` innermost first: unit dimensions dropped, ordered by operand
// `order_by`'s stride (then the others'), adjacent dimensions merged where
// every operand allows. Returns how many there are.
size_t normalise(Extents shape, Span<const Extents> strides, size_t order_by, Dim *dims) {
    const size_t operands = strides.size();
    size_t n = 0;
    for (int d = (int)shape.size() - 1; d >= 0; d--) {
        if (shape[d] == 1) continue;
        Dim &dim = dims[n++];
        dim.size = shape[d];
        for (size_t k = 0; k < operands; k++) dim.stride[k] = strides[k][d];
    }
    // A stable insertion sort: std::stable_sort would take a heap buffer, and
    // there are at most KLDIV_MAX_RANK dimensions (nearly always a few).
    for (size_t i = 1; i < n; i++) {
        const Dim dim = dims[i];
        size_t j = i;
        for (; j > 0 && inner_before(dim, dims[j - 1], order_by, operands); j--) dims[j] = dims[j - 1];
        dims[j] = dim;
    }
    size_t merged = 0;
    for (size_t i = 0; i < n; i++) {
        if (merged > 0) {
            Dim &inner = dims[merged - 1];
            bool mergeable = true;
            for (size_t k = 0; k < operands; k++) {
                mergeable = mergeable && dims[i].stride[k] == inner.stride[k] * inner.size;
            }
            if (mergeable) {
                inner.size *= dims[i].size;
                continue;
            }
        }
        if (merged != i) dims[merged] = dims[i];
        merged++;
    }
    return merged;
}

}  // namespace

void for_each_piece(Extents shape, Span<const Extents> strides, size_t order_by,
                    FunctionRef<void(const Piece &)> run, const PieceLimits &limits) {
    const size_t operands = strides.size();
    if (operands > kMaxOperands) fail(ErrorCode::Internal, "a kernel call with more operands than it may have");
    if (shape.size() > (size_t)KLDIV_MAX_RANK) fail(ErrorCode::Internal, "a kernel call of too many dimensions");
    Dim dims[KLDIV_MAX_RANK];
    const size_t count = normalise(shape, strides, order_by, dims);

    // The kernel takes the innermost dimensions while they fit; a dimension that
    // fits only in part is cut, and it and everything outside become loops here.
    Dim kernel_dims[kKernelRank];
    size_t kernel_count = 0;
    Dim loops[KLDIV_MAX_RANK];  // innermost first; size = number of steps
    int64_t loop_step[KLDIV_MAX_RANK];
    size_t loop_count = 0;
    int64_t elements = 1;
    int64_t span[kMaxOperands] = {};
    bool full = false;
    for (size_t i = 0; i < count; i++) {
        const Dim &dim = dims[i];
        if (full || kernel_count == kKernelRank) {
            loops[loop_count] = dim;
            loop_step[loop_count++] = 1;
            continue;
        }
        int64_t fit = std::min({dim.size, limits.max_extent, limits.max_elements / elements});
        if (kernel_count >= limits.outer_from) fit = std::min(fit, limits.max_outer_extent);
        for (size_t k = 0; k < operands; k++) {
            const int64_t s = std::llabs(dim.stride[k]);
            if (s > 0) fit = std::min(fit, (limits.max_span - span[k]) / s + 1);
        }
        if (fit >= dim.size) {
            kernel_dims[kernel_count++] = dim;
            elements *= dim.size;
            for (size_t k = 0; k < operands; k++) span[k] += (dim.size - 1) * std::llabs(dim.stride[k]);
            continue;
        }
        full = true;
        if (fit <= 1) {  // nothing of it fits: loop over it entirely
            loops[loop_count] = dim;
            loop_step[loop_count++] = 1;
            continue;
        }
        Dim &piece = kernel_dims[kernel_count++];
        piece = dim;
        piece.size = fit;
        Dim &outer = loops[loop_count];
        outer = dim;
        outer.size = (dim.size + fit - 1) / fit;
        for (size_t k = 0; k < operands; k++) outer.stride[k] *= fit;
        loop_step[loop_count++] = fit;
    }

    Piece piece;
    for (size_t d = 0; d < kKernelRank; d++) piece.extent[d] = d < kernel_count ? (int32_t)kernel_dims[d].size : 1;
    for (size_t k = 0; k < operands; k++) {
        std::array<int32_t, kKernelRank> stride{};
        for (size_t d = 0; d < kernel_count; d++) stride[d] = (int32_t)kernel_dims[d].stride[k];
        piece.stride.push_back(stride);
        piece.offset.push_back(0);
    }
    if (loop_count == 0) return run(piece);  // the whole shape in one call
    // The cut dimension (if any) is the last kernel dimension when loops[0] came from it.
    const bool cut = loop_step[0] > 1;
    const int64_t cut_size = cut ? dims[kernel_count - 1].size : 0;
    const int32_t cut_extent = cut ? piece.extent[kernel_count - 1] : 0;

    int64_t index[KLDIV_MAX_RANK] = {};
    while (true) {
        Piece current = piece;
        for (size_t l = 0; l < loop_count; l++) {
            for (size_t k = 0; k < operands; k++) current.offset[k] += index[l] * loops[l].stride[k];
        }
        if (cut) {
            const int64_t remaining = cut_size - index[0] * loop_step[0];
            current.extent[kernel_count - 1] = (int32_t)std::min<int64_t>(cut_extent, remaining);
        }
        run(current);
        size_t l = 0;
        while (l < loop_count && ++index[l] == loops[l].size) index[l++] = 0;
        if (l == loop_count) break;
    }
}

bool aligned_run(const Piece &piece, Span<const void *const> starts, int alignment) {
    if (piece.extent[1] != 1 || piece.extent[2] != 1 || piece.extent[3] != 1) return false;
    if (starts.size() != piece.stride.size()) return false;
    for (size_t j = 0; j < starts.size(); j++) {
        if (piece.stride[j][0] != 1 || reinterpret_cast<uintptr_t>(starts[j]) % alignment != 0) return false;
    }
    return true;
}

}  // namespace kldiv::runtime
