#include "host_buffer.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

namespace kldiv::tools {

namespace {

// `value` rounded to nearest even in a binary format with `precision`
// significant bits, smallest normal exponent `min_exponent` (denormals below it)
// and largest finite value `max_finite`. Rounding directly from double avoids
// the double rounding of going through float first.
double round_to_format(double value, int precision, int min_exponent, double max_finite) {
    if (value == 0 || !std::isfinite(value)) return value;
    int exponent;
    std::frexp(value, &exponent);  // value = m * 2^exponent, 0.5 <= |m| < 1
    const int quantum = std::max(exponent - 1, min_exponent) - (precision - 1);
    // nearbyint rounds half to even in the default rounding mode.
    const double rounded = std::ldexp(std::nearbyint(std::ldexp(value, -quantum)), quantum);
    if (std::fabs(rounded) > max_finite) return std::copysign(INFINITY, value);
    return rounded;
}

constexpr int kHalfPrecision = 11, kHalfMinExponent = -14;
constexpr double kHalfMax = 65504.0;
constexpr int kBFloat16Precision = 8, kBFloat16MinExponent = -126;
const double kBFloat16Max = std::ldexp(255.0, 120);  // (2 - 2^-7) * 2^127

std::uint16_t half_bits(double exact) {
    const std::uint16_t sign = std::signbit(exact) ? 0x8000 : 0;
    if (std::isnan(exact)) return 0x7e00;
    const double magnitude = std::fabs(exact);
    if (std::isinf(magnitude)) return sign | 0x7c00;
    if (magnitude == 0) return sign;
    int exponent;
    std::frexp(magnitude, &exponent);
    const int leading = exponent - 1;
    if (leading < kHalfMinExponent) {
        return sign | (std::uint16_t)std::ldexp(magnitude, 24);  // denormal: multiples of 2^-24
    }
    const auto mantissa = (std::uint16_t)((std::ldexp(magnitude, -leading) - 1.0) * 1024.0);
    return sign | (std::uint16_t)((leading + 15) << 10) | mantissa;
}

double half_value(std::uint16_t bits) {
    const int exponent = (bits >> 10) & 0x1f;
    const int mantissa = bits & 0x3ff;
    double magnitude;
    if (exponent == 0) {
        magnitude = std::ldexp((double)mantissa, -24);
    } else if (exponent == 0x1f) {
        magnitude = mantissa ? std::numeric_limits<double>::quiet_NaN() : INFINITY;
    } else {
        magnitude = std::ldexp((double)(1024 + mantissa), exponent - 25);
    }
    return (bits & 0x8000) ? -magnitude : magnitude;
}

std::uint16_t bfloat16_bits(double exact) {
    if (std::isnan(exact)) return 0x7fc0;
    const float f = (float)exact;  // exact: a bfloat16 value is a float
    std::uint32_t bits;
    std::memcpy(&bits, &f, 4);
    return (std::uint16_t)(bits >> 16);
}

double bfloat16_value(std::uint16_t bits) {
    const std::uint32_t wide = (std::uint32_t)bits << 16;
    float f;
    std::memcpy(&f, &wide, 4);
    return f;
}

}  // namespace

double round_to(DType dtype, double value) {
    switch (dtype) {
    case DType::Float64: return value;
    case DType::Float32: return (double)(float)value;
    case DType::Float16: return round_to_format(value, kHalfPrecision, kHalfMinExponent, kHalfMax);
    case DType::BFloat16:
        return round_to_format(value, kBFloat16Precision, kBFloat16MinExponent, kBFloat16Max);
    }
    return value;
}

double smallest_denormal(DType dtype) {
    switch (dtype) {
    case DType::Float64: return std::numeric_limits<double>::denorm_min();
    case DType::Float32: return std::numeric_limits<float>::denorm_min();
    case DType::Float16: return std::ldexp(1.0, -24);
    case DType::BFloat16: return std::ldexp(1.0, -133);
    }
    return 0;
}

void store_element(double value, DType dtype, void *data, std::int64_t index) {
    switch (dtype) {
    case DType::Float64: static_cast<double *>(data)[index] = value; break;
    case DType::Float32: static_cast<float *>(data)[index] = (float)value; break;
    case DType::Float16:
        static_cast<std::uint16_t *>(data)[index] = half_bits(round_to(dtype, value));
        break;
    case DType::BFloat16:
        static_cast<std::uint16_t *>(data)[index] = bfloat16_bits(round_to(dtype, value));
        break;
    }
}

double load_element(DType dtype, const void *data, std::int64_t index) {
    switch (dtype) {
    case DType::Float64: return static_cast<const double *>(data)[index];
    case DType::Float32: return static_cast<const float *>(data)[index];
    case DType::Float16: return half_value(static_cast<const std::uint16_t *>(data)[index]);
    case DType::BFloat16: return bfloat16_value(static_cast<const std::uint16_t *>(data)[index]);
    }
    return 0;
}

void HostBuffer::Free::operator()(void *p) const { std::free(p); }

HostBuffer::HostBuffer(DType dtype, std::int64_t numel) : dtype_(dtype), numel_(numel) {
    constexpr std::size_t kAlignment = 64;
    // aligned_alloc wants a size that is a multiple of the alignment, and nonzero.
    const std::size_t size = (bytes() + kAlignment) / kAlignment * kAlignment;
    void *p = std::aligned_alloc(kAlignment, size);
    if (!p) throw std::bad_alloc();
    storage_.reset(p);
}

void HostBuffer::fill(double value) {
    for (std::int64_t i = 0; i < numel_; ++i) set(i, value);
}

}  // namespace kldiv::tools
