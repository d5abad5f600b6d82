// Host-side conversions between the storage types and double, for scalars and
// the few host loops (reduced results, summing broadcast gradients).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kldiv/dsl/dtype.h"

namespace kldiv::runtime {

inline float bits_to_float(uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

inline uint32_t float_to_bits(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    return bits;
}

inline float half_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000) << 16;
    const uint32_t magnitude = h & 0x7fff;
    if (magnitude >= 0x7c00) return bits_to_float(sign | 0x7f800000 | (magnitude << 13));
    return std::copysign(bits_to_float(magnitude << 13) * 0x1p112f, bits_to_float(sign | 0x3f800000));
}

inline uint16_t float_to_half(float f) {
    const uint32_t b = float_to_bits(f);
    const uint32_t sign = (b >> 16) & 0x8000;
    const uint32_t a = b & 0x7fffffff;
    uint32_t magnitude;
    if (a > 0x7f800000) magnitude = 0x7e00;
    else if (a >= 0x477ff000) magnitude = 0x7c00;
    else if (a >= 0x38800000) magnitude = (a - (112u << 23) + 0xfff + ((a >> 13) & 1)) >> 13;
    else magnitude = float_to_bits(bits_to_float(a) + 0.5f) - 0x3f000000;
    return uint16_t(magnitude | sign);
}

inline float bfloat_to_float(uint16_t h) { return bits_to_float(uint32_t(h) << 16); }

inline uint16_t float_to_bfloat(float f) {
    const uint32_t b = float_to_bits(f);
    if (std::isnan(f)) return uint16_t((b >> 16) | 0x40);
    return uint16_t((b + 0x7fff + ((b >> 16) & 1)) >> 16);
}

inline double load_as_double(const void *p, DType dtype) {
    switch (dtype) {
    case DType::Float32: return *static_cast<const float *>(p);
    case DType::Float64: return *static_cast<const double *>(p);
    case DType::Float16: return half_to_float(*static_cast<const uint16_t *>(p));
    default: return bfloat_to_float(*static_cast<const uint16_t *>(p));
    }
}

// Rounds once for float32/float64; 16-bit types round via float32.
inline void store_from_double(void *p, DType dtype, double value) {
    switch (dtype) {
    case DType::Float32: *static_cast<float *>(p) = (float)value; break;
    case DType::Float64: *static_cast<double *>(p) = value; break;
    case DType::Float16: *static_cast<uint16_t *>(p) = float_to_half((float)value); break;
    default: *static_cast<uint16_t *>(p) = float_to_bfloat((float)value); break;
    }
}

}  // namespace kldiv::runtime
