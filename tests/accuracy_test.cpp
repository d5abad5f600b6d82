// Summation accuracy of float32 'sum' over 2^24 elements of realistic data:
// input = log_softmax of random logits, target = softmax (or log_softmax for
// log_target) of other random logits, rows of 4096 or 32000. The reference is
// the float64 sum over the same float32 inputs; with libtorch, the library must
// also be no less accurate than torch::kl_div(..., Sum) on the same data.
// Then adversarial data (constant values, ascending magnitudes, random), up to
// past 2^31 elements, against a float32 pairwise sum of the same terms. The
// test command runs this suite at every x86 feature level the CPU has
// (KLDIV_CPU_TARGET): the error must not depend on the vector width.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>

#include "test_support.h"

#if KLDIV_HAVE_TORCH
#include <torch/torch.h>
#endif

using namespace kldiv_test;

namespace {

struct Dataset {
    int64_t rows, cols;
    bool log_target;
    std::vector<float> input, target;
    double reference = 0;  // float64 sum of L over the float32 values
    double scale = 0;      // sum of |terms|
};

// Logits ~ N(0, sigma^2) per row, softmax computed in float64, rounded once.
void log_softmax_rows(std::mt19937_64 &rng, double sigma, int64_t rows, int64_t cols, bool log_out,
                      std::vector<float> *out) {
    std::normal_distribution<double> normal(0.0, sigma);
    std::vector<double> row(cols);
    out->resize(rows * cols);
    for (int64_t r = 0; r < rows; ++r) {
        double m = -INFINITY;
        for (int64_t c = 0; c < cols; ++c) m = std::max(m, row[c] = normal(rng));
        double s = 0;
        for (int64_t c = 0; c < cols; ++c) s += std::exp(row[c] - m);
        double lse = m + std::log(s);
        for (int64_t c = 0; c < cols; ++c) {
            double l = row[c] - lse;
            (*out)[r * cols + c] = (float)(log_out ? l : std::exp(l));
        }
    }
}

Dataset make_dataset(int64_t rows, int64_t cols, bool log_target, uint64_t seed) {
    Dataset d{rows, cols, log_target, {}, {}};
    std::mt19937_64 rng(seed);
    log_softmax_rows(rng, 2.0, rows, cols, true, &d.input);
    log_softmax_rows(rng, 2.0, rows, cols, log_target, &d.target);
    // Neumaier-compensated float64 sum: exact enough to be the reference.
    double sum = 0, comp = 0;
    for (size_t i = 0; i < d.input.size(); ++i) {
        RefValue l = ref_loss(d.input[i], d.target[i], log_target);
        double t = sum + l.value;
        comp += std::fabs(sum) >= std::fabs(l.value) ? (sum - t) + l.value : (l.value - t) + sum;
        sum = t;
        d.scale += l.scale;
    }
    d.reference = sum + comp;
    return d;
}

double kldiv_sum(Dataset &d) {
    Shape sizes{d.rows, d.cols}, strides{d.cols, 1};
    kldiv_tensor in{d.input.data(), KLDIV_FLOAT32, 2, sizes.data(), strides.data(), KLDIV_DEVICE_CPU};
    kldiv_tensor tg{d.target.data(), KLDIV_FLOAT32, 2, sizes.data(), strides.data(), KLDIV_DEVICE_CPU};
    float out = std::nanf("");
    kldiv_tensor o{&out, KLDIV_FLOAT32, 0, nullptr, nullptr, KLDIV_DEVICE_CPU};
    EXPECT_EQ(kldiv_forward(&in, &tg, KLDIV_REDUCTION_SUM, d.log_target, &o), 0) << kldiv_last_error();
    return out;
}

struct Shape2 {
    int64_t rows, cols;
    bool log_target;
};

void PrintTo(const Shape2 &s, std::ostream *os) {
    *os << s.rows << " x " << s.cols << (s.log_target ? " log_target" : " probabilities");
}

class Accuracy : public ::testing::TestWithParam<Shape2> {};

TEST_P(Accuracy, Float32SumWithin1e6OfFloat64) {
    if (std::string why = cpu_level_unavailable(); !why.empty()) GTEST_SKIP() << why;
    const Shape2 s = GetParam();
    Dataset d = make_dataset(s.rows, s.cols, s.log_target, 1234 + s.cols + s.log_target);
    ASSERT_GE((int64_t)d.input.size(), int64_t(1) << 24);
    ASSERT_GT(d.reference, 0);
    const double got = kldiv_sum(d);
    const double err = std::fabs(got - d.reference);
    std::printf("[accuracy] %lld x %lld %s: reference %.10g, kldiv %.10g, relative error %.3g\n",
                (long long)s.rows, (long long)s.cols, s.log_target ? "log_target" : "probabilities",
                d.reference, got, err / d.reference);
    EXPECT_LE(err, 1e-6 * std::fabs(d.reference))
        << "kldiv " << got << " vs float64 " << d.reference << " (relative " << err / d.reference << ")";

#if KLDIV_HAVE_TORCH
    torch::NoGradGuard no_grad;
    auto opts = torch::TensorOptions().dtype(torch::kFloat32);
    torch::Tensor x = torch::from_blob(d.input.data(), {d.rows, d.cols}, opts);
    torch::Tensor t = torch::from_blob(d.target.data(), {d.rows, d.cols}, opts);
    const double torch_sum = torch::kl_div(x, t, at::Reduction::Sum, s.log_target).item<double>();
    const double torch_err = std::fabs(torch_sum - d.reference);
    std::printf("[accuracy]   torch %.10g, relative error %.3g\n", torch_sum, torch_err / d.reference);
    // No less accurate than PyTorch's op-by-op float32 evaluation with its
    // cascade sum; a float32 ulp of the result is the resolution of either.
    const double ulp = std::ldexp(1.0, std::ilogb(d.reference) - 23);
    EXPECT_LE(err, torch_err + ulp) << "kldiv error " << err << " vs torch error " << torch_err;
#endif
}

INSTANTIATE_TEST_SUITE_P(Rows, Accuracy,
                         ::testing::Values(Shape2{4096, 4096, false}, Shape2{4096, 4096, true},
                                           Shape2{525, 32000, false}, Shape2{525, 32000, true}),
                         [](const ::testing::TestParamInfo<Shape2> &info) {
                             return std::to_string(info.param.rows) + "x" + std::to_string(info.param.cols) +
                                    (info.param.log_target ? "_log_target" : "_probabilities");
                         });

// ---- Adversarial data against a float32 pairwise sum -----------------------

// The loss of one element in float32, op by op as PyTorch computes it.
float term_f32(float x, float t, bool log_target) {
    if (log_target) {
        const float e = std::exp(t), d = t - x;
        return e * d;
    }
    const float log_t = std::log(t), xlogx = t == 0.0f ? 0.0f : t * log_t, tx = t * x;
    return xlogx - tx;
}

// A float32 pairwise sum: halves, down to single terms.
float pairwise(const std::function<float(int64_t)> &term, int64_t begin, int64_t n) {
    if (n == 1) return term(begin);
    const int64_t half = n / 2;
    return pairwise(term, begin, half) + pairwise(term, begin + half, n - half);
}

// The same for n copies of one term (a stride-0 view): only O(log n) sizes occur.
float pairwise_constant(float term, int64_t n, std::map<int64_t, float> &memo) {
    if (n == 1) return term;
    auto it = memo.find(n);
    if (it != memo.end()) return it->second;
    const float sum = pairwise_constant(term, n / 2, memo) + pairwise_constant(term, n - n / 2, memo);
    return memo[n] = sum;
}

struct Adversarial {
    const char *name;
    int64_t n;
    bool log_target;
};

void PrintTo(const Adversarial &a, std::ostream *os) { *os << a.name; }

class SumError : public ::testing::TestWithParam<Adversarial> {};

// Within max(3x the pairwise sum's error, 2 float32 ulp of the result) of the
// float64 sum of the same float32 inputs.
TEST_P(SumError, NoWorseThanPairwiseFloat32) {
    if (std::string why = cpu_level_unavailable(); !why.empty()) GTEST_SKIP() << why;
    const Adversarial a = GetParam();
    const std::string kind = a.name;
    std::vector<float> x, t;
    Shape sizes{a.n}, strides{1};
    double reference = 0;
    float pairwise_sum = 0;
    if (kind.rfind("constant", 0) == 0) {
        // One value everywhere: a pairwise sum of it is (nearly) exact, a
        // long sequential float32 sum is not.
        x = {-1.25f};
        t = {a.log_target ? -0.75f : 0.375f};
        strides = {0};
        reference = (double)a.n * ref_loss(x[0], t[0], a.log_target).value;
        std::map<int64_t, float> memo;
        pairwise_sum = pairwise_constant(term_f32(x[0], t[0], a.log_target), a.n, memo);
    } else {
        x.resize(a.n);
        t.resize(a.n);
        std::mt19937_64 rng(99);
        std::uniform_real_distribution<double> unit(0.0, 1.0);
        for (int64_t i = 0; i < a.n; ++i) {
            if (kind == "ascending") {
                // Terms from 1e-6 to 1e3, smallest first: t = 1, x = -term.
                t[i] = a.log_target ? 0.0f : 1.0f;
                x[i] = (float)-std::pow(10.0, -6.0 + 9.0 * (double)i / (double)a.n);
            } else {
                x[i] = (float)(-20.0 * unit(rng));
                t[i] = (float)(a.log_target ? -20.0 * unit(rng) : unit(rng));
            }
        }
        double comp = 0;
        for (int64_t i = 0; i < a.n; ++i) {
            const double l = ref_loss(x[i], t[i], a.log_target).value, sum = reference + l;
            comp += std::fabs(reference) >= std::fabs(l) ? (reference - sum) + l : (l - sum) + reference;
            reference = sum;
        }
        reference += comp;
        pairwise_sum = pairwise([&](int64_t i) { return term_f32(x[i], t[i], a.log_target); }, 0, a.n);
    }
    kldiv_tensor in{x.data(), KLDIV_FLOAT32, 1, sizes.data(), strides.data(), KLDIV_DEVICE_CPU};
    kldiv_tensor tg{t.data(), KLDIV_FLOAT32, 1, sizes.data(), strides.data(), KLDIV_DEVICE_CPU};
    float out = std::nanf("");
    kldiv_tensor o{&out, KLDIV_FLOAT32, 0, nullptr, nullptr, KLDIV_DEVICE_CPU};
    ASSERT_EQ(kldiv_forward(&in, &tg, KLDIV_REDUCTION_SUM, a.log_target, &o), 0) << kldiv_last_error();

    const double ulp = std::ldexp(1.0, std::ilogb(reference) - 23);
    const double error = std::fabs((double)out - reference), pairwise_error = std::fabs((double)pairwise_sum - reference);
    const double bound = std::max(3 * pairwise_error, 2 * ulp);
    std::printf("[accuracy] %s at %s, n = %lld: error %.3g ulp, float32 pairwise %.3g ulp (bound %.3g ulp)\n", a.name,
                kldiv_cpu_target(), (long long)a.n, error / ulp, pairwise_error / ulp, bound / ulp);
    EXPECT_LE(error, bound) << "kldiv " << out << ", pairwise " << pairwise_sum << ", float64 " << reference;

    // Bit-identical run to run and whatever the thread count.
    for (int threads : {1, 2, 3}) {
        kldiv_set_num_threads(threads);
        float again = std::nanf("");
        kldiv_tensor o2{&again, KLDIV_FLOAT32, 0, nullptr, nullptr, KLDIV_DEVICE_CPU};
        ASSERT_EQ(kldiv_forward(&in, &tg, KLDIV_REDUCTION_SUM, a.log_target, &o2), 0) << kldiv_last_error();
        EXPECT_EQ(std::memcmp(&again, &out, sizeof out), 0) << threads << " threads: " << again << " vs " << out;
    }
    kldiv_set_num_threads(0);
}

constexpr int64_t kTwo24 = int64_t(1) << 24, kTwo31 = int64_t(1) << 31;

INSTANTIATE_TEST_SUITE_P(Data, SumError,
                         ::testing::Values(Adversarial{"constant", kTwo24, false},
                                           Adversarial{"constant_log_target", kTwo24 + 7, true},
                                           Adversarial{"constant_past_2e31", kTwo31 + 5, false},
                                           Adversarial{"constant_log_target_past_2e31", 3 * (kTwo31 / 2), true},
                                           Adversarial{"ascending", kTwo24, false},
                                           Adversarial{"ascending_log_target", kTwo24, true},
                                           Adversarial{"random", kTwo24, false},
                                           Adversarial{"random_log_target", kTwo24 + 1000, true}),
                         [](const ::testing::TestParamInfo<Adversarial> &info) { return std::string(info.param.name); });

}  // namespace
