// Distillation from logits through the C ABI (kldiv_distill_*), against a
// long double reference of the definition (docs/distillation.md): every
// dtype, both directions, every reduction, temperatures, masks, vocabularies around the kernels' step and block, edge rows, and the
// gradients of the fused and backward passes. Runs on every CPU target the
// library is built for (tests/arm64 runs it on the NEON kernels).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kldiv/kldiv.h"
#include "kldiv/kldiv.hpp"
#include "test_support.h"

using namespace kldiv_test;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr kldiv_dtype kDTypes[] = {KLDIV_FLOAT32, KLDIV_FLOAT64, KLDIV_FLOAT16, KLDIV_BFLOAT16};

// The machine epsilon of the arithmetic (float32 for all but float64) and of storage.
double compute_epsilon(kldiv_dtype d) { return d == KLDIV_FLOAT64 ? 0x1p-52 : 0x1p-23; }
double storage_epsilon(kldiv_dtype d) {
    return d == KLDIV_FLOAT64 ? 0x1p-52 : d == KLDIV_FLOAT32 ? 0x1p-23 : d == KLDIV_FLOAT16 ? 0x1p-10 : 0x1p-7;
}
// The smallest positive value of storage (a gradient below it may round to 0).
double storage_tiny(kldiv_dtype d) {
    return d == KLDIV_FLOAT64 ? 0x1p-1074 : d == KLDIV_FLOAT32 ? 0x1p-149 : d == KLDIV_FLOAT16 ? 0x1p-24 : 0x1p-133;
}

using Real = long double;

// The C ABI's three calls on host tensors.
int forward(const HostTensor &s, const HostTensor &t, const kldiv_distill_options &options, const HostTensor &out,
            double *stats) {
    const kldiv_tensor sv = s.view(), tv = t.view(), ov = out.view();
    return kldiv_distill_forward(&sv, &tv, &options, &ov, stats);
}

int forward_backward(const HostTensor &s, const HostTensor &t, const kldiv_distill_options &options,
                     const HostTensor &out, const HostTensor &grad) {
    const kldiv_tensor sv = s.view(), tv = t.view(), ov = out.view(), gv = grad.view();
    return kldiv_distill_forward_backward(&sv, &tv, &options, &ov, &gv, nullptr);
}

int backward(const HostTensor &grad_output, const HostTensor &s, const HostTensor &t,
             const kldiv_distill_options &options, const double *stats, const HostTensor &grad_s,
             const HostTensor &grad_t) {
    const kldiv_tensor go = grad_output.view(), sv = s.view(), tv = t.view(), gs = grad_s.view(), gt = grad_t.view();
    return kldiv_distill_backward(&go, &sv, &tv, &options, stats, &gs, &gt);
}

// One row's softmax logs at temperature T.
std::vector<Real> log_softmax(const std::vector<double> &x, double temperature) {
    Real top = -INFINITY;
    for (double v : x) top = std::max<Real>(top, (Real)v / temperature);
    Real sum = 0;
    for (double v : x) sum += std::exp((Real)v / temperature - top);
    std::vector<Real> out;
    for (double v : x) out.push_back(((Real)v / temperature - top) - std::log(sum));
    return out;
}

// A row's loss and both gradients (unscaled: of the row's loss alone), with
// `magnitude`, the sum of the terms' sizes that bounds rounding errors.
struct RowReference {
    Real loss = 0, magnitude = 0;
    std::vector<Real> grad_student, grad_teacher, weight;  // weight: p + q per element
};

RowReference reference_row(const std::vector<double> &s, const std::vector<double> &t, double temperature,
                           bool reverse) {
    const std::vector<Real> log_q = log_softmax(s, temperature), log_p = log_softmax(t, temperature);
    RowReference r;
    const size_t n = s.size();
    std::vector<Real> p(n), q(n);
    for (size_t j = 0; j < n; j++) {
        p[j] = std::exp(log_p[j]);
        q[j] = std::exp(log_q[j]);
        const Real w = reverse ? q[j] : p[j];
        const Real term = w == 0 ? 0 : w * (reverse ? log_q[j] - log_p[j] : log_p[j] - log_q[j]);
        r.loss += term;
        r.magnitude += std::fabs(term) + w * (std::fabs((Real)s[j]) + std::fabs((Real)t[j])) / temperature;
    }
    for (size_t j = 0; j < n; j++) {
        r.weight.push_back(p[j] + q[j]);
        const Real pj = p[j] == 0 ? 0 : p[j] * (log_p[j] - log_q[j] - r.loss);
        const Real qj = q[j] == 0 ? 0 : q[j] * (log_q[j] - log_p[j] - r.loss);
        r.grad_student.push_back((reverse ? qj : q[j] - p[j]) / temperature);
        r.grad_teacher.push_back((reverse ? p[j] - q[j] : pj) / temperature);
    }
    return r;
}

