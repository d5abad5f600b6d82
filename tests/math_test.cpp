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
