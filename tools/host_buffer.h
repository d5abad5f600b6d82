// Host memory holding elements of one DType, with exact conversions to and from
// double. 16-bit types are stored as raw bit patterns, as the kernels take them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "kldiv/dsl/dtype.h"

namespace kldiv::tools {

// `value` rounded once, to nearest even, to `dtype` and stored there (NaN stays
// NaN, overflow gives inf, denormals are kept).
void store_element(double value, DType dtype, void *data, std::int64_t index);

// The element at `index`, widened exactly to double.
double load_element(DType dtype, const void *data, std::int64_t index);

// `value` rounded once to `dtype` and widened back: what storing and loading gives.
double round_to(DType dtype, double value);

// Smallest positive denormal of `dtype`.
double smallest_denormal(DType dtype);

// 64-byte aligned, uninitialised storage for `numel` elements of `dtype`.
class HostBuffer {
public:
    HostBuffer() = default;
    HostBuffer(DType dtype, std::int64_t numel);

    DType dtype() const { return dtype_; }
    std::int64_t numel() const { return numel_; }
    std::size_t bytes() const { return (std::size_t)numel_ * element_size(dtype_); }
    void *data() { return storage_.get(); }
    const void *data() const { return storage_.get(); }

    void set(std::int64_t index, double value) { store_element(value, dtype_, data(), index); }
    double get(std::int64_t index) const { return load_element(dtype_, data(), index); }
    void fill(double value);

private:
    struct Free {
        void operator()(void *p) const;
    };
    DType dtype_ = DType::Float32;
    std::int64_t numel_ = 0;
    std::unique_ptr<void, Free> storage_;
};

}  // namespace kldiv::tools
