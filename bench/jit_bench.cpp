// Latency and throughput of the JIT runtime where Google Benchmark cannot
// measure them: a fresh process's first result with an empty kernel cache and
// with a populated one (the program re-executes itself), the compile time of a
// new kernel in a warm runtime, the dispatch cost of an in-memory hit over a
// direct AOT call, JIT kernels' throughput against the AOT kernels', and the
// whole cost of a small loss call through the C ABI against the kernel's own
// entry point.
// Every figure is a median with its sample count. The bars in the summary are
// informational: the exit status is non-zero only for an error or a wrong result.
//
//   kldiv_jit_bench           (under a minute on 2 cores)
//   kldiv_jit_bench --quick   (fewer repetitions: a smoke run)
//   kldiv_jit_bench --only 6  (one section: here the per-call cost of a small loss)
#include <HalideRuntime.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "bandwidth.h"
#include "kldiv/kldiv.h"
#include "kldiv/kldiv.hpp"
#include "kldiv_fwd_sum_f32.h"  // the AOT kernel itself, linked in for [6]
#include "timing.h"
#include "workload.h"

extern char **environ;

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using kldiv::DType;
using kldiv::KernelOrigin;
using kldiv::Reduction;
using kldiv::Runtime;
using kldiv::RuntimeOptions;
using kldiv::Specialize;
using kldiv::Tensor;
using kldiv::tools::HostBuffer;
using kldiv::tools::median;
using kldiv::tools::Pass;
using kldiv::tools::seconds_of;

// The child's problem: one batch of a 32000-class classifier's loss.
constexpr std::int64_t kChildRows = 64;
constexpr std::int64_t kChildColumns = 32000;
// Row length of the throughput shapes, as in kldiv_bench: 32 and 512 rows give 2^20 and 2^24 elements.
constexpr std::int64_t kRowLength = 32768;
constexpr std::int64_t kLargestN = std::int64_t{1} << 24;

constexpr double kCompileBarMs = 250;
constexpr double kDiskLoadBarMs = 20;
constexpr double kDispatchBarNs = 1000;
constexpr double kJitOverAotBar = 1.05;
constexpr double kPerCallBarNs = 500;

// Repetitions of each measurement.
struct Plan {
    int fresh_processes = 5;       // children behind each start-up figure
    int specialised_compiles = 9;  // new shapes per operation
    int generic_compiles = 5;      // new specs
    int dispatch_batches = 15;
    int calls_per_batch = 10000;
    int throughput_rounds = 20;
    int ceiling_runs = 5;
    int per_call_batches = 21;
    int per_call_calls = 20000;
};

Plan quick_plan() {
    Plan plan;
    plan.fresh_processes = 2;
    plan.specialised_compiles = 3;
    plan.generic_compiles = 2;
    plan.dispatch_batches = 5;
    plan.calls_per_batch = 2000;
    plan.throughput_rounds = 5;
    plan.ceiling_runs = 2;
    plan.per_call_batches = 7;
    plan.per_call_calls = 5000;
    return plan;
}

struct Bar {
    std::string name;
    std::string figure;
    bool pass = false;
};
std::vector<Bar> bars;

[[noreturn]] void fail(const std::string &message) { throw std::runtime_error(message); }

