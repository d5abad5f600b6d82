#include "aot_command.h"

#include <Halide.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "command_line.h"
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

  --spec SPEC    PASS:DTYPE:REDUCTION[:logt][:aligned][:SHAPE]
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
                 e.g. fwd:bf16:batchmean, fused:f32:sum:logt:64x32000
  --target T     a Halide target string (x86-64-linux-avx2, arm-64-linux,
                 x86-64-linux-cuda-cuda_capability_80, ...) or 'host' (this
                 machine). Repeatable; default host. CUDA kernels take device
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
                 Each kernel takes the record of its exact target and nearest
                 size (2^22 elements for a kernel without a shape), else the
                 default schedule
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

Halide::Target parse_target(const std::string &name) {
    try {
        return codegen::named_target(name);
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

std::string header_text(const AotSpec &a, const std::string &target) {
    const KernelSpec &s = a.spec;
    const std::string storage = s.dtype == DType::Float32   ? "float32"
                                : s.dtype == DType::Float64 ? "float64"
                                : s.dtype == DType::Float16 ? "float16 (raw uint16 bits)"
                                                            : "bfloat16 (raw uint16 bits)";
    std::ostringstream h;
    const std::string guard = "KLDIV_AOT_" + a.function + "_H";
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
    if (s.cuda) {
        h << " *\n * CUDA: every buffer holds device memory (halide_cuda_wrap_device_ptr); kernels run\n"
          << " * on the stream and context that halide_set_cuda_get_stream and\n"
          << " * halide_set_cuda_acquire_context give, and leave the work queued there.\n";
    }
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
    h << " * Returns 0 on success, else a Halide error code (the runtime's error handler\n"
      << " * receives the message). Link lib<NAME>.a and lib<NAME>_runtime.a, and -lpthread -ldl.\n */\n"
      << "#ifndef " << guard << "\n#define " << guard << "\n\n#include \"HalideRuntime.h\"\n#include \"" << a.function
      << "_halide.h\"\n\n#endif\n";
    return h.str();
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
        for (AotSpec a : o.specs) {
            a.spec.cuda = base.has_feature(Halide::Target::CUDA);
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
            const Halide::Module module = codegen::compile_module(a.spec, shape, params, target, a.function);
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
