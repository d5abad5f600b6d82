#include "dispatch.h"

#include <HalideRuntime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "cuda_device.h"
#include "errors.h"
#include "kldiv/kldiv.h"
#include "host_convert.h"
#include "kernel_args.h"
#include "kernel_cache.h"
#include "kldiv/codegen/kernel_spec.h"
#include "function_ref.h"
#include "layout.h"
#include "tensor_view.h"
#include "validation.h"

namespace kldiv::runtime {

using codegen::KernelSpec;
using codegen::Pass;

// ---- validation (validation.h) ------------------------------------------

bool known_dtype(DType dtype) {
    return dtype == DType::Float32 || dtype == DType::Float64 || dtype == DType::Float16 ||
           dtype == DType::BFloat16;
}

void check_tensor(const TensorView &t, const char *name) {
    if (t.sizes.size() > (size_t)KLDIV_MAX_RANK) {
        fail(ErrorCode::InvalidArgument, std::string(name) + ": rank " + std::to_string(t.sizes.size()) +
                                             " is over the limit of " + std::to_string(KLDIV_MAX_RANK));
    }
    if (!known_dtype(t.dtype)) {
        fail(ErrorCode::DType, std::string(name) + ": unknown dtype " + std::to_string((int)t.dtype));
    }
    if (t.device != Device::CPU && t.device != Device::CUDA) fail(ErrorCode::Device, std::string(name) + ": unknown device");
    if (t.strides.size() != t.sizes.size()) {
        fail(ErrorCode::InvalidArgument, std::string(name) + ": sizes and strides differ in length");
    }
    // One pass over the dimensions: their signs, reported as met, then the
    // element count and the reach, whose overflows are reported after it.
    // The reach is in bytes from `data` to one past the furthest element of
    // a non-empty view: (Σ (size - 1) · stride + 1) · element size; it must
    // fit int64 and not wrap the address space (else no pointer arithmetic
    // of a kernel could be trusted).
    int64_t numel = 1, last = 0;
    bool too_many = false, too_far = false;
    for (size_t d = 0; d < t.sizes.size(); d++) {
        const int64_t size = t.sizes[d], stride = t.strides[d];
        if (size < 0) fail(ErrorCode::InvalidArgument, std::string(name) + ": negative size in dimension " + std::to_string(d));
        if (stride < 0) {
            fail(ErrorCode::InvalidArgument, std::string(name) + ": negative stride in dimension " + std::to_string(d) +
                                                  " (negative strides are not supported)");
        }
        int64_t step = 0;
        too_many |= __builtin_mul_overflow(numel, size, &numel);
        too_far |= __builtin_mul_overflow(size - 1, stride, &step) | __builtin_add_overflow(last, step, &last);
    }
    if (too_many) fail(ErrorCode::InvalidArgument, std::string(name) + ": too many elements");
    if (numel > 0) {
        if (t.data == nullptr) fail(ErrorCode::InvalidArgument, std::string(name) + ": data is null");
        int64_t bytes = 0;
        if (too_far || __builtin_add_overflow(last, int64_t(1), &bytes) ||
            __builtin_mul_overflow(bytes, (int64_t)element_size(t.dtype), &bytes) ||
            (uintptr_t)t.data > UINTPTR_MAX - (uint64_t)bytes) {
            fail(ErrorCode::InvalidArgument, std::string(name) + ": sizes and strides reach past the address space");
        }
    }
}

void check_same_dtype(const TensorView &a, const char *a_name, const TensorView &b, const char *b_name) {
    if (a.dtype != b.dtype) {
        fail(ErrorCode::DType, std::string(a_name) + " is " + short_name(a.dtype) + " but " + b_name + " is " +
                                   short_name(b.dtype) + "; kldiv needs one dtype for all tensors");
    }
}

const char *device_name(Device device) { return device == Device::CUDA ? "cuda" : "cpu"; }

// Every tensor of a call lives on one device: the host or CUDA GPUs.
Device common_device(NamedViews tensors) {
    const NamedView &first = tensors.front();
    for (const NamedView &named : tensors) {
        if (named.tensor->device != first.tensor->device) {
            fail(ErrorCode::Device, std::string("Expected all tensors to be on the same device, but found at least "
                                                "two devices, ") + device_name(first.tensor->device) + " (" +
                                        first.name + ") and " + device_name(named.tensor->device) + " (" +
                                        named.name + ")");
        }
    }
    return first.tensor->device;
}

std::string shape_text(Extents sizes) {
    std::string s = "[";
    for (size_t i = 0; i < sizes.size(); i++) s += (i ? ", " : "") + std::to_string(sizes[i]);
    return s + "]";
}

void check_shape(const TensorView &t, const char *name, Extents expected) {
    if (t.sizes != expected) {
        fail(ErrorCode::Shape, std::string(name) + " has shape " + shape_text(t.sizes) + " but must have shape " +
                                   shape_text(expected));
    }
}

namespace {

// Byte range [begin, end) a tensor's elements occupy (empty for no elements).
struct Extent {
    uintptr_t begin = 0, end = 0;
};

// Only for views check_tensor accepted, whose reach fits when they have
// elements: an empty view's sizes and strides may reach anywhere (check_tensor
// does not measure it), so it is found empty before anything is summed.
Extent memory_extent(const TensorView &t) {
    for (size_t d = 0; d < t.sizes.size(); d++) {
        if (t.sizes[d] == 0) return {};
    }
    int64_t last = 0;
    for (size_t d = 0; d < t.sizes.size(); d++) last += (t.sizes[d] - 1) * t.strides[d];
    Extent e;
    e.begin = reinterpret_cast<uintptr_t>(t.data);
    e.end = e.begin + (uintptr_t)(last + 1) * element_size(t.dtype);
    return e;
}

bool overlaps(const Extent &x, const Extent &y) {
    return x.begin < x.end && y.begin < y.end && x.begin < y.end && y.begin < x.end;
}

}  // namespace

bool overlaps(const TensorView &a, const TensorView &b) { return overlaps(memory_extent(a), memory_extent(b)); }

bool same_view(const TensorView &a, const TensorView &b) {
    return a.data == b.data && a.dtype == b.dtype && a.sizes == b.sizes && a.strides == b.strides;
}

// Outputs must not write one element twice, and may share memory with an
// input only as the very same view (then each element is read before it is written).
void check_outputs(NamedViews outputs, NamedViews inputs) {
    for (size_t i = 0; i < outputs.size(); i++) {
        const TensorView &out = *outputs[i].tensor;
        for (size_t d = 0; d < out.sizes.size(); d++) {
            if (out.sizes[d] > 1 && out.strides[d] == 0) {
                fail(ErrorCode::Alias, std::string(outputs[i].name) +
                                           " has internal overlap (stride 0 in dimension " + std::to_string(d) + ")");
            }
        }
        const Extent out_extent = memory_extent(out);
        for (const NamedView &in : inputs) {
            if (overlaps(out_extent, memory_extent(*in.tensor)) && !same_view(out, *in.tensor)) {
                fail(ErrorCode::Alias, std::string(outputs[i].name) + " partially overlaps " + in.name);
            }
        }
        for (size_t j = i + 1; j < outputs.size(); j++) {
            if (overlaps(out_extent, memory_extent(*outputs[j].tensor))) {
                fail(ErrorCode::Alias, std::string(outputs[i].name) + " overlaps " + outputs[j].name);
            }
        }
    }
}

void check_reduction(Reduction reduction) {
    if (reduction != Reduction::None && reduction != Reduction::Mean && reduction != Reduction::Sum &&
        reduction != Reduction::BatchMean) {
        fail(ErrorCode::InvalidArgument, std::to_string((int)reduction) + " is not a valid value for reduction");
    }
}

namespace {

// Divisor of the summed loss: numel (mean), input.size(0) (batchmean, none for 0-dim input).
double divisor(Reduction reduction, const TensorView &input, int64_t numel) {
    switch (reduction) {
    case Reduction::Mean: return (double)numel;
    case Reduction::BatchMean: return input.sizes.empty() ? 1.0 : (double)input.sizes[0];
    default: return 1.0;
    }
}

// ---- kernel calls --------------------------------------------------------

int64_t numel_of(Extents shape) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
}

// Operands' strides in a call's broadcast shape, held for the call.
class OperandStrides {
public:
    OperandStrides() = default;
    OperandStrides(const OperandStrides &) = delete;
    OperandStrides &operator=(const OperandStrides &) = delete;

