// Google Benchmark for the kldiv kernels: forward (every reduction), fused
// forward+backward, and forward-then-backward (grad_input only) as the fused
// pass's comparison, over n = 2^16, 2^20, 2^24 elements in rows of 32768, in
// float32 and bfloat16. Each result carries GB/s under the bytes-moved model
// (tools/workload.h), its share of the read and copy bandwidth ceilings
// (tools/bandwidth.h) measured right after it is timed (the bandwidth a shared
// machine leaves to a process can change within minutes; --ceiling=start
// takes the one measured at start for every case), and libtorch's time over
// ours.
//
//   kldiv_bench --benchmark_min_time=0.05 --benchmark_filter='fwd/f32/.*'
//   kldiv_bench --threads=4     (kernel, torch and ceiling threads; 0 = one per core)
//   kldiv_bench --malloc_defaults  (let torch's per-call allocations page-fault as they
//                                   do with glibc's defaults)
#include <benchmark/benchmark.h>
#include <malloc.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bandwidth.h"
#include "kldiv/kldiv.hpp"
#include "workload.h"
#ifdef KLDIV_HAVE_TORCH
#include "torch_baseline.h"
#endif

namespace {

using kldiv::DType;
using kldiv::Reduction;
using kldiv::tools::HostBuffer;
using kldiv::tools::Pass;
using kldiv::tools::Traffic;

constexpr std::int64_t kRowLength = 32768;
constexpr std::int64_t kLargestN = std::int64_t{1} << 24;
// Seconds of torch calls behind each ratio_vs_torch.
constexpr double kTorchBudgetSeconds = 0.1;
// A timing of at least this many seconds gets ceilings measured right after
// it (median of kAdjacentCeilingRuns); shorter ones are Google Benchmark's
// trial runs, which it does not report at the default --benchmark_min_time,
// and keep the ceilings from the start.
constexpr double kAdjacentCeilingMinSeconds = 0.1;
constexpr int kAdjacentCeilingRuns = 3;

enum class Operation { Forward, Fused, ForwardThenBackward };

struct Case {
    Operation operation;
    DType dtype;
    Reduction reduction;
    std::int64_t n;

    std::vector<std::int64_t> shape() const { return {n / kRowLength, kRowLength}; }

    std::string name() const {
        const char *operation_name = operation == Operation::Forward ? "fwd"
                                     : operation == Operation::Fused ? "fused"
                                                                     : "fwd_then_bwd";
        return std::string(operation_name) + "/" + kldiv::short_name(dtype) + "/" +
               kldiv::reduction_name(reduction) + "/" + std::to_string(n / kRowLength) + "x" +
               std::to_string(kRowLength);
    }