double ms_since(Clock::time_point start) {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

std::string figure(double value, const char *unit, std::size_t samples) {
    char text[96];
    std::snprintf(text, sizeof text, "%.1f %s (median of %zu)", value, unit, samples);
    return text;
}

void add_bar(const std::string &name, const std::string &shown, bool pass) {
    bars.push_back({name, shown, pass});
}

// ---- the float64 reference ---------------------------------------------------

// The forward sum in float64 from the stored float32 operands (0 where the
// target is 0, as PyTorch's xlogy), and the sum of the magnitudes the float32
// kernel rounds, which scales the tolerance.
struct ReferenceSum {
    double sum = 0;
    double magnitude = 0;
};

ReferenceSum reference_sum(const float *input, const float *target, std::int64_t n) {
    ReferenceSum reference;
    for (std::int64_t i = 0; i < n; ++i) {
        const double t = target[i], x = input[i];
        if (t == 0) continue;
        const double log_t = std::log(t);
        reference.sum += t * (log_t - x);
        reference.magnitude += t * (std::fabs(log_t) + std::fabs(x));
    }
    return reference;
}

void check_sum(const std::string &what, double got, const ReferenceSum &want, double scale = 1) {
    const double expected = want.sum * scale;
    const double tolerance = 1e-5 * want.magnitude * scale;
    if (!(std::fabs(got - expected) <= tolerance)) {
        char text[160];
        std::snprintf(text, sizeof text, ": result %.9g, float64 reference %.9g (tolerance %.3g)", got,
                      expected, tolerance);
        fail(what + text);
    }
}

// ---- fresh processes -----------------------------------------------------------

// The child: the time from main() to the first result, data creation excluded.
int child_main(const std::string &mode, Clock::time_point process_start) {
    KernelOrigin expected;
    if (mode == "compile") {
        expected = KernelOrigin::Compiled;
    } else if (mode == "disk") {
        expected = KernelOrigin::Disk;
    } else {
        std::fprintf(stderr, "kldiv_jit_bench: unknown child mode '%s'\n", mode.c_str());
        return 2;
    }

    const Clock::time_point data_start = Clock::now();
    const std::int64_t n = kChildRows * kChildColumns;
    std::vector<float> input((std::size_t)n), target((std::size_t)n);
    for (std::int64_t i = 0; i < n; ++i) {
        target[(std::size_t)i] = float(1 + i % 7) / 28;
        input[(std::size_t)i] = -1.0f - 0.25f * float(i % 11);
    }
    float loss = 0;
    const Tensor x = Tensor::contiguous(input.data(), DType::Float32, {kChildRows, kChildColumns});
    const Tensor t = Tensor::contiguous(target.data(), DType::Float32, {kChildRows, kChildColumns});
    const Tensor out = Tensor::contiguous(&loss, DType::Float32, {});
    const double data_ms = ms_since(data_start);

    RuntimeOptions options;  // the cache directory comes from KLDIV_CACHE_DIR
    options.specialize = Specialize::Always;
    Runtime runtime(options);
    runtime.kl_div(x, t, out, Reduction::BatchMean);
    const double first_result_ms = ms_since(process_start) - data_ms;
    const kldiv::KernelInfo kernel = kldiv::last_kernel();

    if (kernel.origin != expected) {
        std::fprintf(stderr, "kldiv_jit_bench: child '%s' expected a kernel from '%s', got '%s' (%s)\n",
                     mode.c_str(), kldiv::origin_name(expected), kldiv::origin_name(kernel.origin),
                     kernel.name.c_str());
        return 1;
    }
    check_sum("child batchmean", loss, reference_sum(input.data(), target.data(), n), 1.0 / kChildRows);
    std::printf("first_result_ms %.3f kernel_ms %.3f origin %s\n", first_result_ms, kernel.seconds * 1e3,
                kldiv::origin_name(kernel.origin));
    return 0;
}

// A fresh directory, removed with everything in it at the end.
class TempDir {
public:
    TempDir() {
        std::string pattern = (fs::temp_directory_path() / "kldiv-jit-bench-XXXXXX").string();
        if (mkdtemp(pattern.data()) == nullptr) fail("mkdtemp " + pattern + ": " + std::strerror(errno));
        path_ = pattern;
    }
    ~TempDir() {
        std::error_code ignored;
        fs::remove_all(path_, ignored);
    }
    TempDir(const TempDir &) = delete;
    TempDir &operator=(const TempDir &) = delete;
    const std::string &path() const { return path_; }

private:
    std::string path_;
};

struct ChildRun {
    double wall_ms = 0;  // spawn to exit, as the parent sees it
    double first_result_ms = 0;
    double kernel_ms = 0;
};

// Runs this program as `--child mode` with KLDIV_CACHE_DIR=cache_dir.
ChildRun run_child(const std::string &exe, const std::string &mode, const std::string &cache_dir) {
    const std::string cache_variable = "KLDIV_CACHE_DIR=";
    std::vector<std::string> environment;
    for (char **entry = environ; *entry != nullptr; ++entry) {
        if (std::strncmp(*entry, cache_variable.c_str(), cache_variable.size()) != 0) environment.push_back(*entry);
    }
    environment.push_back(cache_variable + cache_dir);
    std::vector<char *> envp;
    for (std::string &entry : environment) envp.push_back(entry.data());
    envp.push_back(nullptr);
    std::string arg0 = exe, arg1 = "--child", arg2 = mode;
    char *argv[] = {arg0.data(), arg1.data(), arg2.data(), nullptr};

    int pipe_fds[2];
    if (pipe2(pipe_fds, O_CLOEXEC) != 0) fail(std::string("pipe2: ") + std::strerror(errno));
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDOUT_FILENO);

    const Clock::time_point start = Clock::now();
    pid_t pid = 0;
    const int spawned = posix_spawn(&pid, exe.c_str(), &actions, nullptr, argv, envp.data());
    posix_spawn_file_actions_destroy(&actions);
    close(pipe_fds[1]);
    if (spawned != 0) {
        close(pipe_fds[0]);
        fail("posix_spawn " + exe + ": " + std::strerror(spawned));
    }
    std::string output;
    char chunk[256];
    for (;;) {
        const ssize_t got = read(pipe_fds[0], chunk, sizeof chunk);
        if (got > 0) {
            output.append(chunk, (std::size_t)got);
        } else if (got < 0 && errno == EINTR) {
            continue;
        } else {
            break;
        }
    }
    close(pipe_fds[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) fail(std::string("waitpid: ") + std::strerror(errno));
    }
    ChildRun run;
    run.wall_ms = ms_since(start);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fail("child '" + mode + "' failed (" +
             (WIFEXITED(status) ? "exit status " + std::to_string(WEXITSTATUS(status))
                                : "signal " + std::to_string(WTERMSIG(status))) +
             "); its output: " + output);
    }
    if (std::sscanf(output.c_str(), "first_result_ms %lf kernel_ms %lf", &run.first_result_ms, &run.kernel_ms) !=
        2) {
        fail("child '" + mode + "' printed no figures: " + output);
    }
    return run;
}

struct ChildFigures {
    std::vector<double> first_result_ms, wall_ms, kernel_ms;

