// What the distillation kernels (dsl/distill.h) and their callers agree on:
// the passes, the row statistics and the summation layout. No Halide here:
// the runtime and the kernel specs include it.
#pragma once

namespace kldiv::dsl {

// The row statistics a pass records, float64, (k, row): the row's loss
// (unscaled, 0 for a masked row), then each operand's maximum of logit / T and
// log of its sum of exp(logit / T - maximum). Backward passes read them.
enum DistillStat { kRowLoss = 0, kStudentMax, kStudentLogSum, kTeacherMax, kTeacherLogSum, kDistillStats };

// The sums of a row: `kDistillLanes` partial sums in float64, one per lane of
// the steps of kDistillLanes adjacent elements (the last step is the row's
// last kDistillLanes elements, its lanes already counted masked), added in
// lane order; the maxima and exp sums are taken over blocks of kDistillBlock
// elements, whose float64 sums are rescaled to the row's maximum and added in
// block order. A property of the numerics, not of the vector width: every
// target sums in this order. Kernels take rows of at least kDistillLanes
// logits (the runtime pads shorter ones with -inf).
constexpr int kDistillLanes = 32;
constexpr int kDistillBlock = 2048;

enum class DistillPass {
    Forward,   // stats
    Fused,     // stats and the student's gradient for upstream gradient 1, scaled by grad_scale
    Backward,  // either or both gradients from forward's stats, scaled per row
};

}  // namespace kldiv::dsl
