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

// log on CUDA for float32 arithmetic (float32, float16 and bfloat16 data),
// from a small table that each block computes into shared memory (in
// float64, so each entry is correctly rounded). x = 2^k z with z in
// [0.699, 1.398); the top mantissa bits of z pick entry i.
// - bfloat16 (`exact`): 128 entries. A bfloat16 value has no other mantissa
//   bits, so the entry holds log(z) itself and log(x) = k ln2 + T[i], one
//   fused multiply-add. 128 more entries serve the 127 denormals and zero.
// - float32 and float16: 256 intervals, each with 1/c_i and -log(1/c_i) for
//   the middle c_i (exactly 1 and 0 next to 1, so that logs near 0 keep
//   their relative accuracy); r = z/c_i - 1 is at most 2^-8, and log1p(r) a
//   degree-3 polynomial. Float32 denormals are made normal first; widened
//   float16 values never are denormal.
// 10 (bfloat16) to 19 (float32) PTX instructions, where libdevice's log
// takes about 25 and a test for denormals. Error: tests/math_test (every
// 16-bit value, every positive float32).
// Every fused multiply-add is LLVM's llvm.fma, which NVPTX writes as fma.rn.
struct LogTable {
    // (i): log_table_size(exact) float32 entries (see make_log_table)
    Halide::Func table;
    bool exact = false;      // bfloat16 inputs only
    bool denormals = false;  // inputs may be float32 denormals
    bool defined() const { return table.defined(); }
};

int log_table_entries(bool exact);
int log_table_size(bool exact);

// The table for values widened from `dtype` (Float32, Float16 or BFloat16).
LogTable make_log_table(DType dtype);

// table_log's log(x) for x > 0, denormals included, +inf finite (k = 128);
// zero and negatives give finite meaningless values, NaN gives NaN or a finite
// value: for callers that select those themselves.
Halide::Expr table_log_of_positive(const Halide::Expr &x, const LogTable &table);

// log(x) with IEEE special values (-inf at zero, NaN below it and for NaN).
Halide::Expr table_log(const Halide::Expr &x, const LogTable &table);

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
// `hardware_half`: float16 through the target's conversion instruction
// (CUDA's cvt.f32.f16) instead of integer operations.
Halide::Expr widen(const Halide::Expr &stored, DType dtype, bool hardware_half = false);

// Compute type -> storage bits, rounding to nearest even once; NaN stays NaN,
// overflow gives inf, denormal results are kept.
Halide::Expr narrow(const Halide::Expr &value, DType dtype);

}  // namespace kldiv::dsl