struct Case {
    kldiv_dtype dtype;
    bool reverse;
    kldiv_reduction reduction;
    double temperature;
    int64_t rows, vocab;
    bool mask, squared;

    std::string text() const {
        return std::string(dtype_name(dtype)) + (reverse ? " reverse" : "") + " reduction " +
               std::to_string((int)reduction) + " T " + std::to_string(temperature) + " " + std::to_string(rows) +
               "x" + std::to_string(vocab) + (mask ? " masked" : "") + (squared ? " T^2" : "");
    }
};

// Random logits of spread 3 (a few ±20 among them), rounded to the dtype.
std::vector<double> logits(const Case &c, std::mt19937_64 &rng) {
    std::normal_distribution<double> normal(0.0, 3.0);
    std::vector<double> v((size_t)(c.rows * c.vocab));
    for (size_t i = 0; i < v.size(); i++) v[i] = round_to_dtype(i % 97 == 5 ? 20.0 : normal(rng), c.dtype);
    return v;
}

std::vector<double> row(const std::vector<double> &all, int64_t r, int64_t vocab) {
    return {all.begin() + r * vocab, all.begin() + (r + 1) * vocab};
}

void check_case(const Case &c) {
    SCOPED_TRACE(c.text());
    std::mt19937_64 rng(c.rows * 1000003 + c.vocab);
    const std::vector<double> s = logits(c, rng), t = logits(c, rng);
    std::vector<uint8_t> on((size_t)c.rows, 1);
    if (c.mask) {
        for (int64_t r = 0; r < c.rows; r += 2) on[r] = 0;
    }
    const HostTensor student = HostTensor::from_values(c.dtype, {c.rows, c.vocab}, s);
    const HostTensor teacher = HostTensor::from_values(c.dtype, {c.rows, c.vocab}, t);
    kldiv_distill_options options{c.temperature, c.reduction, c.reverse, c.squared, c.mask ? on.data() : nullptr};

    // Reference: the loss (per row or reduced) and the gradients for upstream 1.
    int64_t rows_on = 0;
    std::vector<RowReference> refs;
    for (int64_t r = 0; r < c.rows; r++) {
        refs.push_back(reference_row(row(s, r, c.vocab), row(t, r, c.vocab), c.temperature, c.reverse));
        rows_on += on[r];
    }
    const double factor = c.squared ? c.temperature * c.temperature : 1.0;
    const double divisor = c.reduction == KLDIV_REDUCTION_BATCHMEAN ? (double)rows_on
                           : c.reduction == KLDIV_REDUCTION_MEAN    ? (double)(rows_on * c.vocab)
                                                                    : 1.0;
    const double ce = compute_epsilon(c.dtype), se = storage_epsilon(c.dtype);
    const bool per_row = c.reduction == KLDIV_REDUCTION_NONE;
    const Shape loss_shape = per_row ? Shape{c.rows} : Shape{};

    HostTensor out(c.dtype, loss_shape);
    std::vector<double> stats((size_t)(c.rows * KLDIV_DISTILL_STATS_PER_ROW));
    ASSERT_EQ(forward(student, teacher, options, out, stats.data()), 0)
        << kldiv_last_error();
    Real total = 0, total_magnitude = 0;
    for (int64_t r = 0; r < c.rows; r++) {
        const Real loss = on[r] ? factor * refs[r].loss : 0, magnitude = on[r] ? factor * refs[r].magnitude : 0;
        total += loss;
        total_magnitude += magnitude;
        if (per_row) EXPECT_NEAR(out.at(r), (double)loss, 64 * ce * magnitude + se * std::fabs(loss)) << "row " << r;
    }
    if (!per_row) {
        const Real loss = total / divisor;
        EXPECT_NEAR(out.at(0), (double)loss, 64 * ce * total_magnitude / divisor + se * std::fabs(loss) + 1e-300);
    }

    // Gradients: upstream 1 for the fused pass; an upstream gradient of 3 (per row 1, 2, 3, ...) for backward.
    auto check_gradient = [&](const HostTensor &grad, bool of_student, const std::vector<double> &upstream,
                              const char *what) {
        SCOPED_TRACE(what);
        int bad = 0;
        for (int64_t r = 0; r < c.rows && bad < 5; r++) {
            const double scale = on[r] ? factor * upstream[per_row ? r : 0] / divisor : 0.0;
            for (int64_t j = 0; j < c.vocab && bad < 5; j++) {
                const Real want = scale * (of_student ? refs[r].grad_student : refs[r].grad_teacher)[j];
                const double tolerance =
                    std::fabs(scale) * (double)(64 * ce * (refs[r].weight[j] * (1 + refs[r].magnitude))) +
                    se * std::fabs((double)want) + storage_tiny(c.dtype);
                const double got = grad.at(r * c.vocab + j);
                if (!(std::fabs(got - (double)want) <= tolerance)) {
                    ADD_FAILURE() << "row " << r << " element " << j << ": " << got << " against " << (double)want;
                    bad++;
                }
            }
        }
    };
    if (!per_row) {
        HostTensor fused_out(c.dtype, loss_shape), grad(c.dtype, {c.rows, c.vocab});
        ASSERT_EQ(forward_backward(student, teacher, options, fused_out, grad),
                  0)
            << kldiv_last_error();
        EXPECT_EQ(fused_out.bytes, out.bytes) << "the fused pass's loss differs from forward's";
        check_gradient(grad, true, {1.0}, "fused student gradient");
    }
    std::vector<double> upstream;
    for (int64_t r = 0; r < (per_row ? c.rows : 1); r++) upstream.push_back(round_to_dtype(1.0 + r % 3, c.dtype));
    const HostTensor grad_output = HostTensor::from_values(c.dtype, loss_shape, upstream);
    HostTensor grad_student(c.dtype, {c.rows, c.vocab}), grad_teacher(c.dtype, {c.rows, c.vocab});
    ASSERT_EQ(backward(grad_output, student, teacher, options, stats.data(), grad_student, grad_teacher),
              0)
        << kldiv_last_error();
    check_gradient(grad_student, true, upstream, "student gradient");
    check_gradient(grad_teacher, false, upstream, "teacher gradient");
}

