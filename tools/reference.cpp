#include "reference.h"

#include <cmath>
#include <cstdio>
#include <limits>

#include "host_buffer.h"

namespace kldiv::tools {

namespace {

// torch.xlogy: NaN if b is NaN, else 0 if a == 0, else a * log(b).
double xlogy(double a, double b) {
    if (std::isnan(b)) return b;
    if (a == 0) return 0;
    return a * std::log(b);
}

}  // namespace

Term pointwise_loss(double x, double t, bool log_target) {
    if (log_target) {
        const double e = std::exp(t);
        return {e * (t - x), e * (std::fabs(t) + std::fabs(x))};
    }
    const double entropy = xlogy(t, t);
    return {entropy - t * x, std::fabs(entropy) + std::fabs(t * x)};
}

Term grad_input_term(double g, double x, double t, bool log_target) {
    (void)x;
    if (log_target) {
        const double e = g * std::exp(t);
        return {-e, std::fabs(e)};
    }
    return {(-g) * t, std::fabs(g * t)};
}

Term grad_target_term(double g, double x, double t, bool log_target) {
    if (log_target) {
        const double e = std::exp(t);
        return {(g * (t - x)) * e + g * e, std::fabs(g) * e * (std::fabs(t) + std::fabs(x) + 1)};
    }
    // PyTorch's xlogy backward is taken as 0 where t == 0; (g * t) / t is then NaN.
    const double log_term = t == 0 ? 0.0 : xlogy(g, t);
    return {log_term + (g * t) / t + (-g) * x,
            std::fabs(log_term) + std::fabs(g) + std::fabs(g * x)};
}

double reduction_divisor(Reduction reduction, const std::vector<std::int64_t> &shape) {
    switch (reduction) {
    case Reduction::Mean: {
        double numel = 1;
        for (std::int64_t size : shape) numel *= (double)size;
        return numel;
    }
    case Reduction::BatchMean: return shape.empty() ? 1.0 : (double)shape[0];
    default: return 1.0;
    }
}

std::string format_value(double value, int digits) {
    if (std::isnan(value)) return "nan";
    char text[64];
    std::snprintf(text, sizeof text, "%.*g", digits, value);
    return text;
}

double relative_tolerance(DType dtype) {
    switch (dtype) {
    case DType::Float64: return 1e-12;
    case DType::Float32: return 3e-6;
    case DType::Float16: return 6e-3;
    case DType::BFloat16: return 4e-2;
    }
    return 0;
}

void CompensatedSum::add(double value) {
    const double next = sum_ + value;
    if (std::fabs(sum_) >= std::fabs(value)) {
        compensation_ += (sum_ - next) + value;
    } else {
        compensation_ += (value - next) + sum_;
    }
    sum_ = next;
}

ErrorCheck::ErrorCheck(DType dtype)
    : dtype_(dtype),
      tolerance_(relative_tolerance(dtype)),
      absolute_tolerance_(2 * smallest_denormal(dtype)) {}

void ErrorCheck::add(std::int64_t index, double actual, const Term &expected) {
    const double rounded = round_to(dtype_, expected.value);
    bool failed = false;
    double error = 0;
    if (std::isnan(rounded) || std::isinf(rounded) || std::isnan(actual) || std::isinf(actual)) {
        expected_nans_ += std::isnan(rounded);
        const bool same = (std::isnan(rounded) && std::isnan(actual)) || rounded == actual;
        if (!same) {
            ++special_mismatches_;
            failed = true;
            error = INFINITY;
        }
    } else {
        if (expected.value == 0 && actual == 0 &&
            std::signbit(expected.value) != std::signbit(actual)) {
            ++special_mismatches_;
            failed = true;
        }
        const double excess = std::fabs(actual - expected.value) - absolute_tolerance_;
        if (excess > 0) {
            error = expected.magnitude > 0 ? excess / expected.magnitude : INFINITY;
        }
        if (error > tolerance_) failed = true;
    }
    if (worst_index_ < 0 || error > max_error_) {
        max_error_ = error;
        worst_index_ = index;
        worst_actual_ = actual;
        worst_expected_ = expected.value;
    }
    if (failed) {
        if (failures_ == 0) {
            first_failure_index_ = index;
            first_failure_actual_ = actual;
            first_failure_expected_ = expected.value;
        }
        ++failures_;
    }
}

std::string ErrorCheck::describe_worst() const {
    if (failures_ > 0) {
        return "first failure at element " + std::to_string(first_failure_index_) + ": got " +
               format_value(first_failure_actual_, 9) + ", reference " +
               format_value(first_failure_expected_, 17);
    }
    if (worst_index_ < 0) return "no elements";
    return "worst at element " + std::to_string(worst_index_) + ": got " +
           format_value(worst_actual_, 9) + ", reference " + format_value(worst_expected_, 17);
}

}  // namespace kldiv::tools
