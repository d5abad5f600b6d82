// The JIT runtime: the same results as the AOT kernels bit for bit, the
// specialisation policy, compile-once under a race, eviction, the on-disk
// cache's faults, bad targets, and processes sharing one cache directory.
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "kldiv/kldiv.hpp"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace kldiv;
using kldiv_test::TempDir;

namespace {

// Raw storage of `n` elements of `dtype` with values from `make(i)`, each
// rounded to the dtype as test_support stores it.
std::vector<uint8_t> storage(DType dtype, int64_t n, const std::function<double(int64_t)> &make) {
    static_assert((int)DType::Float32 == KLDIV_FLOAT32 && (int)DType::Float64 == KLDIV_FLOAT64 &&
                  (int)DType::Float16 == KLDIV_FLOAT16 && (int)DType::BFloat16 == KLDIV_BFLOAT16);
    std::vector<uint8_t> bytes(n * element_size(dtype));
    for (int64_t i = 0; i < n; i++) kldiv_test::store_element(bytes.data(), (kldiv_dtype)dtype, i, make(i));
    return bytes;
}

struct Problem {
    DType dtype;
    bool log_target;
    int64_t rows, cols;
    std::vector<uint8_t> input, target, grad_output;

    Problem(DType dtype, bool log_target, int64_t rows, int64_t cols, int seed)
        : dtype(dtype), log_target(log_target), rows(rows), cols(cols) {
        std::mt19937_64 rng(seed);
        std::uniform_real_distribution<double> u(0.0, 1.0);
        const int64_t n = rows * cols;
        input = storage(dtype, n, [&](int64_t) { return -8.0 * u(rng); });
        target = storage(dtype, n, [&](int64_t) { return log_target ? -6.0 * u(rng) : u(rng); });
        grad_output = storage(dtype, n, [&](int64_t) { return u(rng) * 2 - 0.5; });
    }
    Tensor view(std::vector<uint8_t> &bytes) { return Tensor::contiguous(bytes.data(), dtype, {rows, cols}); }
};

// All outputs of one pass variant (index 0..9) on `runtime`.
std::vector<uint8_t> run_variant(Runtime &runtime, Problem &p, int variant) {
    const size_t bytes = p.input.size(), elem = element_size(p.dtype);
    std::vector<uint8_t> a(bytes, 0xA5), b(bytes, 0x5A), scalar(elem, 0x33), one = storage(p.dtype, 1, [](int64_t) {
        return 1.0;
    });
    const Tensor x = p.view(p.input), t = p.view(p.target), ta = p.view(a), tb = p.view(b);
    const Tensor s = Tensor::contiguous(scalar.data(), p.dtype, {}), g1 = Tensor::contiguous(one.data(), p.dtype, {});
    switch (variant) {
    case 0: runtime.kl_div(x, t, ta, Reduction::None, p.log_target); break;
    case 1: runtime.kl_div(x, t, s, Reduction::Sum, p.log_target); break;
    case 2: runtime.kl_div_forward_backward(x, t, ta, tb, Reduction::None, p.log_target); break;
    case 3: runtime.kl_div_forward_backward(x, t, s, ta, Reduction::BatchMean, p.log_target); break;
    case 4: runtime.kl_div_backward(p.view(p.grad_output), x, t, Reduction::None, p.log_target, &ta, nullptr); break;
    case 5: runtime.kl_div_backward(p.view(p.grad_output), x, t, Reduction::None, p.log_target, nullptr, &tb); break;
    case 6: runtime.kl_div_backward(p.view(p.grad_output), x, t, Reduction::None, p.log_target, &ta, &tb); break;
    case 7: runtime.kl_div_backward(g1, x, t, Reduction::BatchMean, p.log_target, &ta, nullptr); break;
    case 8: runtime.kl_div_backward(g1, x, t, Reduction::Sum, p.log_target, nullptr, &tb); break;
    case 9: runtime.kl_div_backward(g1, x, t, Reduction::Mean, p.log_target, &ta, &tb); break;
    }
    std::vector<uint8_t> all = a;
    all.insert(all.end(), b.begin(), b.end());
    all.insert(all.end(), scalar.begin(), scalar.end());
    return all;
}

constexpr int kVariants = 10;

RuntimeOptions aot_only() {
    RuntimeOptions o;
    o.jit = false;
    return o;
}

RuntimeOptions jit_options(Specialize specialize, const std::string &cache_dir = "off") {
    RuntimeOptions o;
    o.cache_dir = cache_dir;
    o.specialize = specialize;
    o.generic_from_aot = false;
    o.target = cpu_target();  // the AOT kernels' feature level: the same schedule, the same code
    return o;
}

}  // namespace

