// What the kernels compute: the KL-divergence loss, its sum, its gradients and
// the fused forward+backward pass, as Halide Funcs. No scheduling here; the
// schedules in schedules/ decide how these Funcs run. SPEC.md is the behaviour.
#pragma once

#include <array>
#include <optional>
#include <vector>

#include <Halide.h>

#include "kldiv/dsl/dtype.h"
#include "kldiv/dsl/math.h"

namespace kldiv::dsl {

// Every kernel sees 4-dimensional views of the same (broadcast) extents; the
// runtime folds other ranks, broadcasting and huge extents into such views.
constexpr int kRank = 4;

// The summation tree of a reduction: along dimension 0 the elements are cut
// into chunks of at most `chunk` elements, each summed in `lanes` interleaved
// partial sums. A partial sum adds its elements in blocks of
// kSumBlockSteps steps: a block is summed as a tree in the compute type
// (float32 for float32 and 16-bit data), then added to the lane's float64
// sum; the lanes are added as a tree, and the chunk sums in float64. So no
// float32 sum is deeper than log2(kSumBlockSteps) adds, whatever the vector
// width or schedule: the error stays at a float32 pairwise sum's or below
// (constant data included, where a pairwise sum is exact). Part of the
// numerics, so it lives here; `lanes` and `chunk` change only the order of
// float64 adds.
constexpr int kSumBlockSteps = 4;

struct SumTree {
    int lanes = 32;
    int chunk = 2048;
};

struct LossOptions {
    DType dtype = DType::Float32;
    bool log_target = false;
    // CUDA code generation: products that feed a sum are rounded on their
    // own, as PyTorch rounds them (the back end would fuse them into
    // multiply-adds), and log is dsl::device_log.
    bool cuda = false;
    // CPU kernels: fused multiply-adds in log's and exp's polynomials.
    MathOptions math;
    // CPU kernels of 16-bit dtypes: xlogy(t, t) and exp(t) read from a table
    // of the 65,536 values (dsl::lookup16) instead of computed.
    bool lookup = false;
    // CUDA kernels that compute in float32: log is dsl::table_log over this
    // table, which forward, backward and fused make (make_log_table) for the
    // passes that take a log.
    LogTable log_table;
};

// A kernel's inputs. `input`, `target` and `grad_output` return storage-type
// values (16-bit types as UInt(16) bits); `extent` is the 4-d domain.
struct Inputs {
    Halide::Func input;
    Halide::Func target;
    Halide::Func grad_output;  // per-element upstream gradient (backward, `none`)
    Halide::Expr grad_scale;   // scalar upstream gradient, already divided (compute type)
    std::array<Halide::Expr, kRank> extent;
    // A kernel for one shape: extent[0] as a number (it changes no result;
    // a reduction over whole chunks leaves out the code for padding).
    std::optional<int32_t> fixed_extent0;
    // CUDA reductions finish on the device: `out` = total / divisor (float64),
    // the chunk sums added by `total_lanes` lanes (see Algorithm::lane_total).
    Halide::Expr divisor;
    int total_lanes = 256;
};

// The named Funcs of one pass, for the schedules to find. Only those the pass
// defines are set.
struct Algorithm {
    std::array<Halide::Var, kRank> dims;
    std::array<Halide::Expr, kRank> extent;  // of the domain
    Halide::Var lane;
    Halide::Var chunk;
    SumTree tree;
    Halide::RDom blocks;       // blocks of kSumBlockSteps steps within a chunk (lane_sum's update)
    Halide::Expr chunk_length; // elements per chunk (a multiple of kSumBlockSteps * tree.lanes)

    Halide::Func pointwise;    // loss per element, compute type (see pointwise_loss)
    Halide::Func lane_sum;     // (lane, chunk, i1, i2, i3): float64 partial sums of a chunk
    // The lane tree when lanes are a power of two, level by level: level k
    // adds neighbours of level k-1 (level 0 adds lane_sum's), so a schedule
    // may compute each level in parallel (the same sums as one expression).
    std::vector<Halide::Func> lane_tree;   // (lane, chunk, i1, i2, i3)
    Halide::Func chunk_sum;    // (chunk, i1, i2, i3): float64 sum of a chunk
    Halide::Func total;        // (): float64 sum of the loss (output)
    Halide::Var total_lane;
    Halide::RDom total_step;   // chunks a lane of lane_total adds
    Halide::Func lane_total;   // (total_lane): float64 sums of every total_lanes-th chunk (CUDA)
    std::vector<Halide::Func> total_tree;  // (total_lane): lane_total's tree, level by level
    Halide::Func out;          // (i0 = 0): total / divisor, storage type (CUDA output)
    Halide::Func loss;         // loss per element, storage type (output)
    Halide::Func grad_input;   // storage type (output)
    Halide::Func grad_target;  // storage type (output)
    LogTable log_table;        // CUDA, float32 arithmetic: table_log's table, where a log is taken
};

// Loss per element in the compute type, from storage-type x and t. Without
// log_target a zero may come out as -0 where PyTorch has +0 (t == 0): sums do
// not see the sign, and forward's `loss` adds +0 before it stores.
Halide::Expr pointwise_loss(const Halide::Expr &x, const Halide::Expr &t, const LossOptions &options);

// dL/dx and dL/dt for upstream gradient g, op by op as PyTorch's autograd
// differentiates the composite (so NaNs and signs of zero match).
Halide::Expr grad_input_expr(const Halide::Expr &g, const Halide::Expr &x, const Halide::Expr &t,
                             const LossOptions &options);
Halide::Expr grad_target_expr(const Halide::Expr &g, const Halide::Expr &x, const Halide::Expr &t,
                              const LossOptions &options);

// Forward: `loss` per element (reduce == false) or the float64 `total`.
Algorithm forward(const Inputs &in, const LossOptions &options, bool reduce, const SumTree &tree);

// Backward: grad_input and/or grad_target, from `in.grad_output` (per element)
// or `in.grad_scale` (scalar) as `scalar_grad` says.
Algorithm backward(const Inputs &in, const LossOptions &options, bool want_grad_input,
                   bool want_grad_target, bool scalar_grad);

// Fused forward+backward with upstream gradient 1 (scaled by `in.grad_scale`
// when reduced): the loss (`loss` or `total`) and `grad_input`.
Algorithm fused(const Inputs &in, const LossOptions &options, bool reduce, const SumTree &tree);

}  // namespace kldiv::dsl