// Skipped at an x86 level this CPU lacks (the suite runs once per level).
class Distill : public ::testing::Test {
protected:
    void SetUp() override {
        if (std::string why = cpu_level_unavailable(); !why.empty()) GTEST_SKIP() << why;
    }
};

TEST_F(Distill, EveryDTypeDirectionAndReduction) {
    for (kldiv_dtype dtype : kDTypes) {
        for (bool reverse : {false, true}) {
            for (kldiv_reduction reduction : {KLDIV_REDUCTION_NONE, KLDIV_REDUCTION_SUM, KLDIV_REDUCTION_MEAN,
                                              KLDIV_REDUCTION_BATCHMEAN}) {
                check_case({dtype, reverse, reduction, 1.0, 6, 300, false, false});
            }
            for (double temperature : {0.5, 4.0}) {
                check_case({dtype, reverse, KLDIV_REDUCTION_BATCHMEAN, temperature, 5, 257, true, true});
            }
        }
    }
}

// Around the kernels' step of 32 logits and block of 2048: short rows (padded
// by the runtime), a partial last step, a partial last block.
TEST_F(Distill, VocabularySizes) {
    for (kldiv_dtype dtype : {KLDIV_FLOAT32, KLDIV_BFLOAT16}) {
        for (int64_t vocab : {1, 2, 31, 32, 33, 2047, 2048, 2049, 5000}) {
            check_case({dtype, false, KLDIV_REDUCTION_NONE, 1.0, 3, vocab, false, false});
            check_case({dtype, true, KLDIV_REDUCTION_SUM, 2.0, 3, vocab, true, false});
        }
    }
}