TEST(Jit, GenericKernelsMatchAotBitForBit) {
    Runtime aot(aot_only()), jit(jit_options(Specialize::Never));
    const DType dtypes[] = {DType::Float32, DType::Float64, DType::Float16, DType::BFloat16};
    for (int d = 0; d < 4; d++) {
        for (int variant = 0; variant < kVariants; variant++) {
            Problem p(dtypes[d], (variant + d) % 2 == 1, 37, 1001, 100 * d + variant);
            SCOPED_TRACE(std::string(short_name(dtypes[d])) + " variant " + std::to_string(variant));
            const std::vector<uint8_t> want = run_variant(aot, p, variant);
            EXPECT_EQ(last_kernel().origin, KernelOrigin::Aot);
            const std::vector<uint8_t> got = run_variant(jit, p, variant);
            EXPECT_EQ(last_kernel().origin, KernelOrigin::Compiled);
            EXPECT_FALSE(last_kernel().specialised);
            EXPECT_TRUE(got == want);
        }
    }
    EXPECT_EQ(jit.stats().compiles, 4u * kVariants);
    EXPECT_EQ(jit.stats().aot_calls, 0u);
}

// float16 and bfloat16 kernels take t·log(t) and exp(t) from tables and round
// every other operation alike at every level, so their losses and grad_input
// (and with log_target every output) have the same bits at SSE4.1 and at the
// CPU's best level. float32 differs where the best level has FMA (log's
// polynomial), which shows that the two runtimes compile different code.
TEST(Jit, SixteenBitResultsAreTheSameAtEveryLevel) {
    auto at_level = [](const std::string &level) {
        RuntimeOptions o = jit_options(Specialize::Never);
        o.target = "host";
        o.cpu_target = level;
        return o;
    };
    Runtime sse41(at_level("sse41")), best(at_level("avx512"));
    for (DType dtype : {DType::Float16, DType::BFloat16}) {
        for (bool log_target : {false, true}) {
            Problem p(dtype, log_target, 7, 1001, log_target ? 41 : 43);
            for (int variant : {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}) {
                // Without log_target, grad_target computes log.
                if (!log_target && (variant == 5 || variant == 6 || variant == 8 || variant == 9)) continue;
                SCOPED_TRACE(std::string(short_name(dtype)) + (log_target ? " log_target" : "") + " variant " +
                             std::to_string(variant));
                EXPECT_TRUE(run_variant(sse41, p, variant) == run_variant(best, p, variant));
            }
        }
    }
    if (cpu_target() != "x86-64-linux-sse41" && cpu_target().rfind("x86-64", 0) == 0) {
        Problem p(DType::Float32, false, 7, 1001, 47);
        EXPECT_FALSE(run_variant(sse41, p, 0) == run_variant(best, p, 0));
    }
}

// A generic JIT kernel is compiled for what a call's inner strides need: one
// for unit strides, one for the rest; each serves its own calls afterwards.
TEST(Jit, GenericKernelsAreCompiledPerInnerStride) {
    Runtime aot(aot_only()), jit(jit_options(Specialize::Never));
    Problem p(DType::Float32, false, 40, 1002, 7);
    // Every other column: dimension 0's stride is 2 in both operands.
    auto strided = [&](std::vector<uint8_t> &bytes) {
        Tensor view = p.view(bytes);
        view.sizes = {p.rows, p.cols / 2};
        view.strides = {p.cols, 2};
        return view;
    };
    for (int round = 0; round < 2; round++) {
        for (bool unit : {true, false}) {
            SCOPED_TRACE(std::string(unit ? "unit stride" : "stride 2") + ", round " + std::to_string(round));
            const Tensor x = unit ? p.view(p.input) : strided(p.input), t = unit ? p.view(p.target) : strided(p.target);
            std::vector<uint8_t> want(4, 0), got(4, 1), want_none(p.input.size(), 0xA5), got_none(p.input.size(), 0xA5);
            aot.kl_div(x, t, Tensor::contiguous(want.data(), DType::Float32, {}), Reduction::Sum);
            jit.kl_div(x, t, Tensor::contiguous(got.data(), DType::Float32, {}), Reduction::Sum);
            EXPECT_EQ(last_kernel().origin, round == 0 ? KernelOrigin::Compiled : KernelOrigin::Memory);
            EXPECT_FALSE(last_kernel().specialised);
            EXPECT_TRUE(got == want);
            Tensor out_want = Tensor::contiguous(want_none.data(), DType::Float32, x.sizes);
            Tensor out_got = Tensor::contiguous(got_none.data(), DType::Float32, x.sizes);
            aot.kl_div(x, t, out_want, Reduction::None);
            jit.kl_div(x, t, out_got, Reduction::None);
            EXPECT_TRUE(got_none == want_none);
        }
    }
    EXPECT_EQ(jit.stats().compiles, 4u);  // (sum, none) x (unit, strided)
    EXPECT_EQ(jit.stats().hits, 4u);
}

