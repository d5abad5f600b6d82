// A kernel call's arguments in Halide's argv convention, in the order of
// codegen::arguments(spec): 4-d buffers over host memory, the gradient scale,
// and the 0-d float64 `total`. Used by the dispatcher and by `kldiv tune`.
#pragma once

#include <HalideRuntime.h>

#include <array>
#include <cstdint>
#include <vector>

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
    // `data` and `strides`: the kernel's buffer arguments except `total`, in
    // argument order; every buffer spans `extent` from 0.
    KernelArguments(const codegen::KernelSpec &spec, const std::vector<void *> &data, const int32_t *extent,
                    const std::vector<std::array<int32_t, 4>> &strides)
        : spec_(spec), buffers_(data.size()), dims_(data.size()) {
        for (size_t k = 0; k < data.size(); k++) {
            for (int d = 0; d < 4; d++) dims_[k][d] = halide_dimension_t(0, extent[d], strides[k][d]);
            buffers_[k].host = static_cast<uint8_t *>(data[k]);
            buffers_[k].type = storage_halide_type(spec.dtype);
            buffers_[k].dimensions = 4;
            buffers_[k].dim = dims_[k].data();
        }
        total_buffer_.host = reinterpret_cast<uint8_t *>(&total);
        total_buffer_.type = halide_type_t(halide_type_float, 64);
    }
    KernelArguments(const KernelArguments &) = delete;
    KernelArguments &operator=(const KernelArguments &) = delete;

    double grad_scale = 1.0;  // read when argv() is called
    double total = 0.0;       // written by kernels with a `total`

    // The argv for an entry point; a JIT kernel takes `user_context` first.
    std::vector<void *> argv(void **user_context) {
        grad_scale_f_ = (float)grad_scale;
        std::vector<void *> out;
        if (user_context) out.push_back(user_context);
        size_t next = 0;
        for (const codegen::Argument &a : codegen::arguments(spec_)) {
            if (a.kind == codegen::Argument::Scalar) {
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
    halide_buffer_t total_buffer_{};
    float grad_scale_f_ = 1.0f;
};

}  // namespace kldiv::runtime
