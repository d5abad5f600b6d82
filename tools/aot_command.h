// `kldiv aot`: kernels for named specs and targets, written as static
// libraries, documented C headers and one Halide runtime per target.
#pragma once

#include <string>
#include <vector>

namespace kldiv::tools {

extern const char kAotHelp[];

// `args` follow "aot"; returns the exit status (0 done, 1 failed, 2 usage).
int aot_command(const std::vector<std::string> &args);

}  // namespace kldiv::tools