TEST(Jit, SpecialisedKernelsMatchAotBitForBit) {
    Runtime aot(aot_only()), jit(jit_options(Specialize::Always));
    for (int variant : {0, 1, 2, 3, 6, 9}) {
        for (DType dtype : {DType::Float32, DType::BFloat16}) {
            // Rows that end inside a chunk of the summation tree: 67 chunks
            // of 2048, a prime, so that tasks of any number of chunks leave a
            // partial last one; 64 x 3072 = 96 chunks (a sum with no padding
            // code, in tasks that divide 96 exactly); 64 x 96 = 3 chunks
            // (fewer than a task holds).
            for (int cols : {2120 + variant, 3072, 96}) {
                Problem p(dtype, variant == 3, 64, cols, variant);
                SCOPED_TRACE(std::string(short_name(dtype)) + " variant " + std::to_string(variant) + ", " +
                             std::to_string(cols) + " columns");
                const std::vector<uint8_t> want = run_variant(aot, p, variant);
                EXPECT_TRUE(run_variant(jit, p, variant) == want);
                const KernelInfo info = last_kernel();
                EXPECT_TRUE(info.specialised);
                // A contiguous 2-d call is one run of rows x cols elements.
                EXPECT_NE(info.name.find("[" + std::to_string(64 * cols) + "x1x1x1]"), std::string::npos)
                    << info.name;
            }
        }
    }
}

TEST(Jit, AutoSpecialisesAShapeOnceItRepeats) {
    RuntimeOptions o = jit_options(Specialize::Auto);
    o.generic_from_aot = true;
    o.specialize_after = 3;
    o.specialize_work = 0;  // calls alone decide
    Runtime runtime(o), aot(aot_only());
    Problem p(DType::Float32, false, 8, 500, 1);
    const std::vector<uint8_t> want = run_variant(aot, p, 1);
    const KernelOrigin expected[] = {KernelOrigin::Aot, KernelOrigin::Aot, KernelOrigin::Compiled, KernelOrigin::Memory,
                                     KernelOrigin::Memory};
    for (KernelOrigin origin : expected) {
        EXPECT_TRUE(run_variant(runtime, p, 1) == want);
        EXPECT_EQ(last_kernel().origin, origin) << origin_name(last_kernel().origin);
    }
    EXPECT_TRUE(last_kernel().specialised);
    // Another shape starts from the AOT kernel again.
    Problem q(DType::Float32, false, 8, 501, 2);
    run_variant(runtime, q, 1);
    EXPECT_EQ(last_kernel().origin, KernelOrigin::Aot);
    const CacheStats s = runtime.stats();
    EXPECT_EQ(s.compiles, 1u);
    EXPECT_EQ(s.hits, 2u);
    EXPECT_EQ(s.aot_calls, 3u);
}

// By default `auto` also waits until a shape's calls have covered enough
// elements to repay a compile: small shapes are never compiled for, however
// often they come; a large shape is, once its calls add up.
TEST(Jit, AutoSpecialisesOnlyWhereTheWorkRepaysACompile) {
    RuntimeOptions o = jit_options(Specialize::Auto);
    o.generic_from_aot = true;
    Runtime runtime(o), aot(aot_only());
    EXPECT_EQ(o.specialize_work, uint64_t(1) << 32);
    Problem small(DType::Float32, false, 8, 500, 1);
    const std::vector<uint8_t> want = run_variant(aot, small, 1);
    for (int call = 0; call < 20; call++) {
        EXPECT_TRUE(run_variant(runtime, small, 1) == want);
        EXPECT_EQ(last_kernel().origin, KernelOrigin::Aot) << "call " << call;
    }
    EXPECT_EQ(runtime.stats().compiles, 0u);

    // 4000 elements a call: with a budget of 5 calls' worth, the fifth call
    // compiles (the third would by count alone).
    o.specialize_work = 5 * 8 * 500;
    Runtime counted(o);
    for (int call = 1; call <= 6; call++) {
        EXPECT_TRUE(run_variant(counted, small, 1) == want);
        const KernelOrigin expected = call < 5 ? KernelOrigin::Aot : call == 5 ? KernelOrigin::Compiled : KernelOrigin::Memory;
        EXPECT_EQ(last_kernel().origin, expected) << "call " << call << ": " << origin_name(last_kernel().origin);
    }
    EXPECT_EQ(counted.stats().compiles, 1u);
}

TEST(Jit, NeverPolicyAndEnvironment) {
    setenv("KLDIV_SPECIALIZE", "never", 1);
    RuntimeOptions o = jit_options(Specialize::Auto);
    o.specialize.reset();  // from the environment
    Runtime runtime(o);
    Problem p(DType::Float32, false, 4, 300, 3);
    for (int i = 0; i < 5; i++) run_variant(runtime, p, 0);
    EXPECT_FALSE(last_kernel().specialised);
    EXPECT_EQ(runtime.stats().compiles, 1u);

    setenv("KLDIV_SPECIALIZE", "sometimes", 1);
    std::vector<std::string> warnings;
    o.warning_handler = [&](const std::string &m) { warnings.push_back(m); };
    Runtime fallback(o);
    unsetenv("KLDIV_SPECIALIZE");
    ASSERT_EQ(warnings.size(), 1u);
    EXPECT_NE(warnings[0].find("'sometimes' is not a specialisation policy"), std::string::npos) << warnings[0];
    EXPECT_THROW(parse_specialize("sometimes"), Error);
}

