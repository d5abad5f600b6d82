// The text form of a kernel spec: PASS:DTYPE:REDUCTION[:logt][:aligned][:SHAPE],
// or distill:PASS:DTYPE[:reverse].
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kldiv/codegen/kernel_spec.h"

namespace kldiv::tools {

// A kernel named on the command line: PASS:DTYPE:REDUCTION[:logt][:aligned][:SHAPE]
// (the loss), or distill:PASS:DTYPE[:reverse] (`distill` set; `spec` unused).
struct AotSpec {
    codegen::KernelSpec spec;
    std::optional<codegen::DistillSpec> distill;
    std::string reduction;       // as given, for the header
    std::vector<int64_t> shape;  // empty: any shape
    std::string function;        // C name of the kernel
};

// Throws UsageError for a malformed spec.
AotSpec parse_spec(const std::string &text);

}  // namespace kldiv::tools
