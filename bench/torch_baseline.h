// libtorch as the benchmark's baseline, behind a header without torch types so
// that only torch_baseline.cpp pays for torch's headers. Built only when CMake
// finds Torch (KLDIV_HAVE_TORCH).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kldiv/kldiv.hpp"

namespace kldiv::bench {

struct TorchCase {
    const void *input = nullptr;  // contiguous, in `dtype` (16-bit as raw bits)
    const void *target = nullptr;
    std::vector<std::int64_t> shape;
    DType dtype = DType::Float32;
    Reduction reduction = Reduction::Mean;
    bool log_target = false;
    // false: the loss alone (torch::kl_div, no autograd); true: the loss and
    // its gradient wrt input through autograd (upstream ones for none).
    bool with_grad_input = false;
};

struct TorchTiming {
    double seconds = 0;  // median seconds per call; 0 when torch failed
    std::string error;   // torch's message, first line, when it failed
};

// Threads of torch's intra-op pool.
void set_torch_threads(int threads);

// Median time of `torch_case` over the calls that fill `budget_seconds` (at
// least 10), after a warm-up of a tenth of that. Never throws.
TorchTiming time_torch(const TorchCase &torch_case, double budget_seconds);

std::string torch_version();

}  // namespace kldiv::bench
