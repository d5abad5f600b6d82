// `kldiv aot`: kernels for named specs and targets, written as static
// libraries, documented C headers and one Halide runtime per target.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kldiv/codegen/kernel_spec.h"

namespace kldiv::tools {

// A kernel named on the command line: PASS:DTYPE:REDUCTION[:logt][:SHAPE].
struct AotSpec {
    codegen::KernelSpec spec;
    std::string reduction;       // as given, for the header
    std::vector<int64_t> shape;  // empty: any shape
    std::string function;        // C name of the kernel
};

// Throws UsageError for a malformed spec.
AotSpec parse_spec(const std::string &text);

// Contiguous tensors of a.shape (not empty), dimension 0 innermost, for every buffer.
codegen::FixedShape fixed_shape(const AotSpec &a);

extern const char kAotHelp[];

// `args` follow "aot"; returns the exit status (0 done, 1 failed, 2 usage).
int aot_command(const std::vector<std::string> &args);

}  // namespace kldiv::tools
