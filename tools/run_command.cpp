#include "run_command.h"

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <functional>
#include <new>

#include "bandwidth.h"
#include "command_line.h"
#include "cpu_level.h"
#include "kldiv/kldiv.hpp"
#include "kldiv/schedules/tuning_db.h"
#include "reference.h"
#include "timing.h"
#include "workload.h"

namespace kldiv::tools {

const char kRunHelp[] = R"(Usage: kldiv run [options]

Runs one KL-divergence kernel (F.kl_div) on random data through the C++ API,
checks it against a float64 reference, times it, and sets its memory traffic
against the machine's bandwidth ceiling measured in the same process. The
kernel is JIT-compiled for the exact shape (or loaded from the kernel cache);
the first call says where it came from and how long getting it took.

Options:
  --shape DIMS      sizes joined by 'x', e.g. 64x32000 or 1048576; the last
                    dimension is one distribution (row). Default 64x32000
  --dtype T         f32 | f64 | f16 | bf16 (or float32, float, float64, double,
                    float16, half, bfloat16). Default f32
  --reduction R     none | mean | sum | batchmean. Default mean, as PyTorch
  --log-target      the target holds log-probabilities (log_target=True)
  --pass P          fwd    the loss
                    bwd    grad_input and grad_target for an upstream gradient
                           of 1 (a tensor of ones for reduction none)
                    fused  the loss and grad_input in one pass
                    Default fwd
  --threads N       threads of the kernel and of the ceiling loops; 0 = one per
                    core. Default 0
  --repeat N        timed runs; their median is reported. Default 20
  --warmup N        untimed runs before them. Default 2
  --seed S          seed of the random logits. Default 0
  --specialize P    always | never | auto: compile a kernel for this exact
                    shape, use a shape-generic one, or decide as a library
                    user's runtime would (after a shape repeats). Default always
  --aot             use the library's AOT kernels (no JIT)
  --jit-generic     shape-generic kernels from the JIT too, not the AOT ones
  --cache-dir DIR   on-disk kernel cache ('off': none). Default: KLDIV_CACHE_DIR,
                    else $XDG_CACHE_HOME/kldiv, else ~/.cache/kldiv
  --no-ceiling      do not measure the bandwidth ceiling (it needs three arrays
                    of max(256 MiB, 4 x one operand) and about a second)
  -h, --help        this text

Data: input = log_softmax of random logits in each row; target = softmax of
other random logits (their log_softmax with --log-target). Both are computed in
float64 and rounded once, to nearest even, to the dtype (16-bit types are
stored as raw bits).

Check: the float64 formulas of PyTorch's kl_div and its gradients on the same
rounded inputs. A finite value passes when it is within the dtype's tolerance
(f64 1e-12, f32 3e-6, f16 6e-3, bf16 4e-2) of the reference, relative to the
magnitude of the terms behind it, plus two of the dtype's smallest denormals;
NaN, inf and the sign of an exact zero must match exactly. The reported error
is the largest such relative error.

Bytes moved (each operand read once, each output written once):
  fwd    reduced: input + target read; none: also the loss written
  bwd    grad_output (none only) + input + target read; grad_input +
         grad_target written
  fused  input + target read; the loss (none only) + grad_input written
GB/s is bytes moved / median time (1 GB = 1e9 bytes). The ceiling loops are a
sum over two arrays (read ceiling) and c[i] = a[i] + b[i] (copy ceiling, its
write counted once), split over the same number of threads, median of 5 runs.
A pass that only reads is set against the read ceiling, one that writes
against the copy ceiling.

Exit status: 0 when the check passes, 1 when it fails or the library reports
an error, 2 for a usage error.
)";

