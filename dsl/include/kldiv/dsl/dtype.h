// Element types the kernels store, shared by every layer. No Halide here: the
// runtime's public headers include this file.
#pragma once

#include <cstddef>
#include <string>

namespace kldiv {

enum class DType { Float32, Float64, Float16, BFloat16 };

inline constexpr DType kAllDTypes[] = {DType::Float32, DType::Float64, DType::Float16,
                                       DType::BFloat16};

inline std::size_t element_size(DType dtype) {
    switch (dtype) {
    case DType::Float32: return 4;
    case DType::Float64: return 8;
    default: return 2;
    }
}

// Short names used in kernel names, the CLI and the cache key: f32, f64, f16, bf16.
inline const char *short_name(DType dtype) {
    switch (dtype) {
    case DType::Float32: return "f32";
    case DType::Float64: return "f64";
    case DType::Float16: return "f16";
    default: return "bf16";
    }
}

inline bool parse_dtype(const std::string &name, DType *out) {
    for (DType d : kAllDTypes) {
        if (name == short_name(d)) {
            *out = d;
            return true;
        }
    }
    if (name == "float32" || name == "float") { *out = DType::Float32; return true; }
    if (name == "float64" || name == "double") { *out = DType::Float64; return true; }
    if (name == "float16" || name == "half") { *out = DType::Float16; return true; }
    if (name == "bfloat16") { *out = DType::BFloat16; return true; }
    return false;
}

// 16-bit types accumulate in float32; float64 in float64.
inline bool computes_in_double(DType dtype) { return dtype == DType::Float64; }

}  // namespace kldiv
