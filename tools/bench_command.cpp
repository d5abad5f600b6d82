#include "bench_command.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "command_line.h"

namespace kldiv::tools {

const char kBenchHelp[] = R"(Usage: kldiv bench [kldiv_bench options]

Runs the Google Benchmark binary kldiv_bench with the options given: the
forward pass (none, sum, mean, batchmean), the fused pass (none, batchmean)
and forward-then-backward (grad_input only, the fused pass's comparison) for
n = 2^16, 2^20, 2^24 elements (rows of 32768) in f32 and bf16. Each result has
bytes_per_second, GB/s, read_ceiling and copy_ceiling (bandwidth loops measured
right after the timing), pct_of_read_ceiling and pct_of_copy_ceiling against
them, and ratio_vs_torch (libtorch's time for the same operation on the same
data over ours; 0 without a baseline).

Common options:
  --benchmark_filter=REGEX      e.g. 'fwd/f32/.*/512x32768'
  --benchmark_min_time=SECONDS  e.g. 0.05 for a quick run
  --benchmark_repetitions=N
  --benchmark_format=console|json|csv, --benchmark_out=FILE
  --threads=N                   kernel, torch and ceiling threads (0 = one per core)
  --ceiling=adjacent|start      ceilings measured after each timing (default) or
                                once at start
  --malloc_defaults             keep glibc's malloc settings (by default freed memory
                                stays in the heap, so torch's per-call outputs do not
                                page-fault on every call)
  kldiv_bench --help lists the rest.

The binary is looked for in $KLDIV_BENCH, beside this program, in ../bench/
from it (a build tree), then on PATH.
)";

namespace {

std::string own_directory() {
    char path[4096];
    const ssize_t length = readlink("/proc/self/exe", path, sizeof path - 1);
    if (length <= 0) return "";
    path[length] = '\0';
    std::string text(path);
    const std::size_t slash = text.rfind('/');
    return slash == std::string::npos ? "" : text.substr(0, slash);
}

}  // namespace

int bench_command(const std::vector<std::string> &args) {
    if (!args.empty() && (args[0] == "-h" || args[0] == "--help")) {
        std::fputs(kBenchHelp, stdout);
        return kExitPass;
    }
    std::vector<std::string> candidates;
    if (const char *explicit_path = std::getenv("KLDIV_BENCH")) candidates.push_back(explicit_path);
    const std::string directory = own_directory();
    if (!directory.empty()) {
        candidates.push_back(directory + "/kldiv_bench");
        candidates.push_back(directory + "/../bench/kldiv_bench");
    }

    std::vector<char *> argv;
    std::string name = "kldiv_bench";
    argv.push_back(name.data());
    std::vector<std::string> owned(args);
    for (std::string &arg : owned) argv.push_back(arg.data());
    argv.push_back(nullptr);

    std::fflush(stdout);
    for (const std::string &candidate : candidates) {
        if (access(candidate.c_str(), X_OK) == 0) {
            execv(candidate.c_str(), argv.data());
            std::fprintf(stderr, "kldiv bench: cannot run %s: %s\n", candidate.c_str(),
                         std::strerror(errno));
            return kExitFail;
        }
    }
    execvp("kldiv_bench", argv.data());
    std::fprintf(stderr,
                 "kldiv bench: kldiv_bench not found (%s). Build it (CMake target kldiv_bench, "
                 "KLDIV_BUILD_BENCHMARKS=ON) or set KLDIV_BENCH to its path.\n",
                 std::strerror(errno));
    return kExitFail;
}

}  // namespace kldiv::tools
