// Halide side of the JIT: a KernelSpec (optionally with a fixed shape) to an
// object file in memory, through the same codegen::build as the AOT kernels.
// No Halide in this header.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kldiv/codegen/kernel_spec.h"
#include "kldiv/kldiv.hpp"
#include "kldiv/schedules/params.h"

namespace kldiv::runtime::jit {

using codegen::FixedShape;

// The Halide target the JIT compiles for: "" or "host" is this CPU's, at
// most `cpu_level` ("sse41", "avx2", "avx512"; "" for no cap); any other
// Halide target string is checked and normalised. Throws kldiv::Error
// (InvalidArgument) for an unknown target or one this process cannot run:
// another architecture or OS, instructions the CPU lacks, or a GPU feature
// (only the CUDA JIT's own target, `gpu`, has one).
std::string resolve_target(const std::string &name, const std::string &cpu_level = "", bool gpu = false);

// Compiles `spec` for `target` (a resolved target) to an ELF object whose
// entry point is `<function>_argv`, taking a user context first. Throws
// kldiv::Error (Internal) with the spec's name when Halide or LLVM fails.
// `autoscheduler` (see codegen::compile_module) replaces the project's
// schedule with one of Halide's: baselines for `kldiv tune`. `inner_stride`:
// what a kernel without a fixed shape assumes of dimension 0. `times`, when
// given, receives the time of each phase but loading.
std::string compile_kernel(const codegen::KernelSpec &spec, const std::optional<FixedShape> &shape,
                           const std::string &target, const schedules::Params &params, const std::string &function,
                           const std::string &autoscheduler = "",
                           codegen::InnerStride inner_stride = codegen::InnerStride::Any,
                           CompileTimes *times = nullptr);

// Compiles the distillation kernel `spec` for `target` (a resolved CPU
// target) as compile_kernel does: `vocab`, when given, fixes the logits per
// row; `inner_stride` what every 2-d buffer's dimension 0 has.
std::string compile_distill_kernel(const codegen::DistillSpec &spec, std::optional<int32_t> vocab,
                                   codegen::InnerStride inner_stride, const std::string &target,
                                   const schedules::Params &params, const std::string &function,
                                   CompileTimes *times = nullptr);

// The 16-bit lookup table that compiled kernels refer to by `symbol` (they
// are compiled with codegen::Tables::Process), made on first use; nullptr
// for any other symbol. The loader defines the symbols from it.
const void *lookup_table(const std::string &symbol);

// Halide's runtime for `target` as an ELF object (one per target and process).
std::string compile_runtime(const std::string &target);

// Versions that make compiled code incompatible: Halide's and LLVM's.
std::string toolchain_version();

}  // namespace kldiv::runtime::jit
