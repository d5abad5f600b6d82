// Settings of the shared Halide runtime, and the feature level it dispatches to.
#include <HalideRuntime.h>

#include "kldiv/kldiv.hpp"

namespace kldiv {

void set_num_threads(int threads) { halide_set_num_threads(threads); }

std::string cpu_target() {
#if defined(__aarch64__)
    return "arm-64-linux";
#else
    // Mirrors the feature checks of the AOT library's run-time dispatch
    // (KLDIV_AOT_TARGETS: avx512_skylake, avx2+fma+f16c, sse41).
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        return "x86-64-linux-avx512_skylake";
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "x86-64-linux-avx2-fma-f16c";
    return "x86-64-linux-sse41";
#endif
}

}  // namespace kldiv
