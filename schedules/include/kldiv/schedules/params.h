// Schedule parameters: how a pass runs on a target, apart from what it
// computes. No Halide here, so the runtime and tools can carry and hash them.
#pragma once

#include <string>

namespace kldiv::schedules {

struct CpuParams {
    int vector_factor = 2;       // vector width as a multiple of the target's native one
    int sum_lanes_factor = 2;    // partial sums per chunk, as a multiple of the native width
    int sum_chunk = 2048;        // elements per chunk of the summation tree
    int chunks_per_task = 16;    // chunks in one parallel task of a reduction
    int elements_per_task = 16384;  // elements in one parallel task of an elementwise pass
    bool unit_stride_fast_path = true;  // specialise for unit inner strides
    bool parallel = true;
};

// GPU targets (CUDA): elementwise passes run one element per thread in
// blocks of `threads_per_block`; a reduction gives each chunk of `sum_chunk`
// elements one block of `sum_lanes` threads, each summing a strided lane, and
// adds the chunk sums in float64 in a fixed order (deterministic).
struct GpuParams {
    int threads_per_block = 256;
    int sum_lanes = 64;
    int sum_chunk = 4096;
};

struct Params {
    CpuParams cpu;
    GpuParams gpu;
};

// Defaults for a target family; `target` is a Halide target string.
Params default_params(const std::string &target);

// Stable text form, part of the kernel cache key.
std::string to_string(const Params &params);

}  // namespace kldiv::schedules
