// Summation accuracy of float32 'sum' over 2^24 elements of realistic data:
// input = log_softmax of random logits, target = softmax (or log_softmax for
// log_target) of other random logits, rows of 4096 or 32000. The reference is
// the float64 sum over the same float32 inputs; with libtorch, the library must
// also be no less accurate than torch::kl_div(..., Sum) on the same data.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

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

}  // namespace
