// Where each kernel call's code comes from: the AOT kernels linked into the
// library, or JIT kernels held in a bounded in-memory cache backed by the
// on-disk cache. One per kldiv::Runtime.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <variant>

#include "cuda_device.h"
#include "kldiv/codegen/kernel_spec.h"
#include "kldiv/kldiv.hpp"
#include "layout.h"

namespace kldiv::runtime {

namespace jit {
class LoadedKernel;
}

// What a kernel call needs: the entry point, whether it takes a user context
// first (JIT kernels), and the JIT code it runs, held for the call.
struct KernelCall {
    int (*entry)(void **) = nullptr;
    bool user_context = false;
    std::shared_ptr<jit::LoadedKernel> code;
    // CUDA kernels: the buffer functions of the Halide runtime they link.
    cuda::BufferFunctions buffers;
};

// A kernel's spec: of the loss or of distillation.
using KernelName = std::variant<codegen::KernelSpec, codegen::DistillSpec>;

// The kernel's name (KernelSpec::name or DistillSpec::name).
std::string name_of(const KernelName &kernel);

// Records the calling thread's kernel for kldiv::last_kernel() (which names
// it only when asked): for a specialised kernel the `count` extents it is
// fixed to (else null); `schedule` says where its schedule parameters came
// from.
void remember_kernel(const KernelName &kernel, const int32_t *extent, int count, KernelOrigin origin,
                     double seconds, const std::string &schedule, const CompileTimes &compile = {});
// The same for an AOT kernel (generic, schedule "default (AOT)", found in no
// time), on every call that runs one: nothing is copied but the spec.
void remember_aot_kernel(const KernelName &kernel);

class KernelCache {
public:
    explicit KernelCache(const RuntimeOptions &options);
    ~KernelCache();
    KernelCache(const KernelCache &) = delete;
    KernelCache &operator=(const KernelCache &) = delete;

    // The kernel for `spec` over `piece`: AOT, or JIT (generic or fixed to the
    // piece's shape) as the options decide. Compiles at most once per key
    // however many threads ask; throws kldiv::Error.
    KernelCall kernel(const codegen::KernelSpec &spec, const Piece &piece);

    // The distillation kernel for `spec` over rows of `vocab` logits (at
    // least dsl::kDistillLanes), whose 2-d buffers all have unit stride along
    // the vocabulary or not (`unit_stride`), for a call of `elements` logits:
    // as kernel() decides, a specialised kernel fixes the vocabulary.
    KernelCall distill_kernel(const codegen::DistillSpec &spec, int32_t vocab, bool unit_stride, uint64_t elements);

    CacheStats stats() const;
    const std::string &target() const;
    const std::string &cache_dir() const;
    // Sends a warning to this runtime's handler, else the process-wide one.
    void warn(const std::string &message) const;

    // The CUDA stream of calls on device tensors (a CUstream; null: the
    // legacy default stream), unless the calling thread sets its own.
    void *cuda_stream() const { return cuda_stream_.load(); }
    void set_cuda_stream(void *stream) { cuda_stream_.store(stream); }

private:
    struct State;
    std::unique_ptr<State> state_;
    std::atomic<void *> cuda_stream_{nullptr};
};

}  // namespace kldiv::runtime
