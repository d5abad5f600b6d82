#include "kldiv/schedules/distill_schedule.h"

#include <vector>

namespace kldiv::schedules {

using Halide::Func;
using Halide::TailStrategy;
using Halide::Var;

namespace {

// A row's partial sums of kDistillLanes lanes, computed where `at` says, one
// vector of lanes per step, `unroll` steps per loop iteration (each lane
// still adds its steps in order).
void schedule_lanes(Func lanes, const Halide::LoopLevel &at, const Var &lane, const Halide::RVar &step, int unroll) {
    lanes.compute_at(at).bound(lane, 0, dsl::kDistillLanes).vectorize(lane);
    Halide::Stage update = lanes.update();
    update.reorder(lane, step).vectorize(lane);
    if (unroll > 1) {
        Halide::RVar outer(step.name() + "_outer"), inner(step.name() + "_inner");
        update.split(step, outer, inner, unroll, TailStrategy::GuardWithIf).unroll(inner);
    }
}

// Rows in parallel tasks of `rows_per_task`: the loop over rows within a
// task (the row loop itself when a task is one row).
Var parallel_rows(Func f, const Var &row, int rows_per_task) {
    if (rows_per_task == 1) {
        f.parallel(row);
        return row;
    }
    Var tasks("row_tasks"), in_task("row_in_task");
    f.split(row, tasks, in_task, rows_per_task, TailStrategy::GuardWithIf).parallel(tasks);
    return in_task;
}

// An element loop over (j, row): rows in parallel, vectors along j.
void schedule_elements(Func f, const dsl::DistillAlgorithm &a, int vector_size, int rows_per_task) {
    Var vectors("vectors"), j_lanes("j_lanes");
    f.compute_root().split(a.j, vectors, j_lanes, vector_size, TailStrategy::GuardWithIf).vectorize(j_lanes);
    parallel_rows(f, a.row, rows_per_task);
}

}  // namespace

void apply_distill_cpu(dsl::DistillAlgorithm &a, const dsl::DistillOptions &options, const Halide::Target &target,
                       const Halide::Expr &unit_stride, const DistillParams &params) {
    const int vector_size = target.natural_vector_size(dsl::compute_type(options.dtype));
    std::vector<Func> grads;
    if (a.grad_student.defined()) grads.push_back(a.grad_student);
    if (a.grad_teacher.defined()) grads.push_back(a.grad_teacher);
    // 16-bit gradients by default: two float32 vectors per store, one full
    // vector of 16-bit values. With one, LLVM stores through AVX-512's
    // truncating vpmovdw to memory, which is microcoded on AMD's Zen 4 and 5:
    // 7x slower (2-core AMD EPYC, Zen 5, bf16 4096x32000 student backward:
    // 740 ms, 47 ms with two).
    const int grad_factor = params.grad_vector_factor > 0 ? params.grad_vector_factor
                                                          : (element_size(options.dtype) == 2 ? 2 : 1);
    const int rows_per_task = params.rows_per_task;
    for (Func g : grads) schedule_elements(g, a, grad_factor * vector_size, rows_per_task);

    if (!a.stats.defined()) {
        // Backward: both gradients in one loop nest.
        if (grads.size() == 2) grads[1].compute_with(grads[0], Var("vectors"));
        if (!Halide::Internal::is_const(unit_stride)) grads[0].specialize(unit_stride);
        return;
    }
    a.stats.compute_root().bound(a.k, 0, dsl::kDistillStats).unroll(a.k);
    const Var row = parallel_rows(a.stats, a.row, rows_per_task);
    const Halide::LoopLevel at_row(a.stats, row);
    for (Func f : {a.block_stats, a.row_max, a.row_log_sum, a.row_loss}) f.compute_at(at_row);
    // A block's exp sums right after its maximum: the first reads the block
    // from memory, the second from L1. (Measured: 2-core AMD EPYC, Zen 5,
    // f32 4096x32000 forward, 103 ms either way: the kernel is bound by
    // arithmetic there.)
    const Halide::LoopLevel at_block(a.block_stats, a.block);
    a.block_max.compute_at(at_block);
    a.block_sum.compute_at(at_block);
    const int unroll = params.lane_unroll;
    schedule_lanes(a.block_max_lanes, Halide::LoopLevel(a.block_max, a.block), a.lane, a.block_steps.x, unroll);
    schedule_lanes(a.block_sum_lanes, Halide::LoopLevel(a.block_sum, a.block), a.lane, a.block_steps.x, unroll);
    schedule_lanes(a.loss_lanes, at_row, a.lane, a.row_steps.x, unroll);
    // The gradient in the same loop over rows, after the row's statistics.
    for (Func g : grads) g.compute_with(a.stats, row);
    if (!Halide::Internal::is_const(unit_stride)) a.stats.specialize(unit_stride);
}

namespace {

// A row statistic over rows: `threads_per_block` rows per CUDA block, a thread
// each, its update stages too.
void schedule_per_row_gpu(Func f, const Var &row, int threads_per_block) {
    Var rows("rows"), row_thread("row_thread");
    f.compute_root().split(row, rows, row_thread, threads_per_block, TailStrategy::GuardWithIf).gpu_blocks(rows).gpu_threads(
        row_thread);
    for (int u = 0; u < f.num_update_definitions(); u++) {
        f.update(u).split(row, rows, row_thread, threads_per_block, TailStrategy::GuardWithIf).gpu_blocks(rows).gpu_threads(
            row_thread);
    }
}

// A row's (or a block's) partial sums, one thread per lane, computed inside
// the CUDA block of `at`; each thread walks its steps `unroll` at a time, as
// many loads in flight.
void schedule_lanes_gpu(Func lanes, const Halide::LoopLevel &at, const Var &lane, const Halide::RVar &step,
                        int unroll) {
    lanes.compute_at(at).bound(lane, 0, dsl::kDistillLanes).gpu_threads(lane);
    Halide::RVar outer(step.name() + "_outer"), inner(step.name() + "_inner");
    lanes.update()
        .reorder(step, lane)
        .split(step, outer, inner, unroll, TailStrategy::GuardWithIf)
        .unroll(inner)
        .gpu_threads(lane);
}

}  // namespace

void apply_distill_gpu(dsl::DistillAlgorithm &a, int threads, int elements) {
    constexpr int kRowThreads = 64;
    constexpr int kUnroll = 8;
    for (Func g : {a.grad_student, a.grad_teacher}) {
        if (!g.defined()) continue;
        Var block("block"), in_block("in_block"), thread("thread"), element("element");
        g.compute_root()
            .split(a.j, block, in_block, threads * elements, TailStrategy::GuardWithIf)
            .split(in_block, thread, element, elements, TailStrategy::GuardWithIf)
            .reorder(element, thread, block, a.row)
            .unroll(element)
            .gpu_blocks(block, a.row)
            .gpu_threads(thread);
    }
    if (!a.stats.defined()) return;  // Backward: the statistics are inputs.

    // 1.-2. A block's maximum, then its sums: a launch each. (In one launch,
    // the sums' lane loop after the maximum's single-thread stage, Halide 14
    // drops the whole launch from the pipeline: its simplifier removes the
    // loop; seen in the generated code.)
    a.block_max.compute_root().gpu_blocks(a.block, a.row);
    a.block_max.update().gpu_blocks(a.block, a.row);
    schedule_lanes_gpu(a.block_max_lanes, Halide::LoopLevel(a.block_max, a.block), a.lane, a.block_steps.x, kUnroll);
    a.block_stats.compute_root().gpu_blocks(a.block, a.row);
    const Halide::LoopLevel at_block(a.block_stats, a.block);
    a.block_sum.compute_at(at_block);
    schedule_lanes_gpu(a.block_sum_lanes, at_block, a.lane, a.block_steps.x, kUnroll);
    // 3.-5.
    schedule_per_row_gpu(a.row_max, a.row, kRowThreads);
    schedule_per_row_gpu(a.row_log_sum, a.row, kRowThreads);
    a.row_loss.compute_root().gpu_blocks(a.row);
    schedule_lanes_gpu(a.loss_lanes, Halide::LoopLevel(a.row_loss, a.row), a.lane, a.row_steps.x, kUnroll);
    schedule_per_row_gpu(a.stats, a.row, kRowThreads);
    a.stats.bound(a.k, 0, dsl::kDistillStats).unroll(a.k);
}

}  // namespace kldiv::schedules