    Traffic traffic() const {
        using kldiv::tools::bytes_moved;
        switch (operation) {
        case Operation::Forward: return bytes_moved(Pass::Forward, reduction, n, dtype);
        case Operation::Fused: return bytes_moved(Pass::Fused, reduction, n, dtype);
        case Operation::ForwardThenBackward: {
            const Traffic forward = bytes_moved(Pass::Forward, reduction, n, dtype);
            const Traffic backward = bytes_moved(Pass::Backward, reduction, n, dtype,
                                                 /*grad_input=*/true, /*grad_target=*/false);
            return {forward.read_bytes + backward.read_bytes,
                    forward.written_bytes + backward.written_bytes};
        }
        }
        return {};
    }
};

struct Settings {
    int threads = 0;  // as given: 0 = one per core
    bool malloc_defaults = false;
    bool adjacent_ceiling = true;  // --ceiling=adjacent (default) or start
    std::unique_ptr<kldiv::tools::BandwidthProbe> probe;
    kldiv::tools::BandwidthCeiling ceiling;  // measured at start
};
Settings settings;

// Operands and outputs of one (dtype, n), kept while consecutive benchmarks
// use them; generating 2^24 elements takes about a second.
struct Workspace {
    DType dtype;
    std::int64_t n;
    kldiv::tools::KlOperands operands;
    HostBuffer loss, grad_input, ones;
};

Workspace &workspace_for(DType dtype, std::int64_t n) {
    static std::unique_ptr<Workspace> current;
    if (!current || current->dtype != dtype || current->n != n) {
        current.reset();  // free the previous one first
        const std::vector<std::int64_t> shape{n / kRowLength, kRowLength};
        current.reset(new Workspace{dtype, n,
                                    kldiv::tools::make_operands(shape, dtype, false, /*seed=*/0),
                                    HostBuffer(dtype, n), HostBuffer(dtype, n),
                                    HostBuffer(dtype, n)});
        current->ones.fill(1.0);
    }
    return *current;
}

struct Baseline {
    double seconds = 0;
    std::string why_none;
};

// libtorch's time for the same operation on the same data, once per case.
Baseline torch_baseline(const Case &c, const Workspace &workspace) {
    static std::map<std::string, Baseline> measured;
    auto found = measured.find(c.name());
    if (found != measured.end()) return found->second;
    Baseline baseline;
#ifdef KLDIV_HAVE_TORCH
    kldiv::bench::TorchCase torch_case;
    torch_case.input = workspace.operands.input.data();
    torch_case.target = workspace.operands.target.data();
    torch_case.shape = c.shape();
    torch_case.dtype = c.dtype;
    torch_case.reduction = c.reduction;
    torch_case.with_grad_input = c.operation != Operation::Forward;
    const kldiv::bench::TorchTiming timing =
        kldiv::bench::time_torch(torch_case, kTorchBudgetSeconds);
    baseline.seconds = timing.seconds;
    if (timing.seconds == 0) baseline.why_none = "no torch baseline: " + timing.error;
    // Let torch's OpenMP workers stop spinning before our kernel is timed.
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
#else
    (void)workspace;
    baseline.why_none = "no torch baseline (built without libtorch)";
#endif
    measured[c.name()] = baseline;
    return baseline;
}

void run_case(benchmark::State &state, const Case &c) {
    Workspace &workspace = workspace_for(c.dtype, c.n);
    const std::vector<std::int64_t> shape = c.shape();
    const bool per_element = c.reduction == Reduction::None;
    const std::vector<std::int64_t> loss_shape = per_element ? shape : std::vector<std::int64_t>{};
    using kldiv::Tensor;
    const Tensor input = Tensor::contiguous(workspace.operands.input.data(), c.dtype, shape);
    const Tensor target = Tensor::contiguous(workspace.operands.target.data(), c.dtype, shape);
    const Tensor loss = Tensor::contiguous(workspace.loss.data(), c.dtype, loss_shape);
    const Tensor grad_input = Tensor::contiguous(workspace.grad_input.data(), c.dtype, shape);
    const Tensor upstream = Tensor::contiguous(workspace.ones.data(), c.dtype, loss_shape);

    std::function<void()> call;
    switch (c.operation) {
    case Operation::Forward:
        call = [&] { kldiv::kl_div(input, target, loss, c.reduction); };
        break;
    case Operation::Fused:
        call = [&] { kldiv::kl_div_forward_backward(input, target, loss, grad_input, c.reduction); };
        break;
    case Operation::ForwardThenBackward:
        call = [&] {
            kldiv::kl_div(input, target, loss, c.reduction);
            kldiv::kl_div_backward(upstream, input, target, c.reduction, false, &grad_input,
                                   nullptr);
        };
        break;
    }

    const Baseline baseline = torch_baseline(c, workspace);
    try {
        call();  // warm-up, and any error before timing
    } catch (const kldiv::Error &error) {
        state.SkipWithError(error.what());
        return;
    }

    const auto start = std::chrono::steady_clock::now();
    for (auto _ : state) call();
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    const kldiv::tools::BandwidthCeiling ceiling =
        settings.adjacent_ceiling && elapsed >= kAdjacentCeilingMinSeconds
            ? settings.probe->measure(kAdjacentCeilingRuns)
            : settings.ceiling;

    const std::int64_t bytes = c.traffic().total();
    const double seconds = elapsed / (double)state.iterations();
    const double gbps = (double)bytes / seconds / 1e9;
    state.SetBytesProcessed(state.iterations() * bytes);
    state.counters["GB/s"] = gbps;
    state.counters["read_ceiling"] = ceiling.read_gbps;
    state.counters["copy_ceiling"] = ceiling.copy_gbps;
    state.counters["pct_of_read_ceiling"] = 100 * gbps / ceiling.read_gbps;
    state.counters["pct_of_copy_ceiling"] = 100 * gbps / ceiling.copy_gbps;
    state.counters["ratio_vs_torch"] = baseline.seconds > 0 ? baseline.seconds / seconds : 0.0;
    if (baseline.seconds > 0) {
        char label[64];
        std::snprintf(label, sizeof label, "torch %.1f us", baseline.seconds * 1e6);
        state.SetLabel(label);
    } else {
        state.SetLabel(baseline.why_none);
    }
}

void register_cases() {
    const Reduction all[] = {Reduction::None, Reduction::Sum, Reduction::Mean,
                             Reduction::BatchMean};
    std::vector<Case> cases;
    for (std::int64_t n : {std::int64_t{1} << 16, std::int64_t{1} << 20, kLargestN}) {
        for (DType dtype : {DType::Float32, DType::BFloat16}) {
            for (Reduction reduction : all) cases.push_back({Operation::Forward, dtype, reduction, n});
            for (Operation operation : {Operation::Fused, Operation::ForwardThenBackward}) {
                for (Reduction reduction : {Reduction::BatchMean, Reduction::None}) {
                    cases.push_back({operation, dtype, reduction, n});
                }
            }
        }
    }
    for (const Case &c : cases) {
        benchmark::RegisterBenchmark(c.name().c_str(),
                                     [c](benchmark::State &state) { run_case(state, c); })
            ->UseRealTime()
            ->Unit(benchmark::kMicrosecond);
    }
}

void print_help() {
    std::printf(
        "kldiv_bench: KL-div kernels (forward, fused, forward-then-backward) against the\n"
        "memory-bandwidth ceilings and libtorch. Counters: GB/s (bytes-moved model / time),\n"
        "read_ceiling and copy_ceiling (GB/s), pct_of_read_ceiling, pct_of_copy_ceiling,\n"
        "ratio_vs_torch (torch time / ours).\n\n"
        "Own options:\n"
        "  --threads=N        kernel, torch and ceiling threads (0 = one per core, the default)\n"
        "  --ceiling=WHEN     adjacent: measure the ceilings again right after each timing\n"
        "                     of at least 0.1 s (the default; shorter ones keep the ceilings\n"
        "                     from the start); start: the ceilings measured at start only\n"
        "  --malloc_defaults  leave glibc malloc as it is. By default freed memory stays in\n"
        "                     the heap, so that torch's per-call output tensors do not\n"
        "                     page-fault afresh on every call\n\n"
        "Google Benchmark options:\n");
    benchmark::PrintDefaultHelp();
}

// Whether the run only lists benchmark names (then nothing is measured).
bool only_listing(int argc, char **argv) {
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--benchmark_list_tests" || arg == "--benchmark_list_tests=true" ||
            arg == "--benchmark_list_tests=1") {
            return true;
        }
    }
    return false;
}

