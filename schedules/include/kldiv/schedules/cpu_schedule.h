// CPU schedules (x86 and ARM) for the passes in dsl/algorithm.h.
#pragma once

#include <vector>

#include <Halide.h>

#include "kldiv/dsl/algorithm.h"
#include "kldiv/schedules/params.h"

namespace kldiv::schedules {

// The summation tree a reduction uses on `target`: on CPUs, lanes =
// kSumLanesUnit times the parameter's factor, the same on every feature
// level and architecture, so a schedule sums in one order everywhere. On
// GPUs, each of GpuParams::sum_lanes threads keeps gpu_lanes_per_thread
// adjacent partial sums, so that it loads 8 bytes of each operand at a time.
dsl::SumTree sum_tree(const Halide::Target &target, DType dtype, const Params &params);
int gpu_lanes_per_thread(DType dtype);

// Schedules every Func `algorithm` defines. `unit_stride` holds the conditions
// under which the fast path applies (every buffer's dimension 0 has stride 1).
void apply_cpu(dsl::Algorithm &algorithm, const Halide::Target &target, DType dtype,
               const Params &params, const Halide::Expr &unit_stride);

// Schedules for a target with a GPU feature (CUDA): see GpuParams.
// `unit_stride` as for apply_cpu.
void apply_gpu(dsl::Algorithm &algorithm, const Params &params, const Halide::Expr &unit_stride);

}  // namespace kldiv::schedules