    void add(const ChildRun &run) {
        first_result_ms.push_back(run.first_result_ms);
        wall_ms.push_back(run.wall_ms);
        kernel_ms.push_back(run.kernel_ms);
    }
    void print() const {
        const std::size_t n = wall_ms.size();
        std::printf("  first result, from main() (data creation excluded): %s\n",
                    figure(median(first_result_ms), "ms", n).c_str());
        std::printf("  whole process, spawn to exit:                        %s\n",
                    figure(median(wall_ms), "ms", n).c_str());
        std::printf("  kernel (last_kernel().seconds):                      %s\n",
                    figure(median(kernel_ms), "ms", n).c_str());
    }
};

void cold_start(const Plan &plan, const std::string &exe) {
    std::printf("\n[1] Cold start: fresh process, empty cache, first result\n");
    std::printf("    f32 forward batchmean %lldx%lld, Specialize::Always, target host; each child compiles\n"
                "    Halide's runtime and the kernel\n",
                (long long)kChildRows, (long long)kChildColumns);
    ChildFigures figures;
    for (int i = 0; i < plan.fresh_processes; ++i) {
        TempDir cache;
        figures.add(run_child(exe, "compile", cache.path()));
    }
    figures.print();
    std::fflush(stdout);
}

void disk_load(const Plan &plan, const std::string &exe) {
    std::printf("\n[3] Load from the disk cache in a fresh process\n");
    std::printf("    the same call; one child fills the cache, then each child loads Halide's runtime and\n"
                "    the kernel from it\n");
    TempDir cache;
    run_child(exe, "compile", cache.path());
    ChildFigures figures;
    for (int i = 0; i < plan.fresh_processes; ++i) figures.add(run_child(exe, "disk", cache.path()));
    figures.print();
    const double load_ms = median(figures.kernel_ms);
    std::printf("  bar <= 20 ms on the kernel's load: %s\n", load_ms <= kDiskLoadBarMs ? "PASS" : "MISS");
    add_bar("disk-cache load in a fresh process <= 20 ms", figure(load_ms, "ms", figures.kernel_ms.size()),
            load_ms <= kDiskLoadBarMs);
    std::fflush(stdout);
}

// ---- compile time ----------------------------------------------------------------

// Operands (input -1, target 0.25 or its log) and outputs for up to `n` elements.
struct Operands {
    HostBuffer input, target, loss, grad_input;

    Operands(DType dtype, std::int64_t n, bool log_target)
        : input(dtype, n), target(dtype, n), loss(dtype, n), grad_input(dtype, n) {
        input.fill(-1.0);
        target.fill(log_target ? -1.4 : 0.25);
    }
    // Runs the forward (or fused) pass on the first rows x columns elements.
    void run(Runtime &runtime, bool fused, Reduction reduction, bool log_target, std::int64_t rows,
             std::int64_t columns) {
        const DType dtype = input.dtype();
        const std::vector<std::int64_t> shape{rows, columns};
        const std::vector<std::int64_t> loss_shape =
            reduction == Reduction::None ? shape : std::vector<std::int64_t>{};
        const Tensor x = Tensor::contiguous(input.data(), dtype, shape);
        const Tensor t = Tensor::contiguous(target.data(), dtype, shape);
        const Tensor out = Tensor::contiguous(loss.data(), dtype, loss_shape);
        if (fused) {
            runtime.kl_div_forward_backward(x, t, out, Tensor::contiguous(grad_input.data(), dtype, shape),
                                            reduction, log_target);
        } else {
            runtime.kl_div(x, t, out, reduction, log_target);
        }
    }
};

// One kernel's compile: in all and by phase, in milliseconds.
struct Compile {
    double total = 0;
    kldiv::CompileTimes phases;
};

// What the last call spent on its kernel, which it must have compiled.
Compile compiled(const std::string &what, bool specialised) {
    const kldiv::KernelInfo kernel = kldiv::last_kernel();
    if (kernel.origin != KernelOrigin::Compiled || kernel.specialised != specialised) {
        fail(what + ": expected a newly compiled " + (specialised ? "specialised" : "generic") + " kernel, got '" +
             kldiv::origin_name(kernel.origin) + "' " + kernel.name);
    }
    return {kernel.seconds * 1e3, kernel.compile};
}

// The median compile and, under it, the median of each phase.
void report_compiles(const std::string &what, const std::vector<Compile> &compiles) {
    auto median_of = [&](double (*field)(const Compile &)) {
        std::vector<double> ms;
        for (const Compile &c : compiles) ms.push_back(field(c));
        return median(ms);
    };
    const double value = median_of([](const Compile &c) { return c.total; });
    std::printf("  %-34s %s   bar <= 250 ms: %s\n", what.c_str(), figure(value, "ms", compiles.size()).c_str(),
                value <= kCompileBarMs ? "PASS" : "MISS");
    std::printf("    %-32s lower %.1f, LLVM IR and passes %.1f, machine code %.1f, load %.1f ms\n", "phases:",
                median_of([](const Compile &c) { return c.phases.lower * 1e3; }),
                median_of([](const Compile &c) { return c.phases.llvm_ir * 1e3; }),
                median_of([](const Compile &c) { return c.phases.machine_code * 1e3; }),
                median_of([](const Compile &c) { return c.phases.load * 1e3; }));
    add_bar("compile, " + what + " <= 250 ms", figure(value, "ms", compiles.size()), value <= kCompileBarMs);
}

