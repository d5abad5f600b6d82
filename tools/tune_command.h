// `kldiv tune`: searches the schedule parameters of one kernel on this
// machine, against the default schedule and Halide's autoschedulers, and
// records the best in a tuning database the JIT and `kldiv aot` read.
#pragma once

#include <string>
#include <vector>

namespace kldiv::tools {

extern const char kTuneHelp[];

// `args` follow "tune"; returns the exit status (0 done, 1 failed, 2 usage).
int tune_command(const std::vector<std::string> &args);

}  // namespace kldiv::tools