namespace {

struct RunOptions {
    std::vector<std::int64_t> shape{64, 32000};
    DType dtype = DType::Float32;
    Reduction reduction = Reduction::Mean;
    bool log_target = false;
    Pass pass = Pass::Forward;
    int threads = 0;
    int repeat = 20;
    int warmup = 2;
    std::uint64_t seed = 0;
    bool measure_ceiling = true;
    RuntimeOptions runtime;
    bool help = false;
};

RunOptions parse_run_options(const std::vector<std::string> &args) {
    RunOptions options;
    options.runtime.specialize = Specialize::Always;
    ArgumentReader reader(args);
    while (!reader.done()) {
        const std::string option = reader.next_option();
        if (option == "-h" || option == "--help") {
            options.help = true;
        } else if (option == "--shape") {
            options.shape = parse_shape(reader.value());
        } else if (option == "--dtype") {
            const std::string name = reader.value();
            if (!parse_dtype(name, &options.dtype)) {
                throw UsageError("invalid value '" + name +
                                 "' for --dtype: expected f32, f64, f16 or bf16");
            }
        } else if (option == "--reduction") {
            const std::string name = reader.value();
            try {
                options.reduction = parse_reduction(name);
            } catch (const kldiv::Error &error) {
                throw UsageError(std::string(error.what()) +
                                 " (expected none, mean, sum or batchmean)");
            }
        } else if (option == "--log-target") {
            reader.no_value();
            options.log_target = true;
        } else if (option == "--pass") {
            const std::string name = reader.value();
            if (!parse_pass(name, &options.pass)) {
                throw UsageError("invalid value '" + name +
                                 "' for --pass: expected fwd, bwd or fused");
            }
        } else if (option == "--threads") {
            options.threads = (int)parse_integer(option, reader.value(), 0, 4096);
        } else if (option == "--repeat") {
            options.repeat = (int)parse_integer(option, reader.value(), 1, 1000000);
        } else if (option == "--warmup") {
            options.warmup = (int)parse_integer(option, reader.value(), 0, 1000000);
        } else if (option == "--seed") {
            options.seed = (std::uint64_t)parse_integer(option, reader.value(), 0, INT64_MAX);
        } else if (option == "--specialize") {
            const std::string name = reader.value();
            try {
                options.runtime.specialize = parse_specialize(name);
            } catch (const kldiv::Error &) {
                throw UsageError("invalid value '" + name + "' for --specialize: expected always, never or auto");
            }
        } else if (option == "--aot") {
            options.runtime.jit = false;
        } else if (option == "--jit-generic") {
            options.runtime.generic_from_aot = false;
        } else if (option == "--cache-dir") {
            options.runtime.cache_dir = reader.value();
        } else if (option == "--no-ceiling") {
            reader.no_value();
            options.measure_ceiling = false;
        } else if (option.rfind("-", 0) == 0) {
            throw UsageError("unknown option '" + option + "'");
        } else {
            throw UsageError("unexpected argument '" + option + "'");
        }
    }
    return options;
}

// Outputs start as a value no kernel result here can be, so an element the
// kernel leaves unwritten fails the check.
constexpr double kPoison = 12345.0;

HostBuffer poisoned(DType dtype, std::int64_t numel) {
    HostBuffer buffer(dtype, numel);
    buffer.fill(kPoison);
    return buffer;
}

const char *verdict(bool passed) { return passed ? "PASS" : "FAIL"; }

// Prints one checked output; returns whether it passed. `per_element`: name
// the worst element (a reduced value is printed on its own line instead).
bool report_check(const char *what, const ErrorCheck &check, DType dtype, bool per_element) {
    std::printf("%-15s max error %.3g (tolerance %.1g for %s): %s\n", what, check.max_error(),
                check.tolerance(), short_name(dtype), verdict(check.passed()));
    if (per_element) std::printf("%-15s %s\n", "", check.describe_worst().c_str());
    if (check.failures() > 0) {
        std::printf("%-15s %" PRId64 " element(s) failed, %" PRId64
                    " with a NaN/inf/signed-zero mismatch\n",
                    "", check.failures(), check.special_mismatches());
    }
    if (per_element && check.expected_nans() > 0) {
        std::printf("%-15s %" PRId64 " element(s) NaN, as in PyTorch (e.g. grad_target where the "
                    "target rounded to 0)\n",
                    "", check.expected_nans());
    }
    return check.passed();
}

// Checks a loss against the reference; prints the value for a reduced one.
bool check_loss(const RunOptions &options, const KlOperands &operands, const HostBuffer &loss) {
    const std::int64_t numel = operands.input.numel();
    ErrorCheck check(options.dtype);
    if (options.reduction == Reduction::None) {
        for (std::int64_t i = 0; i < numel; ++i) {
            check.add(i, loss.get(i),
                      pointwise_loss(operands.input.get(i), operands.target.get(i),
                                     options.log_target));
        }
    } else {
        CompensatedSum value, magnitude;
        for (std::int64_t i = 0; i < numel; ++i) {
            const Term term = pointwise_loss(operands.input.get(i), operands.target.get(i),
                                             options.log_target);
            value.add(term.value);
            magnitude.add(term.magnitude);
        }
        const double divisor = reduction_divisor(options.reduction, operands.shape);
        const Term expected{value.value() / divisor, magnitude.value() / divisor};
        check.add(0, loss.get(0), expected);
        std::printf("%-15s %s (float64 reference %s)\n", "value",
                    format_value(loss.get(0), 9).c_str(), format_value(expected.value, 17).c_str());
    }
    return report_check("loss", check, options.dtype, options.reduction == Reduction::None);
}

// Checks grad_input (and grad_target when given) for an upstream gradient of 1.
bool check_gradients(const RunOptions &options, const KlOperands &operands,
                     const HostBuffer &grad_input, const HostBuffer *grad_target) {
    const std::int64_t numel = operands.input.numel();
    const double g = 1.0 / reduction_divisor(options.reduction, operands.shape);
    ErrorCheck input_check(options.dtype), target_check(options.dtype);
    for (std::int64_t i = 0; i < numel; ++i) {
        const double x = operands.input.get(i), t = operands.target.get(i);
        input_check.add(i, grad_input.get(i), grad_input_term(g, x, t, options.log_target));
        if (grad_target) {
            target_check.add(i, grad_target->get(i),
                             grad_target_term(g, x, t, options.log_target));
        }
    }
    bool passed = report_check("grad_input", input_check, options.dtype, true);
    if (grad_target) {
        passed = report_check("grad_target", target_check, options.dtype, true) && passed;
    }
    return passed;
}

std::string format_bytes(std::int64_t bytes) {
    char text[64];
    if (bytes >= 1000000) {
        std::snprintf(text, sizeof text, "%.2f MB", (double)bytes / 1e6);
    } else if (bytes >= 1000) {
        std::snprintf(text, sizeof text, "%.2f kB", (double)bytes / 1e3);
    } else {
        std::snprintf(text, sizeof text, "%lld B", (long long)bytes);
    }
    return text;
}

const char *origin_label(KernelOrigin origin) {
    switch (origin) {
    case KernelOrigin::Aot: return "the AOT library";
    case KernelOrigin::Memory: return "the in-memory cache";
    case KernelOrigin::Disk: return "the disk cache";
    case KernelOrigin::Compiled: return "a fresh JIT compile";
    }
    return "?";
}

int run(const RunOptions &options) {
    const int threads = resolve_threads(options.threads);
    set_num_threads(options.threads);
    const std::int64_t numel = element_count(options.shape);
    std::printf("kldiv run: pass %s, shape %s (%" PRId64 " elements), %s, reduction %s%s\n",
                pass_name(options.pass), format_shape(options.shape).c_str(), numel,
                short_name(options.dtype), reduction_name(options.reduction),
                options.log_target ? ", log_target" : "");
    const std::string &cap = runtime::cpu_level_cap();
    std::printf("%-15s %s (AOT kernels %s; %s)\n", "cpu level",
                schedules::isa_class(cpu_target()).c_str(), cpu_target().c_str(),
                cap.empty() ? "the best this CPU has" : ("KLDIV_CPU_TARGET=" + cap).c_str());
    std::printf("%-15s %d%s\n", "threads", threads, options.threads == 0 ? " (one per core)" : "");
    std::fflush(stdout);
    RuntimeOptions runtime_options = options.runtime;
    runtime_options.warning_handler = [](const std::string &message) {
        std::fprintf(stderr, "kldiv run: warning: %s\n", message.c_str());
    };
    Runtime runtime(runtime_options);
    if (options.runtime.jit) {
        std::printf("%-15s %s, specialize %s, cache %s\n", "jit", runtime.target().c_str(),
                    specialize_name(*options.runtime.specialize),
                    runtime.cache_dir().empty() ? "off (memory only)" : runtime.cache_dir().c_str());
    }

    const KlOperands operands =
        make_operands(options.shape, options.dtype, options.log_target, options.seed);
    const Tensor input = Tensor::contiguous((void *)operands.input.data(), options.dtype,
                                            options.shape);
    const Tensor target = Tensor::contiguous((void *)operands.target.data(), options.dtype,
                                             options.shape);
    const bool per_element = options.reduction == Reduction::None;
    const std::vector<std::int64_t> loss_shape =
        per_element ? options.shape : std::vector<std::int64_t>{};

    HostBuffer loss, grad_input, grad_target, grad_output;
    std::function<void()> call;
    switch (options.pass) {
    case Pass::Forward: {
        loss = poisoned(options.dtype, per_element ? numel : 1);
        const Tensor out = Tensor::contiguous(loss.data(), options.dtype, loss_shape);
        call = [=, &runtime] { runtime.kl_div(input, target, out, options.reduction, options.log_target); };
        break;
    }
    case Pass::Backward: {
        grad_output = HostBuffer(options.dtype, per_element ? numel : 1);
        grad_output.fill(1.0);
        grad_input = poisoned(options.dtype, numel);
        grad_target = poisoned(options.dtype, numel);
        const Tensor upstream = Tensor::contiguous(grad_output.data(), options.dtype, loss_shape);
        const Tensor dx = Tensor::contiguous(grad_input.data(), options.dtype, options.shape);
        const Tensor dt = Tensor::contiguous(grad_target.data(), options.dtype, options.shape);
        call = [=, &runtime] {
            runtime.kl_div_backward(upstream, input, target, options.reduction, options.log_target, &dx,
                            &dt);
        };
        break;
    }
    case Pass::Fused: {
        loss = poisoned(options.dtype, per_element ? numel : 1);
        grad_input = poisoned(options.dtype, numel);
        const Tensor out = Tensor::contiguous(loss.data(), options.dtype, loss_shape);
        const Tensor dx = Tensor::contiguous(grad_input.data(), options.dtype, options.shape);
        call = [=, &runtime] {
            runtime.kl_div_forward_backward(input, target, out, dx, options.reduction,
                                    options.log_target);
        };
        break;
    }
    }

    // The first call finds the kernel: AOT, the memory or disk cache, or a compile.
    const auto first_start = std::chrono::steady_clock::now();
    call();
    const double first_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - first_start).count();
    const KernelInfo kernel = last_kernel();
    std::printf("%-15s %s from %s in %.1f ms (first call %.1f ms)\n", "kernel", kernel.name.c_str(),
                origin_label(kernel.origin), kernel.seconds * 1e3, first_seconds * 1e3);
    std::printf("%-15s %s\n", "schedule", kernel.schedule.c_str());
    const double compile_ms = runtime.stats().compile_seconds * 1e3;
    if (kernel.origin == KernelOrigin::Compiled && kernel.seconds * 1e3 > compile_ms + 50) {
        std::printf("%-15s compiling the kernel took %.1f ms; the rest loaded Halide's runtime for the target "
                    "(compiled once, then cached)\n", "", compile_ms);
    }
    std::fflush(stdout);

