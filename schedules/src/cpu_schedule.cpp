#include "kldiv/schedules/cpu_schedule.h"

#include <algorithm>

#include "kldiv/dsl/math.h"

namespace kldiv::schedules {

using Halide::Func;
using Halide::TailStrategy;
using Halide::Var;

dsl::SumTree sum_tree(const Halide::Target &target, DType dtype, const Params &params) {
    dsl::SumTree tree;
    if (target.has_gpu_feature()) {
        tree.lanes = params.gpu.sum_lanes * gpu_lanes_per_thread(dtype);
        tree.chunk = params.gpu.sum_chunk;
        return tree;
    }
    // Not the target's vector width: the same parameters sum in the same
    // order on every feature level.
    tree.lanes = kSumLanesUnit * params.cpu.sum_lanes_factor;
    tree.chunk = params.cpu.sum_chunk;
    return tree;
}

int gpu_lanes_per_thread(DType dtype) { return std::max(1, 8 / (int)element_size(dtype)); }

namespace {

// The unit-stride fast path beside the general loop nest. Not when the
// strides are fixed (a constant condition): the one loop nest is already the
// right case, and a copy would only double the compile time.
void specialize_unit_stride(Func f, const CpuParams &p, const Halide::Expr &unit_stride) {
    if (p.unit_stride_fast_path && !Halide::Internal::is_const(unit_stride)) f.specialize(unit_stride);
}

// One parallel loop over blocks of dimension 0 times the outer rows; inside a
// block, vectors along dimension 0. The runtime has coalesced dimensions, so
// the common case is one long row. Returns the loop over vectors.
// Measured: 2-core AMD EPYC (AVX-512), 2^24 f32 forward `none`, 5.43 ms, 37.1 GB/s (100% of copy).
Var schedule_elementwise(Func f, const dsl::Algorithm &a, int vector_size, const CpuParams &p,
                         const Halide::Expr &unit_stride, bool specialize = true) {
    const auto &[i0, i1, i2, i3] = a.dims;
    Var rows("rows"), outer_rows("outer_rows"), block("block"), within("within"), task("task");
    Var vectors("vectors"), lanes("lanes");
    // Blocks of equal size (a whole number of vectors): a short last block
    // would still run a full block of guarded, masked vector iterations.
    const Halide::Expr n0 = a.extent[0];
    const Halide::Expr blocks = Halide::max((n0 + p.elements_per_task - 1) / p.elements_per_task, 1);
    const Halide::Expr block_size = ((n0 + blocks - 1) / blocks + vector_size - 1) / vector_size * vector_size;
    f.compute_root()
        .fuse(i2, i3, outer_rows)
        .fuse(i1, outer_rows, rows)
        .split(i0, block, within, block_size, TailStrategy::GuardWithIf)
        .fuse(block, rows, task)
        .split(within, vectors, lanes, vector_size, TailStrategy::GuardWithIf)
        .vectorize(lanes);
    if (p.unroll > 1) {
        Var unrolled("unrolled");
        f.split(vectors, vectors, unrolled, p.unroll, TailStrategy::GuardWithIf).unroll(unrolled);
    }
    if (p.parallel) f.parallel(task);
    if (specialize) specialize_unit_stride(f, p, unit_stride);
    return vectors;
}

// Chunks in one parallel task: the parameter, or, where the number of chunks
// in a row is a constant (a kernel fixed to a shape), its largest divisor not
// above the parameter, if that is at least half of it. The tasks then cover
// the chunks exactly, and Halide emits no second loop nest for a last,
// partial task (the same sums, in less code).
int chunks_per_task(const dsl::Algorithm &a, const CpuParams &p) {
    const Halide::Expr chunks = Halide::Internal::simplify((a.extent[0] + a.chunk_length - 1) / a.chunk_length);
    const int64_t *known = Halide::Internal::as_const_int(chunks);
    if (!known || *known < 1) return p.chunks_per_task;
    const int64_t most = std::min<int64_t>(p.chunks_per_task, *known);
    int64_t divisor = most;
    while (*known % divisor != 0) divisor--;
    return 2 * divisor >= most ? (int)divisor : p.chunks_per_task;
}

// A chunk's partial sums, computed where `chunk_sum` computes that chunk:
// one fixed set of float64 vectors (bound_extent lets them live in registers
// even where bounds inference cannot see a single chunk, as under
// compute_with). Each iteration adds a block of kSumBlockSteps steps, so
// native vectors already keep that many loss evaluations in flight: wider
// ones spilled (2-core AMD EPYC, AVX-512, 2^24 f32 forward sum: 4.5-4.8 ms
// at two native vectors, 4.0-4.2 ms at one).
void schedule_partial_sums(dsl::Algorithm &a, const Var &in_task, int vector_size, const CpuParams &p) {
    const int width = std::min(vector_size / p.vector_factor, a.tree.lanes);
    a.lane_sum.compute_at(a.chunk_sum, in_task).bound_extent(a.chunk, 1).vectorize(a.lane, width);
    a.lane_sum.update().reorder(a.lane, a.blocks.x).vectorize(a.lane, width);
    if (p.unroll > 1) a.lane_sum.update().unroll(a.blocks.x, p.unroll, TailStrategy::GuardWithIf);
}

// Fused forward+backward, `none`: both outputs in one loop nest, so each
// vector of input and target is loaded once for both.
// Measured: 2-core AMD EPYC (AVX-512), 2^24 f32, 8.11 ms (forward then backward: 10.89 ms; copy ceiling 32.9 GB/s).
void schedule_fused_none(dsl::Algorithm &a, int vector_size, const CpuParams &p, const Halide::Expr &unit_stride) {
    const Var vectors = schedule_elementwise(a.loss, a, vector_size, p, unit_stride, false);
    schedule_elementwise(a.grad_input, a, vector_size, p, unit_stride, false);
    a.grad_input.compute_with(a.loss, vectors);
    specialize_unit_stride(a.loss, p, unit_stride);
}

// Fused forward+backward, reduced: grad_input is cut into the same chunks as
// the sum and computed with each chunk, while the chunk is in L1.
// Measured: 2-core AMD EPYC (Zen 5, AVX-512), 2^24 f32 sum, 4.82 ms (tuned, cpt=64: 4.31 ms; read ceiling 56 GB/s).
void schedule_fused_sum(dsl::Algorithm &a, int vector_size, const CpuParams &p, const Halide::Expr &unit_stride) {
    const auto &[i0, i1, i2, i3] = a.dims;
    Var tasks("tasks"), in_task("in_task"), chunk("chunk"), in_chunk("in_chunk"), step("step"), lane("lane");
    // Only chunk tasks run in parallel (rows stay serial): compute_with needs
    // both loop nests to decompose their loops identically.
    const int per_task = chunks_per_task(a, p);
    a.chunk_sum.compute_root().split(a.chunk, tasks, in_task, per_task, TailStrategy::GuardWithIf);
    a.grad_input.compute_root()
        .split(i0, chunk, in_chunk, a.chunk_length, TailStrategy::GuardWithIf)
        .split(chunk, tasks, in_task, per_task, TailStrategy::GuardWithIf)
        .split(in_chunk, step, lane, vector_size, TailStrategy::GuardWithIf)
        .vectorize(lane);
    if (p.unroll > 1) a.grad_input.unroll(step, p.unroll, TailStrategy::GuardWithIf);
    if (p.parallel) {
        a.chunk_sum.parallel(tasks);
        a.grad_input.parallel(tasks);
    }
    schedule_partial_sums(a, in_task, vector_size, p);
    a.grad_input.compute_with(a.chunk_sum, in_task);
    specialize_unit_stride(a.chunk_sum, p, unit_stride);
}

// Measured: 2-core AMD EPYC (Zen 5, AVX-512), 2^24 f32 forward sum, 3.17 ms, 42.3 GB/s (73% of a
// 58 GB/s read ceiling; tuned, cpt=64: 2.58 ms, 90%).
void schedule_sum(dsl::Algorithm &a, int vector_size, const CpuParams &p,
                  const Halide::Expr &unit_stride) {
    const auto &[i0, i1, i2, i3] = a.dims;
    Var tasks("tasks"), in_task("in_task"), job("job");
    // Parallel jobs of `chunks_per_task` chunks of one row; each chunk's
    // partial sums live in registers (lane_sum, one set of vectors). Only
    // dimension 1 is fused into the jobs: a fused index split by modulo would
    // make bounds inference give lane_sum whole rows of storage.
    a.chunk_sum.compute_root()
        .split(a.chunk, tasks, in_task, chunks_per_task(a, p), TailStrategy::GuardWithIf)
        .fuse(tasks, i1, job);
    if (p.parallel) a.chunk_sum.parallel(job);
    schedule_partial_sums(a, in_task, vector_size, p);
    specialize_unit_stride(a.chunk_sum, p, unit_stride);
}

}  // namespace

void apply_cpu(dsl::Algorithm &a, const Halide::Target &target, DType dtype, const Params &params,
               const Halide::Expr &unit_stride) {
    const CpuParams &p = params.cpu;
    const int vector_size = target.natural_vector_size(dsl::compute_type(dtype)) * p.vector_factor;
    const bool fused = a.grad_input.defined() && (a.total.defined() || a.loss.defined());
    if (fused && a.total.defined()) return schedule_fused_sum(a, vector_size, p, unit_stride);
    if (fused) return schedule_fused_none(a, vector_size, p, unit_stride);
    if (a.total.defined()) schedule_sum(a, vector_size, p, unit_stride);
    if (a.loss.defined()) schedule_elementwise(a.loss, a, vector_size, p, unit_stride);
    if (a.grad_input.defined()) schedule_elementwise(a.grad_input, a, vector_size, p, unit_stride);
    if (a.grad_target.defined()) schedule_elementwise(a.grad_target, a, vector_size, p, unit_stride);
}

}  // namespace kldiv::schedules
