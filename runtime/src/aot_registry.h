// The AOT kernels linked into the library, by KernelSpec::name().
#pragma once

#include <vector>

namespace kldiv::runtime {

struct AotKernel {
    const char *name;
    int (*argv)(void **args);  // Halide's argv entry point: one pointer per argument
};

const std::vector<AotKernel> &aot_kernels();

}  // namespace kldiv::runtime