    const std::vector<double> seconds = time_calls(call, options.warmup, options.repeat);

    bool passed = true;
    if (options.pass != Pass::Backward) passed = check_loss(options, operands, loss) && passed;
    if (options.pass != Pass::Forward) {
        passed = check_gradients(options, operands, grad_input,
                                 options.pass == Pass::Backward ? &grad_target : nullptr) &&
                 passed;
    }

    const double median_seconds = median(seconds);
    std::printf("%-15s %.4f ms median of %d runs (min %.4f ms, max %.4f ms; %d warm-up)\n",
                "time", median_seconds * 1e3, options.repeat,
                *std::min_element(seconds.begin(), seconds.end()) * 1e3,
                *std::max_element(seconds.begin(), seconds.end()) * 1e3, options.warmup);
    const Traffic traffic = bytes_moved(options.pass, options.reduction, numel, options.dtype);
    std::printf("%-15s %s (%s read, %s written)\n", "bytes moved",
                format_bytes(traffic.total()).c_str(), format_bytes(traffic.read_bytes).c_str(),
                format_bytes(traffic.written_bytes).c_str());
    const double gbps = median_seconds > 0 ? (double)traffic.total() / median_seconds / 1e9 : 0;
    std::printf("%-15s %.2f GB/s\n", "achieved", gbps);
    std::fflush(stdout);

