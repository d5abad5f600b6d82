// Distillation kernels from the JIT (kldiv::Runtime's distill_kl and the
// others): shape-generic and vocabulary-specialised kernels, unit-stride and
// strided, with tuned records, give the AOT kernels' bits; `auto`
// specialises a vocabulary once its calls repay a compile.
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kldiv/kldiv.hpp"
#include "test_support.h"

using namespace kldiv;
using kldiv_test::TempDir;

namespace {

RuntimeOptions aot_only() {
    RuntimeOptions o;
    o.jit = false;
    return o;
}

RuntimeOptions jit_options(Specialize specialize) {
    RuntimeOptions o;
    o.cache_dir = "off";
    o.specialize = specialize;
    o.generic_from_aot = false;
    o.target = cpu_target();  // the AOT kernels' feature level: the same schedule, the same code
    return o;
}

kldiv_dtype c_dtype(DType d) {
    switch (d) {
    case DType::Float32: return KLDIV_FLOAT32;
    case DType::Float64: return KLDIV_FLOAT64;
    case DType::Float16: return KLDIV_FLOAT16;
    case DType::BFloat16: return KLDIV_BFLOAT16;
    }
    return KLDIV_FLOAT32;
}

// Logits of `rows` x `vocab`, every `step`-th element of a row used (step 2:
// a strided view), spread 3 with a few large ones and a suppressed token.
struct Logits {
    std::vector<unsigned char> bytes;
    Tensor tensor;

    Logits(DType dtype, int64_t rows, int64_t vocab, int64_t step, uint64_t seed) {
        std::mt19937_64 rng(seed);
        std::normal_distribution<double> normal(0.0, 3.0);
        std::vector<double> values((size_t)(rows * vocab * step));
        for (size_t i = 0; i < values.size(); i++) values[i] = i % 101 == 7 ? 25.0 : normal(rng);
        values[3 * step] = -std::numeric_limits<double>::infinity();
        bytes = kldiv_test::HostTensor::from_values(c_dtype(dtype), {rows, vocab * step}, values).bytes;
        tensor = Tensor::contiguous(bytes.data(), dtype, {rows, vocab});
        tensor.strides = {vocab * step, step};
    }
};

struct Output {
    std::vector<unsigned char> bytes;
    Tensor tensor;
    Output(DType dtype, std::vector<int64_t> sizes) {
        int64_t n = 1;
        for (int64_t s : sizes) n *= s;
        bytes.assign((size_t)(std::max<int64_t>(n, 1) * kldiv_test::dtype_bytes(c_dtype(dtype))), 0xA5);
        tensor = Tensor::contiguous(bytes.data(), dtype, sizes);
    }
};

// Every output of the forward, fused and backward (both gradients) calls on
// one problem, as bytes.
struct Results {
    std::vector<unsigned char> loss, fused_loss, grad, grad_student, grad_teacher;
    std::vector<double> stats;
    bool operator==(const Results &o) const {
        return loss == o.loss && fused_loss == o.fused_loss && grad == o.grad && grad_student == o.grad_student &&
               grad_teacher == o.grad_teacher && stats == o.stats;
    }
};

Results run_all(Runtime &runtime, DType dtype, int64_t rows, int64_t vocab, int64_t step, bool reverse) {
    const Logits student(dtype, rows, vocab, step, 11 + vocab), teacher(dtype, rows, vocab, step, 23 + vocab);
    DistillOptions options;
    options.temperature = 2.0;
    options.reverse = reverse;
    Results r;
    r.stats.assign((size_t)(rows * kDistillStatsPerRow), 0.0);
    Output loss(dtype, {}), fused_loss(dtype, {}), grad(dtype, {rows, vocab}), gs(dtype, {rows, vocab}),
        gt(dtype, {rows, vocab}), upstream(dtype, {});
    runtime.distill_kl(student.tensor, teacher.tensor, loss.tensor, options, r.stats.data());
    runtime.distill_kl_forward_backward(student.tensor, teacher.tensor, fused_loss.tensor, grad.tensor, options);
    upstream.bytes = kldiv_test::HostTensor::from_values(c_dtype(dtype), {}, {1.5}).bytes;
    upstream.tensor.data = upstream.bytes.data();
    runtime.distill_kl_backward(upstream.tensor, student.tensor, teacher.tensor, options, r.stats.data(), &gs.tensor,
                                &gt.tensor);
    r.loss = loss.bytes;
    r.fused_loss = fused_loss.bytes;
    r.grad = grad.bytes;
    r.grad_student = gs.bytes;
    r.grad_teacher = gt.bytes;
    return r;
}

class DistillJit : public ::testing::Test {
protected:
    void SetUp() override {
        if (std::string why = kldiv_test::cpu_level_unavailable(); !why.empty()) GTEST_SKIP() << why;
    }
};

}  // namespace

