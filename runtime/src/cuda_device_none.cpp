// A build without CUDA kernels: CUDA tensors are refused with a clear error.
#include "cuda_device.h"

#include "errors.h"

namespace kldiv::runtime::cuda {

bool built_with_cuda() { return false; }

Placement place(NamedViews) {
    fail(ErrorCode::Device, "CUDA tensors given, but this build of kldiv has no CUDA kernels (KLDIV_CUDA=OFF)");
}

void *call_stream(void *runtime_stream) { return runtime_stream; }
Scope::Scope(const Placement &, void *) : context_(nullptr), stream_(nullptr), previous_(nullptr) {}
Scope::~Scope() = default;
BufferFunctions library_buffer_functions() { return {}; }
void install_hooks(const RuntimeSetters &) {}
void copy_to_device(void *, const void *, size_t) { fail(ErrorCode::Device, "no CUDA in this build"); }
void wait_for_call_stream() { fail(ErrorCode::Device, "no CUDA in this build"); }
Gpu first_gpu() { fail(ErrorCode::Device, "this build of kldiv has no CUDA kernels (KLDIV_CUDA=OFF)"); }
void *device_alloc(size_t) { fail(ErrorCode::Device, "no CUDA in this build"); }
void device_free(void *) {}
void copy_host_to_device(void *, const void *, size_t) { fail(ErrorCode::Device, "no CUDA in this build"); }
void copy_device_to_host(void *, const void *, size_t) { fail(ErrorCode::Device, "no CUDA in this build"); }
void copy_device_to_device(void *, const void *, size_t) { fail(ErrorCode::Device, "no CUDA in this build"); }
void synchronize() {}
void set_thread_stream(void *) {}
void clear_thread_stream() {}
std::optional<void *> thread_stream() { return std::nullopt; }

}  // namespace kldiv::runtime::cuda