void compile_time(const Plan &plan) {
    std::printf("\n[2] Compile time of a new spec, runtime warm (in-process, cache off, target host)\n");
    {
        RuntimeOptions options;
        options.cache_dir = "off";
        options.specialize = Specialize::Always;
        Runtime runtime(options);
        const std::int64_t rows = 64, widest = 2000 + 8 * (std::int64_t)plan.specialised_compiles;
        Operands operands(DType::Float32, rows * widest, false);
        operands.run(runtime, false, Reduction::Sum, false, rows, 1000);  // Halide's runtime, LLVM

        Operands bf16_operands(DType::BFloat16, rows * widest, false);
        std::vector<Compile> forward, fused, bf16_forward;
        for (int i = 0; i < plan.specialised_compiles; ++i) {
            operands.run(runtime, false, Reduction::Sum, false, rows, 1001 + 8 * i);
            forward.push_back(compiled("specialised forward sum", true));
        }
        for (int i = 0; i < plan.specialised_compiles; ++i) {
            operands.run(runtime, true, Reduction::BatchMean, false, rows, 2001 + 8 * i);
            fused.push_back(compiled("specialised fused batchmean", true));
        }
        for (int i = 0; i < plan.specialised_compiles; ++i) {
            bf16_operands.run(runtime, false, Reduction::Sum, false, rows, 1001 + 8 * i);
            bf16_forward.push_back(compiled("specialised bf16 forward sum", true));
        }
        report_compiles("specialised f32 forward sum", forward);
        report_compiles("specialised f32 fused batchmean", fused);
        report_compiles("specialised bf16 forward sum", bf16_forward);
    }
    {
        RuntimeOptions options;
        options.cache_dir = "off";
        options.specialize = Specialize::Never;
        options.generic_from_aot = false;
        Runtime runtime(options);
        const std::int64_t rows = 64, columns = 1000;
        Operands(DType::Float32, rows * columns, false)
            .run(runtime, false, Reduction::Sum, false, rows, columns);  // warm

        struct Spec {
            DType dtype;
            bool fused;
            Reduction reduction;
            bool log_target;
        };
        // Each differs from the warm-up's spec and from the others.
        const Spec specs[] = {{DType::Float32, false, Reduction::Sum, true},
                              {DType::Float64, false, Reduction::BatchMean, false},
                              {DType::Float16, false, Reduction::None, false},
                              {DType::BFloat16, true, Reduction::BatchMean, false},
                              {DType::Float32, true, Reduction::None, false}};
        std::vector<Compile> generic;
        for (int i = 0; i < plan.generic_compiles && i < (int)std::size(specs); ++i) {
            const Spec &spec = specs[i];
            Operands(spec.dtype, rows * columns, spec.log_target)
                .run(runtime, spec.fused, spec.reduction, spec.log_target, rows, columns);
            generic.push_back(compiled("generic kernel", false));
        }
        report_compiles("generic (dtype, pass, log_target)", generic);
    }
    std::fflush(stdout);
}

// ---- dispatch overhead -------------------------------------------------------

void dispatch_overhead(const Plan &plan) {
    std::printf("\n[4] Dispatch: in-memory JIT hit over a direct AOT call, 1-element f32 sum\n");
    RuntimeOptions aot_options;
    aot_options.jit = false;
    RuntimeOptions jit_options;
    jit_options.cache_dir = "off";
    jit_options.specialize = Specialize::Always;
    Runtime aot(aot_options), jit(jit_options);

    float input = -1.5f, target = 0.25f, aot_loss = 0, jit_loss = 0;
    const Tensor x = Tensor::contiguous(&input, DType::Float32, {1});
    const Tensor t = Tensor::contiguous(&target, DType::Float32, {1});
    const Tensor aot_out = Tensor::contiguous(&aot_loss, DType::Float32, {});
    const Tensor jit_out = Tensor::contiguous(&jit_loss, DType::Float32, {});
    aot.kl_div(x, t, aot_out, Reduction::Sum);
    if (kldiv::last_kernel().origin != KernelOrigin::Aot) fail("dispatch: the AOT-only runtime used a JIT kernel");
    jit.kl_div(x, t, jit_out, Reduction::Sum);  // compiles
    jit.kl_div(x, t, jit_out, Reduction::Sum);
    if (kldiv::last_kernel().origin != KernelOrigin::Memory || !kldiv::last_kernel().specialised) {
        fail("dispatch: the warm JIT runtime's call was not an in-memory hit of a specialised kernel");
    }
    const ReferenceSum reference = reference_sum(&input, &target, 1);
    check_sum("dispatch, AOT", aot_loss, reference);
    check_sum("dispatch, JIT", jit_loss, reference);

    const int calls = plan.calls_per_batch;
    auto per_call_ns = [&](Runtime &runtime, const Tensor &out) {
        return seconds_of([&] {
                   for (int i = 0; i < calls; ++i) runtime.kl_div(x, t, out, Reduction::Sum);
               }) /
               calls * 1e9;
    };
    per_call_ns(aot, aot_out);  // warm-up batches
    per_call_ns(jit, jit_out);
    std::vector<double> aot_ns, jit_ns;
    for (int batch = 0; batch < plan.dispatch_batches; ++batch) {
        // Alternate which goes first so that neither always follows the other.
        if (batch % 2 == 0) {
            aot_ns.push_back(per_call_ns(aot, aot_out));
            jit_ns.push_back(per_call_ns(jit, jit_out));
        } else {
            jit_ns.push_back(per_call_ns(jit, jit_out));
            aot_ns.push_back(per_call_ns(aot, aot_out));
        }
    }
    const double aot_median = median(aot_ns), jit_median = median(jit_ns);
    const double difference = jit_median - aot_median;
    std::printf("  batches of %d calls, per-call time:\n", calls);
    std::printf("  AOT (jit=false):         %s\n", figure(aot_median, "ns", aot_ns.size()).c_str());
    std::printf("  JIT, in-memory hit:      %s\n", figure(jit_median, "ns", jit_ns.size()).c_str());
    std::printf("  difference:              %.1f ns   bar <= 1 us: %s\n", difference,
                difference <= kDispatchBarNs ? "PASS" : "MISS");
    char shown[96];
    std::snprintf(shown, sizeof shown, "%.1f ns (medians of %zu batches)", difference, jit_ns.size());
    add_bar("dispatch overhead of a memory hit over AOT <= 1 us", shown, difference <= kDispatchBarNs);
    std::fflush(stdout);
}

