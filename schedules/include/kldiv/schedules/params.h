// Schedule parameters: how a pass runs on a target, apart from what it
// computes. No Halide here, so the runtime and tools can carry and hash them.
#pragma once

#include <string>

namespace kldiv::schedules {

// CPU reductions keep sum_lanes_factor * kSumLanesUnit partial sums, on any
// vector width (not a multiple of the target's, so that the order of the
// adds, and so the result, is the same on every feature level).
constexpr int kSumLanesUnit = 16;

struct CpuParams {
    int vector_factor = 2;       // vector width as a multiple of the target's native one
    int unroll = 1;              // vectors per iteration of the innermost loop
    int sum_lanes_factor = 2;    // partial sums per chunk, as a multiple of kSumLanesUnit
    int sum_chunk = 2048;        // elements per chunk of the summation tree
    int chunks_per_task = 16;    // chunks in one parallel task of a reduction
    int elements_per_task = 16384;  // elements in one parallel task of an elementwise pass
    bool unit_stride_fast_path = true;  // specialise for unit inner strides
    bool parallel = true;
};

// GPU targets (CUDA): elementwise passes run `elements_per_thread` elements
// per thread (as one vector load when `vector_loads`) in blocks of
// `threads_per_block`; a reduction gives each chunk of `sum_chunk` elements
// one block of `sum_lanes` threads, each summing 8 bytes' worth of adjacent
// strided lanes (schedules::gpu_lanes_per_thread; `sum_unroll` steps per
// loop iteration, so that many loads are in flight), then one block of
// `total_lanes` threads adds the chunk sums in float64 (a second launch).
// Two stages in a fixed order, so results are bit-identical run to run;
// atomics would make the sum depend on timing.
struct GpuParams {
    // Measured on an H200 (sm_90 running sm_80 PTX), 2^28 float32 elements,
    // copy ceiling 4252 GB/s: forward `none` 733 us with vec=1 against 919 us
    // unrolled and 1349 us at one element per thread; forward sum 518 us with
    // 256 lanes over 16384-element chunks against 551 us at 64 over 4096,
    // before lanes per thread. Since then chunks of 32768 and 16 steps per
    // iteration: a streaming loop of two iterations for 16-bit data, with the
    // block's table and tree spread over twice the elements (PTX: 24.1 against
    // 25.2 instructions per bfloat16 element); not yet timed on a GPU.
    int threads_per_block = 256;
    int elements_per_thread = 4;
    bool vector_loads = true;
    int sum_lanes = 256;
    int sum_chunk = 32768;
    int sum_unroll = 16;
    int total_lanes = 256;
};

// Distillation kernels on CPU targets (schedules/distill_schedule.h). None
// changes the order of a sum: the lanes and blocks of a row's sums are the
// algorithm's (dsl/distill_layout.h), so every setting gives the same bits.
struct DistillParams {
    // Gradient vectors as a multiple of the target's native width; 0: the
    // default, 2 for 16-bit data (one full vector of 16-bit values a store)
    // and 1 for the rest.
    int grad_vector_factor = 0;
    int lane_unroll = 1;    // steps of a row's lane sums per loop iteration
    int rows_per_task = 1;  // rows in one parallel task
};

struct Params {
    CpuParams cpu;
    GpuParams gpu;
    DistillParams distill;
};

// Defaults for a target family; `target` is a Halide target string.
Params default_params(const std::string &target);

// Stable text form, part of the kernel cache key and of tuning records, e.g.
// "cpu:vf=2,unroll=1,slf=2,chunk=2048,cpt=16,ept=16384,fast=1,par=1;"
// "gpu:tpb=256,ept=4,vec=1,lanes=256,chunk=16384,su=8,tl=256;distill:gvf=0,lu=1,rpt=1"
// (one string).
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
