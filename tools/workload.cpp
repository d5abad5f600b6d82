#include "workload.h"

#include <algorithm>
#include <cmath>
#include <random>

namespace kldiv::tools {

bool parse_pass(const std::string &name, Pass *out) {
    for (Pass pass : {Pass::Forward, Pass::Backward, Pass::Fused}) {
        if (name == pass_name(pass)) {
            *out = pass;
            return true;
        }
    }
    return false;
}

const char *pass_name(Pass pass) {
    switch (pass) {
    case Pass::Forward: return "fwd";
    case Pass::Backward: return "bwd";
    case Pass::Fused: return "fused";
    }
    return "?";
}

std::int64_t element_count(const std::vector<std::int64_t> &shape) {
    std::int64_t n = 1;
    for (std::int64_t size : shape) n *= size;
    return n;
}

namespace {

// Fills `out` with log_softmax (or softmax) of random logits, one row of
// `row_length` at a time.
void fill_rows(HostBuffer &out, std::int64_t row_length, bool log_probabilities,
               std::mt19937_64 &rng) {
    std::normal_distribution<double> logit(0.0, 2.0);
    std::vector<double> row((std::size_t)row_length);
    for (std::int64_t start = 0; start < out.numel(); start += row_length) {
        for (double &z : row) z = logit(rng);
        const double max = *std::max_element(row.begin(), row.end());
        double sum = 0;
        for (double z : row) sum += std::exp(z - max);
        const double log_normaliser = max + std::log(sum);
        for (std::int64_t j = 0; j < row_length; ++j) {
            const double log_p = row[(std::size_t)j] - log_normaliser;
            out.set(start + j, log_probabilities ? log_p : std::exp(log_p));
        }
    }
}

}  // namespace

KlOperands make_operands(const std::vector<std::int64_t> &shape, DType dtype, bool log_target,
                         std::uint64_t seed) {
    const std::int64_t numel = element_count(shape);
    KlOperands operands{shape, HostBuffer(dtype, numel), HostBuffer(dtype, numel)};
    const std::int64_t row_length = shape.empty() ? 1 : shape.back();
    if (numel == 0) return operands;
    std::seed_seq input_seed{seed, std::uint64_t{0}}, target_seed{seed, std::uint64_t{1}};
    std::mt19937_64 input_rng(input_seed), target_rng(target_seed);
    fill_rows(operands.input, row_length, /*log_probabilities=*/true, input_rng);
    fill_rows(operands.target, row_length, /*log_probabilities=*/log_target, target_rng);
    return operands;
}

Traffic bytes_moved(Pass pass, Reduction reduction, std::int64_t numel, DType dtype,
                    bool grad_input, bool grad_target) {
    const std::int64_t tensor = numel * (std::int64_t)element_size(dtype);
    const bool per_element = reduction == Reduction::None;
    Traffic traffic;
    switch (pass) {
    case Pass::Forward:
        traffic.read_bytes = 2 * tensor;
        traffic.written_bytes = per_element ? tensor : 0;
        break;
    case Pass::Backward:
        traffic.read_bytes = (per_element ? tensor : 0) + (grad_target ? tensor : 0) + tensor;
        traffic.written_bytes = (grad_input ? tensor : 0) + (grad_target ? tensor : 0);
        break;
    case Pass::Fused:
        traffic.read_bytes = 2 * tensor;
        traffic.written_bytes = (per_element ? tensor : 0) + tensor;
        break;
    }
    return traffic;
}

}  // namespace kldiv::tools