    void add(Extents strides) {
        dims_.push_back(Dims(strides));
        spans_.push_back(dims_.back());
    }
    // Operand `t`'s strides in `shape` (0 where broadcast).
    void add(const TensorView &t, Extents shape) {
        Dims &dims = dims_.grow();
        expand_strides(t.sizes, t.strides, shape, dims);
        spans_.push_back(dims);
    }
    size_t size() const { return spans_.size(); }
    operator Span<const Extents>() const { return spans_; }

private:
    InlineVector<Dims, kMaxOperands> dims_;
    InlineVector<Extents, kMaxOperands> spans_;  // into dims_, which never moves
};

// A call on CUDA tensors: their GPU's primary context and the call's stream,
// given to the kernels' CUDA runtime while `scope` lives.
struct DeviceCall {
    DeviceCall(const cuda::Placement &placement, void *stream) : scope(placement, stream) {}
    cuda::Scope scope;
};

// Runs `spec` over the broadcast `shape`. `data` are the kernel's buffer
// arguments except `total`, in argument order; `strides` has the strides in
// `shape` of each 4-d one. Buffer `order_by` (an output, where there is one)
// decides the dimension order. On CUDA (`device`), buffers hold device memory
// and a reduction writes `out` itself, divided by `divisor`. Returns the
// float64 sum when the kernel has a `total`.
double run_kernel(KernelCache &cache, const KernelSpec &spec, Extents shape, Span<void *const> data,
                  Span<const Extents> strides, double grad_scale, size_t order_by, const DeviceCall *device = nullptr,
                  double divisor = 1.0) {
    const size_t elem = element_size(spec.dtype);
    const ArgumentLayout &layout = argument_layout(spec);  // layout.whole: one element, not a view of `shape`
    if (data.size() > ArgumentLayout::kMaxBuffers) fail(ErrorCode::Internal, "a kernel call with too many buffers");
    // CUDA grids hold at most 65535 blocks in y and z: dimensions 1 and 2 of
    // elementwise kernels, dimension 2 of reductions (see gpu_schedule.cpp).
    const bool reduces = spec.reduce && spec.pass != Pass::Backward;
    PieceLimits limits;
    if (device) {
        limits.max_outer_extent = 65535;
        limits.outer_from = reduces ? 2 : 1;
    }
    if (device && reduces) {
        int pieces = 0;
        for_each_piece(shape, strides, order_by, [&](const Piece &) { pieces++; }, limits);
        if (pieces > 1) {
            fail(ErrorCode::InvalidArgument, "a reduction over CUDA tensors must fit one kernel call: after "
                                             "coalescing, under 2^30 elements along the innermost dimension, at most "
                                             "65535 along the third, and under 2^31 in all");
        }
    }
    double total = 0.0;
    for_each_piece(shape, strides, order_by, [&](const Piece &piece) {
        void *piece_data[ArgumentLayout::kMaxBuffers];
        InlineVector<const void *, ArgumentLayout::kMaxBuffers> starts;  // of the 4-d views (CUDA)
        for (size_t k = 0, j = 0; k < data.size(); k++) {
            piece_data[k] = layout.whole[k] ? data[k]
                                            : static_cast<uint8_t *>(data[k]) + piece.offset[j++] * (int64_t)elem;
            if (device && !layout.whole[k]) starts.push_back(piece_data[k]);
        }
        // CUDA: one contiguous, aligned run in every buffer takes the kernel
        // that loads 8 or 16 bytes at a time (same bits; KernelSpec::aligned),
        // given the run as that kernel takes it: dimensions 1 to 3 of stride 0.
        KernelSpec call_spec = spec;
        Piece run;
        if (device && aligned_run(piece, starts, codegen::kAlignedBytes)) {
            call_spec.aligned = true;
            run = piece;
            for (auto &s : run.stride) s[1] = s[2] = s[3] = 0;
        }
        const Piece &call_piece = call_spec.aligned ? run : piece;
        const KernelCall kernel = cache.kernel(call_spec, call_piece);
        KernelArguments arguments(call_spec.aligned ? argument_layout(call_spec) : layout, call_spec,
                                  Span<void *const>(piece_data, data.size()), call_piece.extent, call_piece.stride,
                                  device ? &kernel.buffers : nullptr);
        if (device && (kernel.buffers.wrap == nullptr || arguments.wrap_failed())) {
            fail(ErrorCode::Internal,
                 "kernel " + call_spec.name() + ": CUDA pointers could not be given to its runtime");
        }
        arguments.grad_scale = grad_scale;
        arguments.divisor = divisor;
        KernelErrorContext context;
        void *user_context = &context;
        if (int status = kernel.entry(arguments.argv(kernel.user_context ? &user_context : nullptr)); status != 0) {
            const std::string message = kernel.user_context ? context.message : take_kernel_error();
            fail(ErrorCode::Internal,
                 "kernel " + call_spec.name() + " failed (" + std::to_string(status) + "): " + message);
        }
        total += arguments.total;
    }, limits);
    return total;
}

// Gradients of broadcast operands are summed back to the operand's shape
// (float64, from +0, rounded once, as PyTorch's sum_to_size). The kernel
// writes them in slabs of the broadcast shape into a bounded scratch buffer,
// so memory stays small however large the broadcast shape is.
constexpr int64_t kSlabElements = int64_t(1) << 22;

Tensor expanded(const TensorView &t, Extents shape) {
    Tensor v = owned(t);
    const Dims strides = expand_strides(t.sizes, t.strides, shape);
    v.strides.assign(strides.begin(), strides.end());
    v.sizes.assign(shape.begin(), shape.end());
    return v;
}

Tensor slice(const Tensor &view, const std::vector<int64_t> &start, const std::vector<int64_t> &sizes) {
    Tensor v = view;
    int64_t offset = 0;
    for (size_t d = 0; d < start.size(); d++) offset += start[d] * view.strides[d];
    v.data = static_cast<uint8_t *>(view.data) + offset * (int64_t)element_size(view.dtype);
    v.sizes = sizes;
    return v;
}

// Calls `run(start, sizes)` for slabs covering `shape`, each of at most
// kSlabElements elements (or one row of the innermost dimension's blocks).
void for_each_slab(Extents shape,
                   FunctionRef<void(const std::vector<int64_t> &, const std::vector<int64_t> &)> run) {
    const int rank = (int)shape.size();
    if (rank == 0) return run({}, {});
    // Dimensions after `split` are whole in every slab; `split` is cut into
    // blocks; dimensions before it step one index at a time.
    int split = rank - 1;
    int64_t inner = 1;
    while (split > 0 && inner * shape[split] <= kSlabElements) inner *= shape[split--];
    const int64_t block = std::max<int64_t>(1, kSlabElements / inner);
    std::vector<int64_t> start(rank, 0), sizes(shape.begin(), shape.end());
    for (int d = 0; d < split; d++) sizes[d] = 1;
    while (true) {
        sizes[split] = std::min(block, shape[split] - start[split]);
        run(start, sizes);
        start[split] += block;
        if (start[split] < shape[split]) continue;
        start[split] = 0;
        int d = split - 1;
        while (d >= 0 && ++start[d] == shape[d]) start[d--] = 0;
        if (d < 0) break;
    }
}

// The buffers of a CPU pass in argument order, and which of them are outputs
// whose operand was broadcast.
using Buffers = InlineVector<TensorView, kMaxOperands>;
using SummedFlags = InlineVector<bool, kMaxOperands>;

// Runs `spec` with `buffers` in argument order (each in its own shape) over
// the broadcast `shape`. Buffers flagged in `summed` are outputs whose operand
// was broadcast: they receive the gradient summed to their own shape.
double run_summing_broadcast(KernelCache &cache, const KernelSpec &spec, Extents shape, const Buffers &buffers,
                             const SummedFlags &summed, double grad_scale, size_t order_by) {
    if (std::none_of(summed.begin(), summed.end(), [](bool b) { return b; })) {
        OperandStrides strides;
        void *data[kMaxOperands];
        for (size_t k = 0; k < buffers.size(); k++) {
            strides.add(buffers[k], shape);
            data[k] = buffers[k].data;
        }
        return run_kernel(cache, spec, shape, Span<void *const>(data, buffers.size()), strides, grad_scale,
                          order_by);
    }
    // The rare case: scratch slabs and float64 sums on the heap.
    const size_t elem = element_size(spec.dtype);
    std::vector<Tensor> views;
    for (const TensorView &t : buffers) views.push_back(expanded(t, shape));
    // Per summed output: float64 accumulators in the operand's own row-major
    // order, their strides in the broadcast shape, and a scratch slab.
    struct Summed {
        std::vector<double> acc;
        Dims acc_strides;
        std::unique_ptr<uint8_t[]> scratch;
    };
    std::vector<Summed> sums(buffers.size());
    for (size_t k = 0; k < buffers.size(); k++) {
        if (!summed[k]) continue;
        const TensorView &t = buffers[k];
        const std::vector<int64_t> sizes(t.sizes.begin(), t.sizes.end());
        sums[k].acc.assign(t.numel(), 0.0);
        sums[k].acc_strides = expand_strides(t.sizes, Tensor::contiguous(nullptr, t.dtype, sizes).strides, shape);
        sums[k].scratch.reset(new uint8_t[kSlabElements * elem]);
    }
    double total = 0.0;
    for_each_slab(shape, [&](const std::vector<int64_t> &start, const std::vector<int64_t> &sizes) {
        std::vector<Tensor> slab;
        for (size_t k = 0; k < buffers.size(); k++) {
            slab.push_back(summed[k] ? Tensor::contiguous(sums[k].scratch.get(), spec.dtype, sizes)
                                     : slice(views[k], start, sizes));
        }
        OperandStrides strides;
        void *data[kMaxOperands];
        for (size_t k = 0; k < slab.size(); k++) {
            strides.add(slab[k].strides);
            data[k] = slab[k].data;
        }
        total += run_kernel(cache, spec, sizes, Span<void *const>(data, slab.size()), strides, grad_scale, order_by);
        for (size_t k = 0; k < buffers.size(); k++) {
            if (!summed[k]) continue;
            int64_t base = 0;
            for (size_t d = 0; d < start.size(); d++) base += start[d] * sums[k].acc_strides[d];
            const uint8_t *values = sums[k].scratch.get();
            std::vector<double> &acc = sums[k].acc;
            for_each_offset(sizes, sums[k].acc_strides, [&](int64_t i, int64_t offset) {
                acc[base + offset] += load_as_double(values + i * elem, spec.dtype);
            });
        }
    });
    for (size_t k = 0; k < buffers.size(); k++) {
        if (!summed[k]) continue;
        const TensorView &t = buffers[k];
        for_each_offset(t.sizes, t.strides, [&](int64_t i, int64_t offset) {
            store_from_double(static_cast<uint8_t *>(t.data) + offset * (int64_t)elem, t.dtype, sums[k].acc[i]);
        });
    }
    return total;
}

void zero_fill(const TensorView &t) {
    const size_t elem = element_size(t.dtype);
    for_each_offset(t.sizes, t.strides, [&](int64_t, int64_t offset) {
        std::memset(static_cast<uint8_t *>(t.data) + offset * (int64_t)elem, 0, elem);
    });
}

// Broadcast shape of the loss. PyTorch builds it from target * input, so
// its shape error names the target as tensor a.
Dims loss_shape(const TensorView &input, const TensorView &target) {
    return broadcast_shapes(target.sizes, input.sizes);
}

void write_scalar(const TensorView &out, double value) { store_from_double(out.data, out.dtype, value); }

// ---- CUDA tensors ----------------------------------------------------------
// The same passes on device memory: kernels read and write the caller's
// memory on the call's stream and return without waiting for the GPU; a
// reduced result is written by the kernel. What the host would have to sum
// (the gradient of a broadcast operand) is refused.

// The reduced result of a call with no elements (0 / divisor), written on
// the call's stream.
void write_device_scalar(const TensorView &out, double value) {
    uint8_t bytes[8];
    store_from_double(bytes, out.dtype, value);
    cuda::copy_to_device(out.data, bytes, element_size(out.dtype));
}

void refuse_broadcast_gradient(const TensorView &operand, const char *name, Extents shape) {
    if (operand.sizes != shape) {
        fail(ErrorCode::Shape, std::string("the gradient of a broadcast ") + name + " (shape " +
                                   shape_text(operand.sizes) + " broadcast to " + shape_text(shape) +
                                   ") is not supported for CUDA tensors; expand " + name + " to the full shape first");
    }
}

void forward_cuda(KernelCache &cache, const TensorView &input, const TensorView &target, Reduction reduction,
                  bool log_target, const TensorView &out, Extents shape) {
    const DeviceCall call(cuda::place({{&input, "input"}, {&target, "target"}, {&out, "out"}}),
                          cuda::call_stream(cache.cuda_stream()));
    const int64_t numel = numel_of(shape);
    const bool reduce = reduction != Reduction::None;
    const KernelSpec spec{Pass::Forward, input.dtype, log_target, reduce, false, false, true};
    OperandStrides strides;
    strides.add(input, shape);
    strides.add(target, shape);
    if (!reduce) {
        if (numel == 0) return;
        strides.add(out, shape);
        run_kernel(cache, spec, shape, {input.data, target.data, out.data}, strides, 0.0, 2, &call);
        return;
    }
    const double d = divisor(reduction, input, numel);
    if (numel == 0) return write_device_scalar(out, 0.0 / d);
    run_kernel(cache, spec, shape, {input.data, target.data, out.data}, strides, 0.0, 0, &call, d);
}

void backward_cuda(KernelCache &cache, const TensorView &grad_output, const TensorView &input,
                   const TensorView &target, Reduction reduction, bool log_target, const TensorView *grad_input,
                   const TensorView *grad_target, Extents shape) {
    if (grad_input) refuse_broadcast_gradient(input, "input", shape);
    if (grad_target) refuse_broadcast_gradient(target, "target", shape);
    InlineVector<NamedView, kMaxOperands> tensors = {
        {&grad_output, "grad_output"}, {&input, "input"}, {&target, "target"}};
    if (grad_input) tensors.push_back({grad_input, "grad_input"});
    if (grad_target) tensors.push_back({grad_target, "grad_target"});
    const DeviceCall call(cuda::place(tensors), cuda::call_stream(cache.cuda_stream()));
    const int64_t numel = numel_of(shape);
    if (numel == 0) return;  // no broadcast operand, so every output is empty
    const bool scalar = reduction != Reduction::None;
    const KernelSpec spec{Pass::Backward, input.dtype, log_target, scalar, grad_input != nullptr,
                          grad_target != nullptr, true};
    // Argument order: grad_output (one element when scalar), input, target, [grad_input], [grad_target].
    InlineVector<void *, kMaxOperands> data = {grad_output.data, input.data, target.data};
    OperandStrides strides;
    if (!scalar) strides.add(grad_output, shape);
    strides.add(input, shape);
    strides.add(target, shape);
    const size_t first_output = strides.size();
    for (const TensorView *gradient : {grad_input, grad_target}) {
        if (!gradient) continue;
        data.push_back(gradient->data);
        strides.add(*gradient, shape);
    }
    run_kernel(cache, spec, shape, data, strides, 0.0, first_output, &call,
               scalar ? divisor(reduction, input, numel) : 1.0);
}

void forward_backward_cuda(KernelCache &cache, const TensorView &input, const TensorView &target,
                           Reduction reduction, bool log_target, const TensorView &out,
                           const TensorView &grad_input, Extents shape) {
    refuse_broadcast_gradient(input, "input", shape);
    const DeviceCall call(
        cuda::place({{&input, "input"}, {&target, "target"}, {&out, "out"}, {&grad_input, "grad_input"}}),
        cuda::call_stream(cache.cuda_stream()));
    const int64_t numel = numel_of(shape);
    const bool reduce = reduction != Reduction::None;
    const double d = reduce ? divisor(reduction, input, numel) : 1.0;
    if (numel == 0) {
        if (reduce) write_device_scalar(out, 0.0 / d);
        return;
    }
    const KernelSpec spec{Pass::Fused, input.dtype, log_target, reduce, true, false, true};
    OperandStrides strides;
    strides.add(input, shape);
    strides.add(target, shape);
    if (!reduce) strides.add(out, shape);
    strides.add(grad_input, shape);
    run_kernel(cache, spec, shape, {input.data, target.data, out.data, grad_input.data}, strides, 0.0,
               strides.size() - 1, &call, d);
}

}  // namespace

