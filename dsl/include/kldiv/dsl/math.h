// Elementwise math for the loss, written as Halide expressions so that it stays
// vectorised: Halide 14 lowers its own log/exp on CPU targets to one libm call
// per lane. Both functions reproduce IEEE special values (NaN, +-inf, +-0,
// denormals); accuracy is within 1 ulp of libm in float32 (tests/math_test).
#pragma once

#include <Halide.h>

#include "kldiv/dsl/dtype.h"

namespace kldiv::dsl {

// Natural logarithm of a Float(32) or Float(64) expression.
Halide::Expr log(const Halide::Expr &x);

// log(x) for x > 0, denormals included, without the selects for special
// values (+inf gives a finite positive value; zero, negatives and NaN give
// meaningless ones): for callers that select those themselves.
Halide::Expr log_of_positive(const Halide::Expr &x);

// log on CUDA: libdevice's (Halide's log there), whose flush-to-zero mode is
// kept away from denormal inputs by scaling them into the normal range first.
// It needs no division, which CUDA rounds correctly only at some cost.
Halide::Expr device_log(const Halide::Expr &x);

// Exponential of a Float(32) or Float(64) expression.
Halide::Expr exp(const Halide::Expr &x);

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
