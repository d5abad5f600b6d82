#include "compile.h"

#include <Halide.h>
#include <llvm/Config/llvm-config.h>
#include <llvm/IR/LLVMContext.h>
#include <llvm/IR/Module.h>
#include <llvm/Support/raw_ostream.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <fstream>
#include <mutex>
#include <sstream>

#include "errors.h"
#include "kldiv/codegen/build.h"
#include "kldiv/codegen/math_code.h"

namespace kldiv::runtime::jit {

using codegen::Argument;
using codegen::KernelSpec;

namespace {

// A private directory in the temporary one, removed with what is in it when
// it goes out of scope: Halide writes its standalone runtime to a file, and a
// process must leave nothing behind.
class ScratchDir {
public:
    ScratchDir() {
        std::string pattern = (std::filesystem::temp_directory_path() / "kldiv-jit-XXXXXX").string();
        if (mkdtemp(pattern.data()) == nullptr) fail(ErrorCode::Internal, "cannot create a temporary directory for the JIT");
        path_ = pattern;
    }
    ~ScratchDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path_, ignored);
    }
    ScratchDir(const ScratchDir &) = delete;
    ScratchDir &operator=(const ScratchDir &) = delete;
    std::string file(const std::string &name) const { return path_ + "/" + name; }

private:
    std::string path_;
};

std::string read_file(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream bytes;
    bytes << in.rdbuf();
    if (!in) fail(ErrorCode::Internal, "cannot read the JIT's object file " + path);
    return bytes.str();
}

}  // namespace

std::string resolve_target(const std::string &name, const std::string &cpu_level, bool gpu) {
    const Halide::Target host = codegen::host_target();
    const bool is_host = name.empty() || name == "host";
    Halide::Target target;
    try {
        target = codegen::named_target(is_host ? "host" : name);
    } catch (const std::invalid_argument &) {
        fail(ErrorCode::InvalidArgument, "unknown target '" + name + "' (a Halide target string, or 'host')");
    }
    if (is_host && !cpu_level.empty()) target = codegen::cap_x86_level(target, cpu_level);
    // JIT kernels run in this process: same architecture, no instruction the
    // CPU lacks. Other machines get kernels from `kldiv aot`.
    const std::string cannot = "target '" + name + "' cannot run in this process (this machine is " +
                               host.to_string() + "); build kernels for it with 'kldiv aot'";
    if (target.arch != host.arch || target.bits != host.bits || target.os != host.os) {
        fail(ErrorCode::InvalidArgument, cannot);
    }
    using F = Halide::Target::Feature;
    for (F isa : {F::SSE41, F::AVX, F::AVX2, F::FMA, F::FMA4, F::F16C, F::AVX512, F::AVX512_KNL, F::AVX512_Skylake,
                  F::AVX512_Cannonlake, F::AVX512_SapphireRapids, F::ARMv7s, F::ARMDotProd, F::ARMFp16, F::SVE,
                  F::SVE2, F::ARMv81a, F::VSX, F::POWER_ARCH_2_07, F::RVV}) {
        if (target.has_feature(isa) && !host.has_feature(isa)) fail(ErrorCode::InvalidArgument, cannot);
    }
    if (target.has_gpu_feature() && !gpu) {
        fail(ErrorCode::InvalidArgument,
             "target '" + name + "' has a GPU feature: the JIT's target is for this CPU's kernels (CUDA kernels "
             "are compiled when RuntimeOptions::cuda_jit or KLDIV_CUDA_JIT=on asks for them); build kernels for "
             "other devices with 'kldiv aot'");
    }
    if (target.has_gpu_feature() && !target.has_feature(Halide::Target::CUDA)) {
        fail(ErrorCode::InvalidArgument, "target '" + name + "': the JIT compiles CPU and CUDA kernels only");
    }
    return target.without_feature(Halide::Target::NoRuntime).without_feature(Halide::Target::UserContext).to_string();
}