// ---- throughput ----------------------------------------------------------------

enum class Operation { ForwardSum, FusedBatchMean, ForwardNone };

const char *operation_name(Operation operation) {
    switch (operation) {
    case Operation::ForwardSum: return "fwd/sum";
    case Operation::FusedBatchMean: return "fused/batchmean";
    case Operation::ForwardNone: return "fwd/none";
    }
    return "?";
}

enum class Kind { Aot, Generic, Specialised };

struct Contender {
    std::string name;
    Kind kind;
    std::unique_ptr<Runtime> runtime;
    double worst_ratio = 0;  // time over AOT time, the worst case
    std::string worst_case;
};

std::unique_ptr<Runtime> make_runtime(Kind kind, const std::string &target) {
    RuntimeOptions options;
    options.cache_dir = "off";
    options.target = target;
    if (kind == Kind::Aot) options.jit = false;
    if (kind == Kind::Generic) {
        options.generic_from_aot = false;
        options.specialize = Specialize::Never;
    }
    if (kind == Kind::Specialised) options.specialize = Specialize::Always;
    return std::make_unique<Runtime>(options);
}

// Checks that the last call's kernel is the kind `contender` stands for.
void check_origin(const Contender &contender, const char *operation) {
    const kldiv::KernelInfo kernel = kldiv::last_kernel();
    const bool aot = kernel.origin == KernelOrigin::Aot;
    const bool right = contender.kind == Kind::Aot           ? aot
                       : contender.kind == Kind::Generic     ? !aot && !kernel.specialised
                                                             : !aot && kernel.specialised;
    if (!right) {
        fail(contender.name + ", " + operation + ": ran '" + kldiv::origin_name(kernel.origin) + "' kernel " +
             kernel.name);
    }
}

