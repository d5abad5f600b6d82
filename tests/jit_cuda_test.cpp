// The JIT's CUDA path without a GPU: CUDA kernels compile (PTX inside the
// host object), link against the JIT's Halide CUDA runtime, and come with that
// runtime's buffer functions. Running them needs a GPU (cuda_test).
#include <gtest/gtest.h>

#include "jit/compile.h"
#include "jit/orc.h"
#include "kldiv/codegen/kernel_spec.h"
#include "kldiv/schedules/params.h"

namespace {

using kldiv::codegen::KernelSpec;
using kldiv::codegen::Pass;
namespace jit = kldiv::runtime::jit;

TEST(JitCuda, CudaKernelsCompileAndLinkAgainstTheJitsCudaRuntime) {
    const std::string target = jit::resolve_target(KLDIV_CUDA_JIT_TARGET, "", true);
    ASSERT_NE(target.find("cuda"), std::string::npos) << target;
    jit::ensure_runtime(target, [&] { return jit::compile_runtime(target); });
    const kldiv::schedules::Params params = kldiv::schedules::default_params(target);
    int n = 0;
    for (const KernelSpec &spec : {KernelSpec{Pass::Forward, kldiv::DType::Float32, false, true, false, false, true},
                                   KernelSpec{Pass::Fused, kldiv::DType::BFloat16, true, false, true, false, true},
                                   KernelSpec{Pass::Backward, kldiv::DType::Float64, false, true, true, true, true}}) {
        const std::string function = "jit_cuda_test_" + std::to_string(n++);
        const std::string object = jit::compile_kernel(spec, std::nullopt, target, params, function, "",
                                                       kldiv::codegen::InnerStride::Unit);
        EXPECT_NE(object.find(".target sm_80"), std::string::npos) << spec.name() << ": no sm_80 PTX in the object";
        EXPECT_NE(object.find(".entry "), std::string::npos) << spec.name();
        const auto kernel = jit::load_kernel(target, object, function);
        EXPECT_NE(kernel->entry, nullptr) << spec.name();
        EXPECT_NE(kernel->buffers.wrap, nullptr) << spec.name();
        EXPECT_NE(kernel->buffers.detach, nullptr) << spec.name();
    }
    // A shape-specialised one.
    const KernelSpec sum{Pass::Forward, kldiv::DType::Float32, false, true, false, false, true};
    jit::FixedShape shape;
    shape.extent = {32768, 32, 1, 1};
    shape.strides = {{1, 32768, 0, 0}, {1, 32768, 0, 0}};
    const std::string object = jit::compile_kernel(sum, shape, target, params, "jit_cuda_test_fixed");
    EXPECT_NE(jit::load_kernel(target, object, "jit_cuda_test_fixed")->entry, nullptr);

    // Aligned twins, generic and for one contiguous run (as the dispatcher
    // passes it: dimensions 1 to 3 of extent 1 and stride 0), load 8 or 16
    // bytes at a time: a bfloat16 sum, and a float32 fused `none` (two outputs).
    KernelSpec sum16{Pass::Forward, kldiv::DType::BFloat16, false, true, false, false, true};
    KernelSpec fused{Pass::Fused, kldiv::DType::Float32, false, false, true, false, true};
    for (KernelSpec aligned : {sum16, fused}) {
        aligned.aligned = true;
        const size_t buffers = aligned.reduce ? 2 : 4;
        jit::FixedShape run;
        run.extent = {1 << 20, 1, 1, 1};
        run.strides.assign(buffers, {1, 0, 0, 0});
        const std::string loads = aligned.reduce ? "ld.global.nc.v4.u16" : "ld.global.v4.f32";
        for (const auto &shape : {std::optional<jit::FixedShape>(), std::optional<jit::FixedShape>(run)}) {
            const std::string function = "jit_cuda_test_" + aligned.name() + (shape ? "_fixed" : "");
            const std::string code = jit::compile_kernel(aligned, shape, target, params, function);
            EXPECT_NE(code.find(loads), std::string::npos) << function << ": no vector loads";
            EXPECT_NE(jit::load_kernel(target, code, function)->entry, nullptr) << function;
        }
    }
}

TEST(JitCuda, OtherGpuApisAreRefused) {
    EXPECT_ANY_THROW(jit::resolve_target("x86-64-linux-opencl", "", true));
    // And no GPU target is a runtime's CPU target.
    EXPECT_ANY_THROW(jit::resolve_target(KLDIV_CUDA_JIT_TARGET));
}

}  // namespace
