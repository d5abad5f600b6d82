// Elementwise math for the loss, written as Halide expressions so that it stays
// vectorised: Halide 14 lowers its own log/exp on CPU targets to one libm call
// per lane. Both functions reproduce IEEE special values (NaN, +-inf, +-0,
// denormals); accuracy is within 1 ulp of libm in float32 (tests/math_test).
#pragma once

#include <Halide.h>

#include "kldiv/dsl/dtype.h"

namespace kldiv::dsl {

// How a CPU kernel's polynomials multiply and add. With `fma` the Horner
// steps and the reconstruction of log and exp are fused multiply-adds, calls
// to kldiv_fma_f32 / kldiv_fma_f64 that the kernel's module links
// (codegen/src/math_code.cpp): Halide 14 emits no FMA under strict_float.
// Without it they are a * b + c, rounded twice. The loss's own products are
// never fused.
struct MathOptions {
    bool fma = false;
};

// The fused multiply-add a * b + c, rounded once, when `options.fma`; else
// rounded twice.
Halide::Expr multiply_add(const Halide::Expr &a, const Halide::Expr &b, const Halide::Expr &c,
                          const MathOptions &options);

// Natural logarithm of a Float(32) or Float(64) expression.
Halide::Expr log(const Halide::Expr &x, const MathOptions &options = {});

// log(x) for x > 0, denormals included, without the selects for special
// values (+inf gives a finite positive value; zero, negatives and NaN give
// meaningless ones): for callers that select those themselves.
Halide::Expr log_of_positive(const Halide::Expr &x, const MathOptions &options = {});

// log on CUDA: libdevice's (Halide's log there), whose flush-to-zero mode is
// kept away from denormal inputs by scaling them into the normal range first.
// It needs no division, which CUDA rounds correctly only at some cost.
Halide::Expr device_log(const Halide::Expr &x);

// Exponential of a Float(32) or Float(64) expression.
Halide::Expr exp(const Halide::Expr &x, const MathOptions &options = {});

// A function of a 16-bit value that a table of its 65,536 results gives:
// xlogy(t, t) (NaN below zero, 0 at +-0) and exp(t), each the exact value
// rounded once to float32.
enum class Lookup { XLogX, Exp };

// The extern the table is read through, e.g. "kldiv_xlogx_bf16"; its vector
// forms add "x<lanes>" (kldiv_xlogx_bf16x8).
std::string lookup_name(Lookup lookup, DType dtype);

// `lookup` of the 16-bit value whose bits `stored` holds (UInt(16)), as
// Float(32): a load from the table that the kernel's module links.
Halide::Expr lookup16(Lookup lookup, const Halide::Expr &stored, DType dtype);

// The extern name of the fused multiply-add of `type`'s element type
// ("kldiv_fma_f32", "kldiv_fma_f64").
std::string fma_name(const Halide::Type &type);

// Halide type the kernel's buffers hold for `dtype` (16-bit types as UInt(16)
// bit patterns) and the type it computes in.
Halide::Type storage_type(DType dtype);
Halide::Type compute_type(DType dtype);

// Storage bits -> compute type, exactly (float16 and bfloat16 widen exactly).
Halide::Expr widen(const Halide::Expr &stored, DType dtype);

// Compute type -> storage bits, rounding to nearest even once; NaN stays NaN,
// overflow gives inf, denormal results are kept.
Halide::Expr narrow(const Halide::Expr &value, DType dtype);

}  // namespace kldiv::dsl