void throughput(const Plan &plan) {
    std::printf("\n[5] Throughput: JIT kernels against AOT kernels, f32\n");
    const kldiv::tools::BandwidthCeiling ceiling =
        kldiv::tools::measure_bandwidth(0, 4 * kLargestN * 4, plan.ceiling_runs);
    std::printf("  ceilings (%d threads, arrays of %zu MiB, median of %d): read %.2f GB/s, copy %.2f GB/s;\n"
                "  2^20 stays partly in cache and can exceed 100%%\n",
                ceiling.threads, ceiling.array_bytes >> 20, ceiling.runs, ceiling.read_gbps, ceiling.copy_gbps);

    std::vector<Contender> contenders;
    // The generic kernel for cpu_target() is the AOT kernel's schedule and code, compiled by the JIT.
    auto add = [&](const char *name, Kind kind, const std::string &target) {
        contenders.push_back({name, kind, make_runtime(kind, target), 0, ""});
    };
    add("aot", Kind::Aot, "host");
    add("jit generic cpu_target", Kind::Generic, kldiv::cpu_target());
    add("jit generic host", Kind::Generic, "host");
    add("jit specialised host", Kind::Specialised, "host");
    const std::size_t generic_host = 2, specialised = 3;
    double worst_specialised_over_generic = 0;
    std::string worst_specialised_case;

    std::printf("  time: median of %d calls per row, rounds interleaved across runtimes\n",
                plan.throughput_rounds);
    std::printf("  %-16s %-10s %-24s %11s %9s %15s %8s\n", "operation", "shape", "runtime", "time", "GB/s",
                "of ceiling", "x AOT");
    const Operation operations[] = {Operation::ForwardSum, Operation::FusedBatchMean, Operation::ForwardNone};
    for (const std::int64_t n : {std::int64_t{1} << 20, kLargestN}) {
        const std::vector<std::int64_t> shape{n / kRowLength, kRowLength};
        kldiv::tools::KlOperands operands = kldiv::tools::make_operands(shape, DType::Float32, false, 0);
        HostBuffer loss(DType::Float32, n), grad_input(DType::Float32, n);
        const Tensor x = Tensor::contiguous(operands.input.data(), DType::Float32, shape);
        const Tensor t = Tensor::contiguous(operands.target.data(), DType::Float32, shape);
        const Tensor per_element = Tensor::contiguous(loss.data(), DType::Float32, shape);
        const Tensor scalar = Tensor::contiguous(loss.data(), DType::Float32, {});
        const Tensor grad = Tensor::contiguous(grad_input.data(), DType::Float32, shape);
        const ReferenceSum reference = reference_sum(static_cast<const float *>(operands.input.data()),
                                                     static_cast<const float *>(operands.target.data()), n);
        const std::string shape_name = std::to_string(shape[0]) + "x" + std::to_string(shape[1]);

        for (const Operation operation : operations) {
            auto call = [&](Runtime &runtime) {
                switch (operation) {
                case Operation::ForwardSum: runtime.kl_div(x, t, scalar, Reduction::Sum); break;
                case Operation::FusedBatchMean:
                    runtime.kl_div_forward_backward(x, t, scalar, grad, Reduction::BatchMean);
                    break;
                case Operation::ForwardNone: runtime.kl_div(x, t, per_element, Reduction::None); break;
                }
            };
            for (Contender &contender : contenders) {
                call(*contender.runtime);  // compiles
                check_origin(contender, operation_name(operation));
                if (operation == Operation::ForwardSum) {
                    check_sum(contender.name + ", forward sum " + shape_name,
                              *static_cast<const float *>(loss.data()), reference);
                }
                call(*contender.runtime);
            }
            std::vector<std::vector<double>> seconds(contenders.size());
            for (int round = 0; round < plan.throughput_rounds; ++round) {
                // Rotate the order so that no runtime always runs first.
                for (std::size_t k = 0; k < contenders.size(); ++k) {
                    const std::size_t c = (k + (std::size_t)round) % contenders.size();
                    seconds[c].push_back(seconds_of([&] { call(*contenders[c].runtime); }));
                }
            }

            const Pass pass = operation == Operation::FusedBatchMean ? Pass::Fused : Pass::Forward;
            const Reduction reduction = operation == Operation::ForwardSum       ? Reduction::Sum
                                        : operation == Operation::FusedBatchMean ? Reduction::BatchMean
                                                                                 : Reduction::None;
            const bool read_bound = operation == Operation::ForwardSum;
            const double bytes = (double)kldiv::tools::bytes_moved(pass, reduction, n, DType::Float32).total();
            const double ceiling_gbps = read_bound ? ceiling.read_gbps : ceiling.copy_gbps;
            const double aot_seconds = median(seconds[0]);
            const std::string case_name = std::string(operation_name(operation)) + " " + shape_name;
            std::vector<double> medians;
            for (std::size_t c = 0; c < contenders.size(); ++c) {
                const double s = median(seconds[c]);
                medians.push_back(s);
                const double gbps = bytes / s / 1e9, ratio = s / aot_seconds;
                if (c > 0 && ratio > contenders[c].worst_ratio) {
                    contenders[c].worst_ratio = ratio;
                    contenders[c].worst_case = case_name;
                }
                char time[32], share[32];
                std::snprintf(time, sizeof time, "%.1f us", s * 1e6);
                std::snprintf(share, sizeof share, "%.1f%% %s", 100 * gbps / ceiling_gbps,
                              read_bound ? "read" : "copy");
                std::printf("  %-16s %-10s %-24s %11s %9.2f %15s %8.3f  (n=%zu)\n", operation_name(operation),
                            shape_name.c_str(), contenders[c].name.c_str(), time, gbps, share, ratio,
                            seconds[c].size());
            }
            const double specialised_over_generic = medians[specialised] / medians[generic_host];
            if (specialised_over_generic > worst_specialised_over_generic) {
                worst_specialised_over_generic = specialised_over_generic;
                worst_specialised_case = case_name;
            }
            std::fflush(stdout);
        }
    }

    char shown[160];
    for (std::size_t c = 1; c < contenders.size(); ++c) {
        std::snprintf(shown, sizeof shown, "worst %.3fx AOT time, %s (medians of %d)", contenders[c].worst_ratio,
                      contenders[c].worst_case.c_str(), plan.throughput_rounds);
        add_bar(contenders[c].name + " within 5% of AOT", shown, contenders[c].worst_ratio <= kJitOverAotBar);
    }
    std::snprintf(shown, sizeof shown, "worst %.3fx generic time, %s (medians of %d)",
                  worst_specialised_over_generic, worst_specialised_case.c_str(), plan.throughput_rounds);
    add_bar("jit specialised host at least as fast as jit generic host", shown,
            worst_specialised_over_generic <= 1.0);
}

// ---- per-call overhead through the C ABI -------------------------------------

// A reduced f32 forward call of `n` elements: the C ABI's tensors, and the
// same memory as the Halide buffers the AOT kernel's entry point takes.
struct SmallCall {
    std::vector<float> input, target;
    float loss = 0;
    std::int64_t sizes[1], strides[1] = {1};
    kldiv_tensor c_input{}, c_target{}, c_out{};
    halide_dimension_t dims[4];
    halide_buffer_t h_input{}, h_target{}, h_total{};
    double total = 0;

