#include "orc.h"

#include <HalideRuntime.h>
#include <llvm/ExecutionEngine/Orc/ExecutionUtils.h>
#include <llvm/ExecutionEngine/Orc/LLJIT.h>
#include <llvm/Support/ErrorHandling.h>
#include <llvm/Support/MemoryBuffer.h>
#include <llvm/Support/TargetSelect.h>

#include <map>
#include <new>
#include <mutex>

#include "compile.h"
#include "cuda_device.h"
#include "errors.h"

namespace kldiv::runtime::jit {

namespace {

std::string message_of(llvm::Error error) { return llvm::toString(std::move(error)); }

// Per target: Halide's runtime, which every kernel's dylib links.
struct TargetDylibs {
    llvm::orc::JITDylib *runtime = nullptr;
    cuda::BufferFunctions buffers;  // CUDA targets
};

// Defines the 16-bit lookup tables that kernels declare
// (codegen::Tables::Process) when a kernel first refers to one: the tables
// take milliseconds to make, which a process without 16-bit kernels skips.
class LookupTables : public llvm::orc::DefinitionGenerator {
public:
    llvm::Error tryToGenerate(llvm::orc::LookupState &, llvm::orc::LookupKind, llvm::orc::JITDylib &dylib,
                              llvm::orc::JITDylibLookupFlags, const llvm::orc::SymbolLookupSet &symbols) override {
        llvm::orc::SymbolMap tables;
        for (const auto &[name, flags] : symbols) {
            if (const void *table = lookup_table((*name).str())) {
                tables[name] = llvm::JITEvaluatedSymbol(llvm::pointerToJITTargetAddress(table),
                                                        llvm::JITSymbolFlags::Exported);
            }
        }
        if (tables.empty()) return llvm::Error::success();
        return dylib.define(llvm::orc::absoluteSymbols(std::move(tables)));
    }
};

class Engine {
public:
    Engine() {
        // Out of memory inside LLVM becomes std::bad_alloc (reported as an
        // error by the caller) instead of an abort.
        llvm::install_bad_alloc_error_handler([](void *, const char *, bool) { throw std::bad_alloc(); });
        llvm::InitializeNativeTarget();
        llvm::InitializeNativeTargetAsmPrinter();
        auto jit = llvm::orc::LLJITBuilder().create();
        if (!jit) fail(ErrorCode::Internal, "cannot start the JIT: " + message_of(jit.takeError()));
        jit_ = std::move(*jit);
    }

    void ensure_runtime(const std::string &target, const std::function<std::string()> &runtime_object) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (targets_.count(target)) return;
        llvm::orc::ExecutionSession &session = jit_->getExecutionSession();
        auto process = llvm::orc::DynamicLibrarySearchGenerator::GetForCurrentProcess(
            jit_->getDataLayout().getGlobalPrefix());
        if (!process) fail(ErrorCode::Internal, "JIT: " + message_of(process.takeError()));
        auto runtime = session.createJITDylib("kldiv-runtime " + target);
        if (!runtime) fail(ErrorCode::Internal, "JIT: " + message_of(runtime.takeError()));
        runtime->addGenerator(std::move(*process));
        runtime->addGenerator(std::make_unique<LookupTables>());

        std::string object = runtime_object();
        if (llvm::Error e = jit_->addObjectFile(*runtime, llvm::MemoryBuffer::getMemBufferCopy(object, "halide_runtime"))) {
            fail(ErrorCode::Internal, "JIT: cannot load Halide's runtime for " + target + ": " + message_of(std::move(e)));
        }
        TargetDylibs dylibs{&*runtime};
        share_library_runtime(*runtime, target, dylibs);
        targets_[target] = dylibs;
    }