TEST_F(Distill, LargeVocabulary) {
    check_case({KLDIV_FLOAT32, false, KLDIV_REDUCTION_BATCHMEAN, 1.0, 2, 131072, false, false});
    check_case({KLDIV_FLOAT64, true, KLDIV_REDUCTION_NONE, 1.0, 2, 40000, false, false});
}

// Per row: the loss of edge logits, forward KL, every dtype.
TEST_F(Distill, EdgeRows) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    struct Edge {
        const char *what;
        std::vector<double> student, teacher;
        double loss;  // NaN: NaN; else the reference's value
    };
    std::vector<double> base(40), shifted(40);
    for (int j = 0; j < 40; j++) {
        base[j] = (j % 7) - 3.0;
        shifted[j] = base[j] + 5.0;  // the same softmax
    }
    std::vector<double> teacher_inf = base, student_inf = base, with_nan = base, all_inf(40, -kInf), huge = base;
    teacher_inf[3] = -kInf;
    student_inf[3] = -kInf;
    with_nan[11] = nan;
    for (double &v : huge) v *= 1e4 / 3;
    const Edge edges[] = {
        {"same softmax", shifted, base, 0.0},
        {"teacher -inf token adds 0", base, teacher_inf, (double)reference_row(base, teacher_inf, 1.0, false).loss},
        {"student -inf where p > 0", student_inf, base, kInf},
        {"NaN in the student", with_nan, base, nan},
        {"NaN in the teacher", base, with_nan, nan},
        {"teacher all -inf", base, all_inf, nan},
        {"huge logits", huge, base, (double)reference_row(huge, base, 1.0, false).loss},
    };
    for (kldiv_dtype dtype : kDTypes) {
        for (const Edge &e : edges) {
            SCOPED_TRACE(std::string(dtype_name(dtype)) + ": " + e.what);
            std::vector<double> s = e.student, t = e.teacher;
            for (double &v : s) v = round_to_dtype(v, dtype);
            for (double &v : t) v = round_to_dtype(v, dtype);
            const double want =
                std::isnan(e.loss) || std::isinf(e.loss) ? e.loss : (double)reference_row(s, t, 1.0, false).loss;
            const HostTensor student = HostTensor::from_values(dtype, {1, 40}, s);
            const HostTensor teacher = HostTensor::from_values(dtype, {1, 40}, t);
            HostTensor out(dtype, {1});
            kldiv_distill_options options{1.0, KLDIV_REDUCTION_NONE, 0, 0, nullptr};
            ASSERT_EQ(forward(student, teacher, options, out, nullptr), 0)
                << kldiv_last_error();
            if (std::isnan(want)) {
                EXPECT_TRUE(std::isnan(out.at(0))) << out.at(0);
            } else if (std::isinf(want)) {
                EXPECT_EQ(out.at(0), want);
            } else {
                EXPECT_NEAR(out.at(0), want, 1e-3 * (1 + std::fabs(want)) + storage_epsilon(dtype) * std::fabs(want));
            }
        }
    }
}

// A masked row adds nothing and gets gradient 0, even when it holds NaN;
// errors write nothing.
TEST_F(Distill, MaskedNaNRowAndErrors) {
    std::vector<double> s(2 * 64, 0.5), t(2 * 64, -0.25);
    s[5] = std::numeric_limits<double>::quiet_NaN();
    const HostTensor student = HostTensor::from_values(KLDIV_FLOAT32, {2, 64}, s);
    const HostTensor teacher = HostTensor::from_values(KLDIV_FLOAT32, {2, 64}, t);
    const uint8_t on[2] = {0, 1};
    kldiv_distill_options options{1.0, KLDIV_REDUCTION_SUM, 0, 0, on};
    HostTensor out(KLDIV_FLOAT32, {}), grad(KLDIV_FLOAT32, {2, 64});
    ASSERT_EQ(forward_backward(student, teacher, options, out, grad),
              0)
        << kldiv_last_error();
    EXPECT_EQ(out.at(0), 0.0);  // the unmasked row: one softmax against itself
    for (int64_t i = 0; i < 128; i++) EXPECT_EQ(grad.at(i), 0.0) << i;

    HostTensor wrong(KLDIV_FLOAT32, {2, 63}), untouched(KLDIV_FLOAT32, {});
    untouched.fill_bytes(0x7f);
    const std::vector<unsigned char> before = untouched.bytes;
    EXPECT_NE(forward(student, wrong, options, untouched, nullptr), 0);
    EXPECT_NE(std::string(kldiv_last_error()).find("shape"), std::string::npos) << kldiv_last_error();
    options.temperature = -1;
    EXPECT_NE(forward(student, teacher, options, untouched, nullptr), 0);
    EXPECT_EQ(untouched.bytes, before);
}

