// kldiv: the command-line tool. Subcommands live in their own files.
#include <cstdio>
#include <string>
#include <vector>

#include "aot_command.h"
#include "bench_command.h"
#include "cache_command.h"
#include "command_line.h"
#include "run_command.h"
#include "tune_command.h"

namespace {

const char kHelp[] = R"(Usage: kldiv <command> [options]

PyTorch's KL-divergence loss (F.kl_div) as Halide-generated kernels.

Commands:
  run      run one kernel on random data: check it against a float64
           reference, time it, and report GB/s against the memory-bandwidth
           ceiling measured in the same process
  bench    run the kldiv_bench Google Benchmark binary (all passes, reductions,
           sizes, f32 and bf16, with libtorch as the baseline when built)
  cache    the on-disk cache of JIT-compiled kernels: ls, stats, clear,
           prune
  aot      generate kernels ahead of time for named specs and targets (x86,
           arm64): static libraries and C headers a program links directly
  tune     search one kernel's schedule parameters on this machine against
           the default and Halide's autoschedulers; record the best in the
           tuning database the JIT and 'aot' use
  help     this text, or 'kldiv help <command>' for a command's options

Options:
  -h, --help   this text

'kldiv <command> --help' lists a command's options. Exit status: 0 success,
1 a failed check or a library error, 2 a usage error.
)";

int usage_error(const std::string &message) {
    std::fprintf(stderr, "kldiv: %s\nTry 'kldiv --help'.\n", message.c_str());
    return kldiv::tools::kExitUsage;
}

int help_for(const std::string &command) {
    if (command == "run") {
        std::fputs(kldiv::tools::kRunHelp, stdout);
    } else if (command == "bench") {
        std::fputs(kldiv::tools::kBenchHelp, stdout);
    } else if (command == "cache") {
        std::fputs(kldiv::tools::kCacheHelp, stdout);
    } else if (command == "aot") {
        std::fputs(kldiv::tools::kAotHelp, stdout);
    } else if (command == "tune") {
        std::fputs(kldiv::tools::kTuneHelp, stdout);
    } else {
        return usage_error("unknown command '" + command + "'");
    }
    return kldiv::tools::kExitPass;
}

}  // namespace

int main(int argc, char **argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty()) {
        std::fputs(kHelp, stderr);
        return kldiv::tools::kExitUsage;
    }
    const std::string command = args[0];
    const std::vector<std::string> rest(args.begin() + 1, args.end());
    if (command == "-h" || command == "--help") {
        std::fputs(kHelp, stdout);
        return kldiv::tools::kExitPass;
    }
    if (command == "help") {
        if (rest.empty()) {
            std::fputs(kHelp, stdout);
            return kldiv::tools::kExitPass;
        }
        return help_for(rest[0]);
    }
    if (command == "run") return kldiv::tools::run_command(rest);
    if (command == "bench") return kldiv::tools::bench_command(rest);
    if (command == "cache") return kldiv::tools::cache_command(rest);
    if (command == "aot") return kldiv::tools::aot_command(rest);
    if (command == "tune") return kldiv::tools::tune_command(rest);
    if (command.rfind("-", 0) == 0) return usage_error("unknown option '" + command + "'");
    return usage_error("unknown command '" + command + "'");
}
