// Reduction names and PyTorch's legacy size_average / reduce arguments.
#include "errors.h"

namespace kldiv {

namespace {

// torch.nn._reduction.legacy_get_string: either argument unset counts as true.
std::string legacy_reduction_name(std::optional<bool> size_average, std::optional<bool> reduce) {
    const bool average = size_average.value_or(true);
    const bool reducing = reduce.value_or(true);
    const char *name = !reducing ? "none" : (average ? "mean" : "sum");
    runtime::warn(std::string("size_average and reduce args will be deprecated, please use reduction='") + name +
                  "' instead.");
    return name;
}

}  // namespace

Reduction parse_reduction(const std::string &name) {
    if (name == "none") return Reduction::None;
    if (name == "mean") return Reduction::Mean;
    if (name == "sum") return Reduction::Sum;
    if (name == "batchmean") return Reduction::BatchMean;
    runtime::fail(ErrorCode::InvalidArgument, name + " is not a valid value for reduction");
}

const char *reduction_name(Reduction reduction) {
    switch (reduction) {
    case Reduction::None: return "none";
    case Reduction::Mean: return "mean";
    case Reduction::Sum: return "sum";
    case Reduction::BatchMean: return "batchmean";
    }
    return "unknown";
}

ResolvedReduction resolve_functional(const FunctionalOptions &options) {
    const bool divide_by_batch = options.reduction == "batchmean";
    if (options.size_average.has_value() || options.reduce.has_value()) {
        const std::string mapped = legacy_reduction_name(options.size_average, options.reduce);
        return {parse_reduction(mapped), divide_by_batch};
    }
    // Validate first: an unknown name is an error, not a warning.
    const Reduction reduction = parse_reduction(options.reduction);
    if (reduction == Reduction::Mean) runtime::warn_mean_reduction();
    // The functional form computes batchmean as sum, then divides.
    return {reduction == Reduction::BatchMean ? Reduction::Sum : reduction, divide_by_batch};
}

KLDivLoss::KLDivLoss(std::optional<bool> size_average, std::optional<bool> reduce, const std::string &reduction,
                     bool log_target)
    : reduction_(reduction), log_target_(log_target) {
    if (size_average.has_value() || reduce.has_value()) reduction_ = legacy_reduction_name(size_average, reduce);
}

void KLDivLoss::forward(const Tensor &input, const Tensor &target, const Tensor &out) const {
    FunctionalOptions options;
    options.reduction = reduction_;
    options.log_target = log_target_;
    kl_div(input, target, out, options);
}

}  // namespace kldiv
