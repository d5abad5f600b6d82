// A kernel call's arguments in Halide's argv convention, in the order of
// codegen::arguments(spec): 4-d buffers over host or CUDA device memory, the
// gradient scale or divisor, and the 0-d float64 `total`. Used by the
// dispatcher and by `kldiv tune`.
#pragma once

#include <HalideRuntime.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>

#include "cuda_device.h"
#include "kldiv/codegen/kernel_spec.h"
#include "tensor_view.h"

namespace kldiv::runtime {

// Kernels take float16 and bfloat16 as their raw 16-bit patterns.
inline halide_type_t storage_halide_type(DType dtype) {
    switch (dtype) {
    case DType::Float32: return halide_type_t(halide_type_float, 32);
    case DType::Float64: return halide_type_t(halide_type_float, 64);
    default: return halide_type_t(halide_type_uint, 16);
    }
}

// What a call reads of codegen::arguments(spec), worked out once per spec
// (the names are compared here, never on a call): each argument's role in
// argv, and which buffer arguments (`total` aside) are 4-d views of the
// call's shape and which hold one element.
struct ArgumentLayout {
    static constexpr size_t kMaxArguments = 8;
    static constexpr size_t kMaxBuffers = 5;
    enum Role : uint8_t { Buffer, GradScale, Divisor, Total };

    Role role[kMaxArguments] = {};
    uint8_t arguments = 0;
    uint8_t buffers = 0;  // Buffer arguments, in argument order
    uint8_t four_d = 0;   // of them, views of the call's shape (a strided piece each)
    bool whole[kMaxBuffers] = {};  // per Buffer argument: one element, not a view
};

inline ArgumentLayout make_argument_layout(const codegen::KernelSpec &spec) {
    ArgumentLayout layout;
    for (const codegen::Argument &a : codegen::arguments(spec)) {
        ArgumentLayout::Role role = ArgumentLayout::Buffer;
        if (a.name == "divisor") {
            role = ArgumentLayout::Divisor;
        } else if (a.kind == codegen::Argument::Scalar) {
            role = ArgumentLayout::GradScale;
        } else if (a.name == "total") {
            role = ArgumentLayout::Total;
        } else {
            layout.whole[layout.buffers++] = a.dimensions == 1;
            layout.four_d += a.dimensions == 4;
        }
        layout.role[layout.arguments++] = role;
    }
    return layout;
}

// Made on first use of a spec, then shared by every thread.
inline const ArgumentLayout &argument_layout(const codegen::KernelSpec &spec) {
    static std::array<std::atomic<const ArgumentLayout *>, codegen::kSpecIndices> made{};
    std::atomic<const ArgumentLayout *> &slot = made[codegen::index_of(spec)];
    if (const ArgumentLayout *known = slot.load(std::memory_order_acquire)) return *known;
    auto *fresh = new ArgumentLayout(make_argument_layout(spec));
    const ArgumentLayout *expected = nullptr;
    if (slot.compare_exchange_strong(expected, fresh, std::memory_order_acq_rel)) return *fresh;
    delete fresh;
    return *expected;
}

class KernelArguments {
public:
    // `data`: the kernel's buffer arguments except `total`, in argument order;
    // 4-d buffers span `extent` from 0 with `strides` (one entry per 4-d
    // buffer), 1-d ones (a CUDA kernel's `out` and scalar `grad_output`) hold
    // one element. With `device`, the data is CUDA device memory, wrapped by
    // the kernel's Halide CUDA runtime (see wrap_failed()) and detached when
    // the arguments go.
    KernelArguments(const codegen::KernelSpec &spec, Span<void *const> data, const int32_t *extent,
                    Span<const std::array<int32_t, 4>> strides, const cuda::BufferFunctions *device = nullptr)
        : KernelArguments(argument_layout(spec), spec, data, extent, strides, device) {}
    // The same with `spec`'s layout already at hand.
    KernelArguments(const ArgumentLayout &layout, const codegen::KernelSpec &spec, Span<void *const> data,
                    const int32_t *extent, Span<const std::array<int32_t, 4>> strides,
                    const cuda::BufferFunctions *device = nullptr)
        : layout_(layout),
          computes_in_double_(computes_in_double(spec.dtype)),
          detach_(device ? device->detach : nullptr) {
        const auto wrap = device ? device->wrap : nullptr;
        const halide_type_t type = storage_halide_type(spec.dtype);
        count_ = std::min<size_t>(data.size(), layout_.buffers);
        for (size_t k = 0, four_d = 0; k < count_; k++) {
            if (layout_.whole[k]) {
                dims_[k].dim[0] = halide_dimension_t(0, 1, 1);
                buffers_[k].dimensions = 1;
            } else {
                for (int d = 0; d < 4; d++) dims_[k].dim[d] = halide_dimension_t(0, extent[d], strides[four_d][d]);
                buffers_[k].dimensions = 4;
                four_d++;
            }
            buffers_[k].device = 0;
            buffers_[k].device_interface = nullptr;
            buffers_[k].host = nullptr;
            buffers_[k].flags = 0;
            buffers_[k].type = type;
            buffers_[k].dim = dims_[k].dim;
            buffers_[k].padding = nullptr;
            if (wrap) {
                if (wrap(nullptr, &buffers_[k], reinterpret_cast<uint64_t>(data[k])) != 0) wrap_failed_ = true;
            } else {
                buffers_[k].host = static_cast<uint8_t *>(data[k]);
            }
        }
        total_buffer_.host = reinterpret_cast<uint8_t *>(&total);
        total_buffer_.type = halide_type_t(halide_type_float, 64);
    }
    ~KernelArguments() {
        if (detach_) {
            for (size_t k = 0; k < count_; k++) {
                if (buffers_[k].device != 0) detach_(nullptr, &buffers_[k]);
            }
        }
    }
    // Whether some device pointer could not be wrapped (the call must not run).
    bool wrap_failed() const { return wrap_failed_; }
    KernelArguments(const KernelArguments &) = delete;
    KernelArguments &operator=(const KernelArguments &) = delete;

