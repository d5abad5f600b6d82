// Helpers shared by the kldiv test suites: 16-bit conversions, host-side
// strided buffers that hand out kldiv_tensor views, and the float64 reference
// of SPEC.md's formulas.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "kldiv/kldiv.h"

namespace kldiv_test {

using Shape = std::vector<int64_t>;

// A fresh directory, removed (with what it holds, whatever its permissions)
// at the end of the test.
class TempDir {
public:
    TempDir() {
        std::string pattern = (std::filesystem::temp_directory_path() / "kldiv-test-XXXXXX").string();
        if (mkdtemp(pattern.data()) == nullptr) std::abort();
        path_ = pattern;
    }
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::permissions(path_, std::filesystem::perms::owner_all, ignored);
        std::filesystem::remove_all(path_, ignored);
    }
    TempDir(const TempDir &) = delete;
    TempDir &operator=(const TempDir &) = delete;
    const std::string &path() const { return path_; }
    std::string file(const std::string &name) const { return (std::filesystem::path(path_) / name).string(); }

private:
    std::string path_;
};

// The test command runs some suites once per x86 feature level, with
// KLDIV_CPU_TARGET naming it. Empty when the level asked for is the one in
// force, else a "[SKIP] ..." line saying that this CPU lacks it (printed
// once, so that ctest counts the test as skipped).
inline std::string cpu_level_unavailable() {
    const char *wanted = std::getenv("KLDIV_CPU_TARGET");
    if (wanted == nullptr || *wanted == '\0') return "";
    const std::string running = kldiv_cpu_target();
    const std::string level = running.find("avx512") != std::string::npos ? "avx512"
                              : running.find("avx2") != std::string::npos ? "avx2"
                              : running.find("sse41") != std::string::npos ? "sse41"
                                                                           : running;
    if (level == wanted) return "";
    const std::string why = "[SKIP] this CPU cannot run the " + std::string(wanted) +
                            " kernels (KLDIV_CPU_TARGET): its best level is " + level;
    static bool said = false;
    if (!said) std::printf("%s\n", why.c_str());
    said = true;
    return why;
}

inline int64_t numel(const Shape &shape) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
}

inline Shape contiguous_strides(const Shape &shape) {
    Shape strides(shape.size());
    int64_t step = 1;
    for (size_t i = shape.size(); i-- > 0;) {
        strides[i] = step;
        step *= std::max<int64_t>(shape[i], 1);
    }
    return strides;
}

inline std::string shape_string(const Shape &shape) {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i) {
        if (i) s += ", ";
        s += std::to_string(shape[i]);
    }
    if (shape.size() == 1) s += ",";
    return s + ")";
}

// PyTorch broadcasting, aligned from the right. Returns false if incompatible.
inline bool broadcast_shapes(const Shape &a, const Shape &b, Shape *out) {
    size_t n = std::max(a.size(), b.size());
    Shape r(n);
    for (size_t i = 0; i < n; ++i) {
        int64_t sa = i < n - a.size() ? 1 : a[i - (n - a.size())];
        int64_t sb = i < n - b.size() ? 1 : b[i - (n - b.size())];
        if (sa != sb && sa != 1 && sb != 1) return false;
        r[i] = sa == 1 ? sb : sa;
    }
    *out = r;
    return true;
}

// Row-major offset into `operand` (contiguous, shape `op`) of the element that
// the broadcast result's linear index `k` (result shape `full`) reads.
inline int64_t broadcast_source_index(const Shape &full, const Shape &op, int64_t k) {
    int64_t offset = 0, step = 1;
    size_t lead = full.size() - op.size();
    for (size_t i = full.size(); i-- > 0;) {
        int64_t coord = k % full[i];
        k /= full[i];
        if (i >= lead) {
            int64_t s = op[i - lead];
            if (s != 1) offset += coord * step;
            step *= s;
        }
    }
    return offset;
}

// ---------------------------------------------------------------------------
// 16-bit formats

// Rounds v to nearest-even in a binary format with `precision` significand
// bits (implicit bit included) and normal exponents [emin, emax]; denormals
// kept, overflow to inf. One rounding, straight from double.
inline double round_to_format(double v, int precision, int emin, int emax) {
    if (!std::isfinite(v) || v == 0) return v;
    double a = std::fabs(v);
    int e;
    std::frexp(a, &e);  // a in [2^(e-1), 2^e)
    int exponent = std::max(e - 1, emin);
    double quantum = std::ldexp(1.0, exponent - (precision - 1));
    double r = std::nearbyint(a / quantum) * quantum;
    double max_finite = std::ldexp(2.0 - std::ldexp(1.0, -(precision - 1)), emax);
    if (r > max_finite) r = std::numeric_limits<double>::infinity();
    return std::copysign(r, v);
}

