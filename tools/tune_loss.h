// `kldiv tune` for the loss kernels (PASS:DTYPE:REDUCTION specs): every
// candidate compiled by the JIT for the exact shape, checked against the
// float64 reference and timed, on the CPU or on GPU 0 for CUDA targets.
#pragma once

#include "tune_options.h"

namespace kldiv::tools::tune {

// `kldiv tune --spec PASS:DTYPE:REDUCTION[...]`; returns the exit status,
// throws UsageError for a target or baselines it cannot tune with.
int run_loss_tune(const Options &o);

}  // namespace kldiv::tools::tune
