// A kernel call's arguments in Halide's argv convention, in the order of
// codegen::arguments(spec): 4-d buffers over host or CUDA device memory, the
// gradient scale or divisor, and the 0-d float64 `total`. Used by the
// dispatcher and by `kldiv tune`.
#pragma once

#include <HalideRuntime.h>

#include <array>
#include <cstdint>
#include <vector>

#include "cuda_device.h"
#include "kldiv/codegen/kernel_spec.h"

namespace kldiv::runtime {

// Kernels take float16 and bfloat16 as their raw 16-bit patterns.
inline halide_type_t storage_halide_type(DType dtype) {
    switch (dtype) {
    case DType::Float32: return halide_type_t(halide_type_float, 32);
    case DType::Float64: return halide_type_t(halide_type_float, 64);
    default: return halide_type_t(halide_type_uint, 16);
    }
}

class KernelArguments {
public:
    // `data`: the kernel's buffer arguments except `total`, in argument order;
    // 4-d buffers span `extent` from 0 with `strides` (one entry per 4-d
    // buffer), 1-d ones (a CUDA kernel's `out` and scalar `grad_output`) hold
    // one element. With `device`, the data is CUDA device memory, wrapped by
    // the kernel's Halide CUDA runtime (see wrap_failed()) and detached when
    // the arguments go.
    KernelArguments(const codegen::KernelSpec &spec, const std::vector<void *> &data, const int32_t *extent,
                    const std::vector<std::array<int32_t, 4>> &strides,
                    const cuda::BufferFunctions *device = nullptr)
        : spec_(spec), buffers_(data.size()), dims_(data.size()), detach_(device ? device->detach : nullptr) {
        const auto wrap = device ? device->wrap : nullptr;
        size_t k = 0, four_d = 0;
        for (const codegen::Argument &a : codegen::arguments(spec)) {
            if (a.kind != codegen::Argument::Buffer || a.name == "total" || k >= data.size()) continue;
            if (a.dimensions == 1) {
                dims_[k][0] = halide_dimension_t(0, 1, 1);
                buffers_[k].dimensions = 1;
            } else {
                for (int d = 0; d < 4; d++) dims_[k][d] = halide_dimension_t(0, extent[d], strides[four_d][d]);
                buffers_[k].dimensions = 4;
                four_d++;
            }
            buffers_[k].type = storage_halide_type(spec.dtype);
            buffers_[k].dim = dims_[k].data();
            if (wrap) {
                if (wrap(nullptr, &buffers_[k], reinterpret_cast<uint64_t>(data[k])) != 0) wrap_failed_ = true;
            } else {
                buffers_[k].host = static_cast<uint8_t *>(data[k]);
            }
            k++;
        }
        total_buffer_.host = reinterpret_cast<uint8_t *>(&total);
        total_buffer_.type = halide_type_t(halide_type_float, 64);
    }
    ~KernelArguments() {
        if (detach_) {
            for (halide_buffer_t &b : buffers_) {
                if (b.device != 0) detach_(nullptr, &b);
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

    // The argv for an entry point; a JIT kernel takes `user_context` first.
    std::vector<void *> argv(void **user_context) {
        grad_scale_f_ = (float)grad_scale;
        std::vector<void *> out;
        if (user_context) out.push_back(user_context);
        size_t next = 0;
        for (const codegen::Argument &a : codegen::arguments(spec_)) {
            if (a.name == "divisor") {
                out.push_back(&divisor);
            } else if (a.kind == codegen::Argument::Scalar) {
                out.push_back(computes_in_double(spec_.dtype) ? (void *)&grad_scale : (void *)&grad_scale_f_);
            } else if (a.name == "total") {
                out.push_back(&total_buffer_);
            } else {
                out.push_back(&buffers_[next++]);
            }
        }
        return out;
    }

private:
    codegen::KernelSpec spec_;
    std::vector<halide_buffer_t> buffers_;  // value-initialised: no device, no flags
    std::vector<std::array<halide_dimension_t, 4>> dims_;
    int (*detach_)(void *, halide_buffer_t *);
    bool wrap_failed_ = false;
    halide_buffer_t total_buffer_{};
    float grad_scale_f_ = 1.0f;
};

}  // namespace kldiv::runtime