// 16 threads ask for 50 kernels at once, in different orders: each is
// compiled exactly once and every result is right.
TEST(Jit, SixteenThreadsFiftySpecsCompileEachOnce) {
    constexpr int kThreads = 16, kSpecs = 50;
    Runtime aot(aot_only()), jit(jit_options(Specialize::Always));
    std::vector<Problem> problems;
    std::vector<std::vector<uint8_t>> want;
    for (int k = 0; k < kSpecs; k++) {
        problems.emplace_back(k % 2 ? DType::Float32 : DType::BFloat16, k % 3 == 0, 3 + k % 5, 200 + k, k);
        want.push_back(run_variant(aot, problems.back(), k % kVariants));
    }
    std::atomic<int> wrong{0}, errors{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; t++) {
        threads.emplace_back([&, t] {
            std::vector<int> order(kSpecs);
            for (int k = 0; k < kSpecs; k++) order[k] = k;
            std::shuffle(order.begin(), order.end(), std::mt19937(t));
            for (int k : order) {
                try {
                    Problem p = problems[k];
                    if (run_variant(jit, p, k % kVariants) != want[k]) wrong++;
                } catch (const std::exception &) {
                    errors++;
                }
            }
        });
    }
    for (std::thread &t : threads) t.join();
    EXPECT_EQ(wrong.load(), 0);
    EXPECT_EQ(errors.load(), 0);
    const CacheStats s = jit.stats();
    EXPECT_EQ(s.compiles, (uint64_t)kSpecs);
    EXPECT_EQ(s.misses, (uint64_t)kSpecs);
    EXPECT_EQ(s.hits, (uint64_t)(kThreads - 1) * kSpecs);
    EXPECT_EQ(s.entries, (uint64_t)kSpecs);
}

// A memory cache of two kernels cycling through four shapes: kernels are
// evicted, come back from the disk cache, and results stay right.
TEST(Jit, EvictedKernelsComeBackAndStayCorrect) {
    TempDir dir;
    RuntimeOptions o = jit_options(Specialize::Always, dir.path());
    o.memory_cache_entries = 2;
    Runtime aot(aot_only()), jit(o);
    std::vector<Problem> problems;
    std::vector<std::vector<uint8_t>> want;
    for (int k = 0; k < 4; k++) {
        problems.emplace_back(DType::Float32, false, 5, 700 + k, k);
        want.push_back(run_variant(aot, problems.back(), 1));
    }
    for (int round = 0; round < 3; round++) {
        for (int k = 0; k < 4; k++) EXPECT_TRUE(run_variant(jit, problems[k], 1) == want[k]);
    }
    const CacheStats s = jit.stats();
    EXPECT_EQ(s.compiles, 4u);
    EXPECT_EQ(s.disk_hits, 8u);
    EXPECT_EQ(s.evictions, 10u);
    EXPECT_EQ(s.entries, 2u);

    // A byte bound: one kernel's code is over it, so only the newest stays.
    RuntimeOptions tiny = jit_options(Specialize::Always);
    tiny.memory_cache_bytes = 1;
    Runtime small(tiny);
    for (int k = 0; k < 3; k++) EXPECT_TRUE(run_variant(small, problems[k], 1) == want[k]);
    EXPECT_EQ(small.stats().entries, 1u);
    EXPECT_EQ(small.stats().evictions, 2u);
}

TEST(Jit, DiskCacheServesANewRuntime) {
    TempDir dir;
    Runtime aot(aot_only());
    Problem p(DType::Float16, true, 9, 333, 4);
    const std::vector<uint8_t> want = run_variant(aot, p, 3);
    {
        Runtime first(jit_options(Specialize::Always, dir.path()));
        EXPECT_TRUE(run_variant(first, p, 3) == want);
        EXPECT_EQ(last_kernel().origin, KernelOrigin::Compiled);
    }
    Runtime second(jit_options(Specialize::Always, dir.path()));
    EXPECT_TRUE(run_variant(second, p, 3) == want);
    EXPECT_EQ(last_kernel().origin, KernelOrigin::Disk);
    EXPECT_EQ(second.stats().compiles, 0u);
    EXPECT_EQ(second.cache_dir(), dir.path());
}

