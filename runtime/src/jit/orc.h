// The process's LLVM ORC engine: Halide's runtime once per target, and kernels
// linked against it. No LLVM in this header.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "cuda_device.h"

namespace kldiv::runtime::jit {

using KernelEntry = int (*)(void **);

// A kernel in the JIT's memory. Its code is removed when the last holder lets
// go, so a kernel evicted from a cache stays valid for calls in flight.
class LoadedKernel {
public:
    LoadedKernel(KernelEntry entry, size_t code_bytes, std::function<void()> release)
        : entry(entry), code_bytes(code_bytes), release_(std::move(release)) {}
    ~LoadedKernel() { release_(); }
    LoadedKernel(const LoadedKernel &) = delete;
    LoadedKernel &operator=(const LoadedKernel &) = delete;

    const KernelEntry entry;
    const size_t code_bytes;
    // CUDA kernels: their runtime's buffer functions (buffers must be
    // wrapped by the runtime the kernel links).
    cuda::BufferFunctions buffers;

private:
    std::function<void()> release_;
};

// Loads Halide's runtime for `target` unless it is loaded: `runtime_object`
// is called only then. JIT kernels share the library's thread pool and error
// handler. Thread-safe; throws kldiv::Error.
void ensure_runtime(const std::string &target, const std::function<std::string()> &runtime_object);

// Links an object compiled for `target` (its runtime loaded) and finds
// `<function>_argv`. Thread-safe; throws kldiv::Error.
std::shared_ptr<LoadedKernel> load_kernel(const std::string &target, const std::string &object,
                                          const std::string &function);

}  // namespace kldiv::runtime::jit
