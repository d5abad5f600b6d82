#include "aot_command.h"

#include <Halide.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "command_line.h"
#include "cpu_level.h"
#include "kldiv/codegen/build.h"
#include "kldiv/codegen/kernel_spec.h"
#include "disk_cache.h"
#include "kldiv/schedules/params.h"
#include "kldiv/schedules/tuning_db.h"

namespace kldiv::tools {

const char kAotHelp[] = R"(Usage: kldiv aot --spec SPEC [--spec SPEC ...] [--target T ...] --output DIR
                 [--name NAME] [--tuning-db FILE|off] [--list]

Generates kernels ahead of time for a program that links them directly: it
needs neither Halide nor LLVM, nor libkldiv, at run time.

  --spec SPEC    PASS:DTYPE:REDUCTION[:logt][:aligned][:SHAPE] (the loss), or
                 distill:DPASS:DTYPE[:reverse] (distillation from logits)
                   PASS       fwd | fused | bwd (both gradients) | bwd_input |
                              bwd_target
                   DTYPE      f32 | f64 | f16 | bf16
                   REDUCTION  none | mean | sum | batchmean (the three reduced
                              ones share one kernel: see the header)
                   logt       the target holds log-probabilities
                   aligned    CUDA only: the kernel for one contiguous run
                              of elements at a 16-byte boundary, which
                              loads 8 or 16 bytes at a time (see its header)
                   SHAPE      e.g. 64x32000: a kernel for contiguous tensors of
                              exactly this shape (at most 4 dimensions);
                              without it the kernel takes any shape
                   DPASS      fwd (row statistics and losses) | fused (and
                              the student's gradient) | bwd (both
                              gradients) | bwd_student | bwd_teacher
                   reverse    reverse KL
                 e.g. fwd:bf16:batchmean, fused:f32:sum:logt:64x32000,
                 distill:fused:bf16
  --target T     a Halide target string (x86-64-linux-avx2, arm-64-linux,
                 x86-64-linux-cuda-cuda_capability_80, ...) or 'host' (this
                 machine, at most the x86 level KLDIV_CPU_TARGET names).
                 Repeatable; default host. CUDA kernels take device
                 memory and write reduced results there (see their headers)
  --output DIR   where to write; each target gets DIR/<T>/ with
                   lib<NAME>.a          the kernels
                   lib<NAME>_runtime.a  Halide's runtime, once per target
                   include/<kernel>.h   one documented header per kernel
                   include/<NAME>.h     all of them
  --name NAME    library name. Default kldiv_kernels
  --list         print each target's kernel names and files; compile nothing
  --tuning-db F  tuning database ('kldiv tune') to take schedules from before
                 the one shipped with kldiv: default $KLDIV_TUNING_DB, else
                 tuning.jsonl in the kernel cache directory; 'off' for none;
                 'none' for neither (default schedules only).
                 Each kernel takes the record of the nearest compatible
                 target (its exact target first) and the nearest size
                 (2^22 elements for a kernel without a shape; for a
                 distillation kernel the vocabulary nearest 2^15), else
                 the default schedule
  -h, --help     this text

Exit status: 0 done, 1 a failed compile, 2 a usage error (an unknown spec,
dtype, reduction or target).
)";

namespace fs = std::filesystem;
using codegen::KernelSpec;
using codegen::Pass;

// Contiguous tensors of `shape`, dimension 0 innermost, for every buffer.
codegen::FixedShape fixed_shape(const AotSpec &a) {
    codegen::FixedShape fixed;
    fixed.extent = {1, 1, 1, 1};
    const int rank = (int)a.shape.size();
    for (int d = 0; d < rank; d++) fixed.extent[d] = (int32_t)a.shape[rank - 1 - d];
    std::array<int32_t, 4> strides{};
    int32_t step = 1;
    for (int d = 0; d < 4; d++) {
        strides[d] = step;
        step *= fixed.extent[d];
    }
    for (const codegen::Argument &arg : codegen::arguments(a.spec)) {
        if (arg.dimensions == 4) fixed.strides.push_back(strides);
    }
    return fixed;
}

