#include "kldiv/dsl/math.h"

#include <cmath>
#include <limits>

namespace kldiv::dsl {

using Halide::Expr;
using Halide::Type;

namespace {

Expr constant(Type t, double v) { return Halide::cast(t, Expr(v)); }

// ln(2) split in two so that k * ln2_hi is exact for every exponent k that occurs.
double ln2_hi(bool f64) { return f64 ? 6.93147180369123816490e-01 : 0.693145751953125; }
double ln2_lo(bool f64) { return f64 ? 1.90821492927058770002e-10 : M_LN2 - 0.693145751953125; }

// An unsigned 32-bit constant (Halide's operators take no unsigned literals).
Expr u32(uint32_t v) { return Halide::cast(Halide::UInt(32), Expr((int64_t)v)); }

Expr nan_of(Type t) { return constant(t, std::numeric_limits<double>::quiet_NaN()); }

Expr inf_of(Type t) { return constant(t, std::numeric_limits<double>::infinity()); }

// Horner evaluation of sum(coefficients[i] * z^i).
Expr horner(const Expr &z, const std::vector<double> &coefficients, const MathOptions &options) {
    Type t = z.type();
    Expr acc = constant(t, coefficients.back());
    for (int i = (int)coefficients.size() - 2; i >= 0; i--) {
        acc = multiply_add(acc, z, constant(t, coefficients[i]), options);
    }
    return acc;
}

}  // namespace

std::string fma_name(const Type &type) { return type.bits() == 64 ? "kldiv_fma_f64" : "kldiv_fma_f32"; }

Expr multiply_add(const Expr &a, const Expr &b, const Expr &c, const MathOptions &options) {
    if (!options.fma) return a * b + c;
    return Halide::Internal::Call::make(a.type(), fma_name(a.type()), {a, b, c}, Halide::Internal::Call::PureExtern);
}

std::string lookup_name(Lookup lookup, DType dtype) {
    return std::string(lookup == Lookup::XLogX ? "kldiv_xlogx_" : "kldiv_exp_") +
           (dtype == DType::BFloat16 ? "bf16" : "f16");
}

Expr lookup16(Lookup lookup, const Expr &stored, DType dtype) {
    return Halide::Internal::Call::make(Halide::Float(32), lookup_name(lookup, dtype),
                                        {Halide::cast(Halide::UInt(32), stored)},
                                        Halide::Internal::Call::PureExtern);
}

Expr log_of_positive(const Expr &x, const MathOptions &options) {
    const Type ft = x.type();
    const bool f64 = ft.bits() == 64;
    const Type it = Halide::Int(ft.bits());
    const Type ut = Halide::UInt(ft.bits());
    const int mantissa_bits = f64 ? 52 : 23;
    const uint64_t bias = f64 ? 1023 : 127;
    auto bits_of = [&](uint64_t v) { return Halide::Internal::make_const(ut, v); };

    // A denormal's bits read M, its mantissa as an integer: x = M * 2^-shift.
    // (Zero takes the same path: its log is finite garbage.)
    const uint64_t shift = bias + mantissa_bits - 1;
    const Expr x_bits = Halide::reinterpret(ut, x);
    Expr normal_bits;      // x's bits, a denormal's rewritten as below
    Expr exponent_offset;  // what k takes off the exponent field
    if (!f64) {
        // float32: M converted to float (exact: below 2^23) has x's mantissa
        // and `shift` too much exponent; taking the shift off its field takes
        // the field below zero, which the arithmetic shift that gives k reads
        // right. 4 vector instructions on x86 (a signed compare, a conversion,
        // a subtract, a blend) where the float64 way below takes 6: 1.07x on
        // the float32 forward sum (2^24 elements, AVX2 forced on a Zen 5; about
        // 1.0x on a Zen 3, see docs/benchmarks.md). A negative x takes
        // this path too and gives finite garbage, as it would the other.
        const Expr denormal = Halide::reinterpret(it, x) < Halide::Internal::make_const(it, 1 << mantissa_bits);
        const Expr converted = Halide::reinterpret(ut, Halide::cast(ft, Halide::reinterpret(it, x)));
        normal_bits = Halide::select(denormal, converted - bits_of(shift << mantissa_bits), x_bits);
        exponent_offset = bits_of(bias << mantissa_bits);
    } else {
        // float64 (no vector conversion from 64-bit integers before
        // AVX-512): with the exponent of 2^mantissa_bits put in, a denormal's
        // bits read 2^mantissa_bits + M, so one subtract leaves M = x * 2^shift;
        // k then takes the shift off the field too (a selected constant).
        const Expr denormal = x_bits < bits_of(uint64_t(1) << mantissa_bits);  // for x >= 0
        const Expr integer_mantissa =
            Halide::reinterpret(ft, x_bits | bits_of((bias + mantissa_bits) << mantissa_bits)) -
            constant(ft, std::ldexp(1.0, mantissa_bits));
        normal_bits = Halide::reinterpret(ut, Halide::select(denormal, integer_mantissa, x));
        exponent_offset =
            Halide::select(denormal, bits_of((bias + shift) << mantissa_bits), bits_of(bias << mantissa_bits));
    }

    // Write x = 2^k * m with m in [sqrt(2)/2, sqrt(2)): shift the mantissa so
    // that values above sqrt(2) carry into the exponent, then rebuild m.
    // (+inf comes out as k = 128 or 1024 and m = 1: finite.) Unsigned bits,
    // so that the garbage of inputs outside the domain cannot overflow.
    const uint64_t one_bits = bias << mantissa_bits;
    const uint64_t sqrt_half_bits = f64 ? 0x3fe6a09e667f3bcdULL : 0x3f3504f3ULL;
    const uint64_t mantissa_mask = (uint64_t(1) << mantissa_bits) - 1;
    const Expr bits = normal_bits + bits_of(one_bits - sqrt_half_bits);
    // k is the exponent field less the bias (and for a float64 denormal less
    // the shift too), taken off the field before the shift, which leaves the
    // mantissa alone. (An arithmetic shift: the field less the offset may be
    // below zero.)
    const Expr k = Halide::reinterpret(it, bits - exponent_offset) >> mantissa_bits;
    const Expr m_bits = (bits & bits_of(mantissa_mask)) + bits_of(sqrt_half_bits);
    const Expr m = Halide::reinterpret(ft, m_bits);

    // log(1+f) = 2 atanh(s), s = f / (2 + f), |s| < 0.1716. The atanh series
    // 2s(1 + z/3 + z^2/5 + ...) with z = s^2 is summed as
    // f - f^2/2 + s (f^2/2 + R), R = sum_{j>=1} 2 z^j / (2j + 1), which keeps the
    // leading terms exact. f64 takes R's Taylor terms (truncation below
    // 1e-19); f32 a minimax fit with 3 terms for R / z, where Taylor needs 4
    // (Remez exchange on z in [0, 0.1716^2] for the error of s R; below
    // 2.2e-10 with the coefficients in float32, 0.022 ulp).
    const Expr f = m - constant(ft, 1.0);
    // (2 + f is m + 1, rounded once either way: f is exact. One constant
    // fewer for the register allocator: 1.02x on the float32 forward sum,
    // AVX2 forced on a Zen 5.)
    const Expr s = f / (m + constant(ft, 1.0));
    const Expr z = s * s;
    std::vector<double> coefficients;
    if (f64) {
        for (int j = 1; j <= 10; j++) coefficients.push_back(2.0 / (2 * j + 1));
    } else {
        coefficients = {0.66666817665100098, 0.39973604679107666, 0.29961264133453369};
    }
    const Expr r = z * horner(z, coefficients, options);
    const Expr hfsq = constant(ft, 0.5) * f * f;
    const Expr kf = Halide::cast(ft, k);
    // (k * ln2_hi is exact, so fusing its add rounds the same.)
    const Expr low = multiply_add(s, hfsq + r, kf * constant(ft, ln2_lo(f64)), options);
    return multiply_add(kf, constant(ft, ln2_hi(f64)), low - hfsq + f, options);
}

Expr device_log(const Expr &x) {
    const Type ft = x.type();
    const bool f64 = ft.bits() == 64;
    const double smallest_normal = f64 ? std::numeric_limits<double>::min()
                                       : (double)std::numeric_limits<float>::min();
    const int shift = f64 ? 54 : 25;
    Expr denormal = x > constant(ft, 0.0) && x < constant(ft, smallest_normal);
    Expr scaled = Halide::select(denormal, x * constant(ft, std::ldexp(1.0, shift)), x);
    return Halide::log(scaled) - Halide::select(denormal, constant(ft, shift * std::log(2.0)), constant(ft, 0.0));
}

namespace {

// The bits of the lower end of z's range: 0.69921875, whose low 16 bits are
// zero, so that the exact table's intervals are whole bfloat16 mantissas.
constexpr uint32_t kLogTableOffset = 0x3f330000;

// 23 mantissa bits less the bits that pick an entry.
int log_table_shift(bool exact) { return exact ? 16 : 15; }

// a * b + c rounded once, through LLVM's intrinsic (Halide 14 has no FMA
// under strict_float). Vectors are scalarised by Halide; PTX has no vectors.
Expr llvm_fma(const Expr &a, const Expr &b, const Expr &c) {
    return Halide::Internal::Call::make(Halide::Float(32), "llvm.fma.f32", {a, b, c},
                                        Halide::Internal::Call::PureExtern);
}

}  // namespace

int log_table_entries(bool exact) { return 1 << (23 - log_table_shift(exact)); }

int log_table_size(bool exact) { return 2 * log_table_entries(exact) + (exact ? 0 : 2); }

LogTable make_log_table(DType dtype) {
    const Type f32 = Halide::Float(32), f64 = Halide::Float(64);
    const Type i32 = Halide::Int(32), u32_type = Halide::UInt(32);
    LogTable t;
    t.exact = dtype == DType::BFloat16;
    t.denormals = dtype == DType::Float32;
    const int shift = log_table_shift(t.exact);
    const int entries = log_table_entries(t.exact);
    const Expr ln2_f32 = Halide::cast(f64, constant(f32, M_LN2));
    Halide::Var i("log_i");
    t.table = Halide::Func(t.exact ? "log_table_exact" : "log_table");
    // The lower end of interval j.
    auto start = [&](const Expr &j) { return u32(kLogTableOffset) + (Halide::cast(u32_type, j) << shift); };
    if (t.exact) {
        // Entry j: log z_j. Entry entries + j: for the denormal (or zero)
        // bfloat16 b whose bits give j the same way, log(b) - k ln2 with k as
        // table_log_of_positive computes it from those bits (0 for zero), so
        // that the one multiply-add gives log(b) there too.
        const Expr j = i % entries;
        const Expr normal = Halide::log(Halide::cast(f64, Halide::reinterpret(f32, start(j))));
        const Expr b_bits = (start(j) & u32(0x007f0000));  // the denormal with offset bits j
        const Expr k = Halide::reinterpret(i32, b_bits - u32(kLogTableOffset)) >> 23;
        const Expr b = Halide::cast(f64, Halide::reinterpret(f32, b_bits));
        const Expr denormal =
            Halide::select(b_bits == u32(0), Halide::cast(f64, 0), Halide::log(b) - Halide::cast(f64, k) * ln2_f32);
        t.table(i) = Halide::cast(f32, Halide::select(i < entries, normal, denormal));
        return t;
    }
    // Interval j's middle, and its inverse rounded to float32; the two
    // intervals either side of 1 take 1 itself, so that log(z) = log1p(z - 1)
    // there, with z - 1 exact. The inverse sits at j and its -log at
    // j + entries + 1: one more than `entries` apart, an offset whose bits
    // overlap the index's, so that LLVM keeps it an add (a constant offset of
    // the load) rather than an OR that NVPTX computes on its own.
    const Expr j = Halide::select(i <= entries, i, i - (entries + 1));
    const Expr middle = Halide::reinterpret(f32, start(j) + u32(1u << (shift - 1)));
    const int above_one = (0x3f800000 - kLogTableOffset) >> shift;
    const Expr inverse = Halide::select(j == above_one - 1 || j == above_one, constant(f32, 1.0),
                                        constant(f32, 1.0) / middle);
    t.table(i) = Halide::select(i <= entries, inverse, Halide::cast(f32, -Halide::log(Halide::cast(f64, inverse))));
    return t;
}

Expr table_log_of_positive(const Expr &x, const LogTable &table) {
    const Type f32 = Halide::Float(32);
    const Type i32 = Halide::Int(32);
    const Type u32_type = Halide::UInt(32);
    const int shift = log_table_shift(table.exact);
    const int entries = log_table_entries(table.exact);
    const Expr x_bits = Halide::reinterpret(u32_type, x);
    const Expr denormal = x_bits < u32(0x00800000);
    Expr bits = x_bits;
    if (table.denormals) {
        // Denormals (and zero): their bits, read as an integer, are x * 2^149,
        // and that integer as a float (exact: below 2^23) has x's mantissa and
        // 149 too much exponent. Taking 149 off the bits takes the exponent
        // field below zero, which the signed shift that gives k reads right.
        const Expr denormal_bits = Halide::reinterpret(u32_type, Halide::cast(f32, x_bits)) - u32(149u << 23);
        bits = Halide::select(denormal, denormal_bits, x_bits);
    }
    const Expr offset_bits = bits - u32(kLogTableOffset);
    // (A modulo, not a mask: Halide bounds the table's reads by it. It is one
    // AND all the same.)
    const Expr i = Halide::cast(i32, (offset_bits >> shift) % u32(entries));
    const Expr kf = Halide::cast(f32, Halide::reinterpret(i32, offset_bits) >> 23);
    const Expr ln2 = constant(f32, M_LN2);
    if (table.exact) {
        // A denormal bfloat16's entry holds its log less what k ln2 adds.
        return llvm_fma(kf, ln2, Halide::select(denormal, table.table(i + entries), table.table(i)));
    }
    const Expr z = Halide::reinterpret(f32, bits - (offset_bits & u32(0xff800000)));
    const Expr r = llvm_fma(z, table.table(i), constant(f32, -1.0));
    // log1p(r) = r (1 + r (-1/2 + r/3)) for |r| <= 2^-8: the next term, r^4/4,
    // is below 2^-26 r. The last step adds k ln2 + log(c_i), rounding once.
    const Expr q = llvm_fma(r, constant(f32, 1.0 / 3.0), constant(f32, -0.5));
    const Expr s = llvm_fma(r, q, constant(f32, 1.0));
    return llvm_fma(r, s, llvm_fma(kf, ln2, table.table(i + (entries + 1))));
}

Expr table_log(const Expr &x, const LogTable &table) {
    const Type ft = x.type();
    const Expr finite = table_log_of_positive(x, table);
    return Halide::select(x > constant(ft, 0.0) && x < inf_of(ft), finite,
                          x == constant(ft, 0.0), -inf_of(ft),
                          x == inf_of(ft), inf_of(ft), nan_of(ft));
}

Expr log(const Expr &x, const MathOptions &options) {
    const Type ft = x.type();
    Expr result = Halide::select(x == inf_of(ft), inf_of(ft), log_of_positive(x, options));
    // x > 0 is false for NaN: zero gives -inf, negatives and NaN give NaN.
    return Halide::select(x > constant(ft, 0.0), result,
                          Halide::select(x == constant(ft, 0.0), -inf_of(ft), nan_of(ft)));
}

Expr exp(const Expr &x, const MathOptions &options) {
    const Type ft = x.type();
    const bool f64 = ft.bits() == 64;
    const Type it = Halide::Int(ft.bits());

    // exp(x) = 2^k exp(r), k = round(x / ln2), |r| <= ln2 / 2. The clamp keeps
    // k in a range where 2^k can be built in two halves (see below); beyond it
    // the result is already 0 or inf.
    const double lo = f64 ? -746.0 : -110.0;
    const double hi = f64 ? 710.0 : 90.0;
    Expr xc = Halide::clamp(x, constant(ft, lo), constant(ft, hi));
    Expr kf = Halide::floor(xc * constant(ft, M_LOG2E) + constant(ft, 0.5));
    // (kf * ln2_hi is exact, and so is its subtraction, fused or not.)
    Expr r = multiply_add(-kf, constant(ft, ln2_lo(f64)), xc - kf * constant(ft, ln2_hi(f64)), options);

    // Taylor series of exp(r); truncation error < 1e-17 (f64, 13 terms) and
    // 5e-9 (f32, 7 terms) relative.
    std::vector<double> coefficients;
    const int terms = f64 ? 13 : 7;
    double factorial = 1.0;
    for (int j = 0; j <= terms; j++) {
        if (j > 0) factorial *= j;
        coefficients.push_back(1.0 / factorial);
    }
    Expr p = horner(r, coefficients, options);

    // 2^k as two normal powers of two: the first product is exact, so a
    // denormal result is rounded once, by the second.
    const int mantissa_bits = f64 ? 52 : 23;
    const int64_t bias = f64 ? 1023 : 127;
    Expr k = Halide::cast(it, kf);
    Expr k1 = k >> 1;  // floor(k / 2)
    Expr k2 = k - k1;
    auto power_of_two = [&](const Expr &e) {
        return Halide::reinterpret(ft, (e + Halide::cast(it, Expr(bias))) << mantissa_bits);
    };
    Expr result = (p * power_of_two(k1)) * power_of_two(k2);
    return Halide::select(Halide::is_nan(x), x, result);
}

Type storage_type(DType dtype) {
    switch (dtype) {
    case DType::Float32: return Halide::Float(32);
    case DType::Float64: return Halide::Float(64);
    default: return Halide::UInt(16);
    }
}

Type compute_type(DType dtype) {
    return computes_in_double(dtype) ? Halide::Float(64) : Halide::Float(32);
}

Expr widen(const Expr &stored, DType dtype, bool hardware_half) {
    using Halide::UInt;
    if (dtype == DType::Float16 && hardware_half) {
        return Halide::cast(Halide::Float(32), Halide::reinterpret(Halide::Float(16), stored));
    }
    switch (dtype) {
    case DType::Float32:
    case DType::Float64: return stored;
    case DType::BFloat16:
        return Halide::reinterpret(Halide::Float(32), Halide::cast(UInt(32), stored) << 16);
    case DType::Float16: {
        Expr h = Halide::cast(UInt(32), stored);
        Expr sign = (h & u32(0x8000)) << 16;
        Expr magnitude = h & u32(0x7fff);
        // Normal halves: rebias the exponent. Denormal halves: mantissa * 2^-24,
        // exact, and without denormal float arithmetic (slow on x86).
        Expr normal = (magnitude << 13) + (u32(112) << 23);
        Expr denormal = Halide::reinterpret(
            UInt(32), Halide::cast(Halide::Float(32), magnitude) * constant(Halide::Float(32), std::ldexp(1.0, -24)));
        Expr bits = Halide::select(magnitude >= u32(0x7c00), (magnitude << 13) | u32(0x7f800000),
                                   magnitude < u32(0x400), denormal, normal);
        return Halide::reinterpret(Halide::Float(32), bits | sign);
    }
    }
    return stored;
}

Expr narrow(const Expr &value, DType dtype) {
    using Halide::UInt;
    switch (dtype) {
    case DType::Float32:
    case DType::Float64: return value;
    case DType::BFloat16: {
        Expr b = Halide::reinterpret(UInt(32), value);
        Expr rounded = (b + u32(0x7fff) + ((b >> 16) & u32(1))) >> 16;
        Expr quiet_nan = (b >> 16) | u32(0x40);
        return Halide::cast(UInt(16), Halide::select(Halide::is_nan(value), quiet_nan, rounded));
    }
    case DType::Float16: {
        Expr b = Halide::reinterpret(UInt(32), value);
        Expr sign = (b >> 16) & u32(0x8000);
        Expr a = b & u32(0x7fffffff);
        // Normal halves: rebias the exponent and round the 13 dropped bits to even.
        Expr normal = (a - (u32(112) << 23) + u32(0xfff) + ((a >> 13) & u32(1))) >> 13;
        // Denormal halves: adding 0.5 puts the value's 2^-24 units in the low
        // mantissa bits, rounded to even by the FPU.
        Expr denormal = Halide::reinterpret(
                            UInt(32), Halide::reinterpret(Halide::Float(32), a) +
                                          constant(Halide::Float(32), 0.5)) -
                        u32(0x3f000000);
        Expr magnitude = Halide::select(a > u32(0x7f800000), u32(0x7e00),
                                        a >= u32(0x477ff000), u32(0x7c00),  // >= 65520 rounds to inf
                                        a >= u32(0x38800000), normal, denormal);
        return Halide::cast(UInt(16), magnitude | sign);
    }
    }
    return value;
}

}  // namespace kldiv::dsl
