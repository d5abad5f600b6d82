// Schedules for the distillation passes (dsl/distill.h).
#pragma once

#include <Halide.h>

#include "kldiv/dsl/distill.h"
#include "kldiv/schedules/params.h"

namespace kldiv::schedules {

// CPU: rows in parallel; every row statistic of a row computed where the row
// is, so that its logits are read from memory once and then from cache; the
// element loops vectorised along the vocabulary. `unit_stride` holds the
// conditions of the fast path (every 2-d buffer's dimension 0 of stride 1).
// `params` change the speed only, never a result.
void apply_distill_cpu(dsl::DistillAlgorithm &algorithm, const dsl::DistillOptions &options,
                       const Halide::Target &target, const Halide::Expr &unit_stride,
                       const DistillParams &params = {});

// CUDA: a launch per stage, each over rows or (block, row) pairs.
//   1. each block's maxima (kDistillBlock logits of a row): a CUDA block of
//      kDistillLanes threads, one per lane, the lanes' maxima in shared memory;
//   2. each block's sums: the same shape, reading the block again (from L2);
//   3. the rows' maxima and log-sums: a thread per row;
//   4. the rows' losses: a CUDA block of kDistillLanes threads per row;
//   5. the statistics: a thread per row;
//   6. the gradients: elementwise, `threads` threads per CUDA block along the
//      vocabulary, each `elements` logits.
// The sums keep the algorithm's order, so results do not depend on the launch
// shape or on timing.
void apply_distill_gpu(dsl::DistillAlgorithm &algorithm, int threads = 256, int elements = 4);

}  // namespace kldiv::schedules
