// `kldiv aot`: kernels for named specs and targets, written as static
// libraries, documented C headers and one Halide runtime per target.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kldiv/codegen/kernel_spec.h"
#include "spec_text.h"

namespace kldiv::tools {

// Contiguous tensors of a.shape (not empty), dimension 0 innermost, for every buffer.
codegen::FixedShape fixed_shape(const AotSpec &a);

extern const char kAotHelp[];

// `args` follow "aot"; returns the exit status (0 done, 1 failed, 2 usage).
int aot_command(const std::vector<std::string> &args);

}  // namespace kldiv::tools
