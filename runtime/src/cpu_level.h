// The x86 feature levels the AOT kernels dispatch between, and the cap that
// KLDIV_CPU_TARGET puts on them, so that one machine can run every level its
// CPU has. No Halide here: the AOT-only library uses it too.
#pragma once

#include <string>

namespace kldiv::runtime {

// "sse41", "avx2" (with FMA and F16C) and "avx512" (Skylake's set).
bool is_cpu_level(const std::string &level);

// KLDIV_CPU_TARGET when it names a level, else "" (no cap); read once. The
// first call also makes the AOT kernels' run-time dispatch obey it.
const std::string &cpu_level_cap();

// Why KLDIV_CPU_TARGET is ignored ("" when it is unset or a level).
std::string cpu_level_cap_problem();

}  // namespace kldiv::runtime