    explicit SmallCall(std::int64_t n) : input((std::size_t)n), target((std::size_t)n), sizes{n} {
        for (std::int64_t i = 0; i < n; ++i) {
            input[(std::size_t)i] = -2.0f - 0.01f * float(i);
            target[(std::size_t)i] = 1.0f / float(n);
        }
        c_input = {input.data(), KLDIV_FLOAT32, 1, sizes, strides, KLDIV_DEVICE_CPU};
        c_target = {target.data(), KLDIV_FLOAT32, 1, sizes, strides, KLDIV_DEVICE_CPU};
        c_out = {&loss, KLDIV_FLOAT32, 0, nullptr, nullptr, KLDIV_DEVICE_CPU};
        // As the dispatcher views one contiguous run: 4-d, extents n, 1, 1, 1
        // (a single element has no dimension left: every stride 0).
        dims[0] = halide_dimension_t(0, (std::int32_t)n, n == 1 ? 0 : 1);
        for (int d = 1; d < 4; ++d) dims[d] = halide_dimension_t(0, 1, 0);
        for (halide_buffer_t *b : {&h_input, &h_target}) {
            b->type = halide_type_t(halide_type_float, 32);
            b->dimensions = 4;
            b->dim = dims;
        }
        h_input.host = reinterpret_cast<std::uint8_t *>(input.data());
        h_target.host = reinterpret_cast<std::uint8_t *>(target.data());
        h_total.type = halide_type_t(halide_type_float, 64);
        h_total.host = reinterpret_cast<std::uint8_t *>(&total);
    }
    SmallCall(const SmallCall &) = delete;
    SmallCall &operator=(const SmallCall &) = delete;

    void c_abi() {
        if (kldiv_forward(&c_input, &c_target, KLDIV_REDUCTION_SUM, 0, &c_out) != KLDIV_OK) {
            fail(std::string("kldiv_forward: ") + kldiv_last_error());
        }
    }
    void aot_entry() {
        if (const int status = kldiv_fwd_sum_f32(&h_input, &h_target, &h_total); status != 0) {
            fail("kldiv_fwd_sum_f32 failed (" + std::to_string(status) + ")");
        }
    }
};

// The kernel's parallel loop of one task run on the calling thread, as
// libkldiv runs it (runtime/src/aot_kernels.cpp), set in this program's own
// copy of Halide's runtime: the entry point's cost without the thread pool's.
halide_do_par_for_t pool_do_par_for = nullptr;

int one_task_inline(void *user_context, halide_task_t task, int min, int size, std::uint8_t *closure) {
    if (size == 1) return halide_do_task(user_context, task, min, closure);
    return pool_do_par_for(user_context, task, min, size, closure);
}

void per_call_overhead(const Plan &plan) {
    std::printf("\n[6] Per-call cost of a small loss: kldiv_forward (C ABI, process default runtime), f32 sum\n");
    std::printf("    the default runtime as a C caller gets it (KLDIV_JIT, KLDIV_SPECIALIZE and KLDIV_CACHE_DIR\n"
                "    apply); beside it the AOT kernel's own entry point (kldiv_fwd_sum_f32, linked into this\n"
                "    program with its own copy of Halide's runtime), called with ready-made buffers, through\n"
                "    Halide's thread pool and with its one-task loop run inline as libkldiv runs it\n");
    const int calls = plan.per_call_calls;
    std::printf("  batches of %d calls, per-call time:\n", calls);
    pool_do_par_for = halide_default_do_par_for;
    for (const std::int64_t n : {std::int64_t{1}, std::int64_t{16}}) {
        SmallCall call(n);
        call.c_abi();
        const kldiv::KernelInfo kernel = kldiv::last_kernel();
        call.aot_entry();
        check_sum("per call, C ABI, " + std::to_string(n) + " elements", call.loss,
                  reference_sum(call.input.data(), call.target.data(), n));
        if ((float)call.total != call.loss) {
            fail("per call: the AOT entry point's sum differs from kldiv_forward's at " + std::to_string(n) +
                 " elements");
        }
        // Three ways to make the same call, timed in batches in a rotating order.
        struct Way {
            void (SmallCall::*run)();
            halide_do_par_for_t do_par_for;  // for the entry point, in this program's runtime
            std::vector<double> ns;
        };
        Way ways[] = {{&SmallCall::c_abi, pool_do_par_for, {}},
                      {&SmallCall::aot_entry, pool_do_par_for, {}},
                      {&SmallCall::aot_entry, one_task_inline, {}}};
        auto per_call_ns = [&](const Way &way) {
            halide_set_custom_do_par_for(way.do_par_for);
            const double ns = seconds_of([&] {
                                  for (int i = 0; i < calls; ++i) (call.*way.run)();
                              }) /
                              calls * 1e9;
            halide_set_custom_do_par_for(pool_do_par_for);
            return ns;
        };
        for (const Way &way : ways) per_call_ns(way);  // warm-up batches
        for (int batch = 0; batch < plan.per_call_batches; ++batch) {
            for (std::size_t k = 0; k < std::size(ways); ++k) {
                Way &way = ways[(k + (std::size_t)batch) % std::size(ways)];
                way.ns.push_back(per_call_ns(way));
            }
        }
        const double c_abi = median(ways[0].ns), pool = median(ways[1].ns), inline_task = median(ways[2].ns);
        const bool pass = c_abi <= kPerCallBarNs;
        const std::size_t samples = ways[0].ns.size();
        std::printf("  %2lld element%s  kldiv_forward:                      %s   bar <= 0.5 us: %s\n", (long long)n,
                    n == 1 ? " " : "s", figure(c_abi, "ns", samples).c_str(), pass ? "PASS" : "MISS");
        std::printf("               entry point, Halide's thread pool:  %s\n", figure(pool, "ns", samples).c_str());
        std::printf("               entry point, one-task loop inline:  %s\n",
                    figure(inline_task, "ns", samples).c_str());
        std::printf("               kldiv_forward over the inline entry: %.1f ns   (kernel %s, %s)\n",
                    c_abi - inline_task, kernel.name.c_str(), kldiv::origin_name(kernel.origin));
        add_bar("kldiv_forward, " + std::to_string(n) + " f32 element" + (n == 1 ? "" : "s") + ", C ABI <= 0.5 us",
                figure(c_abi, "ns", samples), pass);
        std::fflush(stdout);
    }
}