void forward(KernelCache &cache, const TensorView &input, const TensorView &target, Reduction reduction,
             bool log_target, const TensorView &out, bool warn_mean) {
    check_reduction(reduction);
    check_tensor(input, "input");
    check_tensor(target, "target");
    check_tensor(out, "out");
    check_same_dtype(input, "input", target, "target");
    check_same_dtype(input, "input", out, "out");
    const Dims shape = loss_shape(input, target);
    check_shape(out, "out", reduction == Reduction::None ? Extents(shape) : Extents());
    check_outputs({{&out, "out"}}, {{&input, "input"}, {&target, "target"}});
    const Device device = common_device({{&input, "input"}, {&target, "target"}, {&out, "out"}});
    if (reduction == Reduction::Mean && warn_mean) cache.warn(mean_reduction_warning());
    if (device == Device::CUDA) return forward_cuda(cache, input, target, reduction, log_target, out, shape);

    const int64_t numel = numel_of(shape);
    KernelSpec spec{Pass::Forward, input.dtype, log_target, reduction != Reduction::None, false, false};
    OperandStrides strides;
    strides.add(input, shape);
    strides.add(target, shape);
    if (reduction == Reduction::None) {
        if (numel == 0) return;
        strides.add(out, shape);
        run_kernel(cache, spec, shape, {input.data, target.data, out.data}, strides, 0.0, 2);
        return;
    }
    const double total =
        numel == 0 ? 0.0 : run_kernel(cache, spec, shape, {input.data, target.data}, strides, 0.0, 0);
    write_scalar(out, total / divisor(reduction, input, numel));
}

