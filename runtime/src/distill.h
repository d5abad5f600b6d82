// Distillation from logits (kldiv_distill_* in kldiv.h): validation, the
// kernel calls (dsl/distill.h; AOT or JIT kernels, as the runtime's cache
// gives them) and the reduction over rows.
#pragma once

#include <cstdint>

#include "kldiv/dsl/distill_layout.h"
#include "kldiv/kldiv.h"
#include "kldiv/kldiv.hpp"
#include "kernel_cache.h"

namespace kldiv::runtime {

static_assert(kDistillStatsPerRow == KLDIV_DISTILL_STATS_PER_ROW && kDistillStatsPerRow == dsl::kDistillStats,
              "the C ABI's, the C++ API's and the kernels' statistics per row are one layout");

// The loss into `out`; with `stats`, the rows' statistics for a backward call.
void distill_forward(KernelCache &cache, const Tensor &student, const Tensor &teacher, const DistillOptions &options,
                     const Tensor &out, double *stats);

// The loss and the student's gradient for upstream gradient 1, from one pass
// over each row. `grad_student` may be `student` itself (the same view).
void distill_forward_backward(KernelCache &cache, const Tensor &student, const Tensor &teacher,
                              const DistillOptions &options, const Tensor &out, const Tensor &grad_student,
                              double *stats);

// Gradients for upstream gradient `grad_output` (the loss's shape); `stats`
// from a forward call on the same logits, or null (then computed again).
void distill_backward(KernelCache &cache, const Tensor &grad_output, const Tensor &student, const Tensor &teacher,
                      const DistillOptions &options, const double *stats, const Tensor *grad_student,
                      const Tensor *grad_teacher);

}  // namespace kldiv::runtime