inline double round_to_half(double v) { return round_to_format(v, 11, -14, 15); }
inline double round_to_bfloat16(double v) { return round_to_format(v, 8, -126, 127); }

// Bits of a double exactly representable as IEEE half. Sets *exact = false
// (and returns a rounded encoding) when it is not.
inline uint16_t half_bits(double v, bool *exact = nullptr) {
    double r = std::isnan(v) ? v : round_to_half(v);
    if (exact) *exact = std::isnan(v) || r == v;
    uint16_t sign = std::signbit(r) ? 0x8000 : 0;
    if (std::isnan(r)) return 0x7e00;
    if (std::isinf(r)) return sign | 0x7c00;
    double a = std::fabs(r);
    if (a == 0) return sign;
    if (a < std::ldexp(1.0, -14)) return sign | (uint16_t)std::ldexp(a, 24);  // denormal
    int e;
    double m = std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
    uint16_t exponent_field = (uint16_t)(e - 1 + 15);
    uint16_t mantissa = (uint16_t)std::ldexp(m * 2 - 1, 10);
    return sign | (uint16_t)(exponent_field << 10) | mantissa;
}

inline double half_value(uint16_t bits) {
    double sign = (bits & 0x8000) ? -1.0 : 1.0;
    int exponent_field = (bits >> 10) & 0x1f;
    int mantissa = bits & 0x3ff;
    if (exponent_field == 0x1f)
        return mantissa ? std::numeric_limits<double>::quiet_NaN()
                        : sign * std::numeric_limits<double>::infinity();
    if (exponent_field == 0) return sign * std::ldexp((double)mantissa, -24);
    return sign * std::ldexp(1.0 + mantissa / 1024.0, exponent_field - 15);
}

inline uint16_t bfloat16_bits(double v, bool *exact = nullptr) {
    double r = std::isnan(v) ? v : round_to_bfloat16(v);
    if (exact) *exact = std::isnan(v) || r == v;
    if (std::isnan(r)) return 0x7fc0;
    float f = (float)r;  // exact: bfloat16 values are float32 values
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16);
}

