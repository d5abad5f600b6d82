// More than 2^31 elements through stride-0 (broadcast) views over tiny real
// memory: Halide 14 extents are int32, so the library must split such calls.
// Results are checked against closed forms computed in float64.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "test_support.h"

using namespace kldiv_test;

namespace {

constexpr int64_t kTwo31 = int64_t(1) << 31;

kldiv_tensor view(void *data, kldiv_dtype dtype, const Shape &sizes, const Shape &strides) {
    return kldiv_tensor{data, dtype, (int32_t)sizes.size(), sizes.data(), strides.data(), KLDIV_DEVICE_CPU};
}

double run_reduced(const kldiv_tensor &in, const kldiv_tensor &tg, kldiv_reduction r, bool log_target) {
    float out = std::nanf("");
    kldiv_tensor o{&out, KLDIV_FLOAT32, 0, nullptr, nullptr, KLDIV_DEVICE_CPU};
    int rc = kldiv_forward(&in, &tg, r, log_target, &o);
    EXPECT_EQ(rc, 0) << kldiv_last_error();
    return out;
}

// One float repeated n times, input and target alike, for n around and above
// 2^31 (Halide's int32 extents): the library must split the call and no piece
// may overflow its own index arithmetic.
class OneDimensional : public ::testing::TestWithParam<int64_t> {};

TEST_P(OneDimensional, StrideZeroSumMeanBatchmean) {
    const int64_t n = GetParam();
    const Shape sizes{n}, strides{0};
    for (bool log_target : {false, true}) {
        SCOPED_TRACE(log_target ? "log_target" : "probabilities");
        float x = -1.25f, t = log_target ? -0.75f : 0.375f;
        kldiv_tensor in = view(&x, KLDIV_FLOAT32, sizes, strides), tg = view(&t, KLDIV_FLOAT32, sizes, strides);
        const double l = ref_loss(x, t, log_target).value;
        ASSERT_GT(std::fabs(l), 0.1);

        double sum = run_reduced(in, tg, KLDIV_REDUCTION_SUM, log_target);
        EXPECT_NEAR(sum, (double)n * l, 1e-6 * std::fabs((double)n * l)) << "sum / L = " << sum / l;
        // mean divides by the full count n, batchmean by size(0) == n.
        double mean = run_reduced(in, tg, KLDIV_REDUCTION_MEAN, log_target);
        EXPECT_NEAR(mean, l, 1e-6 * std::fabs(l));
        double batchmean = run_reduced(in, tg, KLDIV_REDUCTION_BATCHMEAN, log_target);
        EXPECT_NEAR(batchmean, l, 1e-6 * std::fabs(l));
    }
}

INSTANTIATE_TEST_SUITE_P(LargeTensor, OneDimensional,
                         ::testing::Values(kTwo31 - 4096, kTwo31 - 1000, kTwo31 - 1, kTwo31 + 5, 3 * (kTwo31 / 2)),
                         [](const ::testing::TestParamInfo<int64_t> &info) {
                             const int64_t d = info.param - kTwo31;
                             return d < 0 ? "n_2e31_minus_" + std::to_string(-d) : "n_2e31_plus_" + std::to_string(d);
                         });

struct TwoD {
    static constexpr int64_t rows = 65537, cols = 32768;  // rows * cols = 2^31 + 2^15
    std::vector<float> x, t;  // x per column, t per row
    double A = 0, T = 0, X = 0, abs_A = 0, abs_X = 0;
    TwoD() : x(cols), t(rows) {
        for (int64_t j = 0; j < cols; ++j) {
            x[j] = -2.0f - 4.0f * (float)((j * 7919) % 1000) / 1000.0f;  // [-6, -2]
            X += x[j];
            abs_X += std::fabs((double)x[j]);
        }
        for (int64_t i = 0; i < rows; ++i) {
            t[i] = 0.05f + 0.95f * (float)((i * 104729) % 997) / 997.0f;  // [0.05, 1]
            double ti = t[i];
            A += ti * std::log(ti);
            abs_A += std::fabs(ti * std::log(ti));
            T += ti;
        }
    }
    // sum_i sum_j (t_i log t_i - t_i x_j) = cols * sum_i t_i log t_i - (sum_i t_i)(sum_j x_j)
    double sum() const { return (double)cols * A - T * X; }
    double scale() const { return (double)cols * abs_A + T * abs_X; }
};

// input sizes {65537, 32768} strides {0, 1}; target strides {1, 0}.
TEST(LargeTensor, TwoDimensionalStrideZeroViews) {
    TwoD d;
    const int64_t n = d.rows * d.cols;
    ASSERT_GT(n, kTwo31);
    const Shape sizes{d.rows, d.cols};
    const Shape in_strides{0, 1}, tg_strides{1, 0};
    kldiv_tensor in = view(d.x.data(), KLDIV_FLOAT32, sizes, in_strides);
    kldiv_tensor tg = view(d.t.data(), KLDIV_FLOAT32, sizes, tg_strides);
    const double expected = d.sum();
    ASSERT_GT(std::fabs(expected), 0.5 * d.scale()) << "test data should not cancel";

    EXPECT_NEAR(run_reduced(in, tg, KLDIV_REDUCTION_SUM, false), expected, 1e-6 * std::fabs(expected));
    EXPECT_NEAR(run_reduced(in, tg, KLDIV_REDUCTION_MEAN, false), expected / (double)n,
                1e-6 * std::fabs(expected / (double)n));
    EXPECT_NEAR(run_reduced(in, tg, KLDIV_REDUCTION_BATCHMEAN, false), expected / (double)d.rows,
                1e-6 * std::fabs(expected / (double)d.rows));
}

// The same product space reached by broadcasting real operands: input (1, 32768)
// against target (65537, 1).
TEST(LargeTensor, BroadcastOperandsForward) {
    TwoD d;
    const Shape in_sizes{1, d.cols}, in_strides{d.cols, 1};
    const Shape tg_sizes{d.rows, 1}, tg_strides{1, 1};
    kldiv_tensor in = view(d.x.data(), KLDIV_FLOAT32, in_sizes, in_strides);
    kldiv_tensor tg = view(d.t.data(), KLDIV_FLOAT32, tg_sizes, tg_strides);
    const double n = (double)d.rows * (double)d.cols;
    const double expected = d.sum();
    EXPECT_NEAR(run_reduced(in, tg, KLDIV_REDUCTION_SUM, false), expected, 1e-6 * std::fabs(expected));
    EXPECT_NEAR(run_reduced(in, tg, KLDIV_REDUCTION_MEAN, false), expected / n, 1e-6 * std::fabs(expected / n));
    // batchmean divides by input.size(0) == 1, though the result has 65537 rows.
    EXPECT_NEAR(run_reduced(in, tg, KLDIV_REDUCTION_BATCHMEAN, false), expected, 1e-6 * std::fabs(expected));
}

// Peak resident memory (VmHWM) in bytes, after resetting it when possible.
int64_t peak_rss_bytes() {
    FILE *f = std::fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    int64_t kb = -1;
    while (std::fgets(line, sizeof line, f))
        if (std::sscanf(line, "VmHWM: %lld kB", (long long *)&kb) == 1) break;
    std::fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}
void reset_peak_rss() {
    if (FILE *f = std::fopen("/proc/self/clear_refs", "w")) {
        std::fputs("5", f);
        std::fclose(f);
    }
}

// Backward with broadcast operands over more than 2^31 elements: the
// gradients of input (1, 32768) and target (65537, 1) are sums over the other
// axis. With tiny operands this must also take little memory: a library that
// materialises the broadcast-shape gradient needs 8 GiB per gradient here. A
// 2^26-element probe measures that first, so such a library fails at once
// instead of exhausting the machine.
TEST(LargeTensor, BroadcastBackwardWithTinyMemory) {
    {
        const int64_t rows = 32768, cols = 2048;  // 2^26 elements, 256 MiB as float32
        std::vector<float> x(cols, -1.5f), t(rows, 0.25f), gi(cols), gt(rows);
        float go = 1.0f;
        const Shape in_sizes{1, cols}, in_strides{cols, 1}, tg_sizes{rows, 1}, tg_strides{1, 1};
        kldiv_tensor in = view(x.data(), KLDIV_FLOAT32, in_sizes, in_strides);
        kldiv_tensor tg = view(t.data(), KLDIV_FLOAT32, tg_sizes, tg_strides);
        kldiv_tensor gi_view = view(gi.data(), KLDIV_FLOAT32, in_sizes, in_strides);
        kldiv_tensor gt_view = view(gt.data(), KLDIV_FLOAT32, tg_sizes, tg_strides);
        kldiv_tensor go_view{&go, KLDIV_FLOAT32, 0, nullptr, nullptr, KLDIV_DEVICE_CPU};
        reset_peak_rss();
        const int64_t before = peak_rss_bytes();
        ASSERT_EQ(kldiv_backward(&go_view, &in, &tg, KLDIV_REDUCTION_SUM, 0, &gi_view, &gt_view), 0)
            << kldiv_last_error();
        const int64_t grown = peak_rss_bytes() - before;
        EXPECT_NEAR(gi[0], -0.25 * rows, 1e-6 * 0.25 * rows);
        EXPECT_NEAR(gt[0], cols * (std::log(0.25) + 1 + 1.5), 1e-6 * cols * (-std::log(0.25) + 2.5));
        if (before > 0)
            ASSERT_LT(grown, int64_t(64) << 20)
                << "kldiv_backward on a broadcast of 2^26 elements over " << (cols + rows) * 4
                << " bytes of operands raised peak memory by " << (grown >> 20)
                << " MiB: the broadcast gradient is materialised (the 2^31-element case would need "
                << ((int64_t(65537) * 32768 * 4) >> 30) << " GiB per gradient)";
    }

    TwoD d;
    const Shape in_sizes{1, d.cols}, in_strides{d.cols, 1};
    const Shape tg_sizes{d.rows, 1}, tg_strides{1, 1};
    kldiv_tensor in = view(d.x.data(), KLDIV_FLOAT32, in_sizes, in_strides);
    kldiv_tensor tg = view(d.t.data(), KLDIV_FLOAT32, tg_sizes, tg_strides);
    const double n = (double)d.rows * (double)d.cols;
    const double expected = d.sum();
    for (kldiv_reduction r : {KLDIV_REDUCTION_SUM, KLDIV_REDUCTION_MEAN}) {
        SCOPED_TRACE(r == KLDIV_REDUCTION_SUM ? "sum" : "mean");
        const double g = r == KLDIV_REDUCTION_SUM ? 1.0 : 1.0 / n;  // upstream 1 through the reduction
        float go = 1.0f;
        kldiv_tensor go_view{&go, KLDIV_FLOAT32, 0, nullptr, nullptr, KLDIV_DEVICE_CPU};
        std::vector<float> gi(d.cols, std::nanf("")), gt(d.rows, std::nanf(""));
        kldiv_tensor gi_view = view(gi.data(), KLDIV_FLOAT32, in_sizes, in_strides);
        kldiv_tensor gt_view = view(gt.data(), KLDIV_FLOAT32, tg_sizes, tg_strides);
        ASSERT_EQ(kldiv_backward(&go_view, &in, &tg, r, 0, &gi_view, &gt_view), 0) << kldiv_last_error();
        // dL/dx_j = sum_i (-g t_i) = -g T.
        int bad = 0;
        for (int64_t j = 0; j < d.cols; ++j)
            if (!(std::fabs(gi[j] - (-g * d.T)) <= 1e-6 * g * d.T) && ++bad <= 5)
                ADD_FAILURE() << "grad_input[" << j << "] = " << gi[j] << ", expected " << -g * d.T;
        // dL/dt_i = sum_j g (log t_i + 1 - x_j) = g (cols (log t_i + 1) - X).
        for (int64_t i = 0; i < d.rows; ++i) {
            double ti = d.t[i];
            double want = g * ((double)d.cols * (std::log(ti) + 1) - d.X);
            double scale = g * ((double)d.cols * (std::fabs(std::log(ti)) + 1) + d.abs_X);
            if (!(std::fabs(gt[i] - want) <= 1e-6 * scale) && ++bad <= 10)
                ADD_FAILURE() << "grad_target[" << i << "] = " << gt[i] << ", expected " << want;
        }
        EXPECT_EQ(bad, 0);

        // The fused pass: loss and grad_input in one read.
        float loss = std::nanf("");
        std::vector<float> gi_fused(d.cols, std::nanf(""));
        kldiv_tensor loss_view{&loss, KLDIV_FLOAT32, 0, nullptr, nullptr, KLDIV_DEVICE_CPU};
        kldiv_tensor gif_view = view(gi_fused.data(), KLDIV_FLOAT32, in_sizes, in_strides);
        ASSERT_EQ(kldiv_forward_backward(&in, &tg, r, 0, &loss_view, &gif_view), 0) << kldiv_last_error();
        double want_loss = r == KLDIV_REDUCTION_SUM ? expected : expected / n;
        EXPECT_NEAR(loss, want_loss, 1e-6 * std::fabs(want_loss));
        bad = 0;
        for (int64_t j = 0; j < d.cols; ++j)
            if (!(std::fabs(gi_fused[j] - (-g * d.T)) <= 1e-6 * g * d.T) && ++bad <= 5)
                ADD_FAILURE() << "fused grad_input[" << j << "] = " << gi_fused[j] << ", expected " << -g * d.T;
    }
}

// log_target over the broadcast product space: L = exp(t_i) (t_i - x_j).
TEST(LargeTensor, BroadcastLogTargetSum) {
    TwoD d;
    std::vector<float> logt(d.rows);
    double E = 0, ET = 0, abs_sum = 0;
    for (int64_t i = 0; i < d.rows; ++i) {
        logt[i] = std::log(d.t[i]);
        double e = std::exp((double)logt[i]);
        E += e;
        ET += e * logt[i];
        abs_sum += e * std::fabs((double)logt[i]);
    }
    const Shape in_sizes{1, d.cols}, in_strides{d.cols, 1};
    const Shape tg_sizes{d.rows, 1}, tg_strides{1, 1};
    kldiv_tensor in = view(d.x.data(), KLDIV_FLOAT32, in_sizes, in_strides);
    kldiv_tensor tg = view(logt.data(), KLDIV_FLOAT32, tg_sizes, tg_strides);
    // sum_i sum_j e_i (t_i - x_j) = cols * sum_i e_i t_i - (sum_i e_i)(sum_j x_j)
    double expected = (double)d.cols * ET - E * d.X;
    double scale = (double)d.cols * abs_sum + E * d.abs_X;
    ASSERT_GT(std::fabs(expected), 0.5 * scale);
    EXPECT_NEAR(run_reduced(in, tg, KLDIV_REDUCTION_SUM, true), expected, 1e-6 * std::fabs(expected));
}

}  // namespace
