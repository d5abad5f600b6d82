// 16 threads call forward, backward and the fused pass concurrently, many
// times, on different data; every result must equal, bit for bit, the result
// of the same call made alone on one thread.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>

#include "test_support.h"

using namespace kldiv_test;

namespace {

constexpr int kThreads = 16;
constexpr int kIterations = 25;

// One thread's workload: its own shapes, dtype, reduction and data.
struct Work {
    kldiv_dtype dtype;
    kldiv_reduction reduction;
    bool log_target;
    HostTensor input, target, grad_output;
    Shape out_shape;
};

struct Results {
    HostTensor out, grad_input, grad_target, fused_out, fused_grad_input;
};

Work make_work(int index) {
    static const kldiv_dtype dtypes[] = {KLDIV_FLOAT32, KLDIV_FLOAT64, KLDIV_FLOAT16, KLDIV_BFLOAT16};
    static const kldiv_reduction reductions[] = {KLDIV_REDUCTION_NONE, KLDIV_REDUCTION_SUM, KLDIV_REDUCTION_MEAN,
                                                 KLDIV_REDUCTION_BATCHMEAN};
    Work w;
    w.dtype = dtypes[index % 4];
    w.reduction = reductions[(index / 4) % 4];
    w.log_target = (index % 3) == 0;
    std::mt19937_64 rng(977 + index);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    // Shapes vary per thread; every third thread broadcasts its target.
    const int64_t rows = 17 + 13 * index, cols = 301 + 97 * (index % 5);
    Shape in_shape{rows, cols};
    Shape tg_shape = index % 3 == 1 ? Shape{cols} : Shape{rows, cols};
    std::vector<double> xs(numel(in_shape)), ts(numel(tg_shape));
    for (double &x : xs) x = round_to_dtype(-8.0 * u(rng), w.dtype);
    for (double &t : ts) {
        double v = w.log_target ? -6.0 * u(rng) : u(rng);
        t = round_to_dtype(v, w.dtype);
    }
    w.input = HostTensor::from_values(w.dtype, in_shape, xs);
    w.target = HostTensor::from_values(w.dtype, tg_shape, ts);
    Shape full;
    broadcast_shapes(in_shape, tg_shape, &full);
    w.out_shape = w.reduction == KLDIV_REDUCTION_NONE ? full : Shape{};
    std::vector<double> go(numel(w.out_shape));
    for (double &g : go) g = round_to_dtype(u(rng) * 2 - 0.5, w.dtype);
    w.grad_output = HostTensor::from_values(w.dtype, w.out_shape, go);
    return w;
}

// Runs every pass once; returns false (with the error) if a call fails.
bool run(const Work &w, Results *r, std::string *error) {
    r->out = HostTensor(w.dtype, w.out_shape);
    r->grad_input = HostTensor(w.dtype, w.input.sizes);
    r->grad_target = HostTensor(w.dtype, w.target.sizes);
    r->fused_out = HostTensor(w.dtype, w.out_shape);
    r->fused_grad_input = HostTensor(w.dtype, w.input.sizes);
    kldiv_tensor in = w.input.view(), tg = w.target.view(), go = w.grad_output.view();
    kldiv_tensor out = r->out.view(), gi = r->grad_input.view(), gt = r->grad_target.view();
    kldiv_tensor fo = r->fused_out.view(), fgi = r->fused_grad_input.view();
    if (kldiv_forward(&in, &tg, w.reduction, w.log_target, &out) != 0 ||
        kldiv_backward(&go, &in, &tg, w.reduction, w.log_target, &gi, &gt) != 0 ||
        kldiv_forward_backward(&in, &tg, w.reduction, w.log_target, &fo, &fgi) != 0) {
        *error = kldiv_last_error();
        return false;
    }
    return true;
}

std::string first_difference(const Results &a, const Results &b) {
    const std::pair<const HostTensor *, const HostTensor *> pairs[] = {
        {&a.out, &b.out},
        {&a.grad_input, &b.grad_input},
        {&a.grad_target, &b.grad_target},
        {&a.fused_out, &b.fused_out},
        {&a.fused_grad_input, &b.fused_grad_input}};
    const char *names[] = {"out", "grad_input", "grad_target", "fused out", "fused grad_input"};
    for (int k = 0; k < 5; ++k) {
        const HostTensor &x = *pairs[k].first, &y = *pairs[k].second;
        if (x.bytes == y.bytes) continue;
        for (int64_t i = 0; i < x.count(); ++i)
            if (std::memcmp(x.bytes.data() + i * dtype_bytes(x.dtype), y.bytes.data() + i * dtype_bytes(x.dtype),
                            dtype_bytes(x.dtype)) != 0)
                return std::string(names[k]) + "[" + std::to_string(i) + "]: " + describe(x.at(i)) + " vs " +
                       describe(y.at(i));
        return std::string(names[k]) + " differs";
    }
    return "";
}

TEST(Threads, ConcurrentCallsMatchSingleThreadedBitwise) {
    std::vector<Work> work;
    std::vector<Results> expected(kThreads);
    for (int i = 0; i < kThreads; ++i) work.push_back(make_work(i));
    for (int i = 0; i < kThreads; ++i) {
        std::string error;
        ASSERT_TRUE(run(work[i], &expected[i], &error)) << "thread " << i << ": " << error;
        // The single-threaded result is a real result, not garbage.
        std::vector<double> loss = expected[i].out.values();
        Problem p{work[i].input.sizes, work[i].target.sizes, work[i].input.values(), work[i].target.values(),
                  work[i].log_target, work[i].reduction};
        Reference ref = reference(p, work[i].grad_output.values());
        Tolerance tol = golden_tolerance(work[i].dtype);
        for (size_t k = 0; k < loss.size(); ++k) {
            double exp = round_to_dtype(ref.loss[k].value, work[i].dtype);
            ASSERT_EQ(check_value(loss[k], exp, ref.loss[k], tol), "") << "thread " << i << " loss[" << k << "]";
        }
    }

    std::atomic<int> start{0};
    std::vector<std::string> failures(kThreads);
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreads; ++i) {
        threads.emplace_back([&, i] {
            start.fetch_add(1);
            while (start.load() < kThreads) std::this_thread::yield();
            for (int it = 0; it < kIterations && failures[i].empty(); ++it) {
                Results r;
                std::string error;
                if (!run(work[i], &r, &error)) {
                    failures[i] = "iteration " + std::to_string(it) + " failed: " + error;
                    break;
                }
                std::string diff = first_difference(r, expected[i]);
                if (!diff.empty()) failures[i] = "iteration " + std::to_string(it) + ": " + diff;
            }
        });
    }
    for (std::thread &t : threads) t.join();
    for (int i = 0; i < kThreads; ++i)
        EXPECT_EQ(failures[i], "") << "thread " << i << " (" << dtype_name(work[i].dtype) << ", reduction "
                                   << work[i].reduction << ")";
}