// Takes our own flags out of argv before Google Benchmark sees it.
bool take_own_flags(int *argc, char **argv) {
    int kept = 1;
    for (int i = 1; i < *argc; ++i) {
        const char *arg = argv[i];
        if (std::strcmp(arg, "--malloc_defaults") == 0) {
            settings.malloc_defaults = true;
        } else if (std::strcmp(arg, "--ceiling=adjacent") == 0 || std::strcmp(arg, "--ceiling=start") == 0) {
            settings.adjacent_ceiling = std::strcmp(arg, "--ceiling=adjacent") == 0;
        } else if (std::strncmp(arg, "--ceiling", 9) == 0) {
            std::fprintf(stderr, "kldiv_bench: invalid value in '%s': expected --ceiling=adjacent or "
                                 "--ceiling=start\n", arg);
            return false;
        } else if (std::strncmp(arg, "--threads=", 10) == 0) {
            char *end = nullptr;
            const long threads = std::strtol(arg + 10, &end, 10);
            if (arg[10] == '\0' || *end != '\0' || threads < 0 || threads > 4096) {
                std::fprintf(stderr, "kldiv_bench: invalid value in '%s': expected --threads=N, "
                                     "N >= 0 (0 = one per core)\n", arg);
                return false;
            }
            settings.threads = (int)threads;
        } else {
            argv[kept++] = argv[i];
        }
    }
    *argc = kept;
    return true;
}

}  // namespace