namespace {

// A Halide target; 'host' is this CPU's, capped as the JIT's is by
// KLDIV_CPU_TARGET (so that a record tuned under the cap applies).
Halide::Target parse_target(const std::string &name) {
    try {
        const Halide::Target target = codegen::named_target(name);
        const std::string &cap = runtime::cpu_level_cap();
        return codegen::names_host(name) && !cap.empty() ? codegen::cap_x86_level(target, cap) : target;
    } catch (const std::invalid_argument &) {
        throw UsageError("unknown target '" + name + "' (a Halide target string such as x86-64-linux-avx2, "
                         "arm-64-linux or host-cuda, or 'host')");
    }
}

std::string buffer_doc(const KernelSpec &spec, const codegen::Argument &arg, const std::string &storage) {
    if (arg.name == "divisor") {
        return "double divisor: the reduction's divisor (1 for sum, numel for mean, input.size(0) for batchmean)";
    }
    if (arg.name == "out") {
        return "1-d " + storage + " buffer `out`, one element (written): the reduced loss, sum / divisor";
    }
    if (arg.name == "grad_output" && spec.reduce) {
        return "1-d " + storage + " buffer `grad_output`, one element: the upstream gradient (divided by divisor "
               "in the kernel)";
    }
    if (arg.kind == codegen::Argument::Scalar) {
        return std::string(computes_in_double(spec.dtype) ? "double" : "float") +
               " grad_scale: the upstream gradient divided by the reduction's divisor (1 for sum, numel for "
               "mean, input.size(0) for batchmean)";
    }
    if (arg.name == "total") return "0-d float64 buffer `total`: the sum of the pointwise loss";
    return "4-d " + storage + " buffer `" + arg.name + "`" + (arg.is_output ? " (written)" : "");
}

std::string storage_name(DType dtype) {
    return dtype == DType::Float32   ? "float32"
           : dtype == DType::Float64 ? "float64"
           : dtype == DType::Float16 ? "float16 (raw uint16 bits)"
                                     : "bfloat16 (raw uint16 bits)";
}

// What a header says of every CUDA kernel's buffers and stream.
const char kCudaNote[] =
    " *\n * CUDA: every buffer holds device memory (halide_cuda_wrap_device_ptr); kernels run\n"
    " * on the stream and context that halide_set_cuda_get_stream and\n"
    " * halide_set_cuda_acquire_context give, and leave the work queued there.\n";

std::string header_end(const std::string &function) {
    const std::string guard = "KLDIV_AOT_" + function + "_H";
    return " * Returns 0 on success, else a Halide error code (the runtime's error handler\n"
           " * receives the message). Link lib<NAME>.a and lib<NAME>_runtime.a, and -lpthread -ldl.\n */\n"
           "#ifndef " + guard + "\n#define " + guard + "\n\n#include \"HalideRuntime.h\"\n#include \"" + function +
           "_halide.h\"\n\n#endif\n";
}

// The header of a distillation kernel: what it computes and its arguments.
std::string distill_header_text(const codegen::DistillSpec &d, const std::string &function,
                                const std::string &target) {
    using dsl::DistillPass;
    const std::string storage = storage_name(d.dtype);
    const std::string direction = d.reverse ? "reverse KL, sum_j q_j (log q_j - log p_j)"
                                            : "KL, sum_j p_j (log p_j - log q_j)";
    std::ostringstream h;
    h << "/* " << function << ": generated by `kldiv aot` for " << target << ".\n *\n"
      << " * Distillation from logits, per row: p = softmax(teacher / T), q = softmax(student / T),\n"
      << " * the row's " << direction << "\n"
      << " * (docs/distillation.md; a token of probability 0 adds 0).\n";
    switch (d.pass) {
    case DistillPass::Forward:
        h << " * Writes each row's statistics to `stats_out`.\n";
        break;
    case DistillPass::Fused:
        h << " * Writes each row's statistics to `stats_out` and the student's gradient of the\n"
          << " * summed row losses, times grad_scale, to `grad_student`, from one pass over each row.\n"
          << " * grad_student may be the very buffer of student (the gradient written over the logits).\n";
        break;
    case DistillPass::Backward:
        h << " * Writes the gradient(s) of the row losses, row r's times row_scale[r].\n";
        break;
    }
    h << " *\n * Arguments, in order (Halide buffers: halide_buffer_t from HalideRuntime.h):\n";
    for (const codegen::Argument &arg : codegen::arguments(d)) {
        h << " *   ";
        if (arg.name == "student" || arg.name == "teacher") {
            h << "2-d " << storage << " buffer `" << arg.name << "`: logits, dimension 0 the vocabulary (at least "
              << dsl::kDistillLanes << " logits;\n *     pad shorter rows with -inf), dimension 1 the rows";
        } else if (arg.name == "row_on") {
            h << "1-d uint8 buffer `row_on`, one per row: 0 for a masked row (loss and gradient 0)";
        } else if (arg.name == "inv_temperature") {
            h << "double inv_temperature: 1 / T";
        } else if (arg.name == "grad_scale") {
            h << "double grad_scale: the gradient's factor (e.g. T^2 / T / divisor for 'batchmean' with T^2)";
        } else if (arg.name == "stats" || arg.name == "stats_out") {
            h << "2-d float64 buffer `" << arg.name << "`" << (arg.is_output ? " (written)" : " (a forward pass's)")
              << ", extent " << dsl::kDistillStats << " x rows, dimension 0 of stride 1:\n *     per row the loss "
              << "(unscaled, 0 when masked), the student's max of logit / T and log of its\n *     sum of exp(logit / "
              << "T - max), then the teacher's two";
        } else if (arg.name == "row_scale") {
            h << "1-d float64 buffer `row_scale`, one per row: the gradient's factor of that row\n *     (upstream "
              << "gradient x T^2 or 1, / T, / the reduction's divisor)";
        } else {
            h << "2-d " << storage << " buffer `" << arg.name << "` (written), the logits' shape";
        }
        h << "\n";
    }
    if (d.cuda) h << kCudaNote;
    h << " *\n * Any strides; every buffer's rows start at min 0. A row of NaN, or of all -inf, gives NaN.\n"
      << " * The loss reductions are the caller's: sum the row losses, and divide for\n"
      << " * 'batchmean' (unmasked rows) or 'mean' (unmasked rows x vocab).\n";
    return h.str() + header_end(function);
}

std::string header_text(const AotSpec &a, const std::string &target) {
    if (a.distill) return distill_header_text(*a.distill, a.function, target);
    const KernelSpec &s = a.spec;
    const std::string storage = storage_name(s.dtype);
    std::ostringstream h;
    h << "/* " << a.function << ": generated by `kldiv aot` for " << target << ".\n *\n";
    switch (s.pass) {
    case Pass::Forward:
        h << " * F.kl_div(input, target, reduction='" << a.reduction << "', log_target="
          << (s.log_target ? "True" : "False") << ")"
          << (!s.reduce ? ": the pointwise loss.\n"
              : s.cuda  ? ": writes the reduced loss to `out` (device memory).\n"
                        : ": writes the float64 sum of the pointwise loss to `total`;\n * divide it by the reduction's "
                          "divisor (1 sum, numel mean, input.size(0) batchmean).\n");
        break;
    case Pass::Fused:
        h << " * The loss and grad_input of F.kl_div(..., reduction='" << a.reduction << "', log_target="
          << (s.log_target ? "True" : "False") << ") for an upstream gradient of 1, in one\n * read of input and "
          << "target."
          << (!s.reduce ? "\n" : s.cuda ? " `out` as for the forward kernel.\n"
                                         : " `total` as for the forward kernel; grad_scale = 1 / divisor.\n");
        break;
    case Pass::Backward:
        h << " * Gradient(s) of F.kl_div(..., reduction='" << a.reduction << "', log_target="
          << (s.log_target ? "True" : "False") << ") with respect to "
          << (s.grad_input && s.grad_target ? "input and target" : s.grad_input ? "input" : "target") << ".\n";
        break;
    }
    h << " *\n * Arguments, in order (Halide buffers: halide_buffer_t from HalideRuntime.h):\n";
    for (const codegen::Argument &arg : codegen::arguments(s)) h << " *   " << buffer_doc(s, arg, storage) << "\n";
    if (s.cuda) h << kCudaNote;
    if (s.aligned) {
        h << " *\n * Aligned: every 4-d buffer must be one contiguous run of elements from min 0 (extent\n"
          << " * 1 and stride 0 in dimensions 1 to 3, stride 1 in dimension 0) whose device\n"
          << " * address is a multiple of 16 bytes; each thread then loads 8 or 16 bytes at a time. It\n"
          << " * gives the same bits as the kernel without `aligned`, which takes any buffer.\n";
    }
    h << " *\n * Buffers are 4-d with dimension 0 innermost (PyTorch's last dimension); pad\n"
      << " * missing dimensions with extent 1. All buffers have the same extents; their\n"
      << " * strides (in elements) may differ, and a stride of 0 broadcasts an input.\n";
    if (!a.shape.empty()) {
        const codegen::FixedShape f = fixed_shape(a);
        h << " * This kernel is fixed to contiguous tensors of shape " << format_shape(a.shape) << ": extents "
          << f.extent[0] << ", " << f.extent[1] << ", " << f.extent[2] << ", " << f.extent[3]
          << ", every min 0,\n * strides " << f.strides[0][0] << ", " << f.strides[0][1] << ", " << f.strides[0][2]
          << ", " << f.strides[0][3] << ".\n";
    }
    return h.str() + header_end(a.function);
}

void write_text(const fs::path &path, const std::string &text) {
    std::ofstream out(path, std::ios::binary);
    out << text;
    if (!out) throw std::runtime_error("cannot write " + path.string());
}

struct Options {
    std::vector<AotSpec> specs;
    std::vector<std::string> targets;
    std::string output, name = "kldiv_kernels", tuning_db;
    bool list = false, help = false;
};

Options parse_options(const std::vector<std::string> &args) {
    Options o;
    ArgumentReader reader(args);
    while (!reader.done()) {
        const std::string option = reader.next_option();
        if (option == "-h" || option == "--help") {
            o.help = true;
        } else if (option == "--spec") {
            o.specs.push_back(parse_spec(reader.value()));
        } else if (option == "--target") {
            o.targets.push_back(reader.value());
        } else if (option == "--output") {
            o.output = reader.value();
        } else if (option == "--name") {
            o.name = reader.value();
            const bool ok = !o.name.empty() && o.name.find_first_not_of(
                                                   "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") ==
                                                   std::string::npos;
            if (!ok) throw UsageError("invalid --name '" + o.name + "': letters, digits and '_' only");
        } else if (option == "--tuning-db") {
            o.tuning_db = reader.value();
        } else if (option == "--list") {
            reader.no_value();
            o.list = true;
        } else {
            throw UsageError(option.rfind("-", 0) == 0 ? "unknown option '" + option + "'"
                                                       : "unexpected argument '" + option + "'");
        }
    }
    if (o.help) return o;
    if (o.specs.empty()) throw UsageError("no --spec given");
    if (o.output.empty()) throw UsageError("no --output given");
    if (o.targets.empty()) o.targets.push_back("host");
    for (size_t i = 0; i < o.specs.size(); i++) {
        for (size_t j = 0; j < i; j++) {
            if (o.specs[i].function == o.specs[j].function) {
                throw UsageError("two specs name the same kernel " + o.specs[i].function +
                                 " (mean, sum and batchmean share one)");
            }
        }
    }
    return o;
}

int generate(const Options &o) {
    if (const std::string problem = runtime::cpu_level_cap_problem(); !problem.empty()) {
        std::fprintf(stderr, "kldiv aot: %s\n", problem.c_str());
    }
    for (const std::string &name : o.targets) {
        const Halide::Target base = parse_target(name);
        const Halide::Target target =
            codegen::with_kernel_features(base).with_feature(Halide::Target::NoRuntime);
        const fs::path dir = fs::path(o.output) / name, include = dir / "include";
        if (o.list) {
            for (const AotSpec &a : o.specs) std::printf("%s %s\n", name.c_str(), a.function.c_str());
            continue;
        }
        fs::create_directories(include);
        const fs::path scratch = dir / ".objects";
        fs::create_directories(scratch);
        const schedules::TuningDb tuning = schedules::load_tuning_databases(
            o.tuning_db, cache::resolve_cache_dir(""), [](const std::string &m) { std::fprintf(stderr, "%s\n", m.c_str()); });
        std::vector<std::string> objects;
        std::string umbrella = "/* All kernels of lib" + o.name + ".a (" + base.to_string() + "). */\n#ifndef KLDIV_AOT_" +
                               o.name + "_H\n#define KLDIV_AOT_" + o.name + "_H\n\n";
        const bool cuda = base.has_feature(Halide::Target::CUDA);
        // The loss's kernel, with the tuned schedule of its target and size when there is one.
        auto loss_module = [&](const AotSpec &a) {
            std::optional<codegen::FixedShape> shape;
            if (!a.shape.empty()) shape = fixed_shape(a);
            int64_t elements = 1;
            for (int64_t e : a.shape) elements *= e;
            const int bucket = a.shape.empty() ? schedules::kGenericBucket : schedules::size_bucket(elements);
            schedules::Params params = schedules::default_params(base.to_string());
            if (auto match = tuning.find(base.to_string(), a.spec.tuning_name(), bucket)) {
                params = match->record.params;
                std::printf("kldiv aot: %s: %s: tuned schedule from %s (2^%d elements; record for %s)\n",
                            name.c_str(), a.function.c_str(), match->source.c_str(), match->record.bucket,
                            match->why.c_str());
            }
            return codegen::compile_module(a.spec, shape, params, target, a.function);
        };
        // A distillation kernel (any vocabulary), with the tuned schedule of
        // its target nearest a vocabulary of 2^15 when there is one.
        auto distill_module = [&](const AotSpec &a) {
            schedules::Params params = schedules::default_params(base.to_string());
            const auto match = cuda ? std::nullopt
                                    : tuning.find(base.to_string(), a.distill->tuning_name(),
                                                  schedules::kDistillGenericBucket);
            if (match) {
                params = match->record.params;
                std::printf("kldiv aot: %s: %s: tuned schedule from %s (vocabulary 2^%d; record for %s)\n",
                            name.c_str(), a.function.c_str(), match->source.c_str(), match->record.bucket,
                            match->why.c_str());
            }
            return codegen::compile_distill_module(*a.distill, target, a.function, params.distill);
        };
        for (AotSpec a : o.specs) {
            a.spec.cuda = cuda;
            if (a.distill) a.distill->cuda = cuda;
            const Halide::Module module = a.distill ? distill_module(a) : loss_module(a);
            const std::string object = (scratch / (a.function + ".o")).string();
            module.compile({{Halide::OutputFileType::object, object},
                            {Halide::OutputFileType::c_header, (include / (a.function + "_halide.h")).string()}});
            objects.push_back(object);
            write_text(include / (a.function + ".h"), header_text(a, base.to_string()));
            umbrella += "#include \"" + a.function + ".h\"\n";
        }
        write_text(include / (o.name + ".h"), umbrella + "\n#endif\n");
        Halide::create_static_library(objects, base, (dir / ("lib" + o.name + ".a")).string());
        const std::string runtime_object = (scratch / "halide_runtime.o").string();
        Halide::compile_standalone_runtime(runtime_object, base);
        Halide::create_static_library({runtime_object}, base, (dir / ("lib" + o.name + "_runtime.a")).string());
        fs::copy_file(KLDIV_HALIDE_RUNTIME_HEADER, include / "HalideRuntime.h", fs::copy_options::overwrite_existing);
        fs::remove_all(scratch);
        std::printf("kldiv aot: %s (%s): %zu kernel(s) in %s\n", name.c_str(), base.to_string().c_str(),
                    o.specs.size(), (dir / ("lib" + o.name + ".a")).string().c_str());
    }
    return kExitPass;
}

}  // namespace

int aot_command(const std::vector<std::string> &args) {
    Options options;
    try {
        options = parse_options(args);
        if (options.help) {
            std::fputs(kAotHelp, stdout);
            return kExitPass;
        }
        // All usage errors before any work.
        for (const std::string &t : options.targets) {
            const bool cuda = parse_target(t).has_feature(Halide::Target::CUDA);
            for (const AotSpec &a : options.specs) {
                if (a.spec.aligned && !cuda) {
                    throw UsageError("spec " + a.function + ": 'aligned' is for CUDA targets only, not " + t);
                }
            }
        }
    } catch (const UsageError &error) {
        std::fprintf(stderr, "kldiv aot: %s\nTry 'kldiv aot --help'.\n", error.what());
        return kExitUsage;
    }
    try {
        return generate(options);
    } catch (const UsageError &error) {
        std::fprintf(stderr, "kldiv aot: %s\nTry 'kldiv aot --help'.\n", error.what());
        return kExitUsage;
    } catch (const std::exception &error) {
        std::fprintf(stderr, "kldiv aot: %s\n", error.what());
        return kExitFail;
    }
}

}  // namespace kldiv::tools