    // Each kernel gets a dylib of its own, linked to its target's runtime:
    // the same kernel may be loaded again (another runtime, or after an
    // eviction) while an older copy still runs, and removal is per kernel.
    std::shared_ptr<LoadedKernel> load_kernel(const std::string &target, const std::string &object,
                                              const std::string &function) {
        llvm::orc::ExecutionSession &session = jit_->getExecutionSession();
        llvm::orc::JITDylib *dylib;
        TargetDylibs runtime;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            auto it = targets_.find(target);
            if (it == targets_.end()) fail(ErrorCode::Internal, "JIT: no runtime loaded for " + target);
            runtime = it->second;
            dylib = &session.createBareJITDylib(function + " #" + std::to_string(next_dylib_++));
            dylib->addToLinkOrder(*runtime.runtime);
        }
        auto discard = [this, dylib] {
            llvm::consumeError(jit_->getExecutionSession().removeJITDylib(*dylib));
        };
        if (llvm::Error e = jit_->addObjectFile(*dylib, llvm::MemoryBuffer::getMemBufferCopy(object, function))) {
            discard();
            fail(ErrorCode::Internal, "JIT: cannot load kernel " + function + ": " + message_of(std::move(e)));
        }
        auto symbol = jit_->lookup(*dylib, function + "_argv");
        if (!symbol) {
            const std::string message = message_of(symbol.takeError());
            discard();
            fail(ErrorCode::Internal, "JIT: cannot link kernel " + function + ": " + message);
        }
        auto entry = reinterpret_cast<KernelEntry>(static_cast<uintptr_t>(symbol->getAddress()));
        auto kernel = std::make_shared<LoadedKernel>(entry, object.size(), discard);
        kernel->buffers = runtime.buffers;
        return kernel;
    }

private:
    // JIT kernels run on the library's thread pool (one per process) and
    // report errors through the library's handler. A CUDA runtime takes the
    // library's context and stream hooks (one primary context per GPU, the
    // caller's stream), and its buffer functions are kept for calls.
    void share_library_runtime(llvm::orc::JITDylib &runtime, const std::string &target, TargetDylibs &dylibs) {
        auto find = [&](const char *name) {
            auto symbol = jit_->lookup(runtime, name);
            if (!symbol) fail(ErrorCode::Internal, "JIT: Halide's runtime for " + target + " lacks " + name + ": " +
                                                       message_of(symbol.takeError()));
            return static_cast<uintptr_t>(symbol->getAddress());
        };
        using SetParallel = void (*)(halide_do_par_for_t, halide_do_task_t, halide_do_loop_task_t,
                                     halide_do_parallel_tasks_t, halide_semaphore_init_t,
                                     halide_semaphore_try_acquire_t, halide_semaphore_release_t);
        using SetError = halide_error_handler_t (*)(halide_error_handler_t);
        reinterpret_cast<SetParallel>(find("halide_set_custom_parallel_runtime"))(
            halide_do_par_for, halide_do_task, halide_do_loop_task, halide_do_parallel_tasks, halide_semaphore_init,
            halide_semaphore_try_acquire, halide_semaphore_release);
        reinterpret_cast<SetError>(find("halide_set_error_handler"))(record_kernel_error);
        if (target.find("-cuda") == std::string::npos) return;
        cuda::RuntimeSetters setters;
        setters.set_acquire_context = reinterpret_cast<decltype(setters.set_acquire_context)>(
            find("halide_set_cuda_acquire_context"));
        setters.set_release_context = reinterpret_cast<decltype(setters.set_release_context)>(
            find("halide_set_cuda_release_context"));
        setters.set_get_stream = reinterpret_cast<decltype(setters.set_get_stream)>(find("halide_set_cuda_get_stream"));
        setters.reuse_device_allocations = reinterpret_cast<decltype(setters.reuse_device_allocations)>(
            find("halide_reuse_device_allocations"));
        cuda::install_hooks(setters);
        cuda::BufferFunctions &buffers = dylibs.buffers;
        buffers.wrap = reinterpret_cast<decltype(buffers.wrap)>(find("halide_cuda_wrap_device_ptr"));
        buffers.detach = reinterpret_cast<decltype(buffers.detach)>(find("halide_cuda_detach_device_ptr"));
    }

    std::unique_ptr<llvm::orc::LLJIT> jit_;
    std::mutex mutex_;
    std::map<std::string, TargetDylibs> targets_;
    uint64_t next_dylib_ = 0;
};

// One engine per process, never destroyed: kernels may outlive any static.
Engine &engine() {
    static Engine *instance = new Engine();
    return *instance;
}

}  // namespace

void ensure_runtime(const std::string &target, const std::function<std::string()> &runtime_object) {
    engine().ensure_runtime(target, runtime_object);
}

std::shared_ptr<LoadedKernel> load_kernel(const std::string &target, const std::string &object,
                                          const std::string &function) {
    return engine().load_kernel(target, object, function);
}

}  // namespace kldiv::runtime::jit