    double grad_scale = 1.0;  // read when argv() is called
    double divisor = 1.0;     // CUDA reductions
    double total = 0.0;       // written by kernels with a `total`

    // The argv for an entry point, valid while these arguments live; a JIT
    // kernel takes `user_context` first.
    void **argv(void **user_context) {
        grad_scale_f_ = (float)grad_scale;
        size_t n = 0, next = 0;
        if (user_context) argv_[n++] = user_context;
        for (size_t i = 0; i < layout_.arguments; i++) {
            switch (layout_.role[i]) {
            case ArgumentLayout::Divisor: argv_[n++] = &divisor; break;
            case ArgumentLayout::GradScale:
                argv_[n++] = computes_in_double_ ? (void *)&grad_scale : (void *)&grad_scale_f_;
                break;
            case ArgumentLayout::Total: argv_[n++] = &total_buffer_; break;
            case ArgumentLayout::Buffer: argv_[n++] = &buffers_[next++]; break;
            }
        }
        return argv_;
    }

private:
    const ArgumentLayout &layout_;
    bool computes_in_double_;
    size_t count_ = 0;
    halide_buffer_t buffers_[ArgumentLayout::kMaxBuffers];  // the first count_ set: no device, no flags
    // Left unset (halide_dimension_t zeroes itself) but for the first count_.
    union BufferDims {
        BufferDims() {}
        halide_dimension_t dim[4];
    } dims_[ArgumentLayout::kMaxBuffers];
    int (*detach_)(void *, halide_buffer_t *);
    bool wrap_failed_ = false;
    halide_buffer_t total_buffer_{};
    float grad_scale_f_ = 1.0f;
    void *argv_[ArgumentLayout::kMaxArguments + 1];
};

}  // namespace kldiv::runtime
