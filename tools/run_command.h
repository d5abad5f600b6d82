// `kldiv run`: one kernel on random data, checked against a float64 reference,
// timed, and set against the memory-bandwidth ceiling.
#pragma once

#include <string>
#include <vector>

namespace kldiv::tools {

extern const char kRunHelp[];

// `args` follow "run"; returns the exit status (0 pass, 1 fail, 2 usage).
int run_command(const std::vector<std::string> &args);

}  // namespace kldiv::tools
