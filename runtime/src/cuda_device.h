// CUDA tensors: the driver, the primary context of the tensors' GPU, the
// caller's stream, and Halide's CUDA runtime hooks. The driver is loaded at
// run time (libcuda.so.1), so the library needs no CUDA to build or to load,
// and a machine without a GPU gets an error for a CUDA tensor, not a crash.
#pragma once

#include <HalideRuntime.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kldiv/kldiv.hpp"
#include "tensor_view.h"

namespace kldiv::runtime::cuda {

// Whether this build carries CUDA kernels.
bool built_with_cuda();

// The device and primary context of CUDA tensors (those with data).
struct Placement {
    int ordinal = -1;
    void *context = nullptr;  // CUcontext: the device's primary context
};

// Checks that every named tensor with elements holds device memory of one
// GPU (throws kldiv::Error with ErrorCode::Device otherwise), and returns that
// GPU's primary context, retained for the life of the process.
Placement place(NamedViews tensors);

// The stream of a call made now on this thread with `runtime_stream` as the
// runtime's own: the thread's stream when one is set, else the runtime's.
void *call_stream(void *runtime_stream);

// While alive, Halide's CUDA hooks give kernels run on this thread
// `placement`'s context and `stream`.
class Scope {
public:
    Scope(const Placement &placement, void *stream);
    ~Scope();
    Scope(const Scope &) = delete;
    Scope &operator=(const Scope &) = delete;

private:
    void *context_, *stream_;
    const Scope *previous_;
    friend struct Hooks;
};

// A Halide CUDA runtime's entry points for caller memory: the library's own
// (AOT kernels) or the one the JIT loaded (JIT kernels). A kernel's buffers
// must be wrapped by the runtime it links.
struct BufferFunctions {
    int (*wrap)(void *, halide_buffer_t *, uint64_t) = nullptr;
    int (*detach)(void *, halide_buffer_t *) = nullptr;
};

// The library's Halide CUDA runtime (null functions in a build without CUDA).
BufferFunctions library_buffer_functions();

// Gives a Halide CUDA runtime this file's context and stream hooks and
// device-allocation reuse, through its setter functions.
// (The hook types of HalideRuntimeCuda.h, which builds without CUDA lack.)
using AcquireContext = int (*)(void *, void **, bool);
using ReleaseContext = int (*)(void *);
using GetStream = int (*)(void *, void *, void **);
struct RuntimeSetters {
    AcquireContext (*set_acquire_context)(AcquireContext) = nullptr;
    ReleaseContext (*set_release_context)(ReleaseContext) = nullptr;
    GetStream (*set_get_stream)(GetStream) = nullptr;
    int (*reuse_device_allocations)(void *, bool) = nullptr;
};
void install_hooks(const RuntimeSetters &setters);

// Copies `bytes` host bytes to device memory `dst`, ordered on the scope's
// stream (results of calls with no elements: one scalar).
void copy_to_device(void *dst, const void *src, size_t bytes);

// Waits until the work queued so far on the scope's stream is done (before
// results the host reads back).
void wait_for_call_stream();

// GPU 0, for tools that run kernels on data of their own (kldiv tune): its
// primary context and name, device memory in that context, synchronous
// copies, and waiting for everything queued there. Each throws kldiv::Error
// (ErrorCode::Device) saying why when CUDA cannot be used.
struct Gpu {
    Placement placement;
    std::string name;  // e.g. "NVIDIA H200"
};
Gpu first_gpu();
void *device_alloc(size_t bytes);
void device_free(void *data);  // null does nothing
void copy_host_to_device(void *dst, const void *src, size_t bytes);
void copy_device_to_host(void *dst, const void *src, size_t bytes);
void copy_device_to_device(void *dst, const void *src, size_t bytes);  // queued on the legacy default stream
void synchronize();

// Thread stream for this thread's CUDA calls (kldiv::set_thread_cuda_stream).
void set_thread_stream(void *stream);
void clear_thread_stream();
std::optional<void *> thread_stream();

}  // namespace kldiv::runtime::cuda