    if (options.measure_ceiling) {
        const std::size_t operand_bytes = (std::size_t)numel * element_size(options.dtype);
        const BandwidthCeiling ceiling = measure_bandwidth(options.threads, 4 * operand_bytes);
        std::printf("%-15s read %.2f GB/s, copy %.2f GB/s (%d threads, arrays of %zu MiB, "
                    "median of %d)\n",
                    "ceiling", ceiling.read_gbps, ceiling.copy_gbps, ceiling.threads,
                    ceiling.array_bytes >> 20, ceiling.runs);
        const bool reads_only = traffic.written_bytes == 0;
        const double read_pct = 100 * gbps / ceiling.read_gbps;
        const double copy_pct = 100 * gbps / ceiling.copy_gbps;
        std::printf("%-15s %.1f%% of the %s ceiling (%.1f%% of the %s ceiling)\n", "of ceiling",
                    reads_only ? read_pct : copy_pct, reads_only ? "read" : "copy",
                    reads_only ? copy_pct : read_pct, reads_only ? "copy" : "read");
    }
    std::printf("%-15s %s\n", "result", verdict(passed));
    return passed ? kExitPass : kExitFail;
}

}  // namespace

int run_command(const std::vector<std::string> &args) {
    RunOptions options;
    try {
        options = parse_run_options(args);
    } catch (const UsageError &error) {
        std::fprintf(stderr, "kldiv run: %s\nTry 'kldiv run --help'.\n", error.what());
        return kExitUsage;
    }
    if (options.help) {
        std::fputs(kRunHelp, stdout);
        return kExitPass;
    }
    try {
        return run(options);
    } catch (const kldiv::Error &error) {
        std::fflush(stdout);
        std::fprintf(stderr, "kldiv run: the library reported an error: %s\n", error.what());
    } catch (const std::bad_alloc &) {
        std::fflush(stdout);
        std::fprintf(stderr, "kldiv run: out of memory for shape %s\n",
                     format_shape(options.shape).c_str());
    }
    return kExitFail;
}

}  // namespace kldiv::tools