inline double bfloat16_value(uint16_t bits) {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline size_t dtype_bytes(kldiv_dtype dtype) {
    switch (dtype) {
    case KLDIV_FLOAT32: return 4;
    case KLDIV_FLOAT64: return 8;
    default: return 2;
    }
}

inline const char *dtype_name(kldiv_dtype dtype) {
    switch (dtype) {
    case KLDIV_FLOAT32: return "float32";
    case KLDIV_FLOAT64: return "float64";
    case KLDIV_FLOAT16: return "float16";
    case KLDIV_BFLOAT16: return "bfloat16";
    }
    return "?";
}

inline double round_to_dtype(double v, kldiv_dtype dtype) {
    switch (dtype) {
    case KLDIV_FLOAT32: return (double)(float)v;
    case KLDIV_FLOAT64: return v;
    case KLDIV_FLOAT16: return round_to_half(v);
    case KLDIV_BFLOAT16: return round_to_bfloat16(v);
    }
    return v;
}

// Stores v at element slot i (rounded to nearest); false if v was not exact.
inline bool store_element(void *base, kldiv_dtype dtype, int64_t i, double v) {
    bool exact = true;
    switch (dtype) {
    case KLDIV_FLOAT32: {
        float f = (float)v;
        exact = std::isnan(v) || (double)f == v;
        static_cast<float *>(base)[i] = f;
        break;
    }
    case KLDIV_FLOAT64: static_cast<double *>(base)[i] = v; break;
    case KLDIV_FLOAT16: static_cast<uint16_t *>(base)[i] = half_bits(v, &exact); break;
    case KLDIV_BFLOAT16: static_cast<uint16_t *>(base)[i] = bfloat16_bits(v, &exact); break;
    }
    return exact;
}

inline double load_element(const void *base, kldiv_dtype dtype, int64_t i) {
    switch (dtype) {
    case KLDIV_FLOAT32: return static_cast<const float *>(base)[i];
    case KLDIV_FLOAT64: return static_cast<const double *>(base)[i];
    case KLDIV_FLOAT16: return half_value(static_cast<const uint16_t *>(base)[i]);
    case KLDIV_BFLOAT16: return bfloat16_value(static_cast<const uint16_t *>(base)[i]);
    }
    return 0;
}

// A contiguous host buffer with a kldiv_tensor view of it. Storage always
// holds at least one element so that even empty tensors have non-null data.
struct HostTensor {
    kldiv_dtype dtype = KLDIV_FLOAT32;
    Shape sizes;
    Shape strides;
    std::vector<unsigned char> bytes;

    HostTensor() = default;
    HostTensor(kldiv_dtype d, Shape shape) : dtype(d), sizes(std::move(shape)) {
        strides = contiguous_strides(sizes);
        bytes.assign(std::max<int64_t>(numel(sizes), 1) * dtype_bytes(dtype), 0);
    }

    // Returns false if some value is not exactly representable.
    static HostTensor from_values(kldiv_dtype d, Shape shape, const std::vector<double> &values,
                                  bool *exact = nullptr) {
        HostTensor t(d, std::move(shape));
        bool all_exact = true;
        for (size_t i = 0; i < values.size(); ++i)
            all_exact &= store_element(t.bytes.data(), d, (int64_t)i, values[i]);
        if (exact) *exact = all_exact;
        return t;
    }

    int64_t count() const { return numel(sizes); }
    double at(int64_t i) const { return load_element(bytes.data(), dtype, i); }
    std::vector<double> values() const {
        std::vector<double> v(count());
        for (int64_t i = 0; i < count(); ++i) v[i] = at(i);
        return v;
    }
    void fill_bytes(unsigned char b) { std::fill(bytes.begin(), bytes.end(), b); }

    // The view; rank 0 passes NULL sizes and strides, as kldiv.h allows.
    kldiv_tensor view() const {
        kldiv_tensor t;
        t.data = const_cast<unsigned char *>(bytes.data());
        t.dtype = dtype;
        t.rank = (int32_t)sizes.size();
        t.sizes = sizes.empty() ? nullptr : sizes.data();
        t.strides = sizes.empty() ? nullptr : strides.data();
        t.device = KLDIV_DEVICE_CPU;
        return t;
    }
};

// ---------------------------------------------------------------------------
// Float64 reference of SPEC.md. Each value carries `scale`, the sum of the
// magnitudes of the terms behind it, which scales the comparison tolerance.

struct RefValue {
    double value = 0;
    double scale = 0;
};

inline double finite_or_zero(double v) { return std::isfinite(v) ? v : 0.0; }

inline double xlogy(double a, double b) {
    if (std::isnan(b)) return std::numeric_limits<double>::quiet_NaN();
    if (a == 0) return 0.0;
    return a * std::log(b);
}

inline RefValue ref_loss(double x, double t, bool log_target) {
    if (log_target) {
        double e = std::exp(t);
        return {e * (t - x), finite_or_zero(e * (std::fabs(t) + std::fabs(x)))};
    }
    double a = xlogy(t, t), b = t * x;
    return {a - b, finite_or_zero(std::fabs(a) + std::fabs(b))};
}

inline RefValue ref_grad_input(double g, double x, double t, bool log_target) {
    (void)x;
    double v = log_target ? -(g * std::exp(t)) : (-g) * t;
    return {v, finite_or_zero(std::fabs(v))};
}

inline RefValue ref_grad_target(double g, double x, double t, bool log_target) {
    if (log_target) {
        double e = std::exp(t);
        double v = (g * (t - x)) * e + g * e;
        return {v, finite_or_zero(std::fabs(g) * e * (std::fabs(t) + std::fabs(x) + 1))};
    }
    // xlogy(t != 0, t) * g + (g * t) / t + (-g) * x, as autograd forms it.
    double first = g * xlogy(t != 0 ? 1.0 : 0.0, t);
    double v = first + (g * t) / t + (-g) * x;
    double log_magnitude = t != 0 ? std::fabs(std::log(t)) : 0.0;
    return {v, finite_or_zero(std::fabs(g) * (log_magnitude + 1 + std::fabs(x)))};
}

struct Problem {
    Shape input_shape, target_shape;
    std::vector<double> input, target;  // row-major values
    bool log_target = false;
    kldiv_reduction reduction = KLDIV_REDUCTION_NONE;
};

struct Reference {
    Shape shape;                      // broadcast shape
    std::vector<RefValue> loss;       // one per output element (1 if reduced)
    std::vector<RefValue> grad_input; // input_shape
    std::vector<RefValue> grad_target;
};

// `grad_output`: one value per broadcast element for NONE, one value otherwise.
inline Reference reference(const Problem &p, const std::vector<double> &grad_output) {
    Reference r;
    broadcast_shapes(p.input_shape, p.target_shape, &r.shape);
    const int64_t n = numel(r.shape);
    const bool reduced = p.reduction != KLDIV_REDUCTION_NONE;
    double divisor = 1;
    if (p.reduction == KLDIV_REDUCTION_MEAN) divisor = (double)n;
    if (p.reduction == KLDIV_REDUCTION_BATCHMEAN && !p.input_shape.empty())
        divisor = (double)p.input_shape[0];

    // Forward.
    RefValue total{0.0, 0.0};
    if (!reduced) r.loss.resize(n);
    for (int64_t k = 0; k < n; ++k) {
        double x = p.input[broadcast_source_index(r.shape, p.input_shape, k)];
        double t = p.target[broadcast_source_index(r.shape, p.target_shape, k)];
        RefValue l = ref_loss(x, t, p.log_target);
        if (reduced) {
            total.value += l.value;
            total.scale += l.scale;
        } else {
            r.loss[k] = l;
        }
    }
    if (reduced) {
        total.value /= divisor;
        total.scale /= divisor;
        r.loss = {total};
    }

    // Backward: a broadcast operand sums from +0; the other keeps its values.
    const bool input_broadcast = p.input_shape != r.shape;
    const bool target_broadcast = p.target_shape != r.shape;
    r.grad_input.assign(numel(p.input_shape), RefValue{0.0, 0.0});
    r.grad_target.assign(numel(p.target_shape), RefValue{0.0, 0.0});
    for (int64_t k = 0; k < n; ++k) {
        int64_t xi = broadcast_source_index(r.shape, p.input_shape, k);
        int64_t ti = broadcast_source_index(r.shape, p.target_shape, k);
        double x = p.input[xi], t = p.target[ti];
        double g = reduced ? grad_output[0] / divisor : grad_output[k];
        RefValue gi = ref_grad_input(g, x, t, p.log_target);
        RefValue gt = ref_grad_target(g, x, t, p.log_target);
        if (input_broadcast) {
            r.grad_input[xi].value += gi.value;
            r.grad_input[xi].scale += gi.scale;
        } else {
            r.grad_input[xi] = gi;
        }
        if (target_broadcast) {
            r.grad_target[ti].value += gt.value;
            r.grad_target[ti].scale += gt.scale;
        } else {
            r.grad_target[ti] = gt;
        }
    }
    return r;
}

// ---------------------------------------------------------------------------
// Comparison per SPEC.md "Checking against the golden file".

struct Tolerance {
    double rel;
    double abs;
};

inline Tolerance golden_tolerance(kldiv_dtype dtype) {
    switch (dtype) {
    case KLDIV_FLOAT64: return {1e-12, 2 * std::numeric_limits<double>::denorm_min()};
    case KLDIV_FLOAT32: return {3e-6, 2 * (double)std::numeric_limits<float>::denorm_min()};
    case KLDIV_FLOAT16: return {6e-3, 2 * std::ldexp(1.0, -24)};
    case KLDIV_BFLOAT16: return {4e-2, 2 * std::ldexp(1.0, -133)};
    }
    return {0, 0};
}

inline std::string hex(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%a", v);
    return buf;
}

inline std::string describe(double v) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "%.9g [%a]", v, v);
    return buf;
}

// Empty string when `got` passes; else why not. `expected` is PyTorch's value
// (it decides the NaN / inf pattern); `ref` the float64 reference.
inline std::string check_value(double got, double expected, const RefValue &ref, Tolerance tol) {
    if (std::isnan(expected)) return std::isnan(got) ? "" : "expected NaN";
    if (std::isinf(expected)) return got == expected ? "" : "expected " + hex(expected);
    if (!std::isfinite(got)) return "expected a finite value";
    if (expected == 0 && ref.value == 0) {
        if (got != 0) return "expected an exact zero";
        if (std::signbit(got) != std::signbit(expected))
            return std::string("expected ") + (std::signbit(expected) ? "-0" : "+0");
        return "";
    }
    double limit = tol.rel * ref.scale + tol.abs;
    if (std::fabs(got - expected) <= limit || std::fabs(got - ref.value) <= limit) return "";
    char buf[128];
    std::snprintf(buf, sizeof buf, "off by %.3g (limit %.3g)",
                  std::min(std::fabs(got - expected), std::fabs(got - ref.value)), limit);
    return buf;
}

}  // namespace kldiv_test
