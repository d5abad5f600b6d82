// Settings of the shared Halide runtime, and the feature level it dispatches to.
#include <HalideRuntime.h>

#include <cstdlib>

#include "cpu_level.h"
#include "kldiv/kldiv.hpp"

namespace kldiv {

void set_num_threads(int threads) { halide_set_num_threads(threads); }

namespace runtime {

namespace {

int level_rank(const std::string &level) { return level == "avx512" ? 3 : level == "avx2" ? 2 : level == "sse41"; }

const char *cap_variable() {
    const char *value = std::getenv("KLDIV_CPU_TARGET");
    return value ? value : "";
}

bool uses(int count, const uint64_t *features, halide_target_feature_t feature) {
    return feature / 64 < count && ((features[feature / 64] >> (feature % 64)) & 1) != 0;
}

// Halide's multi-target dispatch asks this of each feature level, best
// first: a level above the cap is refused as if the CPU lacked it.
int capped_can_use_target_features(int count, const uint64_t *features) {
    static const int cap = level_rank(cpu_level_cap());
    if (cap != 0 && cap < 3) {
        for (halide_target_feature_t f : {halide_target_feature_avx512, halide_target_feature_avx512_knl,
                                          halide_target_feature_avx512_skylake, halide_target_feature_avx512_cannonlake,
                                          halide_target_feature_avx512_sapphirerapids}) {
            if (uses(count, features, f)) return 0;
        }
    }
    if (cap != 0 && cap < 2) {
        for (halide_target_feature_t f : {halide_target_feature_avx, halide_target_feature_avx2,
                                          halide_target_feature_fma, halide_target_feature_f16c}) {
            if (uses(count, features, f)) return 0;
        }
    }
    return halide_default_can_use_target_features(count, features);
}

}  // namespace

bool is_cpu_level(const std::string &level) { return level_rank(level) != 0; }

const std::string &cpu_level_cap() {
    static const std::string cap = [] {
        const std::string value = cap_variable();
        halide_set_custom_can_use_target_features(capped_can_use_target_features);
        return is_cpu_level(value) ? value : std::string();
    }();
    return cap;
}

std::string cpu_level_cap_problem() {
    const std::string value = cap_variable();
    if (value.empty() || is_cpu_level(value)) return "";
    return "KLDIV_CPU_TARGET: '" + value + "' is not sse41, avx2 or avx512; using the CPU's best level";
}

}  // namespace runtime

std::string cpu_target() {
#if defined(__aarch64__)
    return "arm-64-linux";
#else
    // Mirrors the feature checks of the AOT library's run-time dispatch
    // (KLDIV_AOT_TARGETS: avx512_skylake, avx2+fma+f16c, sse41), under the cap.
    __builtin_cpu_init();
    const std::string &cap = runtime::cpu_level_cap();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        (cap.empty() || cap == "avx512")) {
        return "x86-64-linux-avx512_skylake";
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cap != "sse41") {
        return "x86-64-linux-avx2-fma-f16c";
    }
    return "x86-64-linux-sse41";
#endif
}

}  // namespace kldiv