// Damaged entries are reported through the runtime's warning handler,
// removed, and rebuilt; the call still succeeds.
TEST(Jit, DamagedDiskEntriesAreRebuilt) {
    Runtime aot(aot_only());
    Problem p(DType::Float32, false, 3, 999, 5);
    const std::vector<uint8_t> want = run_variant(aot, p, 1);
    const std::function<void(const fs::path &)> damages[] = {
        [](const fs::path &obj) { fs::resize_file(obj, fs::file_size(obj) / 2); },  // truncated
        [](const fs::path &obj) {                                                    // garbage
            std::ofstream out(obj, std::ios::binary | std::ios::trunc);
            out << std::string(fs::file_size(obj) + 100, 'x');
        },
    };
    for (const auto &damage : damages) {
        TempDir dir;
        { Runtime first(jit_options(Specialize::Always, dir.path())); run_variant(first, p, 1); }
        int damaged = 0;
        for (const auto &entry : fs::directory_iterator(dir.path())) {
            if (entry.path().extension() == ".obj") {
                damage(entry.path());
                damaged++;
            }
        }
        ASSERT_GE(damaged, 1);  // the kernel (and Halide's runtime, if this process compiled it here)
        std::vector<std::string> warnings;
        RuntimeOptions o = jit_options(Specialize::Always, dir.path());
        o.warning_handler = [&](const std::string &m) { warnings.push_back(m); };
        Runtime second(o);
        EXPECT_TRUE(run_variant(second, p, 1) == want);
        EXPECT_EQ(last_kernel().origin, KernelOrigin::Compiled);
        EXPECT_GE(warnings.size(), 1u);  // the kernel's entry (the runtime's is shared per process)
        for (const std::string &w : warnings) EXPECT_NE(w.find("kernel cache entry"), std::string::npos) << w;
        // Rebuilt: a third runtime loads it cleanly.
        Runtime third(jit_options(Specialize::Always, dir.path()));
        EXPECT_TRUE(run_variant(third, p, 1) == want);
        EXPECT_EQ(last_kernel().origin, KernelOrigin::Disk);
    }
}

TEST(Jit, UnusableCacheDirectoriesDegradeToMemory) {
    Runtime aot(aot_only());
    Problem p(DType::Float32, false, 2, 640, 6);
    const std::vector<uint8_t> want = run_variant(aot, p, 0);
    TempDir dir;
    const std::string missing = dir.path() + "/does/not/exist/yet";
    {
        Runtime runtime(jit_options(Specialize::Always, missing));
        EXPECT_TRUE(run_variant(runtime, p, 0) == want);
        EXPECT_TRUE(fs::exists(missing));  // created
    }
    const std::string file = dir.path() + "/a-file";
    std::ofstream(file) << "not a directory";
    std::vector<std::string> warnings;
    RuntimeOptions o = jit_options(Specialize::Always, file);
    o.warning_handler = [&](const std::string &m) { warnings.push_back(m); };
    Runtime runtime(o);
    EXPECT_TRUE(run_variant(runtime, p, 0) == want);
    EXPECT_TRUE(run_variant(runtime, p, 1) == run_variant(aot, p, 1));
    EXPECT_EQ(warnings.size(), 1u);
    if (geteuid() != 0) {  // permissions do not bind root
        const std::string readonly = dir.path() + "/readonly";
        fs::create_directory(readonly);
        fs::permissions(readonly, fs::perms::owner_read | fs::perms::owner_exec);
        Runtime ro(jit_options(Specialize::Always, readonly));
        EXPECT_TRUE(run_variant(ro, p, 0) == want);
    }
}

// A cache directory that others may write (a shared scratch directory) is
// not used: nothing is loaded from it, the kernel is compiled afresh, one
// warning says why, and the results are the same.
TEST(Jit, CacheDirectoryWritableByOthersIsNotLoaded) {
    Runtime aot(aot_only());
    Problem p(DType::Float32, false, 4, 1000, 7);
    const std::vector<uint8_t> want = run_variant(aot, p, 1);
    TempDir dir;
    {
        Runtime first(jit_options(Specialize::Always, dir.path()));
        EXPECT_TRUE(run_variant(first, p, 1) == want);
    }
    // The user's tuning database there is not read either (this line would warn).
    std::ofstream(dir.file("tuning.jsonl")) << "not a tuning record\n";
    fs::permissions(dir.path(), fs::perms::all);
    std::vector<std::string> warnings;
    RuntimeOptions o = jit_options(Specialize::Always, dir.path());
    o.warning_handler = [&](const std::string &m) { warnings.push_back(m); };
    for (int i = 0; i < 2; i++) {  // two runtimes, one warning
        Runtime second(o);
        EXPECT_TRUE(run_variant(second, p, 1) == want);
        EXPECT_EQ(last_kernel().origin, KernelOrigin::Compiled);
        EXPECT_EQ(second.stats().disk_hits, 0u);
    }
    ASSERT_EQ(warnings.size(), 1u);
    EXPECT_EQ(warnings[0], "kldiv: kernel cache directory " + dir.path() + " refused: " + dir.path() +
                               " is writable by others (mode 0777); the disk cache is off for this process");
}