void backward(KernelCache &cache, const TensorView &grad_output, const TensorView &input, const TensorView &target,
              Reduction reduction, bool log_target, const TensorView *grad_input, const TensorView *grad_target) {
    check_reduction(reduction);
    check_tensor(grad_output, "grad_output");
    check_tensor(input, "input");
    check_tensor(target, "target");
    check_same_dtype(input, "input", target, "target");
    check_same_dtype(input, "input", grad_output, "grad_output");
    const Dims shape = loss_shape(input, target);
    check_shape(grad_output, "grad_output", reduction == Reduction::None ? Extents(shape) : Extents());
    InlineVector<NamedView, 2> outputs;
    if (grad_input) {
        check_tensor(*grad_input, "grad_input");
        check_same_dtype(input, "input", *grad_input, "grad_input");
        check_shape(*grad_input, "grad_input", input.sizes);
        outputs.push_back({grad_input, "grad_input"});
    }
    if (grad_target) {
        check_tensor(*grad_target, "grad_target");
        check_same_dtype(input, "input", *grad_target, "grad_target");
        check_shape(*grad_target, "grad_target", target.sizes);
        outputs.push_back({grad_target, "grad_target"});
    }
    check_outputs(outputs, {{&input, "input"}, {&target, "target"}, {&grad_output, "grad_output"}});
    InlineVector<NamedView, kMaxOperands> all = {
        {&grad_output, "grad_output"}, {&input, "input"}, {&target, "target"}};
    for (const NamedView &output : outputs) all.push_back(output);
    const Device device = common_device(all);
    if (!grad_input && !grad_target) return;
    if (device == Device::CUDA) {
        return backward_cuda(cache, grad_output, input, target, reduction, log_target, grad_input, grad_target, shape);
    }

    const int64_t numel = numel_of(shape);
    if (numel == 0) {  // only a broadcast operand can still have elements: its gradient is a sum of nothing
        if (grad_input) zero_fill(*grad_input);
        if (grad_target) zero_fill(*grad_target);
        return;
    }
    const bool scalar = reduction != Reduction::None;
    const double grad_scale =
        scalar ? load_as_double(grad_output.data, grad_output.dtype) / divisor(reduction, input, numel) : 0.0;

    KernelSpec spec{Pass::Backward, input.dtype, log_target, scalar, grad_input != nullptr, grad_target != nullptr};
    // Argument order: [grad_output], input, target, [grad_input], [grad_target].
    Buffers buffers;
    if (!scalar) buffers.push_back(grad_output);
    buffers.push_back(input);
    buffers.push_back(target);
    SummedFlags summed(buffers.size(), false);
    const size_t first_output = buffers.size();
    if (grad_input) {
        buffers.push_back(*grad_input);
        summed.push_back(input.sizes != shape);
    }
    if (grad_target) {
        buffers.push_back(*grad_target);
        summed.push_back(target.sizes != shape);
    }
    run_summing_broadcast(cache, spec, shape, buffers, summed, grad_scale, first_output);
}

