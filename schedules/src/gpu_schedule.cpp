// GPU schedules (CUDA). Correct by construction and deterministic: every
// reduction adds in a fixed order (lanes of a chunk as the summation tree says,
// chunk sums in float64 in index order). Not yet measured on a GPU.
#include "kldiv/schedules/cpu_schedule.h"

namespace kldiv::schedules {

using Halide::Func;
using Halide::TailStrategy;
using Halide::Var;

namespace {

// `elements_per_thread` adjacent elements per thread (one vector load when
// `vector_loads`): blocks of `threads` along dimension 0, one block index over
// those blocks and the outer dimensions (which may be large).
void schedule_elementwise_gpu(Func f, const dsl::Algorithm &a, const GpuParams &p) {
    const auto &[i0, i1, i2, i3] = a.dims;
    Var rows("rows"), outer_rows("outer_rows"), block("block"), in_block("in_block"), thread("thread"),
        element("element"), blocks("blocks");
    f.compute_root()
        .fuse(i2, i3, outer_rows)
        .fuse(i1, outer_rows, rows)
        .split(i0, block, in_block, p.threads_per_block * p.elements_per_thread, TailStrategy::GuardWithIf)
        .split(in_block, thread, element, p.elements_per_thread, TailStrategy::GuardWithIf)
        .fuse(block, rows, blocks)
        .gpu_blocks(blocks)
        .gpu_threads(thread);
    if (p.elements_per_thread > 1 && p.vector_loads) f.vectorize(element);
    if (p.elements_per_thread > 1 && !p.vector_loads) f.unroll(element);
}

// A block per chunk; its threads are the chunk's lanes, each summing every
// `lanes`-th element; the block then adds its lanes as the tree says. The
// chunk sums are added on the host, in float64, in order.
void schedule_sum_gpu(dsl::Algorithm &a) {
    const auto &[i0, i1, i2, i3] = a.dims;
    (void)i0;
    Var rows("rows"), outer_rows("outer_rows"), blocks("blocks");
    a.chunk_sum.compute_root()
        .fuse(i2, i3, outer_rows)
        .fuse(i1, outer_rows, rows)
        .fuse(a.chunk, rows, blocks)
        .gpu_blocks(blocks);
    a.lane_sum.compute_at(a.chunk_sum, blocks).gpu_threads(a.lane);
    a.lane_sum.update().reorder(a.lane, a.step.x).gpu_threads(a.lane);
}

}  // namespace

void apply_gpu(dsl::Algorithm &a, const Params &params) {
    const GpuParams &p = params.gpu;
    if (a.total.defined()) schedule_sum_gpu(a);
    if (a.loss.defined()) schedule_elementwise_gpu(a.loss, a, p);
    if (a.grad_input.defined()) schedule_elementwise_gpu(a.grad_input, a, p);
    if (a.grad_target.defined()) schedule_elementwise_gpu(a.grad_target, a, p);
}

}  // namespace kldiv::schedules
