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

// The entry of `spec`, looked up by name once per spec: 0 not yet, 1 none.
template <typename Spec, size_t N>
int (*entry_once(const Spec &spec))(void **) {
    static std::array<std::atomic<uintptr_t>, N> known{};
    std::atomic<uintptr_t> &slot = known[codegen::index_of(spec)];
    uintptr_t entry = slot.load(std::memory_order_acquire);
    if (entry == 0) {
        entry = reinterpret_cast<uintptr_t>(aot_entry(spec.name()));
        if (entry == 0) entry = 1;
        slot.store(entry, std::memory_order_release);
    }
    return entry == 1 ? nullptr : reinterpret_cast<int (*)(void **)>(entry);
}

}  // namespace

int (*aot_entry(const codegen::KernelSpec &spec))(void **) {
    return entry_once<codegen::KernelSpec, codegen::kSpecIndices>(spec);
}

int (*aot_entry(const codegen::DistillSpec &spec))(void **) {
    return entry_once<codegen::DistillSpec, codegen::kDistillSpecIndices>(spec);
}

void install_aot_error_handler() {
    static const bool installed = [] {
        halide_set_error_handler(record_kernel_error);
        cpu_level_cap();  // before any AOT kernel dispatches
        return true;
    }();
    (void)installed;
}

}  // namespace kldiv::runtime
