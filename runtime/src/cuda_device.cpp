#include "cuda_device.h"

#include <HalideRuntimeCuda.h>
#include <dlfcn.h>

#include <atomic>
#include <map>
#include <mutex>
#include <string>

#include "errors.h"

namespace kldiv::runtime::cuda {

namespace {

// The few driver API entry points used here (cuda.h is not needed to build).
using CUresult = int;
using CUcontext = void *;
using CUstream = void *;
using CUdeviceptr = unsigned long long;
constexpr int kAttributeMemoryType = 2;     // CU_POINTER_ATTRIBUTE_MEMORY_TYPE
constexpr int kAttributeDeviceOrdinal = 9;  // CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
constexpr unsigned kMemoryTypeDevice = 2, kMemoryTypeUnified = 4;

struct Driver {
    std::string problem;  // why CUDA cannot be used, or empty
    CUresult (*cuInit)(unsigned) = nullptr;
    CUresult (*cuDeviceGet)(int *, int) = nullptr;
    CUresult (*cuDevicePrimaryCtxRetain)(CUcontext *, int) = nullptr;
    CUresult (*cuPointerGetAttributes)(unsigned, int *, void **, CUdeviceptr) = nullptr;
    CUresult (*cuGetErrorName)(CUresult, const char **) = nullptr;
    CUresult (*cuCtxPushCurrent)(CUcontext) = nullptr;
    CUresult (*cuCtxPopCurrent)(CUcontext *) = nullptr;
    CUresult (*cuMemcpyHtoDAsync)(CUdeviceptr, const void *, size_t, CUstream) = nullptr;
    CUresult (*cuStreamSynchronize)(CUstream) = nullptr;
    // For tools (first_gpu and what follows it); empty when they are missing.
    std::string tools_problem;
    CUresult (*cuMemAlloc)(CUdeviceptr *, size_t) = nullptr;
    CUresult (*cuMemFree)(CUdeviceptr) = nullptr;
    CUresult (*cuMemcpyHtoD)(CUdeviceptr, const void *, size_t) = nullptr;
    CUresult (*cuMemcpyDtoH)(void *, CUdeviceptr, size_t) = nullptr;
    CUresult (*cuMemcpyDtoDAsync)(CUdeviceptr, CUdeviceptr, size_t, CUstream) = nullptr;
    CUresult (*cuCtxSynchronize)() = nullptr;
    CUresult (*cuDeviceGetName)(char *, int, int) = nullptr;