// A payload that another user put in place of the kernel's, with the same
// bytes: not loaded, removed, compiled afresh and stored again.
TEST(Jit, PayloadOfAnotherUserIsRebuilt) {
    if (geteuid() != 0) GTEST_SKIP() << "[SKIP] not root: handing a payload to another user needs chown";
    Runtime aot(aot_only());
    Problem p(DType::Float32, false, 4, 1001, 8);
    const std::vector<uint8_t> want = run_variant(aot, p, 1);
    TempDir dir;
    {
        Runtime first(jit_options(Specialize::Always, dir.path()));
        EXPECT_TRUE(run_variant(first, p, 1) == want);
    }
    int replaced = 0;
    for (const auto &entry : fs::directory_iterator(dir.path())) {
        if (entry.path().extension() != ".obj") continue;
        const std::string path = entry.path().string(), planted = path + ".planted";
        fs::copy_file(path, planted);
        ASSERT_EQ(chown(planted.c_str(), 65534, 65534), 0);  // nobody
        fs::rename(planted, path);
        replaced++;
    }
    ASSERT_GE(replaced, 1);  // the kernel (and Halide's runtime, if this process compiled it here)
    std::vector<std::string> warnings;
    RuntimeOptions o = jit_options(Specialize::Always, dir.path());
    o.warning_handler = [&](const std::string &m) { warnings.push_back(m); };
    {
        Runtime second(o);
        EXPECT_TRUE(run_variant(second, p, 1) == want);
        EXPECT_EQ(last_kernel().origin, KernelOrigin::Compiled);
    }
    ASSERT_GE(warnings.size(), 1u);
    for (const std::string &w : warnings) {
        EXPECT_NE(w.find("is owned by nobody (uid 65534), not by root (uid 0)); removed, it will be rebuilt"),
                  std::string::npos)
            << w;
    }
    Runtime third(jit_options(Specialize::Always, dir.path()));
    EXPECT_TRUE(run_variant(third, p, 1) == want);
    EXPECT_EQ(last_kernel().origin, KernelOrigin::Disk);
}

TEST(Jit, NonBlockingCallsRunAotWhileCompiling) {
    RuntimeOptions o = jit_options(Specialize::Always);
    o.target = "host";
    o.blocking = false;
    Runtime runtime(o), aot(aot_only());
    Problem p(DType::Float32, false, 6, 4321, 7);
    const std::vector<uint8_t> want = run_variant(aot, p, 1);
    EXPECT_TRUE(run_variant(runtime, p, 1) == want);
    EXPECT_EQ(last_kernel().origin, KernelOrigin::Aot);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    KernelOrigin origin = KernelOrigin::Aot;
    while (origin == KernelOrigin::Aot && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        run_variant(runtime, p, 1);
        origin = last_kernel().origin;
    }
    EXPECT_EQ(origin, KernelOrigin::Memory);
    EXPECT_TRUE(last_kernel().specialised);
}

// Compiling Halide's runtime (no disk cache here) goes through a file in the
// temporary directory; the process leaves nothing there. (ctest runs each test
// in a process of its own, so this one compiles the runtime itself.)
TEST(Jit, LeavesNothingInTheTemporaryDirectory) {
    TempDir tmp;
    ASSERT_EQ(setenv("TMPDIR", tmp.path().c_str(), 1), 0);
    {
        Runtime jit(jit_options(Specialize::Never));
        Problem p(DType::Float32, false, 2, 100, 1);
        run_variant(jit, p, 1);
        EXPECT_EQ(last_kernel().origin, KernelOrigin::Compiled);
    }
    unsetenv("TMPDIR");
    std::string left;
    for (const auto &entry : fs::directory_iterator(tmp.path())) left += " " + entry.path().filename().string();
    EXPECT_TRUE(left.empty()) << "left in TMPDIR:" << left;
}

TEST(Jit, BadTargetsAreErrorsNotCrashes) {
    RuntimeOptions bogus = jit_options(Specialize::Always);
    bogus.target = "no-such-target";
    try {
        Runtime runtime(bogus);
        FAIL() << "an unknown target was accepted";
    } catch (const Error &e) {
        EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
        EXPECT_NE(std::string(e.what()).find("unknown target 'no-such-target'"), std::string::npos) << e.what();
    }
    // Kernels for another machine come from `kldiv aot`, not the JIT: on
    // every host, whatever its CPU.
    for (const char *other : {"arm-64-linux", "x86-32-linux", "host-cuda", "host-cuda-cuda_capability_80",
                              "x86-64-linux-cuda", "x86-64-linux-sse41-opencl"}) {
        RuntimeOptions o = jit_options(Specialize::Always);
        o.target = other;
        try {
            Runtime runtime(o);
            ADD_FAILURE() << other << " was accepted";
        } catch (const Error &e) {
            EXPECT_EQ(e.code(), ErrorCode::InvalidArgument) << other;
        }
    }
    RuntimeOptions cuda = jit_options(Specialize::Always);
    cuda.target = "host-cuda";
    try {
        Runtime runtime(cuda);
    } catch (const Error &e) {
        EXPECT_NE(std::string(e.what()).find("has a GPU feature"), std::string::npos) << e.what();
    }
    RuntimeOptions level = jit_options(Specialize::Always);
    level.cpu_target = "avx3";
    EXPECT_THROW({ Runtime runtime(level); }, Error);
}

