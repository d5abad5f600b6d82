// Distillation from logits: the KL divergence between the teacher's and the
// student's softmax at temperature T, per row of the last dimension, with its
// gradients, without a [rows, vocab] intermediate. No scheduling here
// (schedules/distill_schedule.h). SPEC: docs/distillation.md.
//
// Per row, p = softmax(t / T) and q = softmax(s / T):
//   forward KL  L = sum_j p_j (log p_j - log q_j)   (0 where p_j == 0)
//   reverse KL  L = sum_j q_j (log q_j - log p_j)   (0 where q_j == 0)
// and, for a row gradient scale g (upstream gradient, divisor and 1/T):
//   forward: dL/ds_j = g (q_j - p_j),  dL/dt_j = g p_j (log p_j - log q_j - L)
//   reverse: dL/ds_j = g q_j (log q_j - log p_j - L),  dL/dt_j = g (p_j - q_j)
// log p_j = (t_j / T - max t / T) - log sum_k exp(t_k / T - max t / T): the
// maximum and the log-sum-exp are row statistics, so the loss takes no log
// per element and two exps.
#pragma once

#include <Halide.h>

#include "kldiv/dsl/distill_layout.h"
#include "kldiv/dsl/dtype.h"
#include "kldiv/dsl/math.h"

namespace kldiv::dsl {

struct DistillOptions {
    DType dtype = DType::Float32;
    DistillPass pass = DistillPass::Forward;
    bool reverse = false;
    bool grad_student = true;   // Backward
    bool grad_teacher = false;  // Backward
    MathOptions math;
};

struct DistillInputs {
    Halide::Func student;        // (j, row), storage type (16-bit types as UInt(16) bits)
    Halide::Func teacher;        // (j, row)
    Halide::Func row_on;         // (row), UInt(8): 0 for a masked row
    Halide::Func stats;          // (k, row), Float(64): forward's (Backward)
    Halide::Func row_scale;      // (row), Float(64): the gradient scale of each row (Backward)
    Halide::Expr inv_temperature;  // Float(64): 1 / T
    Halide::Expr grad_scale;     // Float(64) (Fused)
    Halide::Expr vocab;          // the extent of j
};

struct DistillAlgorithm {
    Halide::Var j{"j"}, row{"row"}, k{"k"}, lane{"lane"}, block{"block"};
    Halide::RDom block_steps;  // a block's steps of kDistillLanes elements
    Halide::RDom row_steps;    // a row's steps of kDistillLanes elements (the loss)
    Halide::Func block_max_lanes;  // (lane, block, row): Tuple (student, teacher), compute type
    Halide::Func block_max;        // (block, row): Tuple, compute type
    Halide::Func block_sum_lanes;  // (lane, block, row): Tuple, float64
    Halide::Func block_sum;        // (block, row): Tuple, float64
    Halide::Func block_stats;      // (block, row): Tuple (both maxima, both sums)
    Halide::Func row_max;      // (row): Tuple, compute type
    Halide::Func row_log_sum;  // (row): Tuple, compute type
    Halide::Func loss_lanes;   // (lane, row): float64
    Halide::Func row_loss;     // (row): float64
    Halide::Func stats;        // (k, row): output of Forward and Fused
    Halide::Func grad_student;  // (j, row): storage type (output)
    Halide::Func grad_teacher;  // (j, row): storage type (output)
};

DistillAlgorithm distill(const DistillInputs &in, const DistillOptions &options);

}  // namespace kldiv::dsl
