// The AOT kernels linked into the library, by KernelSpec::name().
#pragma once

#include <string>
#include <vector>

#include "kldiv/codegen/kernel_spec.h"

namespace kldiv::runtime {

struct AotKernel {
    const char *name;
    int (*argv)(void **args);  // Halide's argv entry point: one pointer per argument
};

const std::vector<AotKernel> &aot_kernels();

// The AOT kernel of `spec` (or of that name), or null when the library has none.
int (*aot_entry(const codegen::KernelSpec &spec))(void **);
// The same for a caller that has index_of(spec) at hand.
int (*aot_entry(const codegen::KernelSpec &spec, uint32_t index))(void **);
int (*aot_entry(const codegen::DistillSpec &spec))(void **);
int (*aot_entry(const std::string &name))(void **);

// Sets up the library's Halide runtime, which the AOT kernels link and the
// JIT kernels share (once): errors go to record_kernel_error, and parallel
// loops of one task run on the calling thread, without the thread pool.
void install_runtime_hooks();

}  // namespace kldiv::runtime