// cpu_target caps the level of "host" JIT kernels, so one machine can run
// every level its CPU has; a level above the CPU's is the CPU's. Each level's
// kernels compute the same loss.
TEST(Jit, CpuTargetCapsTheHostLevel) {
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    Runtime aot(aot_only());
    Problem p(DType::Float32, false, 3, 1000, 5);
    const std::vector<uint8_t> want = run_variant(aot, p, 0);
    for (const char *cap : {"sse41", "avx2", "avx512"}) {
        RuntimeOptions o = jit_options(Specialize::Never);
        o.target = "host";
        o.cpu_target = cap;
        Runtime runtime(o);
        const std::string t = runtime.target();
        const std::string wanted = cap;
        const std::string level = wanted == "sse41" || !avx2 ? "sse41" : wanted == "avx2" || !avx512 ? "avx2" : "avx512";
        SCOPED_TRACE(std::string(cap) + ": " + t);
        EXPECT_NE(t.find("sse41"), std::string::npos);
        EXPECT_EQ(t.find("avx2") != std::string::npos, level != "sse41");
        EXPECT_EQ(t.find("avx512") != std::string::npos, level == "avx512");
        const std::vector<uint8_t> got = run_variant(runtime, p, 0);
        EXPECT_EQ(last_kernel().origin, KernelOrigin::Compiled);
        // The same loss as the AOT kernels' at every level (the same
        // formulas; a fused multiply-add may move the last bit).
        ASSERT_EQ(got.size(), want.size());
        for (size_t i = 0; i + 4 <= p.input.size(); i += 4) {
            float a, b;
            std::memcpy(&a, got.data() + i, 4);
            std::memcpy(&b, want.data() + i, 4);
            ASSERT_NEAR(a, b, 4e-7 * std::fabs(b) + 1e-30) << "element " << i / 4;
        }
    }
}

// A compile that runs out of memory is an error naming the kernel, not a
// crash, and the output is untouched. (In a child process: it lowers the
// address-space limit.)
TEST(JitDeathTest, CompileOutOfMemoryIsAnError) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    auto body = [] {
        Runtime runtime(jit_options(Specialize::Always));
        Problem p(DType::Float32, false, 2, 100, 8);
        std::vector<uint8_t> out(p.input.size(), 0x77);
        runtime.kl_div(p.view(p.input), p.view(p.target), p.view(out), Reduction::None, false);  // runtime loaded
        Problem q(DType::Float64, true, 3, 101, 9);
        std::vector<uint8_t> out64(q.input.size(), 0x77);
        std::ifstream status("/proc/self/status");
        std::string line;
        uint64_t vm_kb = 0;
        while (std::getline(status, line)) {
            if (line.rfind("VmSize:", 0) == 0) vm_kb = std::stoull(line.substr(7));
        }
        const rlimit limit{(vm_kb + 4096) * 1024, (vm_kb + 4096) * 1024};
        setrlimit(RLIMIT_AS, &limit);
        try {
            runtime.kl_div(q.view(q.input), q.view(q.target), q.view(out64), Reduction::None, true);
            std::fprintf(stderr, "compiled within the limit\n");
            std::exit(2);
        } catch (const Error &e) {
            const std::string what = e.what();
            const bool clean = std::all_of(out64.begin(), out64.end(), [](uint8_t b) { return b == 0x77; });
            std::fprintf(stderr, "error: %s\n", what.c_str());
            std::exit(e.code() == ErrorCode::Internal && what.find("kldiv_fwd_none_f64_logt") != std::string::npos &&
                              clean && runtime.stats().failures == 1
                          ? 0
                          : 3);
        }
    };
    EXPECT_EXIT(body(), ::testing::ExitedWithCode(0), "error: .*kldiv_fwd_none_f64_logt");
}

