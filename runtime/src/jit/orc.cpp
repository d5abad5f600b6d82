#include "orc.h"

#include <HalideRuntime.h>
#include <llvm/ExecutionEngine/Orc/ExecutionUtils.h>
#include <llvm/ExecutionEngine/Orc/LLJIT.h>
#include <llvm/ExecutionEngine/Orc/RTDyldObjectLinkingLayer.h>
#include <llvm/ExecutionEngine/SectionMemoryManager.h>
#include <llvm/Support/ErrorHandling.h>
#include <llvm/Support/MemoryBuffer.h>
#include <llvm/Support/TargetSelect.h>

#include <sys/mman.h>
#include <unistd.h>

#include <iterator>
#include <map>
#include <new>
#include <mutex>
#include <system_error>

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

// Every section the JIT loads, in one range of address space reserved up
// front. Halide's objects use the small code model: a kernel's code reaches
// its constants and GOT through 32-bit PC-relative offsets, so all sections of
// one object must lie within 2 GiB of each other. Separate mmap calls promise
// nothing of the kind (under an emulator, code and data pages of one kernel
// landed terabytes apart and the kernel crashed on its first load).
class Arena : public llvm::SectionMemoryManager::MemoryMapper {
public:
    // 1 GiB, or less where the process may not map that much (ulimit -v).
    Arena() : page_(static_cast<size_t>(sysconf(_SC_PAGESIZE))) {
        for (size_t bytes = size_t{1} << 30; bytes >= size_t{1} << 26 && base_ == nullptr; bytes /= 4) {
            void *base = mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (base == MAP_FAILED) continue;
            base_ = static_cast<char *>(base);
            free_[0] = bytes;
        }
        if (base_ == nullptr) fail(ErrorCode::Internal, "cannot reserve address space for the JIT's code");
    }

    llvm::sys::MemoryBlock allocateMappedMemory(llvm::SectionMemoryManager::AllocationPurpose, size_t bytes,
                                                const llvm::sys::MemoryBlock *, unsigned flags,
                                                std::error_code &error) override {
        const size_t size = (bytes + page_ - 1) / page_ * page_;
        std::lock_guard<std::mutex> lock(mutex_);
        for (auto it = free_.begin(); it != free_.end(); ++it) {
            if (it->second < size) continue;
            const size_t offset = it->first;
            const size_t rest = it->second - size;
            free_.erase(it);
            if (rest) free_[offset + size] = rest;
            void *address = base_ + offset;
            if (mmap(address, size, protection(flags), MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED) {
                error = std::error_code(errno, std::generic_category());
                give_back(offset, size);
                return {};
            }
            error = {};
            return llvm::sys::MemoryBlock(address, size);
        }
        error = std::make_error_code(std::errc::not_enough_memory);
        return {};
    }

    std::error_code protectMappedMemory(const llvm::sys::MemoryBlock &block, unsigned flags) override {
        return llvm::sys::Memory::protectMappedMemory(block, flags);
    }

    std::error_code releaseMappedMemory(llvm::sys::MemoryBlock &block) override {
        if (block.base() == nullptr) return {};
        // Back to reserved, unbacked address space.
        if (mmap(block.base(), block.allocatedSize(), PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == MAP_FAILED) {
            return std::error_code(errno, std::generic_category());
        }
        std::lock_guard<std::mutex> lock(mutex_);
        give_back(static_cast<size_t>(static_cast<char *>(block.base()) - base_), block.allocatedSize());
        block = llvm::sys::MemoryBlock();
        return {};
    }

private:
    static int protection(unsigned flags) {
        return ((flags & llvm::sys::Memory::MF_READ) ? PROT_READ : 0) |
               ((flags & llvm::sys::Memory::MF_WRITE) ? PROT_WRITE : 0) |
               ((flags & llvm::sys::Memory::MF_EXEC) ? PROT_EXEC : 0);
    }

    // Returns a range to the free list, merged with its free neighbours.
    void give_back(size_t offset, size_t size) {
        auto next = free_.lower_bound(offset);
        if (next != free_.end() && offset + size == next->first) {
            size += next->second;
            next = free_.erase(next);
        }
        if (next != free_.begin()) {
            auto previous = std::prev(next);
            if (previous->first + previous->second == offset) {
                previous->second += size;
                return;
            }
        }
        free_[offset] = size;
    }

    const size_t page_;
    char *base_ = nullptr;
    std::mutex mutex_;
    std::map<size_t, size_t> free_;  // offset -> size, in bytes
};

class Engine {
public:
    Engine() {
        // Out of memory inside LLVM becomes std::bad_alloc (reported as an
        // error by the caller) instead of an abort.
        llvm::install_bad_alloc_error_handler([](void *, const char *, bool) { throw std::bad_alloc(); });
        llvm::InitializeNativeTarget();
        llvm::InitializeNativeTargetAsmPrinter();
        auto jit = llvm::orc::LLJITBuilder()
                       .setObjectLinkingLayerCreator([this](llvm::orc::ExecutionSession &session, const llvm::Triple &) {
                           auto memory = [this] { return std::make_unique<llvm::SectionMemoryManager>(&arena_); };
                           return std::make_unique<llvm::orc::RTDyldObjectLinkingLayer>(session, memory);
                       })
                       .create();
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

    Arena arena_;
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
