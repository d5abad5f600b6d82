#include <HalideRuntime.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <unordered_map>

#include "aot_registry.h"
#include "cpu_level.h"
#include "errors.h"

namespace kldiv::runtime {

int (*aot_entry(const std::string &name))(void **) {
    static const std::unordered_map<std::string, int (*)(void **)> table = [] {
        std::unordered_map<std::string, int (*)(void **)> t;
        for (const AotKernel &k : aot_kernels()) t[k.name] = k.argv;
        return t;
    }();
    auto it = table.find(name);
    return it == table.end() ? nullptr : it->second;
}

namespace {

// The entry of `spec` (whose index_of is `index`), looked up by name once
// per spec: 0 not yet, 1 none.
template <typename Spec, size_t N>
int (*entry_once(const Spec &spec, uint32_t index))(void **) {
    static std::array<std::atomic<uintptr_t>, N> known{};
    std::atomic<uintptr_t> &slot = known[index];
    uintptr_t entry = slot.load(std::memory_order_acquire);
    if (entry == 0) {
        entry = reinterpret_cast<uintptr_t>(aot_entry(spec.name()));
        if (entry == 0) entry = 1;
        slot.store(entry, std::memory_order_release);
    }
    return entry == 1 ? nullptr : reinterpret_cast<int (*)(void **)>(entry);
}

}  // namespace

int (*aot_entry(const codegen::KernelSpec &spec))(void **) { return aot_entry(spec, codegen::index_of(spec)); }

int (*aot_entry(const codegen::KernelSpec &spec, uint32_t index))(void **) {
    return entry_once<codegen::KernelSpec, codegen::kSpecIndices>(spec, index);
}

int (*aot_entry(const codegen::DistillSpec &spec))(void **) {
    return entry_once<codegen::DistillSpec, codegen::kDistillSpecIndices>(spec, codegen::index_of(spec));
}

namespace {

// Halide's thread pool, given a parallel loop of one task, locks its queue,
// queues the task and runs it on the calling thread: some 400 instructions
// (callgrind), a tenth of a 16-element loss call. Such a loop runs here
// directly: the same task on the same thread, so the same bits. Loops of
// more tasks go to the pool as before.
int run_single_task_inline(void *user_context, halide_task_t task, int min, int size, uint8_t *closure) {
    if (size == 1) return halide_do_task(user_context, task, min, closure);
    return halide_default_do_par_for(user_context, task, min, size, closure);
}

}  // namespace

void install_runtime_hooks() {
    static const bool installed = [] {
        halide_set_error_handler(record_kernel_error);
        halide_set_custom_do_par_for(run_single_task_inline);
        cpu_level_cap();  // before any AOT kernel dispatches
        return true;
    }();
    (void)installed;
}

}  // namespace kldiv::runtime
