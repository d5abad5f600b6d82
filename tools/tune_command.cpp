#include "tune_command.h"

#include <cstdio>
#include <exception>

#include "command_line.h"
#include "kldiv/schedules/tuning_db.h"
#include "tune_distill.h"
#include "tune_loss.h"
#include "tune_options.h"

namespace kldiv::tools {

const char kTuneHelp[] = R"(Usage: kldiv tune --spec SPEC [--size N] [--budget TIME] [--seed N] [options]
       kldiv tune --prune [--db FILE]

Searches the schedule parameters of one kernel on this machine: random
sampling with successive halving (brackets of 27 candidates timed briefly, the
best third timed three times longer, until one is left; later brackets mutate
the best so far). Every candidate is compiled for the exact shape, checked
against the float64 reference on sampled elements (and the whole sum) before
it is timed, and timed with a warm-up call, repetitions, the median and the
median absolute deviation. The best candidates, the default schedule and
Halide's autoschedulers are then timed again side by side, and the best
schedule is appended to the tuning database, which the JIT (kldiv run,
kldiv::Runtime) and 'kldiv aot' use for this target and the nearest size.

  --spec SPEC       PASS:DTYPE:REDUCTION[:logt][:SHAPE] as 'kldiv aot' takes it,
                    e.g. fwd:f32:sum, fused:bf16:batchmean:1024x1024; or a
                    distillation kernel, distill:DPASS:DTYPE[:reverse] (CPU
                    targets): the gradients' vector width, the unrolling of
                    the rows' sums and rows per task, every candidate checked
                    to give the library's bits; recorded by vocabulary
  --size N          elements of a contiguous tensor when SPEC has no shape:
                    a number or 2^K. Default 2^20. Distillation: ROWSxVOCAB,
                    default 256x32000
  --target T        'host' (default) or a Halide target string this machine
                    runs (e.g. x86-64-linux-avx2); host-cuda[-cuda_capability_NN]
                    (default capability 80, the library's) tunes the CUDA kernel on
                    GPU 0: threads per block, elements per thread and vector
                    loads, or a reduction's steps per iteration, checked and
                    recorded as on the CPU (the record's target names the
                    compute capability, its cpu field the GPU); no
                    autoscheduler baselines there
  --budget TIME     search time: 60s, 2m, 500ms or seconds. Default 60s (the
                    bandwidth ceiling, baselines and the final timing come on top)
  --seed N          seed of the search and of the data. Default 1
  --strategy S      halving (default) or grid (every point in order, each timed
                    as long as a bracket's last rung: the plain baseline)
  --baselines LIST  autoschedulers to compare: all (default: Mullapudi2016,
                    Adams2019, Li2018), none, or a comma-separated list
  --db FILE         tuning database to append to. Default $KLDIV_TUNING_DB,
                    else tuning.jsonl in the kernel cache directory
  --no-save         append nothing
  --json FILE       write the results as JSON ('-' for standard output)
  --plot FILE.png   draw every candidate's GB/s against the ceiling (gnuplot)
  --threads N       kernel and ceiling threads (0 = one per core, the default)
  --prune           keep the best record per (target, kernel, size bucket) in
                    the database, drop malformed lines, and exit
  -h, --help        this text

Progress goes to standard error: a progress bar on a terminal, a line per
candidate otherwise. Exit status: 0 done, 1 nothing passed or a failure, 2 a
usage error.
)";

int tune_command(const std::vector<std::string> &args) {
    tune::Options options;
    try {
        options = tune::parse_options(args);
        if (options.help) {
            std::fputs(kTuneHelp, stdout);
            return kExitPass;
        }
        if (options.prune) {
            const std::string path = tune::database_path(options);
            const schedules::PruneResult r = schedules::prune_database(
                path, [](const std::string &m) { std::fprintf(stderr, "%s\n", m.c_str()); });
            std::printf("kldiv tune: %s: kept %zu record(s), removed %zu, dropped %zu malformed line(s)\n", path.c_str(),
                        r.kept, r.removed, r.skipped);
            return kExitPass;
        }
        // Each kind of kernel is tuned by its own file (tune_loss.h, tune_distill.h).
        if (options.spec->distill) return tune::run_distill_tune(options);
        return tune::run_loss_tune(options);
    } catch (const UsageError &error) {
        std::fprintf(stderr, "kldiv tune: %s\nTry 'kldiv tune --help'.\n", error.what());
        return kExitUsage;
    } catch (const std::exception &error) {
        std::fprintf(stderr, "kldiv tune: %s\n", error.what());
        return kExitFail;
    }
}

}  // namespace kldiv::tools
