// What the CLI and the benchmark run: realistic KL-div operands, and the model
// of the bytes each pass must move, against which GB/s is reported.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "host_buffer.h"
#include "kldiv/kldiv.hpp"

namespace kldiv::tools {

enum class Pass { Forward, Backward, Fused };

// "fwd" | "bwd" | "fused".
bool parse_pass(const std::string &name, Pass *out);
const char *pass_name(Pass pass);

// Operands as a classifier's loss sees them, rows along the last dimension:
// input = log_softmax of random logits per row; target = softmax of other
// random logits, or their log_softmax when `log_target`. Computed in float64
// and rounded once to `dtype`.
struct KlOperands {
    std::vector<std::int64_t> shape;
    HostBuffer input;
    HostBuffer target;
};
KlOperands make_operands(const std::vector<std::int64_t> &shape, DType dtype, bool log_target,
                         std::uint64_t seed);

std::int64_t element_count(const std::vector<std::int64_t> &shape);

// Bytes a pass must move if every operand is read once and every output written
// once: forward reads input and target and writes the loss for `none` (a reduced
// loss is one scalar); backward reads grad_output for `none`, input only when
// grad_target is wanted (grad_input = -g * t, or -g * exp(t), needs only the
// target), the target, and writes the gradients asked for; fused reads input and
// target and writes the loss for `none` and grad_input.
struct Traffic {
    std::int64_t read_bytes = 0;
    std::int64_t written_bytes = 0;
    std::int64_t total() const { return read_bytes + written_bytes; }
};
Traffic bytes_moved(Pass pass, Reduction reduction, std::int64_t numel, DType dtype,
                    bool grad_input = true, bool grad_target = true);

}  // namespace kldiv::tools
