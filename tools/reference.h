// The float64 reference `kldiv run` checks a kernel against (SPEC.md's
// formulas, written op by op as PyTorch differentiates them, so NaNs and signed
// zeros come out as PyTorch's), and the comparison it uses.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kldiv/kldiv.hpp"

namespace kldiv::tools {

// A reference value and the magnitude of the terms behind it, which scales the
// tolerance so that cancellation does not fail a correct result.
struct Term {
    double value;
    double magnitude;
};

Term pointwise_loss(double x, double t, bool log_target);
Term grad_input_term(double g, double x, double t, bool log_target);
Term grad_target_term(double g, double x, double t, bool log_target);

// What a reduced loss is divided by (1 for sum): numel for mean, size(0) for
// batchmean. Also the factor an upstream gradient of 1 is scaled by.
double reduction_divisor(Reduction reduction, const std::vector<std::int64_t> &shape);

// printf's %.<digits>g, but "nan" whatever its sign bit (glibc prints "-nan").
std::string format_value(double value, int digits);

// Relative tolerance for `dtype` (SPEC.md: 1e-12, 3e-6, 6e-3, 4e-2); the
// absolute one is two of the dtype's smallest denormals.
double relative_tolerance(DType dtype);

// Sum with Neumaier compensation, so that the reference sum itself is exact
// enough for a float64 kernel.
class CompensatedSum {
public:
    void add(double value);
    double value() const { return sum_ + compensation_; }

private:
    double sum_ = 0, compensation_ = 0;
};

// Compares a kernel's elements with the reference. A finite element passes when
// |actual - expected| <= tolerance * magnitude + absolute tolerance; NaN, inf
// and the sign of an exact zero must match the reference rounded to the dtype.
class ErrorCheck {
public:
    explicit ErrorCheck(DType dtype);

    void add(std::int64_t index, double actual, const Term &expected);

    // Largest |actual - expected| beyond the absolute tolerance, over the magnitude.
    double max_error() const { return max_error_; }
    double tolerance() const { return tolerance_; }
    std::int64_t failures() const { return failures_; }
    std::int64_t special_mismatches() const { return special_mismatches_; }
    std::int64_t expected_nans() const { return expected_nans_; }
    bool passed() const { return failures_ == 0; }
    // The first failing element, or the worst one when all pass.
    std::string describe_worst() const;

private:
    DType dtype_;
    double tolerance_, absolute_tolerance_;
    double max_error_ = 0;
    std::int64_t failures_ = 0, special_mismatches_ = 0, expected_nans_ = 0;
    std::int64_t worst_index_ = -1, first_failure_index_ = -1;
    double worst_actual_ = 0, worst_expected_ = 0;
    double first_failure_actual_ = 0, first_failure_expected_ = 0;
};

}  // namespace kldiv::tools