void forward_backward(KernelCache &cache, const TensorView &input, const TensorView &target, Reduction reduction,
                      bool log_target, const TensorView &out, const TensorView &grad_input) {
    check_reduction(reduction);
    check_tensor(input, "input");
    check_tensor(target, "target");
    check_tensor(out, "out");
    check_tensor(grad_input, "grad_input");
    check_same_dtype(input, "input", target, "target");
    check_same_dtype(input, "input", out, "out");
    check_same_dtype(input, "input", grad_input, "grad_input");
    const Dims shape = loss_shape(input, target);
    check_shape(out, "out", reduction == Reduction::None ? Extents(shape) : Extents());
    check_shape(grad_input, "grad_input", input.sizes);
    check_outputs({{&out, "out"}, {&grad_input, "grad_input"}}, {{&input, "input"}, {&target, "target"}});
    const Device device =
        common_device({{&input, "input"}, {&target, "target"}, {&out, "out"}, {&grad_input, "grad_input"}});
    if (reduction == Reduction::Mean) cache.warn(mean_reduction_warning());
    if (device == Device::CUDA) {
        return forward_backward_cuda(cache, input, target, reduction, log_target, out, grad_input, shape);
    }

    const int64_t numel = numel_of(shape);
    const bool reduce = reduction != Reduction::None;
    if (numel == 0) {
        if (reduce) write_scalar(out, 0.0 / divisor(reduction, input, numel));
        zero_fill(grad_input);
        return;
    }
    const double scale = reduce ? 1.0 / divisor(reduction, input, numel) : 1.0;
    KernelSpec spec{Pass::Fused, input.dtype, log_target, reduce, true, false};
    Buffers buffers = {input, target};
    if (!reduce) buffers.push_back(out);
    buffers.push_back(grad_input);
    SummedFlags summed(buffers.size(), false);
    summed.back() = input.sizes != shape;
    const double total = run_summing_broadcast(cache, spec, shape, buffers, summed, scale, buffers.size() - 1);
    if (reduce) write_scalar(out, total / divisor(reduction, input, numel));
}

void scale_in_place(const TensorView &t, double factor) {
    const size_t elem = element_size(t.dtype);
    for_each_offset(t.sizes, t.strides, [&](int64_t, int64_t offset) {
        uint8_t *p = static_cast<uint8_t *>(t.data) + offset * (int64_t)elem;
        store_from_double(p, t.dtype, load_as_double(p, t.dtype) * factor);
    });
}

}  // namespace kldiv::runtime
