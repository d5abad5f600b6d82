// The kernel cache of a build without the JIT (cross builds, where the
// kernels come from `kldiv aot`): every call runs an AOT kernel.
#include <mutex>

#include "aot_registry.h"
#include "cuda_device.h"
#include "errors.h"
#include "kernel_cache.h"

namespace kldiv::runtime {

struct KernelCache::State {
    RuntimeOptions options;
    std::string target, cache_dir;
    mutable std::mutex mutex;
    CacheStats stats;
};

KernelCache::KernelCache(const RuntimeOptions &options) : state_(std::make_unique<State>()) {
    install_runtime_hooks();
    state_->options = options;
    state_->target = cpu_target();
    if (options.threads > 0) set_num_threads(options.threads);
    set_cuda_stream(options.cuda_stream);
}

KernelCache::~KernelCache() = default;

KernelCall KernelCache::kernel(const codegen::KernelSpec &spec, const Piece &piece) {
    KernelCall call{aot_entry(spec), false, nullptr};
    if (call.entry == nullptr) fail(ErrorCode::Internal, "no kernel " + spec.name() + " in this build");
    if (spec.cuda) call.buffers = cuda::library_buffer_functions();
    {
        std::lock_guard<std::mutex> lock(state_->mutex);
        state_->stats.aot_calls++;
    }
    (void)piece;
    remember_aot_kernel(spec);
    return call;
}

KernelCall KernelCache::distill_kernel(const codegen::DistillSpec &spec, int32_t, bool, uint64_t) {
    KernelCall call{aot_entry(spec), false, nullptr};
    if (call.entry == nullptr) fail(ErrorCode::Internal, "no kernel " + spec.name() + " in this build");
    if (spec.cuda) call.buffers = cuda::library_buffer_functions();
    {
        std::lock_guard<std::mutex> lock(state_->mutex);
        state_->stats.aot_calls++;
    }
    remember_aot_kernel(spec);
    return call;
}

CacheStats KernelCache::stats() const {
    std::lock_guard<std::mutex> lock(state_->mutex);
    return state_->stats;
}

const std::string &KernelCache::target() const { return state_->target; }
const std::string &KernelCache::cache_dir() const { return state_->cache_dir; }

void KernelCache::warn(const std::string &message) const { runtime::warn(state_->options.warning_handler, message); }

}  // namespace kldiv::runtime