// The same with every thread on the same dtype and reduction (the same
// kernels), sizes large enough that the kernels use their own parallelism.
TEST(Threads, SameKernelLargeInputsConcurrently) {
    const int64_t rows = 64, cols = 4099;
    std::vector<Work> work;
    for (int i = 0; i < kThreads; ++i) {
        Work w;
        std::mt19937_64 rng(5 + i);
        std::uniform_real_distribution<double> u(0.0, 1.0);
        std::vector<double> xs(rows * cols), ts(rows * cols);
        for (double &x : xs) x = (float)(-6.0 * u(rng));
        for (double &t : ts) t = (float)u(rng);
        w.dtype = KLDIV_FLOAT32;
        w.reduction = KLDIV_REDUCTION_SUM;
        w.log_target = false;
        w.input = HostTensor::from_values(KLDIV_FLOAT32, {rows, cols}, xs);
        w.target = HostTensor::from_values(KLDIV_FLOAT32, {rows, cols}, ts);
        w.out_shape = {};
        w.grad_output = HostTensor::from_values(KLDIV_FLOAT32, {}, {0.75});
        work.push_back(std::move(w));
    }
    std::vector<Results> expected(kThreads);
    for (int i = 0; i < kThreads; ++i) {
        std::string error;
        ASSERT_TRUE(run(work[i], &expected[i], &error)) << error;
    }
    std::vector<std::string> failures(kThreads);
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreads; ++i) {
        threads.emplace_back([&, i] {
            for (int it = 0; it < 10 && failures[i].empty(); ++it) {
                Results r;
                std::string error;
                if (!run(work[i], &r, &error)) failures[i] = error;
                else failures[i] = first_difference(r, expected[i]);
            }
        });
    }
    for (std::thread &t : threads) t.join();
    for (int i = 0; i < kThreads; ++i) EXPECT_EQ(failures[i], "") << "thread " << i;
}

}  // namespace