TEST_F(DistillJit, GenericAndSpecialisedKernelsMatchAotBitForBit) {
    Runtime aot(aot_only()), generic(jit_options(Specialize::Never)), fixed(jit_options(Specialize::Always));
    const DType dtypes[] = {DType::Float32, DType::Float64, DType::Float16, DType::BFloat16};
    for (DType dtype : dtypes) {
        for (int64_t step : {1, 2}) {
            const bool reverse = step == 2;
            SCOPED_TRACE(std::string(kldiv_test::dtype_name(c_dtype(dtype))) + (step == 2 ? " strided reverse" : ""));
            // 3000: a block and a partial one; rows not a multiple of a task.
            const Results expected = run_all(aot, dtype, 7, 3000, step, reverse);
            EXPECT_EQ(last_kernel().origin, KernelOrigin::Aot);
            const Results g = run_all(generic, dtype, 7, 3000, step, reverse);
            EXPECT_EQ(last_kernel().origin, KernelOrigin::Compiled);
            EXPECT_FALSE(last_kernel().specialised);
            const Results f = run_all(fixed, dtype, 7, 3000, step, reverse);
            EXPECT_EQ(last_kernel().origin, KernelOrigin::Compiled);
            EXPECT_TRUE(last_kernel().specialised);
            EXPECT_NE(last_kernel().name.find("_bwd_st_" + std::string(reverse ? "rkl_" : "kl_")), std::string::npos)
                << last_kernel().name;
            EXPECT_NE(last_kernel().name.find(" [3000]"), std::string::npos) << last_kernel().name;
            EXPECT_TRUE(g == expected);
            EXPECT_TRUE(f == expected);
        }
    }
    // Three kernels (forward, fused, backward) a case: generic ones per
    // inner stride, specialised ones per vocabulary and inner stride.
    EXPECT_EQ(generic.stats().compiles, 24u);
    EXPECT_EQ(fixed.stats().compiles, 24u);
    // Small rows go through padded copies of kDistillLanes logits.
    const Results small = run_all(fixed, DType::Float32, 3, 5, 1, false);
    EXPECT_NE(last_kernel().name.find(" [32]"), std::string::npos) << last_kernel().name;
    EXPECT_TRUE(small == run_all(aot, DType::Float32, 3, 5, 1, false));
}

// A record tuned for a distillation kernel (by vocabulary bucket) is used by
// the JIT's kernels, and changes no bit: its parameters never change the
// order of a sum.
TEST_F(DistillJit, TunedRecordsAreUsedAndChangeNoBits) {
    TempDir dir;
    const std::string db = dir.path() + "/tuning.jsonl";
    const std::string target = Runtime(jit_options(Specialize::Never)).target();
    {
        std::ofstream out(db);
        for (const char *spec : {"kldiv_distill_fwd_kl_bf16", "kldiv_distill_fused_kl_bf16",
                                 "kldiv_distill_bwd_st_kl_bf16"}) {
            out << "{\"format\":\"kldiv-tuning-1\",\"target\":\"" << target << "\",\"spec\":\"" << spec
                << "\",\"bucket\":12,\"elements\":4000,"
                   "\"schedule\":\"distill:gvf=4,lu=4,rpt=3\",\"seconds\":1e-3,\"noise\":0.01,"
                   "\"gbps\":2,\"default_gbps\":1,\"ceiling_read_gbps\":50,\"ceiling_copy_gbps\":50,"
                   "\"date\":\"2026-12-01T00:00:00Z\",\"version\":\"test\"}\n";
        }
    }
    Runtime aot(aot_only());
    const Results expected = run_all(aot, DType::BFloat16, 10, 4000, 1, false);
    RuntimeOptions o = jit_options(Specialize::Always);
    o.tuning_db = db;
    Runtime tuned(o);
    EXPECT_TRUE(run_all(tuned, DType::BFloat16, 10, 4000, 1, false) == expected);
    EXPECT_EQ(last_kernel().schedule.rfind("tuned (" + db + ", 2^12 logits a row, 2.00x", 0), 0u)
        << last_kernel().schedule;
    // A generic kernel takes the record nearest 2^15 logits a row: this one.
    RuntimeOptions g = o;
    g.specialize = Specialize::Never;
    Runtime generic(g);
    EXPECT_TRUE(run_all(generic, DType::BFloat16, 10, 4000, 1, false) == expected);
    EXPECT_EQ(last_kernel().schedule.rfind("tuned (", 0), 0u) << last_kernel().schedule;
    EXPECT_FALSE(last_kernel().specialised);
}

// `auto`: AOT kernels serve a vocabulary until its calls have covered the
// work a compile repays; then one kernel fixed to it serves every row count.
TEST_F(DistillJit, AutoSpecialisesARepeatedVocabulary) {
    RuntimeOptions o = jit_options(Specialize::Auto);
    o.generic_from_aot = true;
    o.specialize_after = 3;
    o.specialize_work = 0;
    Runtime runtime(o);
    Runtime aot(aot_only());
    const Logits student(DType::Float32, 6, 2500, 1, 1), teacher(DType::Float32, 6, 2500, 1, 2);
    std::vector<KernelOrigin> origins;
    for (int call = 0; call < 5; call++) {
        Output mine(DType::Float32, {}), theirs(DType::Float32, {});
        Tensor s = student.tensor, t = teacher.tensor;
        s.sizes[0] = t.sizes[0] = 1 + call;  // the rows change, the vocabulary does not
        runtime.distill_kl(s, t, mine.tensor);
        origins.push_back(last_kernel().origin);
        aot.distill_kl(s, t, theirs.tensor);
        EXPECT_EQ(mine.bytes, theirs.bytes) << "call " << call;
    }
    EXPECT_EQ(origins, (std::vector<KernelOrigin>{KernelOrigin::Aot, KernelOrigin::Aot, KernelOrigin::Compiled,
                                                  KernelOrigin::Memory, KernelOrigin::Memory}));
    EXPECT_EQ(runtime.stats().compiles, 1u);
}
