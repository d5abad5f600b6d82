// Schedule parameters: how a pass runs on a target, apart from what it
// computes. No Halide here, so the runtime and tools can carry and hash them.
#pragma once

#include <string>

namespace kldiv::schedules {

struct CpuParams {
    int vector_factor = 2;       // vector width as a multiple of the target's native one
    int unroll = 1;              // vectors per iteration of the innermost loop
    int sum_lanes_factor = 2;    // partial sums per chunk, as a multiple of the native width
    int sum_chunk = 2048;        // elements per chunk of the summation tree
    int chunks_per_task = 16;    // chunks in one parallel task of a reduction
    int elements_per_task = 16384;  // elements in one parallel task of an elementwise pass
    bool unit_stride_fast_path = true;  // specialise for unit inner strides
    bool parallel = true;
};

// GPU targets (CUDA): elementwise passes run `elements_per_thread` elements
// per thread (as one vector load when `vector_loads`) in blocks of
// `threads_per_block`; a reduction gives each chunk of `sum_chunk` elements
// one block of `sum_lanes` threads, each summing a strided lane, and adds the
// chunk sums in float64 in a fixed order (two-stage, deterministic: atomics
// would make the sum depend on timing, which SPEC.md does not allow).
struct GpuParams {
    int threads_per_block = 256;
    int elements_per_thread = 1;
    bool vector_loads = false;
    int sum_lanes = 64;
    int sum_chunk = 4096;
};

struct Params {
    CpuParams cpu;
    GpuParams gpu;
};

// Defaults for a target family; `target` is a Halide target string.
Params default_params(const std::string &target);

// Stable text form, part of the kernel cache key and of tuning records, e.g.
// "cpu:vf=2,unroll=1,slf=2,chunk=2048,cpt=16,ept=16384,fast=1,par=1;gpu:tpb=256,ept=1,vec=0,lanes=64,chunk=4096".
std::string to_string(const Params &params);

inline bool operator==(const Params &a, const Params &b) { return to_string(a) == to_string(b); }

// Whether two parameter sets sum a reduction in the same order (the same
// partial sums and chunks), so that their results agree bit for bit. The
// other parameters change only how fast a kernel runs.
bool same_summation_order(const Params &a, const Params &b);

// `params` with the summation order of `order`.
Params with_summation_order(Params params, const Params &order);
inline bool operator!=(const Params &a, const Params &b) { return !(a == b); }

// Parses to_string's form into `out`, starting from `out`'s values: keys left
// out keep them. False with a reason in `error` for an unknown key, a value
// that is not a number, or one out of range (see validate).
bool parse_params(const std::string &text, Params *out, std::string *error);

// Empty when every parameter is in its range (powers of two where the schedule
// needs them, a chunk that is a whole number of lanes), or why not.
std::string validate(const Params &params);

}  // namespace kldiv::schedules