    std::string error_name(CUresult r) const {
        const char *name = nullptr;
        if (cuGetErrorName && cuGetErrorName(r, &name) == 0 && name) return name;
        return "CUDA error " + std::to_string(r);
    }
};

template<typename F>
bool load(void *library, const char *name, F &slot) {
    slot = reinterpret_cast<F>(dlsym(library, name));
    return slot != nullptr;
}

// Loaded once. RTLD_GLOBAL lets Halide's CUDA runtime find the same driver.
const Driver &driver() {
    static const Driver d = [] {
        Driver d;
        void *library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
        if (library == nullptr) {
            const char *why = dlerror();
            d.problem = std::string("no CUDA driver: libcuda.so.1 could not be loaded (") + (why ? why : "?") + ")";
            return d;
        }
        const bool ok = load(library, "cuInit", d.cuInit) && load(library, "cuDeviceGet", d.cuDeviceGet) &&
                        load(library, "cuDevicePrimaryCtxRetain", d.cuDevicePrimaryCtxRetain) &&
                        load(library, "cuPointerGetAttributes", d.cuPointerGetAttributes) &&
                        load(library, "cuGetErrorName", d.cuGetErrorName) &&
                        load(library, "cuCtxPushCurrent_v2", d.cuCtxPushCurrent) &&
                        load(library, "cuCtxPopCurrent_v2", d.cuCtxPopCurrent) &&
                        load(library, "cuMemcpyHtoDAsync_v2", d.cuMemcpyHtoDAsync) &&
                        load(library, "cuStreamSynchronize", d.cuStreamSynchronize);
        if (!ok) {
            d.problem = "the CUDA driver (libcuda.so.1) lacks the driver API this library needs";
            return d;
        }
        const bool tools_ok = load(library, "cuMemAlloc_v2", d.cuMemAlloc) &&
                              load(library, "cuMemFree_v2", d.cuMemFree) &&
                              load(library, "cuMemcpyHtoD_v2", d.cuMemcpyHtoD) &&
                              load(library, "cuMemcpyDtoH_v2", d.cuMemcpyDtoH) &&
                              load(library, "cuMemcpyDtoDAsync_v2", d.cuMemcpyDtoDAsync) &&
                              load(library, "cuCtxSynchronize", d.cuCtxSynchronize) &&
                              load(library, "cuDeviceGetName", d.cuDeviceGetName);
        if (!tools_ok) d.tools_problem = "the CUDA driver (libcuda.so.1) lacks memory functions kldiv tune needs";
        if (CUresult r = d.cuInit(0); r != 0) {
            d.problem = "CUDA is not usable here: cuInit failed (" + d.error_name(r) + ")";
        }
        return d;
    }();
    return d;
}

}  // namespace

// The call in progress on this thread, for Halide's hooks.
struct Hooks {
    static thread_local const Scope *current;
    static void *context() { return current ? current->context_ : nullptr; }
    static void *stream() { return current ? current->stream_ : nullptr; }
};
thread_local const Scope *Hooks::current = nullptr;

namespace {

std::atomic<void *> last_context{nullptr};  // for hook calls outside a call (cached allocations)

struct ThreadStream {
    bool set = false;
    void *stream = nullptr;
};
thread_local ThreadStream t_stream;

int acquire_context(void *, void **context, bool create) {
    void *c = Hooks::current ? Hooks::context() : last_context.load();
    if (c == nullptr && create) return -1;
    *context = c;
    return 0;
}

int release_context(void *) { return 0; }

int get_stream(void *, void *, void **stream) {
    *stream = Hooks::stream();
    return 0;
}

// The library's Halide CUDA runtime takes contexts and streams from the
// hooks above and keeps device allocations for reuse (per stream), so a call
// allocates nothing from the driver once warm.
void install_library_hooks() {
    static const bool installed = [] {
        install_hooks({halide_set_cuda_acquire_context, halide_set_cuda_release_context, halide_set_cuda_get_stream,
                       halide_reuse_device_allocations});
        return true;
    }();
    (void)installed;
}

void *primary_context(const Driver &d, int ordinal) {
    static std::mutex mutex;
    static std::map<int, void *> contexts;
    std::lock_guard<std::mutex> lock(mutex);
    if (auto it = contexts.find(ordinal); it != contexts.end()) return it->second;
    int device = 0;
    CUcontext context = nullptr;
    if (CUresult r = d.cuDeviceGet(&device, ordinal); r != 0) {
        fail(ErrorCode::Device, "CUDA device " + std::to_string(ordinal) + ": " + d.error_name(r));
    }
    if (CUresult r = d.cuDevicePrimaryCtxRetain(&context, device); r != 0) {
        fail(ErrorCode::Device, "CUDA device " + std::to_string(ordinal) + ": primary context: " + d.error_name(r));
    }
    contexts[ordinal] = context;
    return context;
}

}  // namespace

bool built_with_cuda() { return true; }

BufferFunctions library_buffer_functions() { return {halide_cuda_wrap_device_ptr, halide_cuda_detach_device_ptr}; }

void install_hooks(const RuntimeSetters &setters) {
    setters.set_acquire_context(acquire_context);
    setters.set_release_context(release_context);
    setters.set_get_stream(get_stream);
    setters.reuse_device_allocations(nullptr, true);
}

Placement place(NamedViews tensors) {
    const Driver &d = driver();
    if (!d.problem.empty()) fail(ErrorCode::Device, "CUDA tensors given, but " + d.problem);
    install_library_hooks();
    Placement p;
    const char *first = nullptr;
    for (const NamedView &named : tensors) {
        const TensorView *tensor = named.tensor;
        const char *name = named.name;
        if (tensor->data == nullptr || tensor->numel() == 0) continue;
        // One driver call per tensor; memory the driver does not know reads as type 0.
        unsigned memory_type = 0;
        int ordinal = -1;
        int attributes[2] = {kAttributeMemoryType, kAttributeDeviceOrdinal};
        void *values[2] = {&memory_type, &ordinal};
        if (d.cuPointerGetAttributes(2, attributes, values, reinterpret_cast<CUdeviceptr>(tensor->data)) != 0 ||
            (memory_type != kMemoryTypeDevice && memory_type != kMemoryTypeUnified) || ordinal < 0) {
            fail(ErrorCode::Device,
                 std::string(name) + " is marked as a CUDA tensor but its data is not CUDA device memory");
        }
        if (p.ordinal >= 0 && ordinal != p.ordinal) {
            fail(ErrorCode::Device, std::string("Expected all tensors to be on the same device, but found at least two "
                                                "devices, cuda:") + std::to_string(p.ordinal) + " (" + first +
                                        ") and cuda:" + std::to_string(ordinal) + " (" + name + ")");
        }
        p.ordinal = ordinal;
        first = first ? first : name;
    }
    if (p.ordinal < 0) p.ordinal = 0;  // nothing to read or write: any GPU will do
    p.context = primary_context(d, p.ordinal);
    last_context.store(p.context);
    return p;
}

void *call_stream(void *runtime_stream) { return t_stream.set ? t_stream.stream : runtime_stream; }

Scope::Scope(const Placement &placement, void *stream)
    : context_(placement.context), stream_(stream), previous_(Hooks::current) {
    Hooks::current = this;
}

Scope::~Scope() { Hooks::current = previous_; }

void copy_to_device(void *dst, const void *src, size_t bytes) {
    const Driver &d = driver();
    if (Hooks::current == nullptr) fail(ErrorCode::Internal, "copy_to_device outside a CUDA call");
    if (CUresult r = d.cuCtxPushCurrent(Hooks::context()); r != 0) {
        fail(ErrorCode::Device, "cuCtxPushCurrent: " + d.error_name(r));
    }
    // A pageable source: the driver has copied it out when this returns.
    CUresult r = d.cuMemcpyHtoDAsync(reinterpret_cast<CUdeviceptr>(dst), src, bytes, Hooks::stream());
    CUcontext popped = nullptr;
    d.cuCtxPopCurrent(&popped);
    if (r != 0) fail(ErrorCode::Device, "writing a result to the GPU failed: " + d.error_name(r));
}

void wait_for_call_stream() {
    const Driver &d = driver();
    if (Hooks::current == nullptr) fail(ErrorCode::Internal, "wait_for_call_stream outside a CUDA call");
    if (CUresult r = d.cuCtxPushCurrent(Hooks::context()); r != 0) {
        fail(ErrorCode::Device, "cuCtxPushCurrent: " + d.error_name(r));
    }
    CUresult r = d.cuStreamSynchronize(reinterpret_cast<CUstream>(Hooks::stream()));
    CUcontext popped = nullptr;
    d.cuCtxPopCurrent(&popped);
    if (r != 0) fail(ErrorCode::Device, "waiting for the GPU failed: " + d.error_name(r));
}

namespace {

const Driver &tools_driver() {
    const Driver &d = driver();
    if (!d.problem.empty()) fail(ErrorCode::Device, d.problem);
    if (!d.tools_problem.empty()) fail(ErrorCode::Device, d.tools_problem);
    return d;
}

// Runs `call` with GPU 0's primary context current; fails with `what` and
// the driver's error name when it returns an error.
template<typename Call>
void in_first_gpu(const char *what, Call call) {
    const Driver &d = tools_driver();
    const Placement p = first_gpu().placement;
    if (CUresult r = d.cuCtxPushCurrent(p.context); r != 0) {
        fail(ErrorCode::Device, "cuCtxPushCurrent: " + d.error_name(r));
    }
    const CUresult r = call(d);
    CUcontext popped = nullptr;
    d.cuCtxPopCurrent(&popped);
    if (r != 0) fail(ErrorCode::Device, std::string(what) + ": " + d.error_name(r));
}

}  // namespace

Gpu first_gpu() {
    static const Gpu gpu = [] {
        const Driver &d = tools_driver();
        Gpu g;
        g.placement.ordinal = 0;
        g.placement.context = primary_context(d, 0);
        last_context.store(g.placement.context);
        install_library_hooks();
        int device = 0;
        char name[256] = {0};
        if (d.cuDeviceGet(&device, 0) == 0 && d.cuDeviceGetName(name, sizeof name - 1, device) == 0) g.name = name;
        return g;
    }();
    return gpu;
}

void *device_alloc(size_t bytes) {
    CUdeviceptr data = 0;
    in_first_gpu("cuMemAlloc", [&](const Driver &d) { return d.cuMemAlloc(&data, bytes > 0 ? bytes : 1); });
    return reinterpret_cast<void *>(data);
}

void device_free(void *data) {
    if (data == nullptr) return;
    in_first_gpu("cuMemFree", [&](const Driver &d) { return d.cuMemFree(reinterpret_cast<CUdeviceptr>(data)); });
}

void copy_host_to_device(void *dst, const void *src, size_t bytes) {
    in_first_gpu("cuMemcpyHtoD",
                 [&](const Driver &d) { return d.cuMemcpyHtoD(reinterpret_cast<CUdeviceptr>(dst), src, bytes); });
}

void copy_device_to_host(void *dst, const void *src, size_t bytes) {
    in_first_gpu("cuMemcpyDtoH",
                 [&](const Driver &d) { return d.cuMemcpyDtoH(dst, reinterpret_cast<CUdeviceptr>(src), bytes); });
}

void copy_device_to_device(void *dst, const void *src, size_t bytes) {
    in_first_gpu("cuMemcpyDtoDAsync", [&](const Driver &d) {
        return d.cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(dst), reinterpret_cast<CUdeviceptr>(src), bytes,
                                   nullptr);
    });
}

void synchronize() {
    in_first_gpu("cuCtxSynchronize", [](const Driver &d) { return d.cuCtxSynchronize(); });
}

void set_thread_stream(void *stream) { t_stream = {true, stream}; }
void clear_thread_stream() { t_stream = {}; }
std::optional<void *> thread_stream() { return t_stream.set ? std::optional<void *>(t_stream.stream) : std::nullopt; }

}  // namespace kldiv::runtime::cuda