// Four processes start together on one empty cache directory; each must get
// correct results, and a fifth then finds every kernel on disk.
TEST(Jit, FourProcessesShareOneCacheDirectory) {
    TempDir dir;
    const std::string env = "KLDIV_CACHE_DIR=" + dir.path();
    auto spawn = [&](std::vector<std::string> args) {
        std::vector<char *> argv;
        for (std::string &a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        std::vector<char *> envp;
        std::string env_copy = env;
        envp.push_back(env_copy.data());
        for (char **e = environ; *e; e++) {
            if (std::strncmp(*e, "KLDIV_CACHE_DIR=", 16) != 0) envp.push_back(*e);
        }
        envp.push_back(nullptr);
        pid_t pid;
        EXPECT_EQ(posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), envp.data()), 0);
        return pid;
    };
    std::vector<pid_t> pids;
    for (int i = 0; i < 4; i++) pids.push_back(spawn({KLDIV_JIT_HOST, "32", "2000"}));
    for (pid_t pid : pids) {
        int status = 0;
        ASSERT_EQ(waitpid(pid, &status, 0), pid);
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
    }
    int manifests = 0;
    for (const auto &entry : fs::directory_iterator(dir.path())) manifests += entry.path().extension() == ".json";
    EXPECT_EQ(manifests, 5);  // four kernels and Halide's runtime
    // The fifth process compiles nothing.
    const std::string command = env + " " + KLDIV_JIT_HOST + " 32 2000";
    FILE *pipe = popen(command.c_str(), "r");
    ASSERT_NE(pipe, nullptr);
    char line[512];
    std::string output;
    while (fgets(line, sizeof line, pipe)) output += line;
    EXPECT_EQ(pclose(pipe), 0);
    EXPECT_NE(output.find("0 compiled, 4 from disk"), std::string::npos) << output;
}

// A tuning record that changes a reduction's summation order (partial sums,
// chunk) must not make a shape's result change from call to call: under
// `always` every call of the shape gets it; `auto`, generic kernels and
// non-blocking runtimes (where AOT kernels serve some calls) keep the default
// order and agree with the AOT kernels bit for bit.
TEST(Jit, TunedSummationOrderIsTheSameOnEveryCallOfAShape) {
    TempDir dir;
    const std::string db = dir.path() + "/tuning.jsonl";
    const std::string target = Runtime(jit_options(Specialize::Never)).target();
    const int64_t rows = 64, cols = 3000;  // 192000 elements: bucket 18
    {
        std::ofstream out(db);
        out << "{\"format\":\"kldiv-tuning-1\",\"target\":\"" << target
            << "\",\"spec\":\"kldiv_fwd_sum_f64\",\"bucket\":18,\"elements\":192000,"
               "\"schedule\":\"cpu:vf=2,unroll=2,slf=8,chunk=512,cpt=4\",\"seconds\":1e-4,\"noise\":0.01,"
               "\"gbps\":20,\"default_gbps\":10,\"ceiling_read_gbps\":50,\"ceiling_copy_gbps\":50,"
               "\"date\":\"2026-11-25T00:00:00Z\",\"version\":\"test\"}\n";
    }
    Runtime aot(aot_only());
    Problem p(DType::Float64, false, rows, cols, 11);  // float64 output: a new order shows in its bits
    const std::vector<uint8_t> default_order = run_variant(aot, p, 1);

    RuntimeOptions o = jit_options(Specialize::Always);
    o.generic_from_aot = true;
    o.tuning_db = db;
    Runtime tuned(o);
    const std::vector<uint8_t> first = run_variant(tuned, p, 1);
    EXPECT_EQ(last_kernel().origin, KernelOrigin::Compiled);
    EXPECT_TRUE(last_kernel().specialised);
    EXPECT_EQ(last_kernel().schedule.rfind("tuned (" + db + ", 2^18 elements, 2.00x", 0), 0u) << last_kernel().schedule;
    EXPECT_FALSE(first == default_order) << "the record did not change the summation order: the test shows nothing";
    for (int call = 0; call < 4; call++) EXPECT_TRUE(run_variant(tuned, p, 1) == first) << "call " << call;

    // Shape-generic JIT kernels keep the default order.
    RuntimeOptions g = jit_options(Specialize::Never);
    g.tuning_db = db;
    Runtime generic(g);
    EXPECT_TRUE(run_variant(generic, p, 1) == default_order);
    EXPECT_NE(last_kernel().schedule.find("default summation order"), std::string::npos) << last_kernel().schedule;

    // Auto: AOT kernels serve the first calls, so the default order is kept.
    RuntimeOptions a = o;
    a.specialize = Specialize::Auto;
    a.specialize_work = 0;
    Runtime automatic(a);
    for (int call = 0; call < 4; call++) EXPECT_TRUE(run_variant(automatic, p, 1) == default_order) << "call " << call;
    EXPECT_TRUE(last_kernel().specialised);
    EXPECT_NE(last_kernel().schedule.find("default summation order"), std::string::npos) << last_kernel().schedule;

    // Non-blocking: AOT kernels serve until the compile is done; both agree.
    RuntimeOptions nb = a;
    nb.blocking = false;
    Runtime background(nb);
    bool compiled = false;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);  // a loaded machine
    for (int call = 0; !compiled && std::chrono::steady_clock::now() < deadline; call++) {
        EXPECT_TRUE(run_variant(background, p, 1) == default_order) << "call " << call;
        compiled = last_kernel().origin == KernelOrigin::Memory;
        if (!compiled) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_TRUE(compiled);
    EXPECT_NE(last_kernel().schedule.find("default summation order"), std::string::npos) << last_kernel().schedule;
}
