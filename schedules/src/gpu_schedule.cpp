// GPU schedules (CUDA). Deterministic: every reduction adds in a fixed order
// (a chunk's lanes as the summation tree says, chunk sums by lane_total's
// lanes, then a tree), so results are bit-identical run to run.
//
// Elementwise grids are 3-d: x along dimension 0, y = dimension 1, z =
// dimension 2, so there is no index arithmetic per element beyond the strides;
// a reduction's first grid is x = (chunk, dimension 1), y = dimension 2 (one
// division per block). The runtime keeps y and z within CUDA's 65535;
// dimension 3, when larger than 1, is a loop of launches.
#include <algorithm>

#include "kldiv/schedules/cpu_schedule.h"

namespace kldiv::schedules {

using Halide::Func;
using Halide::TailStrategy;
using Halide::Var;

namespace {

// A second loop nest for unit inner strides (simpler addresses), unless the
// strides are fixed.
void specialize_unit_stride(Func f, const Halide::Expr &unit_stride) {
    if (!Halide::Internal::is_const(unit_stride)) f.specialize(unit_stride);
}

// Blocks of `threads_per_block` threads along dimension 0, each thread
// `elements_per_thread` adjacent elements (one vector when `vector_loads`,
// else unrolled): that many loads of each operand in flight per thread.
// Halide assumes only element alignment of the buffers, so a vector is
// loaded as adjacent scalar loads and any view works. Returns the block loop.
Var schedule_elementwise_gpu(Func f, const dsl::Algorithm &a, const GpuParams &p) {
    const auto &[i0, i1, i2, i3] = a.dims;
    Var block("block"), in_block("in_block"), thread("thread"), element("element");
    f.compute_root()
        .split(i0, block, in_block, p.threads_per_block * p.elements_per_thread, TailStrategy::GuardWithIf)
        .split(in_block, thread, element, p.elements_per_thread, TailStrategy::GuardWithIf)
        .reorder(element, thread, block, i1, i2, i3)
        .gpu_blocks(block, i1, i2)
        .gpu_threads(thread);
    // float64 vectors of the loss's fenced products crash LLVM 14's NVPTX
    // back end: those are unrolled.
    const bool vector = p.vector_loads && f.output_types()[0].bits() != 64;
    if (p.elements_per_thread > 1 && vector) f.vectorize(element);
    if (p.elements_per_thread > 1 && !vector) f.unroll(element);
    return block;
}

// Partial sums `lanes`, computed where `consumer` computes `at`: `threads`
// threads, each holding `per_thread` adjacent lanes as one vector (so its
// loads of adjacent elements are one vector load where the buffers are
// aligned), each walking its steps `unroll` per iteration (as many loads in
// flight); then their tree, a level at a time, each level in parallel (one
// thread adding all lanes cost microseconds per block, which small calls
// wait for).
void schedule_lanes(Func lanes, const std::vector<Func> &tree, const Func &consumer, const Var &at, const Var &lane,
                    const Halide::RVar &step, int unroll, int threads, int per_thread) {
    Var lane_vector(lane.name() + "_vector");
    lanes.compute_at(consumer, at);
    if (per_thread > 1) lanes.split(lane, lane, lane_vector, per_thread).vectorize(lane_vector);
    lanes.gpu_threads(lane);
    int extent = threads * per_thread;
    for (Func level : tree) {
        extent /= 2;
        level.compute_at(consumer, at);
        if (extent > threads) level.split(lane, lane, lane_vector, extent / threads).vectorize(lane_vector);
        level.gpu_threads(lane);
    }
    Halide::RVar outer(step.name() + "_outer"), inner(step.name() + "_inner");
    Halide::Stage update = lanes.update();
    if (per_thread > 1) {
        update.split(lane, lane, lane_vector, per_thread)
            .reorder(lane_vector, step, lane)
            .split(step, outer, inner, unroll, TailStrategy::GuardWithIf)
            .reorder(lane_vector, inner, outer, lane)
            .vectorize(lane_vector);
    } else {
        update.reorder(step, lane).split(step, outer, inner, unroll, TailStrategy::GuardWithIf);
    }
    update.unroll(inner).gpu_threads(lane);
}

// First launch: a block per chunk; its threads hold the chunk's lanes, each
// lane summing every `lanes`-th element (a block of steps in float32, added
// to its float64 sum), and the lanes are added as the tree says. Second
// launch: one block; thread l adds chunk sums l, l + L, ... and the L lane
// totals are added the same way before `out` is stored.
Var schedule_sum_gpu(dsl::Algorithm &a, const GpuParams &p) {
    const auto &[i0, i1, i2, i3] = a.dims;
    Var chunks("chunks");
    a.chunk_sum.compute_root().reorder(a.chunk, i1, i2, i3).fuse(a.chunk, i1, chunks).gpu_blocks(chunks, i2);
    // A block already holds kSumBlockSteps loads per lane.
    const int block_unroll = std::max(1, p.sum_unroll / dsl::kSumBlockSteps);
    schedule_lanes(a.lane_sum, a.lane_tree, a.chunk_sum, chunks, a.lane, a.blocks.x, block_unroll, p.sum_lanes,
                   a.tree.lanes / p.sum_lanes);
    a.out.compute_root().gpu_blocks(i0);
    schedule_lanes(a.lane_total, a.total_tree, a.out, i0, a.total_lane, a.total_step.x, p.sum_unroll, p.total_lanes,
                   1);
    return chunks;
}

// Fused, reduced: grad_input in the chunk_sum blocks, element e of a chunk
// on the thread that holds lane e % lanes in lane_sum, after the chunk's sum
// (its second read of the chunk comes from cache).
void schedule_fused_sum_gpu(dsl::Algorithm &a, const GpuParams &p, const Var &sum_blocks) {
    const auto &[i0, i1, i2, i3] = a.dims;
    Var chunk("chunk"), in_chunk("in_chunk"), step("step"), lane("lane"), step_inner("step_inner"), chunks("chunks");
    Var lane_vector("lane_vector");
    const int per_thread = a.tree.lanes / p.sum_lanes;
    a.grad_input.compute_root()
        .split(i0, chunk, in_chunk, a.chunk_length, TailStrategy::GuardWithIf)
        .split(in_chunk, step, lane, a.tree.lanes, TailStrategy::GuardWithIf)
        .split(lane, lane, lane_vector, per_thread, TailStrategy::GuardWithIf)
        .split(step, step, step_inner, p.sum_unroll, TailStrategy::GuardWithIf)
        .reorder(lane_vector, step_inner, step, lane, chunk, i1, i2, i3)
        .fuse(chunk, i1, chunks)
        .unroll(step_inner)
        .gpu_blocks(chunks, i2)
        .gpu_threads(lane);
    if (per_thread > 1) a.grad_input.vectorize(lane_vector);
    a.grad_input.compute_with(a.chunk_sum, sum_blocks);
}

// table_log's table, computed by each block of `consumer`'s kernel into
// shared memory: a thread per entry (float64 logs, once per block), `threads`
// at a time, before the block's threads read it.
void schedule_log_table(dsl::Algorithm &a, const Func &consumer, const Var &block, int threads) {
    if (!a.log_table.defined()) return;
    Func table = a.log_table.table;
    const Var i = table.args()[0];
    Var pass("pass"), thread("thread");
    table.compute_at(consumer, block)
        .bound(i, 0, dsl::log_table_size(a.log_table.exact))
        .split(i, pass, thread, threads, TailStrategy::GuardWithIf)
        .gpu_threads(thread);
}

}  // namespace

void apply_gpu(dsl::Algorithm &a, const Params &params, const Halide::Expr &unit_stride) {
    const GpuParams &p = params.gpu;
    if (a.out.defined()) {
        const Var sum_blocks = schedule_sum_gpu(a, p);
        schedule_log_table(a, a.chunk_sum, sum_blocks, p.sum_lanes);
        if (a.grad_input.defined()) schedule_fused_sum_gpu(a, p, sum_blocks);
        specialize_unit_stride(a.chunk_sum, unit_stride);
        return;
    }
    if (a.loss.defined() && a.grad_input.defined()) {
        // Fused `none`: both outputs in one kernel, each element loaded once.
        const Var block = schedule_elementwise_gpu(a.loss, a, p);
        schedule_log_table(a, a.loss, block, p.threads_per_block);
        schedule_elementwise_gpu(a.grad_input, a, p);
        a.grad_input.compute_with(a.loss, block);
        specialize_unit_stride(a.loss, unit_stride);
        return;
    }
    for (Func f : {a.loss, a.grad_input, a.grad_target}) {
        if (!f.defined()) continue;
        const Var block = schedule_elementwise_gpu(f, a, p);
        // The loss or grad_target takes the log (never both in one pass).
        const bool takes_log = !a.grad_input.defined() || f.name() != a.grad_input.name();
        if (takes_log) schedule_log_table(a, f, block, p.threads_per_block);
        specialize_unit_stride(f, unit_stride);
    }
}

}  // namespace kldiv::schedules
