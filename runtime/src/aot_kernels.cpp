#include <HalideRuntime.h>

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

int (*aot_entry(const codegen::KernelSpec &spec))(void **) { return aot_entry(spec.name()); }

void install_aot_error_handler() {
    static const bool installed = [] {
        halide_set_error_handler(record_kernel_error);
        cpu_level_cap();  // before any AOT kernel dispatches
        return true;
    }();
    (void)installed;
}

}  // namespace kldiv::runtime
