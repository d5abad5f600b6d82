// Schedules for the distillation passes (dsl/distill.h).
#pragma once

#include <Halide.h>

#include "kldiv/dsl/distill.h"

namespace kldiv::schedules {

// CPU: rows in parallel; every row statistic of a row computed where the row
// is, so that its logits are read from memory once and then from cache; the
// element loops vectorised along the vocabulary. `unit_stride` holds the
// conditions of the fast path (every 2-d buffer's dimension 0 of stride 1).
void apply_distill_cpu(dsl::DistillAlgorithm &algorithm, const dsl::DistillOptions &options,
                       const Halide::Target &target, const Halide::Expr &unit_stride);

}  // namespace kldiv::schedules