// Logits of no elements may have any number of rows: each row's loss is 0,
// and no memory is spent per row (2^40 rows here).
TEST_F(Distill, EmptyVocabularyOfManyRows) {
    const int64_t rows = int64_t(1) << 40;
    HostTensor student(KLDIV_FLOAT32, {rows, 0}), teacher(KLDIV_FLOAT32, {rows, 0}), out(KLDIV_FLOAT32, {});
    out.fill_bytes(0x7f);
    for (kldiv_reduction reduction : {KLDIV_REDUCTION_SUM, KLDIV_REDUCTION_BATCHMEAN}) {
        const kldiv_distill_options options{1.0, reduction, 0, 0, nullptr};
        ASSERT_EQ(forward(student, teacher, options, out, nullptr), 0) << kldiv_last_error();
        EXPECT_EQ(out.at(0), 0.0);
    }
    // 'mean' divides by rows x vocab: 0 / 0.
    const kldiv_distill_options mean{1.0, KLDIV_REDUCTION_MEAN, 0, 0, nullptr};
    ASSERT_EQ(forward(student, teacher, mean, out, nullptr), 0) << kldiv_last_error();
    EXPECT_TRUE(std::isnan(out.at(0)));
}

// Leading dimensions of no elements with strides no view of elements could
// have: the loss of no rows, nothing read (the C ABI fuzzer found the row
// stride's product overflowing here). Sizes whose product overflows before
// their zero are refused, nothing written.
TEST_F(Distill, LeadingDimensionsOfNoElements) {
    HostTensor student(KLDIV_FLOAT32, {1, 1, 1, 40}), teacher(KLDIV_FLOAT32, {1, 1, 1, 40}), out(KLDIV_FLOAT32, {});
    for (HostTensor *t : {&student, &teacher}) {
        t->sizes = {0, 4, 2, 40};
        t->strides = {1, 1, int64_t(1) << 62, 1};
    }
    out.fill_bytes(0x7f);
    const kldiv_distill_options sum{1.0, KLDIV_REDUCTION_SUM, 0, 0, nullptr};
    ASSERT_EQ(forward(student, teacher, sum, out, nullptr), 0) << kldiv_last_error();
    EXPECT_EQ(out.at(0), 0.0);

    HostTensor many(KLDIV_FLOAT32, {1, 1, 0}), untouched(KLDIV_FLOAT32, {});
    many.sizes = {int64_t(1) << 40, int64_t(1) << 40, 0};
    many.strides = {0, 0, 1};
    untouched.fill_bytes(0x7f);
    const std::vector<unsigned char> before = untouched.bytes;
    EXPECT_NE(forward(many, many, sum, untouched, nullptr), 0);
    EXPECT_NE(std::string(kldiv_last_error()).find("too many elements"), std::string::npos) << kldiv_last_error();
    EXPECT_EQ(untouched.bytes, before);
}