namespace {

// The target of a JIT kernel: the runtime never asks a kernel for bounds
// (every buffer it passes has memory), and it is a JIT kernel's only caller:
// it checks dtypes, shapes, strides and sizes before a call and picks the
// kernel by them (layout.cpp, kernel_cache.cpp, distill.cpp). So JIT kernels
// leave out the bounds query and Halide's argument checks, which are a third
// of their code and of their compile time. AOT kernels, which programs may
// call directly, keep their checks.
Halide::Target jit_kernel_target(const std::string &target_name) {
    return codegen::with_kernel_features(Halide::Target(target_name))
        .with_feature(Halide::Target::NoRuntime)
        .with_feature(Halide::Target::UserContext)
        .with_feature(Halide::Target::NoBoundsQuery)
        .with_feature(Halide::Target::NoAsserts);
}

// `make_module()` lowered, then compiled to an ELF object in memory (what
// Module::compile does for an object file, in timed steps); Halide's and
// LLVM's failures become kldiv::Error naming `name` and the target.
std::string compile_object(const std::string &name, const std::string &target_name,
                           const std::function<Halide::Module()> &make_module, CompileTimes *times) {
    try {
        using Clock = std::chrono::steady_clock;
        auto since = [](Clock::time_point start) {
            return std::chrono::duration<double>(Clock::now() - start).count();
        };
        CompileTimes phases;
        auto start = Clock::now();
        const Halide::Module module = make_module();
        phases.lower = since(start);
        start = Clock::now();
        llvm::LLVMContext context;
        std::unique_ptr<llvm::Module> llvm_module = Halide::compile_module_to_llvm_module(module, context);
        phases.llvm_ir = since(start);
        start = Clock::now();
        llvm::SmallVector<char, 0> object;
        llvm::raw_svector_ostream stream(object);
        Halide::compile_llvm_module_to_object(*llvm_module, stream);
        phases.machine_code = since(start);
        if (times) *times = phases;
        return std::string(object.begin(), object.end());
    } catch (const Error &) {
        throw;
    } catch (const Halide::Error &e) {
        fail(ErrorCode::Internal, "compiling kernel " + name + " for " + target_name + " failed: " + e.what());
    } catch (const std::bad_alloc &) {
        fail(ErrorCode::Internal, "out of memory while compiling kernel " + name + " for " + target_name);
    } catch (const std::exception &e) {
        fail(ErrorCode::Internal, "compiling kernel " + name + " for " + target_name + " failed: " + e.what());
    }
}

}  // namespace

std::string compile_kernel(const KernelSpec &spec, const std::optional<FixedShape> &shape,
                           const std::string &target_name, const schedules::Params &params, const std::string &function,
                           const std::string &autoscheduler, codegen::InnerStride inner_stride, CompileTimes *times) {
    return compile_object(spec.name(), target_name, [&] {
        return codegen::compile_module(spec, shape, params, jit_kernel_target(target_name), function, autoscheduler,
                                       inner_stride, codegen::Tables::Process);
    }, times);
}

std::string compile_distill_kernel(const codegen::DistillSpec &spec, std::optional<int32_t> vocab,
                                   codegen::InnerStride inner_stride, const std::string &target_name,
                                   const schedules::Params &params, const std::string &function, CompileTimes *times) {
    return compile_object(spec.name(), target_name, [&] {
        return codegen::compile_distill_module(spec, jit_kernel_target(target_name), function, params.distill, vocab,
                                               inner_stride);
    }, times);
}

const void *lookup_table(const std::string &symbol) {
    for (const auto &[lookup, dtype] : codegen::all_lookup_tables()) {
        if (codegen::lookup_table_symbol(lookup, dtype) == symbol) return codegen::lookup_table(lookup, dtype).data();
    }
    return nullptr;
}

std::string compile_runtime(const std::string &target_name) {
    try {
        const ScratchDir scratch;
        const std::string path = scratch.file("halide_runtime.o");
        Halide::compile_standalone_runtime(path, Halide::Target(target_name));
        return read_file(path);
    } catch (const Error &) {
        throw;
    } catch (const std::exception &e) {
        fail(ErrorCode::Internal, "compiling the Halide runtime for " + target_name + " failed: " + e.what());
    }
}

std::string toolchain_version() {
    return std::string("halide-") + KLDIV_HALIDE_VERSION + " llvm-" + LLVM_VERSION_STRING;
}

}  // namespace kldiv::runtime::jit
