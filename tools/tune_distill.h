// `kldiv tune` for the distillation kernels (distill:DPASS:DTYPE specs), on
// CPU targets: every candidate compiled by the JIT for the workload's
// vocabulary, required to give the library's bits, and timed.
#pragma once

#include "tune_options.h"

namespace kldiv::tools::tune {

// `kldiv tune --spec distill:...`; returns the exit status, throws
// UsageError for a target or baselines it cannot tune with.
int run_distill_tune(const Options &o);

}  // namespace kldiv::tools::tune
