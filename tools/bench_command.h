// `kldiv bench`: runs the kldiv_bench Google Benchmark binary.
#pragma once

#include <string>
#include <vector>

namespace kldiv::tools {

extern const char kBenchHelp[];

// `args` follow "bench" and go to kldiv_bench unchanged. Returns only when the
// binary cannot be started (exit status 1) or for --help.
int bench_command(const std::vector<std::string> &args);

}  // namespace kldiv::tools
