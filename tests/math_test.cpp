// dsl::log / dsl::exp accuracy (ulp against libm in double, rounded) and the
// exactness of the 16-bit conversions, through Halide's JIT with the same
// features as the kernels; plus a check that they stay vectorised.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <regex>
#include <sstream>

#include <Halide.h>

#include "kldiv/codegen/build.h"
#include "kldiv/codegen/math_code.h"
#include "kldiv/dsl/math.h"
#include "kldiv/schedules/params.h"

namespace {

using Halide::Buffer;
using Halide::Expr;
using Halide::Func;
using Halide::Var;

Halide::Target jit_target() { return kldiv::codegen::with_kernel_features(Halide::get_jit_target_from_environment()); }

float fma_f32(float a, float b, float c) { return std::fma(a, b, c); }
double fma_f64(double a, double b, double c) { return std::fma(a, b, c); }

using MathFn = Expr (*)(const Expr &, const kldiv::dsl::MathOptions &);

// fn over `values`. With `options.fma`, kldiv_fma_f32/f64 are libm's fma, one
// call per lane: Halide's JIT links no bitcode (the kernels' inlined form is
// checked in FusedMultiplyAddsAndLookupsAreInlined).
template<typename T>
Buffer<T> evaluate(MathFn fn, const std::vector<T> &values, kldiv::dsl::MathOptions options = {}) {
    Buffer<T> in(values.size());
    std::memcpy(in.data(), values.data(), values.size() * sizeof(T));
    Var i("i");
    Func f("f");
    f(i) = fn(in(i), options);
    f.vectorize(i, 16, Halide::TailStrategy::GuardWithIf);
    Halide::Pipeline pipeline(f);
    pipeline.set_jit_externs({{"kldiv_fma_f32", Halide::JITExtern(fma_f32)},
                              {"kldiv_fma_f64", Halide::JITExtern(fma_f64)}});
    return pipeline.realize({(int)values.size()}, jit_target());
}

std::string read_text(const std::string &path) {
    std::ifstream file(path);
    std::stringstream text;
    text << file.rdbuf();
    return text.str();
}

const kldiv::dsl::MathOptions kBothForms[] = {{false}, {true}};

const char *form_name(const kldiv::dsl::MathOptions &options) { return options.fma ? "fused" : "unfused"; }

// Distance in representable values between two finite floats of one sign.
int64_t ulps(float a, float b) {
    int32_t ia, ib;
    std::memcpy(&ia, &a, 4);
    std::memcpy(&ib, &b, 4);
    if (ia < 0) ia = INT32_MIN - ia;
    if (ib < 0) ib = INT32_MIN - ib;
    return std::llabs((int64_t)ia - ib);
}

std::vector<float> sample_floats(size_t count, bool positive_only) {
    std::mt19937 rng(7);
    std::vector<float> v;
    // Random bit patterns cover every exponent, denormals included.
    while (v.size() < count) {
        uint32_t bits = rng();
        if (positive_only) bits &= 0x7fffffff;
        float f;
        std::memcpy(&f, &bits, 4);
        if (std::isfinite(f)) v.push_back(f);
    }
    for (float special : {0.0f, -0.0f, 1.0f, 2.0f, 0.5f, std::numeric_limits<float>::denorm_min(),
                          std::numeric_limits<float>::min(), std::numeric_limits<float>::max(), 1e-45f, 88.72f,
                          -87.3f, -103.9f, -104.0f, 0.9999999f, 1.0000001f}) {
        v.push_back(special);
    }
    return v;
}

TEST(DslMath, LogFloat32WithinOneUlp) {
    const std::vector<float> x = sample_floats(1 << 20, true);
    for (const kldiv::dsl::MathOptions &options : kBothForms) {
        Buffer<float> y = evaluate(kldiv::dsl::log, x, options);
        int64_t worst = 0;
        for (size_t i = 0; i < x.size(); i++) {
            const float expected = (float)std::log((double)x[i]);
            if (std::isnan(expected)) {
                EXPECT_TRUE(std::isnan(y(i))) << "x=" << x[i];
                continue;
            }
            if (std::isinf(expected)) {
                EXPECT_EQ(y(i), expected) << "x=" << x[i];
                continue;
            }
            worst = std::max(worst, ulps(y(i), expected));
            ASSERT_LE(ulps(y(i), expected), 1)
                << "x=" << std::hexfloat << x[i] << " got " << y(i) << " want " << expected;
        }
        std::cout << "[ log f32 " << form_name(options) << " ] worst error " << worst << " ulp over " << x.size()
                  << " values\n";
    }
}

TEST(DslMath, ExpFloat32WithinOneUlp) {
    std::vector<float> x;
    std::mt19937 rng(11);
    std::uniform_real_distribution<float> range(-110.0f, 90.0f);
    for (int i = 0; i < (1 << 20); i++) x.push_back(range(rng));
    for (float f : sample_floats(1 << 16, false)) x.push_back(f);
    for (const kldiv::dsl::MathOptions &options : kBothForms) {
        Buffer<float> y = evaluate(kldiv::dsl::exp, x, options);
        int64_t worst = 0;
        for (size_t i = 0; i < x.size(); i++) {
            const float expected = (float)std::exp((double)x[i]);
            if (std::isinf(expected) || expected == 0.0f) {
                EXPECT_EQ(y(i), expected) << "x=" << x[i];
                continue;
            }
            worst = std::max(worst, ulps(y(i), expected));
            ASSERT_LE(ulps(y(i), expected), 1)
                << "x=" << std::hexfloat << x[i] << " got " << y(i) << " want " << expected;
        }
        std::cout << "[ exp f32 " << form_name(options) << " ] worst error " << worst << " ulp over " << x.size()
                  << " values\n";
    }
}

TEST(DslMath, SpecialValues) {
    const float inf = std::numeric_limits<float>::infinity();
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (const kldiv::dsl::MathOptions &options : kBothForms) {
        SCOPED_TRACE(form_name(options));
        Buffer<float> l =
            evaluate(kldiv::dsl::log, std::vector<float>{0.0f, -0.0f, -1.0f, inf, -inf, nan, 1.0f}, options);
        EXPECT_EQ(l(0), -inf);
        EXPECT_EQ(l(1), -inf);
        EXPECT_TRUE(std::isnan(l(2)));
        EXPECT_EQ(l(3), inf);
        EXPECT_TRUE(std::isnan(l(4)));
        EXPECT_TRUE(std::isnan(l(5)));
        EXPECT_EQ(l(6), 0.0f);
        Buffer<float> e =
            evaluate(kldiv::dsl::exp, std::vector<float>{-inf, inf, nan, 0.0f, -0.0f, 89.0f, -200.0f}, options);
        EXPECT_EQ(e(0), 0.0f);
        EXPECT_EQ(e(1), inf);
        EXPECT_TRUE(std::isnan(e(2)));
        EXPECT_EQ(e(3), 1.0f);
        EXPECT_EQ(e(4), 1.0f);
        EXPECT_EQ(e(5), inf);
        EXPECT_EQ(e(6), 0.0f);
    }
}

TEST(DslMath, Float64LogAndExp) {
    std::mt19937_64 rng(5);
    std::vector<double> x;
    std::uniform_real_distribution<double> exponent(-700.0, 700.0);
    for (int i = 0; i < (1 << 18); i++) x.push_back(std::exp(exponent(rng)));
    // Denormals across their range (they are made normal by their integer mantissa).
    for (double denormal : {4.9e-324, 1e-323, 3.3e-320, 7.1e-315, 1.5e-310, 2.2250738585072009e-308}) {
        x.push_back(denormal);
    }
    x.push_back(2.2250738585072014e-308);
    for (const kldiv::dsl::MathOptions &options : kBothForms) {
        SCOPED_TRACE(form_name(options));
        Buffer<double> l = evaluate(kldiv::dsl::log, x, options);
        Buffer<double> e = evaluate(kldiv::dsl::exp, std::vector<double>(l.data(), l.data() + x.size()), options);
        for (size_t i = 0; i < x.size(); i++) {
            const double expected = std::log(x[i]);
            ASSERT_NEAR(l(i), expected, 2.5e-16 * std::fabs(expected) + 1e-300) << "x=" << x[i];
            const double back = std::exp(l(i));
            ASSERT_NEAR(e(i), back, 4.5e-16 * back) << "x=" << l(i);
        }
    }
}

// float16 and bfloat16 -> float32 is exact, and float32 -> 16 bits rounds to
// nearest even; both checked over every 16-bit pattern and the midpoints.
TEST(DslMath, SixteenBitConversions) {
    for (kldiv::DType dtype : {kldiv::DType::Float16, kldiv::DType::BFloat16}) {
        std::vector<uint16_t> all(65536);
        for (int i = 0; i < 65536; i++) all[i] = (uint16_t)i;
        Buffer<uint16_t> in(65536);
        std::memcpy(in.data(), all.data(), 65536 * 2);
        Var i("i");
        Func widened("widened"), round_trip("round_trip");
        widened(i) = kldiv::dsl::widen(in(i), dtype);
        round_trip(i) = kldiv::dsl::narrow(widened(i), dtype);
        widened.compute_root().vectorize(i, 16);
        round_trip.vectorize(i, 16);
        Buffer<uint16_t> back = round_trip.realize({65536}, jit_target());
        Buffer<float> values = widened.realize({65536}, jit_target());
        for (int k = 0; k < 65536; k++) {
            const float v = values(k);
            if (std::isnan(v)) {
                EXPECT_TRUE((back(k) & 0x7fff) > (dtype == kldiv::DType::Float16 ? 0x7c00 : 0x7f80)) << k;
                continue;
            }
            EXPECT_EQ(back(k), k) << "pattern " << k;
        }
        // Midpoints between adjacent finite positive values round to the even one.
        std::vector<float> mids;
        std::vector<uint16_t> want;
        const int top = dtype == kldiv::DType::Float16 ? 0x7bff : 0x7f7f;
        for (int k = 0; k < top; k++) {
            mids.push_back((float)(((double)values(k) + (double)values(k + 1)) / 2));
            want.push_back((uint16_t)((k % 2 == 0) ? k : k + 1));
        }
        Buffer<float> mid_in(mids.size());
        std::memcpy(mid_in.data(), mids.data(), mids.size() * 4);
        Func narrowed("narrowed");
        narrowed(i) = kldiv::dsl::narrow(mid_in(i), dtype);
        Buffer<uint16_t> got = narrowed.realize({(int)mids.size()}, jit_target());
        for (size_t k = 0; k < mids.size(); k++) {
            // bfloat16 midpoints are exact in float32; float16 ones too (11 bits).
            ASSERT_EQ(got(k), want[k]) << "midpoint after pattern " << k;
        }
    }
}

// Every entry of the 16-bit tables is the float64 value rounded once to
// float32, special values included.
TEST(DslMath, LookupTablesAreExactlyRounded) {
    using kldiv::dsl::Lookup;
    for (kldiv::DType dtype : {kldiv::DType::Float16, kldiv::DType::BFloat16}) {
        Buffer<uint16_t> all(65536);
        for (int k = 0; k < 65536; k++) all(k) = (uint16_t)k;
        Var i("i");
        Func widened("widened");
        widened(i) = kldiv::dsl::widen(all(i), dtype);
        Buffer<float> values = widened.realize({65536}, jit_target());
        for (Lookup lookup : {Lookup::XLogX, Lookup::Exp}) {
            SCOPED_TRACE(kldiv::dsl::lookup_name(lookup, dtype));
            const std::vector<float> &table = kldiv::codegen::lookup_table(lookup, dtype);
            ASSERT_EQ(table.size(), 65536u);
            int near_ties = 0;
            for (int k = 0; k < 65536; k++) {
                const double t = values(k);
                double exact;
                if (lookup == Lookup::Exp) {
                    exact = std::exp(t);
                } else {
                    exact = t < 0 ? NAN : t == 0 ? 0.0 : std::isinf(t) ? t : t * std::log(t);
                }
                if (std::isnan(exact)) {
                    ASSERT_TRUE(std::isnan(table[k])) << "pattern " << k;
                    continue;
                }
                const float rounded = (float)exact;
                if (table[k] == rounded && std::signbit(table[k]) == std::signbit(rounded)) continue;
                // float64 cannot decide values within its own error of a
                // float32 midpoint: those must still be one of the two neighbours.
                const float other = std::nextafter(rounded, table[k]);
                ASSERT_EQ(table[k], other) << "pattern " << k << " t=" << t;
                ASSERT_LE(std::fabs(std::fabs(exact - (double)rounded) - std::fabs(exact - (double)other)),
                          4 * std::numeric_limits<double>::epsilon() * std::fabs(exact))
                    << "pattern " << k;
                near_ties++;
            }
            EXPECT_LE(near_ties, 2);
        }
    }
}

// CUDA's log (dsl::table_log), run through Halide's JIT on this CPU: the
// same expression the PTX computes, with its table computed first. For every
// value the dtype's target can hold, and for float32 samples.
struct TableLogResult {
    Buffer<float> log, xlogx;
};

// table_log (with `special_values`) or table_log_of_positive over `values`,
// its table computed first.
Buffer<float> device_log(Buffer<float> values, kldiv::DType dtype, bool special_values = false) {
    const kldiv::dsl::LogTable table = kldiv::dsl::make_log_table(dtype);
    Func table_func = table.table;
    table_func.compute_root();
    Var i("i");
    // (Not named "log": a JIT pipeline's function of that name would be libm's.)
    Func log("table_log");
    log(i) = special_values ? kldiv::dsl::table_log(values(i), table)
                            : kldiv::dsl::table_log_of_positive(values(i), table);
    return log.realize({values.width()}, jit_target());
}

TableLogResult table_log_of(Buffer<float> values, kldiv::DType dtype) {
    TableLogResult out{device_log(values, dtype), Buffer<float>(values.width())};
    // The kernels' product t * log(t), rounded once.
    for (int k = 0; k < values.width(); k++) out.xlogx(k) = values(k) * out.log(k);
    return out;
}

Buffer<float> widened_values(kldiv::DType dtype) {
    Buffer<uint16_t> all(65536);
    for (int k = 0; k < 65536; k++) all(k) = (uint16_t)k;
    Var i("i");
    Func widened("widened");
    widened(i) = kldiv::dsl::widen(all(i), dtype);
    return widened.realize({65536}, jit_target());
}

// Every positive finite 16-bit target: log within 1 ulp of float32, t log t
// within 1 ulp (bfloat16) or 2 (float16) of the correctly rounded value that
// the CPU kernels' tables hold, and rounded to the 16-bit type the same as
// that value but for a few float16 values within those ulps of a rounding
// boundary.
TEST(DeviceLog, ExhaustiveOverSixteenBitTargets) {
    for (kldiv::DType dtype : {kldiv::DType::BFloat16, kldiv::DType::Float16}) {
        SCOPED_TRACE(dtype == kldiv::DType::BFloat16 ? "bf16" : "f16");
        const Buffer<float> values = widened_values(dtype);
        const TableLogResult got = table_log_of(values, dtype);
        const std::vector<float> &exact_xlogx = kldiv::codegen::lookup_table(kldiv::dsl::Lookup::XLogX, dtype);
        int64_t worst_log = 0, worst_xlogx = 0;
        int checked = 0, narrowed_differ = 0;
        for (int k = 0; k < 65536; k++) {
            const float t = values(k);
            if (!(t > 0) || std::isinf(t)) continue;
            checked++;
            const float want_log = (float)std::log((double)t);
            worst_log = std::max(worst_log, ulps(got.log(k), want_log));
            worst_xlogx = std::max(worst_xlogx, ulps(got.xlogx(k), exact_xlogx[k]));
            // Rounded to the dtype's significant bits (8 or 11), to nearest even.
            const int bits = dtype == kldiv::DType::BFloat16 ? 8 : 11;
            auto round_to = [bits](float v) {
                int e;
                const double m = std::frexp((double)v, &e);
                return std::ldexp(std::nearbyint(std::ldexp(m, bits)), e - bits);
            };
            narrowed_differ += round_to(got.xlogx(k)) != round_to(exact_xlogx[k]);
        }
        EXPECT_GT(checked, 30000);
        const bool bf16 = dtype == kldiv::DType::BFloat16;
        EXPECT_LE(worst_log, 1) << "log";
        EXPECT_LE(worst_xlogx, bf16 ? 1 : 2) << "t log t";
        // Measured: none for bfloat16, 2 for float16.
        EXPECT_LE(narrowed_differ, bf16 ? 0 : 4) << "t log t that round to another 16-bit value";
        std::printf("[ INFO ] %s: %d targets, log within %lld ulp, t log t within %lld ulp of the correctly rounded "
                    "value, %d of them round to another 16-bit value\n",
                    dtype == kldiv::DType::BFloat16 ? "bf16" : "f16", checked, (long long)worst_log,
                    (long long)worst_xlogx, narrowed_differ);
    }
}

// Every positive finite float32 (2^31 - 2^23 values, denormals included),
// 2^24 at a time: within 2 ulp, and above 1 ulp only next to 1 + 2^-8, where
// the first interval with a table log of its own starts (measured: 9 values).
TEST(DeviceLog, EveryFloat32WithinTwoUlp) {
    const kldiv::dsl::LogTable table = kldiv::dsl::make_log_table(kldiv::DType::Float32);
    Func table_func = table.table;
    table_func.compute_root();
    Halide::ImageParam bits(Halide::UInt(32), 1, "bits");
    Var i("i");
    Func log("table_log");  // (see table_log_of)
    log(i) = kldiv::dsl::table_log_of_positive(Halide::reinterpret(Halide::Float(32), bits(i)), table);
    log.vectorize(i, 8).parallel(i, 1 << 16);
    log.compile_jit(jit_target());
    const int chunk = 1 << 24;
    Buffer<uint32_t> in(chunk);
    Buffer<float> out(chunk);
    int64_t worst = 0, above_one = 0;
    float worst_at = 0;
    for (uint64_t first = 1; first < 0x7f800000u; first += chunk) {
        const int n = (int)std::min<uint64_t>(chunk, 0x7f800000u - first);
        for (int k = 0; k < n; k++) in(k) = (uint32_t)(first + k);
        bits.set(in);
        Buffer<float> got = out;
        got.crop(0, 0, n);
        log.realize(got, jit_target());
        for (int k = 0; k < n; k++) {
            float x;
            const uint32_t b = in(k);
            std::memcpy(&x, &b, 4);
            const int64_t u = ulps(got(k), (float)std::log((double)x));
            above_one += u > 1;
            if (u > worst) worst = u, worst_at = x;
        }
    }
    EXPECT_LE(worst, 2) << "at " << worst_at;
    EXPECT_LE(above_one, 64);
    std::printf("[ INFO ] every positive finite float32: log within %lld ulp (worst at %a), %lld values above 1 ulp\n",
                (long long)worst, worst_at, (long long)above_one);
}

// table_log keeps IEEE's special values.
TEST(DeviceLog, SpecialValues) {
    const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
    for (kldiv::DType dtype : {kldiv::DType::Float32, kldiv::DType::BFloat16, kldiv::DType::Float16}) {
        // The smallest denormal the dtype widens to, and the smallest normal
        // float32 (float16 has neither: its denormals widen to normal floats).
        const float tiny = dtype == kldiv::DType::BFloat16 ? 0x1p-133f : 0x1p-149f;
        const std::vector<float> in = {0.0f, -0.0f, -1.0f, -inf, inf, nan, 1.0f, tiny, 0x1p-126f};
        Buffer<float> values((int)in.size());
        std::memcpy(values.data(), in.data(), in.size() * 4);
        Buffer<float> got = device_log(values, dtype, true);
        EXPECT_EQ(got(0), -inf);
        EXPECT_EQ(got(1), -inf);
        EXPECT_TRUE(std::isnan(got(2)));
        EXPECT_TRUE(std::isnan(got(3)));
        EXPECT_EQ(got(4), inf);
        EXPECT_TRUE(std::isnan(got(5)));
        EXPECT_EQ(got(6), 0.0f);
        if (dtype != kldiv::DType::Float16) {
            EXPECT_EQ(got(7), (float)std::log((double)tiny));
            EXPECT_EQ(got(8), (float)std::log(0x1p-126));
        }
    }
}

// In a kernel's module the fused multiply-adds become FMA instructions and the
// lookups loads, all inlined: no call to a kldiv_ function is left (their
// weak definitions stay beside the kernel).
TEST(DslMath, FusedMultiplyAddsAndLookupsAreInlined) {
    const Halide::Target avx2("x86-64-linux-avx-avx2-fma-f16c-sse41");
    ASSERT_TRUE(kldiv::codegen::math_options(avx2).fma);
    ASSERT_TRUE(kldiv::codegen::math_options(Halide::Target("x86-64-linux-avx512_skylake")).fma);
    ASSERT_TRUE(kldiv::codegen::math_options(Halide::Target("arm-64-linux")).fma);
    ASSERT_FALSE(kldiv::codegen::math_options(Halide::Target("x86-64-linux-sse41")).fma);
    ASSERT_FALSE(kldiv::codegen::math_options(Halide::Target("x86-64-linux-avx2-fma-cuda")).fma);
    for (kldiv::DType dtype : {kldiv::DType::Float32, kldiv::DType::BFloat16}) {
        for (bool log_target : {false, true}) {
            kldiv::codegen::KernelSpec spec;
            spec.dtype = dtype;
            spec.log_target = log_target;
            spec.reduce = true;
            SCOPED_TRACE(spec.name());
            const Halide::Target target = kldiv::codegen::with_kernel_features(avx2);
            Halide::Module module = kldiv::codegen::compile_module(
                spec, std::nullopt, kldiv::schedules::default_params(target.to_string()), target, "kernel");
            const std::string path = ::testing::TempDir() + "/kldiv_math_kernel.s";
            module.compile({{Halide::OutputFileType::assembly, path}});
            const std::string assembly = read_text(path);
            EXPECT_FALSE(std::regex_search(assembly, std::regex("(call|jmp)[a-z]*\\s+kldiv_")));
            const bool looks_up = dtype == kldiv::DType::BFloat16;
            // The table's symbol; the float32 kernels compute, with FMAs.
            EXPECT_EQ(assembly.find(log_target ? "kldiv_exp_bf16_table" : "kldiv_xlogx_bf16_table") !=
                          std::string::npos,
                      looks_up);
            if (!looks_up) EXPECT_NE(assembly.find("vfmadd"), std::string::npos);
        }
    }
}

// The kernels' log/exp must not become one libm call per lane.
TEST(DslMath, StaysVectorised) {
    Halide::ImageParam in(Halide::Float(32), 1, "in");
    Var i("i");
    Func f("f");
    f(i) = kldiv::dsl::log(in(i)) + kldiv::dsl::exp(in(i));
    f.vectorize(i, 8);
    const std::string path = ::testing::TempDir() + "/kldiv_math_asm.s";
    Halide::Target target("x86-64-linux-avx2-fma-f16c-sse41");
    f.compile_to_assembly(path, {in}, "f", kldiv::codegen::with_kernel_features(target));
    const std::string assembly = read_text(path);
    EXPECT_EQ(assembly.find("logf"), std::string::npos);
    EXPECT_EQ(assembly.find("expf"), std::string::npos);
    EXPECT_NE(assembly.find("vmulps"), std::string::npos) << "expected vector float code";
}

}  // namespace
