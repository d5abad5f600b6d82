// CUDA tensors: errors everywhere; on a GPU, every pass against the host
// kernels and the float64 reference (up to 2^26 elements), determinism run to
// run, and the caller's streams and cudaMalloc'd memory. Without a GPU the GPU
// tests report [SKIP] with the reason.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>

#include "cuda_support.h"
#include "kldiv/kldiv.hpp"

using namespace kldiv_test;

namespace {

#define REQUIRE_GPU()                                                                  \
    do {                                                                               \
        if (!Cudart::get().unavailable().empty()) GTEST_SKIP() << Cudart::get().unavailable(); \
    } while (0)

kldiv_tensor fake_cuda_view(const HostTensor &t) {
    kldiv_tensor v = t.view();
    v.device = KLDIV_DEVICE_CUDA;
    return v;
}

TEST(CudaTensors, TheBuildHasCudaKernels) { EXPECT_EQ(kldiv_cuda_in_build(), 1); }

TEST(CudaTensors, MixedDevicesAreRefusedBeforeAnyWork) {
    HostTensor input = HostTensor::from_values(KLDIV_FLOAT32, {4}, {-1, -2, -3, -4});
    HostTensor target = HostTensor::from_values(KLDIV_FLOAT32, {4}, {0.1, 0.2, 0.3, 0.4});
    HostTensor out(KLDIV_FLOAT32, {});
    out.fill_bytes(0xA5);
    const kldiv_tensor in_view = input.view(), tg_view = fake_cuda_view(target), out_view = out.view();
    ASSERT_EQ(kldiv_forward(&in_view, &tg_view, KLDIV_REDUCTION_SUM, 0, &out_view), KLDIV_ERROR_DEVICE);
    EXPECT_NE(std::strstr(kldiv_last_error(), "Expected all tensors to be on the same device"), nullptr)
        << kldiv_last_error();
    EXPECT_NE(std::strstr(kldiv_last_error(), "cpu (input) and cuda (target)"), nullptr) << kldiv_last_error();
    for (unsigned char b : out.bytes) EXPECT_EQ(b, 0xA5);
}

// Stream guards nest: each restores what the thread had before it.
TEST(CudaTensors, StreamGuardsRestoreTheStreamBeforeThem) {
    int a = 0, b = 0;  // two distinct addresses stand in for streams
    EXPECT_FALSE(kldiv::thread_cuda_stream().has_value());
    {
        kldiv::CudaStreamGuard outer(&a);
        EXPECT_EQ(kldiv::thread_cuda_stream().value_or(nullptr), &a);
        {
            kldiv::CudaStreamGuard inner(&b);
            EXPECT_EQ(kldiv::thread_cuda_stream().value_or(nullptr), &b);
        }
        EXPECT_EQ(kldiv::thread_cuda_stream().value_or(nullptr), &a);
        std::thread([] { EXPECT_FALSE(kldiv::thread_cuda_stream().has_value()); }).join();  // per thread
    }
    EXPECT_FALSE(kldiv::thread_cuda_stream().has_value());
    kldiv_set_thread_cuda_stream(&a);
    EXPECT_EQ(kldiv::thread_cuda_stream().value_or(nullptr), &a);
    kldiv_clear_thread_cuda_stream();
    EXPECT_FALSE(kldiv::thread_cuda_stream().has_value());
}

// Host memory marked as CUDA: without a driver the error says so; with one,
// the pointer is found not to be device memory. Nothing is written either way.
TEST(CudaTensors, HostMemoryMarkedCudaIsRefused) {
    HostTensor input = HostTensor::from_values(KLDIV_FLOAT32, {3}, {-1, -2, -3});
    HostTensor target = HostTensor::from_values(KLDIV_FLOAT32, {3}, {0.2, 0.3, 0.5});
    HostTensor out(KLDIV_FLOAT32, {3});
    out.fill_bytes(0xA5);
    const kldiv_tensor in_view = fake_cuda_view(input), tg_view = fake_cuda_view(target),
                       out_view = fake_cuda_view(out);
    ASSERT_EQ(kldiv_forward(&in_view, &tg_view, KLDIV_REDUCTION_NONE, 0, &out_view), KLDIV_ERROR_DEVICE);
    const std::string message = kldiv_last_error();
    if (Cudart::get().unavailable().empty()) {
        EXPECT_NE(message.find("input is marked as a CUDA tensor but its data is not CUDA device memory"),
                  std::string::npos)
            << message;
    } else {
        std::printf("[ no GPU ] %s\n", message.c_str());
        EXPECT_NE(message.find("CUDA tensors given, but"), std::string::npos) << message;
    }
    for (unsigned char b : out.bytes) EXPECT_EQ(b, 0xA5);
}

// ---- on a GPU ----------------------------------------------------------------

struct Data {
    HostTensor input, target;
};

// Log-probabilities and probabilities (some exactly 0), or log-targets.
Data make_data(kldiv_dtype dtype, const Shape &shape, bool log_target, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> logp(-12.0, 0.0), p(0.0, 1.0);
    const int64_t n = numel(shape);
    std::vector<double> x(n), t(n);
    for (int64_t i = 0; i < n; i++) {
        x[i] = logp(rng);
        t[i] = log_target ? logp(rng) : (i % 97 == 0 ? 0.0 : p(rng));
    }
    return {HostTensor::from_values(dtype, shape, x), HostTensor::from_values(dtype, shape, t)};
}

HostTensor sentinel(kldiv_dtype dtype, const Shape &shape) {
    HostTensor t(dtype, shape);
    t.fill_bytes(0xA5);
    return t;
}

// Every element of `device` against `host` within SPEC.md's tolerance, scaled
// by the float64 reference's term magnitudes; returns the mismatches.
int compare(const char *what, const HostTensor &device, const HostTensor &host, const std::vector<RefValue> &ref,
            Tolerance tol) {
    int bad = 0;
    for (int64_t i = 0; i < host.count(); i++) {
        const std::string why = check_value(device.at(i), host.at(i), ref[i], tol);
        if (!why.empty() && ++bad <= 5) {
            ADD_FAILURE() << what << "[" << i << "]: device " << describe(device.at(i)) << ", host "
                          << describe(host.at(i)) << ", float64 " << describe(ref[i].value) << ": " << why;
        }
    }
    return bad;
}

struct Case {
    kldiv_dtype dtype;
    int64_t rows, cols;
};

class Differential : public ::testing::TestWithParam<Case> {};

// Every pass and reduction on device copies against the host kernels.
TEST_P(Differential, EveryPassMatchesTheHostKernels) {
    REQUIRE_GPU();
    const Case c = GetParam();
    const Shape shape = {c.rows, c.cols};
    const Tolerance tol = golden_tolerance(c.dtype);
    for (int log_target = 0; log_target < 2; log_target++) {
        const Data data = make_data(c.dtype, shape, log_target, 7 + log_target);
        const DeviceTensor d_in(data.input), d_tg(data.target);
        ASSERT_TRUE(d_in.ok() && d_tg.ok());
        const kldiv_tensor h_in = data.input.view(), h_tg = data.target.view();
        const kldiv_tensor g_in = d_in.view(), g_tg = d_tg.view();
        Problem p{shape, shape, data.input.values(), data.target.values(), log_target != 0, KLDIV_REDUCTION_NONE};

        for (kldiv_reduction r : {KLDIV_REDUCTION_NONE, KLDIV_REDUCTION_SUM, KLDIV_REDUCTION_MEAN,
                                  KLDIV_REDUCTION_BATCHMEAN}) {
            SCOPED_TRACE(std::string(dtype_name(c.dtype)) + " " + shape_string(shape) + " reduction " +
                         std::to_string(r) + (log_target ? " log_target" : ""));
            p.reduction = r;
            const Shape out_shape = r == KLDIV_REDUCTION_NONE ? shape : Shape{};
            std::vector<double> g_values(r == KLDIV_REDUCTION_NONE ? numel(shape) : 1);
            for (size_t i = 0; i < g_values.size(); i++) g_values[i] = 0.5 + 0.25 * (double)(i % 3);
            const Reference ref = reference(p, g_values);
            std::vector<double> ones(g_values.size(), 1.0);
            const Reference ref1 = reference(p, ones);

            // Forward.
            HostTensor h_out = sentinel(c.dtype, out_shape);
            const HostTensor d_out_init = sentinel(c.dtype, out_shape);
            DeviceTensor d_out(d_out_init);
            const kldiv_tensor ho = h_out.view(), go = d_out.view();
            ASSERT_EQ(kldiv_forward(&h_in, &h_tg, r, log_target, &ho), 0) << kldiv_last_error();
            ASSERT_EQ(kldiv_forward(&g_in, &g_tg, r, log_target, &go), 0) << kldiv_last_error();
            EXPECT_EQ(compare("forward", d_out.download(), h_out, ref.loss, tol), 0);

            // Backward, both gradients, from a device grad_output.
            const HostTensor grad_output = HostTensor::from_values(c.dtype, out_shape, g_values);
            const DeviceTensor d_go(grad_output);
            HostTensor h_gi = sentinel(c.dtype, shape), h_gt = sentinel(c.dtype, shape);
            const HostTensor init = sentinel(c.dtype, shape);
            DeviceTensor d_gi(init), d_gt(init);
            const kldiv_tensor hg = grad_output.view(), gg = d_go.view();
            const kldiv_tensor hgi = h_gi.view(), hgt = h_gt.view(), dgi = d_gi.view(), dgt = d_gt.view();
            ASSERT_EQ(kldiv_backward(&hg, &h_in, &h_tg, r, log_target, &hgi, &hgt), 0) << kldiv_last_error();
            ASSERT_EQ(kldiv_backward(&gg, &g_in, &g_tg, r, log_target, &dgi, &dgt), 0) << kldiv_last_error();
            EXPECT_EQ(compare("grad_input", d_gi.download(), h_gi, ref.grad_input, tol), 0);
            EXPECT_EQ(compare("grad_target", d_gt.download(), h_gt, ref.grad_target, tol), 0);

            // Each gradient alone.
            DeviceTensor d_gi_only(init), d_gt_only(init);
            const kldiv_tensor dgi_only = d_gi_only.view(), dgt_only = d_gt_only.view();
            ASSERT_EQ(kldiv_backward(&gg, &g_in, &g_tg, r, log_target, &dgi_only, nullptr), 0);
            ASSERT_EQ(kldiv_backward(&gg, &g_in, &g_tg, r, log_target, nullptr, &dgt_only), 0);
            EXPECT_EQ(compare("grad_input alone", d_gi_only.download(), h_gi, ref.grad_input, tol), 0);
            EXPECT_EQ(compare("grad_target alone", d_gt_only.download(), h_gt, ref.grad_target, tol), 0);

            // Fused.
            HostTensor h_fo = sentinel(c.dtype, out_shape), h_fgi = sentinel(c.dtype, shape);
            DeviceTensor d_fo(d_out_init), d_fgi(init);
            const kldiv_tensor hfo = h_fo.view(), hfgi = h_fgi.view(), dfo = d_fo.view(), dfgi = d_fgi.view();
            ASSERT_EQ(kldiv_forward_backward(&h_in, &h_tg, r, log_target, &hfo, &hfgi), 0) << kldiv_last_error();
            ASSERT_EQ(kldiv_forward_backward(&g_in, &g_tg, r, log_target, &dfo, &dfgi), 0) << kldiv_last_error();
            EXPECT_EQ(compare("fused loss", d_fo.download(), h_fo, ref.loss, tol), 0);
            EXPECT_EQ(compare("fused grad_input", d_fgi.download(), h_fgi, ref1.grad_input, tol), 0);
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, Differential,
                         ::testing::Values(Case{KLDIV_FLOAT32, 1, 1}, Case{KLDIV_FLOAT32, 3, 1000},
                                           Case{KLDIV_FLOAT32, 8, 131075}, Case{KLDIV_FLOAT64, 5, 4099},
                                           Case{KLDIV_FLOAT16, 4, 5000}, Case{KLDIV_BFLOAT16, 64, 32768},
                                           Case{KLDIV_BFLOAT16, 2, 3}),
                         [](const ::testing::TestParamInfo<Case> &info) {
                             return std::string(dtype_name(info.param.dtype)) + "_" +
                                    std::to_string(info.param.rows) + "x" + std::to_string(info.param.cols);
                         });

// 2^26 float32 elements, reduced on the GPU, against the float64 sum.
TEST(CudaLarge, ReductionOf2To26ElementsMatchesFloat64) {
    REQUIRE_GPU();
    const Shape shape = {1024, 65536};
    const Data data = make_data(KLDIV_FLOAT32, shape, false, 3);
    const DeviceTensor d_in(data.input), d_tg(data.target);
    ASSERT_TRUE(d_in.ok() && d_tg.ok());
    double sum = 0, scale = 0;
    for (int64_t i = 0; i < numel(shape); i++) {
        const RefValue v = ref_loss(data.input.at(i), data.target.at(i), false);
        sum += v.value;
        scale += v.scale;
    }
    for (kldiv_reduction r : {KLDIV_REDUCTION_SUM, KLDIV_REDUCTION_BATCHMEAN}) {
        const double divisor = r == KLDIV_REDUCTION_SUM ? 1.0 : 1024.0;
        const HostTensor init = sentinel(KLDIV_FLOAT32, {});
        DeviceTensor out(init);
        const kldiv_tensor in = d_in.view(), tg = d_tg.view(), o = out.view();
        ASSERT_EQ(kldiv_forward(&in, &tg, r, 0, &o), 0) << kldiv_last_error();
        const double got = out.download().at(0), want = sum / divisor;
        std::printf("[cuda] 2^26 float32 %s: %.9g, float64 %.9g, relative error %.2e\n",
                    r == KLDIV_REDUCTION_SUM ? "sum" : "batchmean", got, want, std::fabs(got - want) / std::fabs(want));
        EXPECT_LE(std::fabs(got - want), 1e-6 * scale / divisor);
    }
}

// The same call gives the same bits, run after run.
TEST(CudaDeterminism, ReductionsAreBitIdenticalRunToRun) {
    REQUIRE_GPU();
    const Shape shape = {512, 32768};
    for (kldiv_dtype dtype : {KLDIV_FLOAT32, KLDIV_BFLOAT16}) {
        const Data data = make_data(dtype, shape, false, 11);
        const DeviceTensor d_in(data.input), d_tg(data.target);
        const kldiv_tensor in = d_in.view(), tg = d_tg.view();
        const HostTensor init = sentinel(dtype, {}), grad_init = sentinel(dtype, shape);
        std::vector<unsigned char> first, first_grad;
        for (int run = 0; run < 10; run++) {
            DeviceTensor out(init), fused(init), grad(grad_init);
            const kldiv_tensor o = out.view(), f = fused.view(), g = grad.view();
            ASSERT_EQ(kldiv_forward(&in, &tg, KLDIV_REDUCTION_BATCHMEAN, 0, &o), 0) << kldiv_last_error();
            ASSERT_EQ(kldiv_forward_backward(&in, &tg, KLDIV_REDUCTION_SUM, 0, &f, &g), 0) << kldiv_last_error();
            std::vector<unsigned char> bits = out.download().bytes;
            const std::vector<unsigned char> fused_bits = fused.download().bytes;
            bits.insert(bits.end(), fused_bits.begin(), fused_bits.end());
            if (run == 0) {
                first = bits;
                first_grad = grad.download().bytes;
            } else {
                EXPECT_EQ(bits, first) << dtype_name(dtype) << " run " << run;
                EXPECT_TRUE(grad.download().bytes == first_grad) << dtype_name(dtype) << " run " << run;
            }
        }
    }
}

// Work runs on the caller's stream, in its order: a non-blocking stream
// rewrites the target, then the loss on that stream must see the new values.
TEST(CudaStreams, CallsRunInTheOrderOfTheCallersStream) {
    REQUIRE_GPU();
    const Cudart &cu = Cudart::get();
    const Shape shape = {256, 65536};
    const Data data = make_data(KLDIV_FLOAT32, shape, false, 5);
    const DeviceTensor d_in(data.input), d_tg(data.target);
    void *stream = nullptr;
    ASSERT_EQ(cu.cudaStreamCreateWithFlags(&stream, Cudart::kNonBlocking), 0);
    const kldiv_tensor in = d_in.view(), tg = d_tg.view();
    const HostTensor init = sentinel(KLDIV_FLOAT32, {});
    for (int round = 0; round < 5; round++) {
        DeviceTensor out(init);
        const kldiv_tensor o = out.view();
        cu.cudaDeviceSynchronize();
        // Target := 0 on the stream (all-zero bytes: t = +0, so the loss is 0).
        ASSERT_EQ(cu.cudaMemsetAsync(d_tg.data(), 0, (size_t)numel(shape) * 4, stream), 0);
        kldiv_set_thread_cuda_stream(stream);
        ASSERT_EQ(kldiv_forward(&in, &tg, KLDIV_REDUCTION_SUM, 0, &o), 0) << kldiv_last_error();
        kldiv_clear_thread_cuda_stream();
        ASSERT_EQ(cu.cudaStreamSynchronize(stream), 0);
        EXPECT_EQ(out.download().at(0), 0.0) << "round " << round;
        // Restore the target for the next round.
        cu.cudaMemcpy(d_tg.data(), data.target.bytes.data(), data.target.bytes.size(), Cudart::kHostToDevice);
    }
    cu.cudaStreamDestroy(stream);
}

// Threads with streams of their own, and a runtime with its own stream.
TEST(CudaStreams, ThreadsWithTheirOwnStreamsAndARuntimeStream) {
    REQUIRE_GPU();
    const Cudart &cu = Cudart::get();
    const Shape shape = {64, 32768};
    const Data data = make_data(KLDIV_FLOAT32, shape, true, 9);
    HostTensor expected = sentinel(KLDIV_FLOAT32, {});
    const kldiv_tensor h_in = data.input.view(), h_tg = data.target.view(), h_out = expected.view();
    ASSERT_EQ(kldiv_forward(&h_in, &h_tg, KLDIV_REDUCTION_MEAN, 1, &h_out), 0);
    const DeviceTensor d_in(data.input), d_tg(data.target);
    std::vector<std::thread> threads;
    std::atomic<int> wrong{0};
    for (int k = 0; k < 4; k++) {
        threads.emplace_back([&, k] {
            void *stream = nullptr;
            cu.cudaStreamCreateWithFlags(&stream, Cudart::kNonBlocking);
            kldiv_runtime *rt = nullptr;
            if (k % 2) {
                kldiv_runtime_options options{};
                options.cuda_stream = stream;
                rt = kldiv_runtime_create(&options);
            } else {
                kldiv_set_thread_cuda_stream(stream);
            }
            const HostTensor init = sentinel(KLDIV_FLOAT32, {});
            for (int i = 0; i < 20; i++) {
                DeviceTensor out(init);
                const kldiv_tensor in = d_in.view(), tg = d_tg.view(), o = out.view();
                if (kldiv_runtime_forward(rt, &in, &tg, KLDIV_REDUCTION_MEAN, 1, &o) != 0) wrong++;
                cu.cudaStreamSynchronize(stream);
                // The device sums in another order than the host: equal to 1e-5.
                if (std::fabs(out.download().at(0) - expected.at(0)) > 1e-5 * std::fabs(expected.at(0))) wrong++;
            }
            kldiv_clear_thread_cuda_stream();
            if (rt) kldiv_runtime_destroy(rt);
            cu.cudaStreamDestroy(stream);
        });
    }
    for (auto &t : threads) t.join();
    EXPECT_EQ(wrong.load(), 0);
}

TEST(CudaErrors, WhatTheGpuCannotDoIsRefusedAndNothingIsWritten) {
    REQUIRE_GPU();
    const Data data = make_data(KLDIV_FLOAT32, {4, 8}, false, 1);
    const HostTensor row = HostTensor::from_values(KLDIV_FLOAT32, {8}, std::vector<double>(8, 0.125));
    const DeviceTensor d_in(data.input), d_tg(data.target), d_row(row);
    const HostTensor grad_init = sentinel(KLDIV_FLOAT32, {8}), scalar_init = sentinel(KLDIV_FLOAT32, {});
    DeviceTensor grad(grad_init), out(scalar_init);
    const HostTensor one = HostTensor::from_values(KLDIV_FLOAT32, {}, {1.0});
    const DeviceTensor d_one(one);
    const kldiv_tensor in = d_in.view(), row_view = d_row.view(), g = grad.view(), go = d_one.view();
    // The gradient of a broadcast target would be a sum over rows.
    ASSERT_EQ(kldiv_backward(&go, &in, &row_view, KLDIV_REDUCTION_SUM, 0, nullptr, &g), KLDIV_ERROR_SHAPE);
    EXPECT_NE(std::strstr(kldiv_last_error(), "not supported for CUDA tensors"), nullptr) << kldiv_last_error();
    EXPECT_EQ(grad.download().bytes, grad_init.bytes);
    // The forward pass broadcasts fine.
    const kldiv_tensor o = out.view();
    ASSERT_EQ(kldiv_forward(&in, &row_view, KLDIV_REDUCTION_SUM, 0, &o), 0) << kldiv_last_error();
    HostTensor host_out = sentinel(KLDIV_FLOAT32, {});
    const kldiv_tensor h_in = data.input.view(), h_row = row.view(), h_o = host_out.view();
    ASSERT_EQ(kldiv_forward(&h_in, &h_row, KLDIV_REDUCTION_SUM, 0, &h_o), 0);
    EXPECT_NEAR(out.download().at(0), host_out.at(0), 1e-5 * std::fabs(host_out.at(0)));
}

}  // namespace