// CUDA logits: refused unless the build has CUDA kernels and
// KLDIV_DISTILL_CUDA=1 asks for them (experimental); with it, memory that is
// not device memory (or no GPU) is a device error too. Mixed devices are
// refused. Nothing is written.
TEST_F(Distill, CudaTensorsAreCheckedFirst) {
    HostTensor student(KLDIV_FLOAT32, {2, 64}), teacher(KLDIV_FLOAT32, {2, 64}), out(KLDIV_FLOAT32, {});
    out.fill_bytes(0x7f);
    const std::vector<unsigned char> before = out.bytes;
    kldiv_tensor sv = student.view(), tv = teacher.view(), ov = out.view();
    sv.device = tv.device = ov.device = KLDIV_DEVICE_CUDA;
    const kldiv_distill_options options{1.0, KLDIV_REDUCTION_SUM, 0, 0, nullptr};
    for (const char *enabled : {"0", "1"}) {
        ::setenv("KLDIV_DISTILL_CUDA", enabled, 1);
        EXPECT_EQ(kldiv_distill_forward(&sv, &tv, &options, &ov, nullptr), KLDIV_ERROR_DEVICE) << enabled;
        const std::string message = kldiv_last_error();
        if (!kldiv_cuda_in_build()) {
            EXPECT_NE(message.find("no CUDA kernels"), std::string::npos) << message;
        } else if (std::string(enabled) == "0") {
            EXPECT_NE(message.find("KLDIV_DISTILL_CUDA=1"), std::string::npos) << message;
        } else {
            EXPECT_EQ(message.find("KLDIV_DISTILL_CUDA=1"), std::string::npos) << message;
        }
    }
    ::unsetenv("KLDIV_DISTILL_CUDA");
    kldiv_tensor cpu_teacher = teacher.view();
    EXPECT_EQ(kldiv_distill_forward(&sv, &cpu_teacher, &options, &ov, nullptr), KLDIV_ERROR_DEVICE);
    EXPECT_NE(std::string(kldiv_last_error()).find("teacher is a CPU tensor"), std::string::npos)
        << kldiv_last_error();
    EXPECT_EQ(out.bytes, before);
}

// The C++ API gives the C ABI's bits, and throws kldiv::Error where the C ABI
// returns its code.
TEST_F(Distill, CppApi) {
    std::mt19937_64 rng(7);
    const Case c{KLDIV_BFLOAT16, true, KLDIV_REDUCTION_MEAN, 2.0, 4, 100, false, false};
    const std::vector<double> s = logits(c, rng), t = logits(c, rng);
    HostTensor student = HostTensor::from_values(c.dtype, {4, 100}, s);
    HostTensor teacher = HostTensor::from_values(c.dtype, {4, 100}, t);
    const uint8_t on[4] = {1, 0, 1, 1};
    const kldiv_distill_options c_options{2.0, KLDIV_REDUCTION_MEAN, 1, 1, on};
    kldiv::DistillOptions options;
    options.temperature = 2.0;
    options.reduction = kldiv::Reduction::Mean;
    options.reverse = true;
    options.temperature_squared = true;
    options.row_mask = on;

    HostTensor c_out(c.dtype, {}), c_grad(c.dtype, {4, 100}), out(c.dtype, {}), grad(c.dtype, {4, 100});
    ASSERT_EQ(forward_backward(student, teacher, c_options, c_out, c_grad), 0) << kldiv_last_error();
    auto tensor = [](HostTensor &h) {
        return kldiv::Tensor::contiguous(h.bytes.data(), kldiv::DType::BFloat16, h.sizes);
    };
    std::vector<double> stats(4 * kldiv::kDistillStatsPerRow);
    kldiv::distill_kl_forward_backward(tensor(student), tensor(teacher), tensor(out), tensor(grad), options,
                                       stats.data());
    EXPECT_EQ(out.bytes, c_out.bytes);
    EXPECT_EQ(grad.bytes, c_grad.bytes);

    HostTensor upstream = HostTensor::from_values(c.dtype, {}, {1.0}), grad_teacher(c.dtype, {4, 100});
    HostTensor c_grad_student(c.dtype, {4, 100}), c_grad_teacher(c.dtype, {4, 100});
    const kldiv::Tensor gs = tensor(grad), gt = tensor(grad_teacher);
    kldiv::distill_kl_backward(tensor(upstream), tensor(student), tensor(teacher), options, stats.data(), &gs, &gt);
    ASSERT_EQ(backward(upstream, student, teacher, c_options, nullptr, c_grad_student, c_grad_teacher), 0)
        << kldiv_last_error();
    EXPECT_EQ(grad.bytes, c_grad_student.bytes);
    EXPECT_EQ(grad_teacher.bytes, c_grad_teacher.bytes);

    HostTensor wrong(c.dtype, {4, 99});
    try {
        kldiv::distill_kl(tensor(student), tensor(wrong), tensor(out), options);
        ADD_FAILURE() << "no error for logits of two shapes";
    } catch (const kldiv::Error &e) {
        EXPECT_EQ(e.code(), kldiv::ErrorCode::Shape) << e.what();
    }
}

}  // namespace