// ---- driver ----------------------------------------------------------------------

void print_help() {
    std::printf(
        "kldiv_jit_bench: start-up, compile and dispatch latency of the JIT runtime, and its\n"
        "kernels' throughput against the AOT kernels. Prints medians with their sample counts\n"
        "and a summary of bars (informational: the exit status is 0 unless something fails or\n"
        "a result is wrong).\n\n"
        "  [1] cold start: a fresh process with an empty cache to its first result\n"
        "  [2] compile time of a new kernel in a warm runtime\n"
        "  [3] a fresh process loading its kernel from the disk cache\n"
        "  [4] dispatch overhead of an in-memory hit over a direct AOT call\n"
        "  [5] throughput of JIT (generic, specialised) and AOT kernels at 2^20 and 2^24\n"
        "  [6] per-call cost of kldiv_forward (C ABI, default runtime) at 1 and 16 f32 elements,\n"
        "      beside the AOT kernel's own entry point (with and without Halide's thread pool)\n\n"
        "Options:\n"
        "  --quick   fewer repetitions, for a smoke run\n"
        "  --only N  section N alone (1 to 6)\n"
        "  --help    this text\n");
}

// /proc/loadavg's 1, 5 and 15 minute figures: other work on the machine shows in every figure here.
std::string load_average() {
    std::FILE *file = std::fopen("/proc/loadavg", "r");
    if (file == nullptr) return "unknown";
    double one = 0, five = 0, fifteen = 0;
    const int read = std::fscanf(file, "%lf %lf %lf", &one, &five, &fifteen);
    std::fclose(file);
    if (read != 3) return "unknown";
    char text[64];
    std::snprintf(text, sizeof text, "%.2f %.2f %.2f", one, five, fifteen);
    return text;
}

std::string own_executable() {
    std::error_code error;
    const fs::path path = fs::read_symlink("/proc/self/exe", error);
    if (error) fail("cannot read /proc/self/exe: " + error.message());
    return path.string();
}

}  // namespace

int main(int argc, char **argv) {
    const Clock::time_point process_start = Clock::now();  // first: a child's start-up counts from here
    try {
        if (argc == 3 && std::strcmp(argv[1], "--child") == 0) return child_main(argv[2], process_start);

        Plan plan;
        bool quick = false;
        int only = 0;  // every section
        for (int i = 1; i < argc; ++i) {
            if (std::strcmp(argv[i], "--quick") == 0) {
                plan = quick_plan();
                quick = true;
            } else if (std::strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
                only = std::atoi(argv[++i]);
                if (only < 1 || only > 6) {
                    std::fprintf(stderr, "kldiv_jit_bench: --only takes a section from 1 to 6\n");
                    return 2;
                }
            } else if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
                print_help();
                return 0;
            } else {
                std::fprintf(stderr, "kldiv_jit_bench: unknown argument '%s' (see --help)\n", argv[i]);
                return 2;
            }
        }

        const std::string exe = own_executable();
        {
            RuntimeOptions options;
            options.cache_dir = "off";
            const Runtime probe(options);
            std::printf("kldiv_jit_bench%s: cpu_target %s, host target %s, %d threads, load average %s\n",
                        quick ? " --quick" : "", kldiv::cpu_target().c_str(), probe.target().c_str(),
                        kldiv::tools::resolve_threads(0), load_average().c_str());
        }
        std::fflush(stdout);

        auto runs = [&](int section) { return only == 0 || only == section; };
        if (runs(1)) cold_start(plan, exe);
        if (runs(2)) compile_time(plan);
        if (runs(3)) disk_load(plan, exe);
        if (runs(4)) dispatch_overhead(plan);
        if (runs(5)) throughput(plan);
        if (runs(6)) per_call_overhead(plan);

        std::printf("\nSummary (bars are informational)\n");
        for (const Bar &bar : bars) {
            std::printf("  %-4s  %-58s %s\n", bar.pass ? "PASS" : "MISS", bar.name.c_str(), bar.figure.c_str());
        }
        std::printf("total run time %.1f s; load average at the end %s\n", ms_since(process_start) / 1e3,
                    load_average().c_str());
        return 0;
    } catch (const std::exception &error) {
        std::fflush(stdout);
        std::fprintf(stderr, "kldiv_jit_bench: error: %s\n", error.what());
        return 1;
    }
}
