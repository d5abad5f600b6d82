#include "torch_baseline.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <functional>

#include "timing.h"

namespace kldiv::bench {

using tools::median;
using tools::seconds_of;

namespace {

torch::ScalarType scalar_type(DType dtype) {
    switch (dtype) {
    case DType::Float32: return torch::kFloat32;
    case DType::Float64: return torch::kFloat64;
    case DType::Float16: return torch::kFloat16;
    case DType::BFloat16: return torch::kBFloat16;
    }
    return torch::kFloat32;
}

// F.kl_div as Python's functional form computes it, without the functional
// C++ API's per-call warning for 'mean': batchmean is sum / input.size(0).
torch::Tensor kl_div(const torch::Tensor &input, const torch::Tensor &target, Reduction reduction,
                     bool log_target) {
    int64_t torch_reduction = at::Reduction::Mean;
    switch (reduction) {
    case Reduction::None: torch_reduction = at::Reduction::None; break;
    case Reduction::Mean: torch_reduction = at::Reduction::Mean; break;
    case Reduction::Sum:
    case Reduction::BatchMean: torch_reduction = at::Reduction::Sum; break;
    }
    torch::Tensor loss = torch::kl_div(input, target, torch_reduction, log_target);
    if (reduction == Reduction::BatchMean && input.dim() != 0) loss = loss / input.size(0);
    return loss;
}

}  // namespace

void set_torch_threads(int threads) { torch::set_num_threads(threads); }

std::string torch_version() { return TORCH_VERSION; }

TorchTiming time_torch(const TorchCase &c, double budget_seconds) {
    try {
        const auto options = torch::TensorOptions().dtype(scalar_type(c.dtype));
        const torch::Tensor input = torch::from_blob(const_cast<void *>(c.input), c.shape, options);
        const torch::Tensor target =
            torch::from_blob(const_cast<void *>(c.target), c.shape, options);
        std::function<void()> call;
        torch::Tensor ones;
        if (!c.with_grad_input) {
            call = [&] {
                torch::NoGradGuard no_grad;
                torch::Tensor loss = kl_div(input, target, c.reduction, c.log_target);
            };
        } else {
            if (c.reduction == Reduction::None) ones = torch::ones(c.shape, options);
            call = [&] {
                torch::Tensor x = input.detach().requires_grad_(true);
                torch::Tensor loss = kl_div(x, target, c.reduction, c.log_target);
                torch::autograd::variable_list upstream;
                if (ones.defined()) upstream.push_back(ones);
                torch::autograd::grad({loss}, {x}, upstream);
            };
        }
        // Torch's first calls are slow (allocator, OpenMP team), and on a
        // shared machine a call can lose a scheduler slice: warm up for a
        // tenth of the budget, then take the median of what fits in the rest.
        double warmup = 0;
        for (int i = 0; i < 2 || warmup < 0.1 * budget_seconds; ++i) warmup += seconds_of(call);
        std::vector<double> seconds;
        double spent = 0;
        while ((seconds.size() < 10 || spent < budget_seconds) && seconds.size() < 1000) {
            seconds.push_back(seconds_of(call));
            spent += seconds.back();
        }
        return {median(seconds), ""};
    } catch (const std::exception &error) {
        std::string message = error.what();
        message = message.substr(0, message.find('\n'));
        return {0, message};
    }
}

}  // namespace kldiv::bench