int main(int argc, char **argv) {
    if (!take_own_flags(&argc, argv)) return 2;
    if (!settings.malloc_defaults) {
        // Torch allocates its results on every call; with glibc's defaults a
        // large one is a fresh mmap whose pages fault in each time, which on a
        // VM with costly page faults made torch up to 30x slower than its
        // kernels. Keeping freed memory in the heap times the kernels.
        mallopt(M_MMAP_MAX, 0);
        mallopt(M_TRIM_THRESHOLD, INT_MAX);
    }
    benchmark::Initialize(&argc, argv, print_help);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
    if (only_listing(argc, argv)) {
        register_cases();
        benchmark::RunSpecifiedBenchmarks();
        return 0;
    }

    kldiv::set_num_threads(settings.threads);
    const int threads = kldiv::tools::resolve_threads(settings.threads);
#ifdef KLDIV_HAVE_TORCH
    kldiv::bench::set_torch_threads(threads);
    benchmark::AddCustomContext("torch_baseline", "libtorch " + kldiv::bench::torch_version());
#else
    benchmark::AddCustomContext("torch_baseline", "none (built without libtorch)");
#endif
    // Arrays of 4x the largest operand (2^24 float32), at least 256 MiB each.
    settings.probe.reset(new kldiv::tools::BandwidthProbe(settings.threads, 4 * kLargestN * 4));
    settings.ceiling = settings.probe->measure(5);
    char text[64];
    benchmark::AddCustomContext("kldiv_cpu_target", kldiv::cpu_target());
    benchmark::AddCustomContext("kldiv_threads", std::to_string(threads));
    std::snprintf(text, sizeof text, "%.2f GB/s", settings.ceiling.read_gbps);
    benchmark::AddCustomContext("read_ceiling_at_start", text);
    std::snprintf(text, sizeof text, "%.2f GB/s", settings.ceiling.copy_gbps);
    benchmark::AddCustomContext("copy_ceiling_at_start", text);
    benchmark::AddCustomContext("ceilings", "DRAM loops over 3 arrays of " +
                                                std::to_string(settings.ceiling.array_bytes >> 20) +
                                                " MiB; sizes that stay in cache can exceed 100%; " +
                                                (settings.adjacent_ceiling
                                                     ? "measured again right after each timing of at "
                                                       "least 0.1 s (median of 3)"
                                                     : "the ones measured at start (median of 5)"));
    benchmark::AddCustomContext("ratio_vs_torch", "torch median time / ours (0: no baseline)");
    benchmark::AddCustomContext("malloc", settings.malloc_defaults
                                              ? "glibc defaults (--malloc_defaults)"
                                              : "freed memory kept in the heap (no mmap, no trim)");
    benchmark::AddCustomContext(
        "bytes_model", "fwd: 2 read (+1 written for none); fused: 2 read + grad_input (+loss "
                       "for none) written; fwd_then_bwd: fwd + target (+grad_output for none) "
                       "read + grad_input written");

    register_cases();
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
