#include "kldiv/codegen/build.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <llvm/ADT/StringMap.h>
#include <llvm/Support/CommandLine.h>

#include <algorithm>
#include <cctype>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>

#include "kldiv/dsl/algorithm.h"
#include "kldiv/codegen/math_code.h"
#include "kldiv/dsl/math.h"
#include "kldiv/schedules/cpu_schedule.h"
#include "kldiv/schedules/distill_schedule.h"

namespace kldiv::codegen {

Halide::Type argument_type(const KernelSpec &spec, const Argument &argument) {
    if (argument.name == "total" || argument.name == "divisor") return Halide::Float(64);
    if (argument.kind == Argument::Scalar) return dsl::compute_type(spec.dtype);
    return dsl::storage_type(spec.dtype);
}

// Halide 14's host target, less what this CPU cannot run: it reports
// avx512_sapphirerapids from AVX512-BF16 and AVX-VNNI alone, and LLVM's
// sapphirerapids then emits AVX512-FP16 instructions, which some CPUs with
// both (AMD Zen 4) lack.
Halide::Target host_target() {
    Halide::Target host = Halide::get_host_target();
#if defined(__x86_64__) || defined(__i386__)
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool has_fp16 = __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) && (edx & (1u << 23)) != 0;
    if (host.has_feature(Halide::Target::AVX512_SapphireRapids) && !has_fp16) {
        host = host.without_feature(Halide::Target::AVX512_SapphireRapids);
    }
#endif
    return host;
}

bool names_host(const std::string &name) { return name == "host" || name.rfind("host-", 0) == 0; }

Halide::Target named_target(const std::string &name) {
    if (!Halide::Target::validate_target_string(name)) throw std::invalid_argument("unknown target '" + name + "'");
    if (!names_host(name)) return Halide::Target(name);
    const Halide::Target named(name), plain_host = Halide::get_host_target();
    Halide::Target target = host_target();
    for (int f = 0; f < (int)Halide::Target::FeatureEnd; f++) {
        const auto feature = (Halide::Target::Feature)f;
        if (named.has_feature(feature) && !plain_host.has_feature(feature)) target = target.with_feature(feature);
    }
    return target;
}

Halide::Target cap_x86_level(Halide::Target target, const std::string &level) {
    using F = Halide::Target::Feature;
    if (target.arch != Halide::Target::X86) return target;
    if (level != "avx512") {
        target = target.without_feature(F::AVX512)
                     .without_feature(F::AVX512_KNL)
                     .without_feature(F::AVX512_Skylake)
                     .without_feature(F::AVX512_Cannonlake)
                     .without_feature(F::AVX512_SapphireRapids);
    }
    if (level == "sse41") {
        target = target.without_feature(F::AVX).without_feature(F::AVX2).without_feature(F::FMA).without_feature(
            F::F16C);
    }
    return target;
}

// PTX adds and multiplies without a rounding modifier may be contracted into
// fused multiply-adds by ptxas; LLVM's NVPTX back end writes them with .rn
// (no contraction) at -nvptx-fma-level=0. The products the loss must round
// on their own are fenced in the algorithm (dsl/algorithm.cpp); the FMAs that
// LLVM forms elsewhere (log's and exp's polynomials) stay.
static void keep_ptx_roundings() {
    static std::once_flag once;
    std::call_once(once, [] {
        llvm::StringMap<llvm::cl::Option *> &options = llvm::cl::getRegisteredOptions();
        auto it = options.find("nvptx-fma-level");
        if (it == options.end() || it->second->addOccurrence(0, "nvptx-fma-level", "0")) {
            throw std::runtime_error("LLVM's option nvptx-fma-level is missing, so PTX could contract the loss's "
                                     "roundings");
        }
        // 32-bit shared-memory addresses: an index into a table in shared
        // memory is then one shift, with constant offsets folded into the
        // load, where 64-bit ones take a widening multiply per load (2 PTX
        // instructions per float32 element of the table log). Only speed
        // depends on it, so a missing option is no error.
        auto short_ptr = options.find("nvptx-short-ptr");
        if (short_ptr != options.end()) short_ptr->second->addOccurrence(0, "nvptx-short-ptr", "true");
    });
}

Halide::Target with_kernel_features(Halide::Target target) {
    target = target.with_feature(Halide::Target::StrictFloat);
    // CPU kernels: LLVM unrolls no loop the schedule does not (Halide 14 lets
    // it by default). It fully unrolled the float32 sum's 2-iteration loop
    // over lanes on AVX-512 once the log was 4 instructions shorter: 8
    // vectors in flight, spilled, 0.84x.
    if (!target.has_gpu_feature()) target = target.with_feature(Halide::Target::DisableLLVMLoopOpt);
    return target;
}

std::vector<Halide::Func> build(const KernelSpec &spec, const schedules::Params &params,
                                const Halide::Target &target, const PipelineInputs &inputs, bool schedule) {
    dsl::Inputs in;
    auto buffer = [&](const char *name) {
        auto it = inputs.buffers.find(name);
        return it == inputs.buffers.end() ? Halide::Func() : it->second;
    };
    in.input = buffer("input");
    in.target = buffer("target");
    in.grad_output = buffer("grad_output");
    in.grad_scale = inputs.grad_scale;
    in.extent = inputs.extent;
    in.fixed_extent0 = inputs.fixed_extent0;
    if (spec.cuda && spec.reduce) {
        // The scalar upstream gradient, or 1 (fused), divided in float64 as
        // the host divides it for CPU kernels.
        in.divisor = inputs.divisor;
        const Halide::Type type = dsl::compute_type(spec.dtype);
        if (spec.pass == Pass::Backward) {
            const Halide::Expr g = dsl::widen(in.grad_output(0), spec.dtype);
            in.grad_scale = Halide::cast(type, Halide::cast<double>(g) / inputs.divisor);
            in.grad_output = Halide::Func();
        } else if (spec.pass == Pass::Fused) {
            in.grad_scale = Halide::cast(type, Halide::Expr(1.0) / inputs.divisor);
        }
        in.total_lanes = params.gpu.total_lanes;
    }

    const bool cuda = target.has_feature(Halide::Target::CUDA);
    if (cuda) keep_ptx_roundings();
    dsl::LossOptions options{spec.dtype, spec.log_target, cuda};
    options.math = math_options(target);
    options.lookup = uses_lookup(spec, target);
    const dsl::SumTree tree = schedules::sum_tree(target, spec.dtype, params);
    dsl::Algorithm algorithm;
    switch (spec.pass) {
    case Pass::Forward: algorithm = dsl::forward(in, options, spec.reduce, tree); break;
    case Pass::Backward:
        algorithm = dsl::backward(in, options, spec.grad_input, spec.grad_target, spec.reduce);
        break;
    case Pass::Fused: algorithm = dsl::fused(in, options, spec.reduce, tree); break;
    }

    std::vector<Halide::Func> outputs;
    for (const Argument &argument : arguments(spec)) {
        if (!argument.is_output) continue;
        if (argument.name == "total") outputs.push_back(algorithm.total);
        if (argument.name == "out") outputs.push_back(algorithm.out);
        if (argument.name == "loss") outputs.push_back(algorithm.loss);
        if (argument.name == "grad_input") outputs.push_back(algorithm.grad_input);
        if (argument.name == "grad_target") outputs.push_back(algorithm.grad_target);
    }

    // Fast path: every buffer walks dimension 0 with unit stride. A constant
    // when the strides are fixed: the schedule then needs no second loop nest.
    Halide::Expr unit_stride;
    if (inputs.unit_stride) {
        unit_stride = *inputs.unit_stride ? Halide::Internal::const_true() : Halide::Internal::const_false();
    } else {
        unit_stride = Halide::cast<bool>(true);
        for (const auto &[name, stride] : inputs.inner_strides) unit_stride = unit_stride && stride == 1;
        for (const Halide::Func &output : outputs) {
            if (output.dimensions() == 4) unit_stride = unit_stride && output.output_buffer().dim(0).stride() == 1;
        }
    }
    if (!schedule) return outputs;
    if (target.has_gpu_feature()) {
        schedules::apply_gpu(algorithm, params, unit_stride);
    } else {
        schedules::apply_cpu(algorithm, target, spec.dtype, params, unit_stride);
    }
    return outputs;
}


namespace {

// Pins every dimension of a buffer to the fixed shape (min 0), or leaves the
// inner stride free (pinned to 1 for InnerStride::Unit). `strides_only` pins
// the strides alone.
void constrain(const Halide::OutputImageParam &buffer, const std::optional<FixedShape> &shape, size_t index,
               bool strides_only, InnerStride inner_stride) {
    for (int d = 0; d < 4; d++) {
        if (shape && strides_only) {
            buffer.dim(d).set_stride(shape->strides[index][d]);
        } else if (shape) {
            buffer.dim(d).set_bounds(0, shape->extent[d]).set_stride(shape->strides[index][d]);
        } else if (d == 0) {
            buffer.dim(0).set_stride(inner_stride == InnerStride::Unit ? Halide::Expr(1) : Halide::Expr());
        }
    }
}

// The shape autoschedulers plan for: the fixed one, or a contiguous 2^20.
std::vector<Halide::Range> estimates(const std::optional<FixedShape> &shape) {
    std::vector<Halide::Range> region;
    for (int d = 0; d < 4; d++) region.emplace_back(0, shape ? shape->extent[d] : (d == 0 ? 1 << 20 : 1));
    return region;
}

// Loads the plugin of `name` once per process.
void load_autoscheduler(const std::string &name) {
    static std::mutex mutex;
    static std::set<std::string> loaded;
    const auto &names = autoscheduler_names();
    if (std::find(names.begin(), names.end(), name) == names.end()) {
        throw std::invalid_argument("unknown autoscheduler '" + name + "' (Mullapudi2016, Adams2019 or Li2018)");
    }
    std::lock_guard<std::mutex> lock(mutex);
    if (loaded.count(name)) return;
    std::string file = name;
    std::transform(file.begin(), file.end(), file.begin(), [](unsigned char c) { return (char)std::tolower(c); });
    Halide::load_plugin(std::string(KLDIV_HALIDE_PLUGIN_DIR) + "/libautoschedule_" + file + ".so");
    loaded.insert(name);
}

}  // namespace

const std::vector<std::string> &autoscheduler_names() {
    static const std::vector<std::string> names = {"Mullapudi2016", "Adams2019", "Li2018"};
    return names;
}

Halide::Module compile_module(const KernelSpec &spec, const std::optional<FixedShape> &shape,
                              const schedules::Params &params, const Halide::Target &target,
                              const std::string &function, const std::string &autoscheduler,
                              InnerStride inner_stride, Tables tables) {
    // Halide 14 miscompiles the fused `none` schedule (compute_with over fused
    // loops) when every extent is a constant: it writes before the buffer. Its
    // fixed kernels know the strides only.
    const bool strides_only = spec.pass == Pass::Fused && !spec.reduce;
    PipelineInputs inputs;
    std::vector<Halide::Argument> halide_args;
    std::vector<Halide::ImageParam> images;
    std::optional<Halide::Param<>> scale;
    const std::vector<Argument> args = arguments(spec);
    for (const Argument &a : args) {
        if (a.is_output) continue;
        const Halide::Type type = argument_type(spec, a);
        if (a.kind == Argument::Scalar) {
            scale.emplace(type, a.name);
            (a.name == "divisor" ? inputs.divisor : inputs.grad_scale) = *scale;
            halide_args.push_back(*scale);
            continue;
        }
        Halide::ImageParam image(type, a.dimensions, a.name);
        if (image.dimensions() == 4) constrain(image, shape, images.size(), strides_only, inner_stride);
        if (image.dimensions() == 4 && spec.aligned) constrain_aligned(image);
        inputs.buffers[a.name] = image;
        if (image.dimensions() == 4) inputs.inner_strides[a.name] = image.dim(0).stride();
        images.push_back(image);
        halide_args.push_back(image);
    }
    for (const Halide::ImageParam &image : images) {
        if (image.name() == "input") {
            for (int d = 0; d < 4; d++) inputs.extent[d] = image.dim(d).extent();
        }
    }
    if (shape) {
        inputs.unit_stride = std::all_of(shape->strides.begin(), shape->strides.end(),
                                         [](const std::array<int32_t, 4> &strides) { return strides[0] == 1; });
    } else if (inner_stride != InnerStride::Any) {
        inputs.unit_stride = inner_stride == InnerStride::Unit;
    }
    if (spec.aligned) inputs.unit_stride = true;
    if (shape && !strides_only) {
        // CPU kernels: the fixed extents as constants in the algorithm
        // itself, not only in the buffers' constraints (which Halide applies
        // after lowering has sized loops and allocations from them): every
        // derived size folds, and a loop that divides evenly needs no tail.
        // (CUDA kernels as before: their code is checked on a GPU only.)
        if (!target.has_gpu_feature()) {
            for (int d = 0; d < 4; d++) inputs.extent[d] = Halide::Expr(shape->extent[d]);
        }
        inputs.fixed_extent0 = shape->extent[0];
    }
    const bool autoschedule = !autoscheduler.empty();
    const std::vector<Halide::Func> outputs = build(spec, params, target, inputs, !autoschedule);
    size_t index = images.size();
    for (const Halide::Func &output : outputs) {
        if (output.dimensions() != 4) continue;
        Halide::OutputImageParam buffer = output.output_buffer();
        constrain(buffer, shape, index++, strides_only, inner_stride);
        if (spec.aligned) constrain_aligned(buffer);
    }
    Halide::Pipeline pipeline(outputs);
    if (autoschedule) {
        load_autoscheduler(autoscheduler);
        for (Halide::ImageParam &image : images) image.set_estimates(estimates(shape));
        for (const Halide::Func &output : outputs) {
            if (output.dimensions() == 4) output.output_buffer().set_estimates(estimates(shape));
        }
        if (scale) {
            // Param<void>::set_estimate accepts no value in Halide 14; its Parameter does.
            Halide::Internal::Parameter parameter = scale->parameter();
            parameter.set_estimate(Halide::cast(scale->type(), 1));
        }
        const int cores = std::max(1, (int)std::thread::hardware_concurrency());
        pipeline.auto_schedule(autoscheduler, target, Halide::MachineParams(cores, 32u << 20, 40));
    }
    Halide::Module module = pipeline.compile_to_module(halide_args, function, target);
    for (const Halide::ExternalCode &code : math_code(spec, target, tables)) module.append(code);
    return module;
}

// ---- distillation -----------------------------------------------------------

Halide::Type argument_type(const DistillSpec &spec, const Argument &argument) {
    if (argument.name == "row_on") return Halide::UInt(8);
    if (argument.kind == Argument::Scalar || argument.name == "stats" || argument.name == "stats_out" ||
        argument.name == "row_scale") {
        return Halide::Float(64);
    }
    return dsl::storage_type(spec.dtype);
}

std::vector<Halide::Func> build_distill(const DistillSpec &spec, const Halide::Target &target,
                                        const dsl::DistillInputs &in, const Halide::Expr &inputs_unit_stride,
                                        const schedules::DistillParams &params) {
    const bool cuda = target.has_feature(Halide::Target::CUDA);
    if (target.has_gpu_feature() && !cuda) {
        throw std::invalid_argument("distillation kernels run on CPU and CUDA targets, not " + target.to_string());
    }
    if (cuda) keep_ptx_roundings();
    dsl::DistillOptions options;
    options.dtype = spec.dtype;
    options.pass = spec.pass;
    options.reverse = spec.reverse;
    options.grad_student = spec.grad_student;
    options.grad_teacher = spec.grad_teacher;
    options.math = math_options(target);
    dsl::DistillAlgorithm a = dsl::distill(in, options);
    std::vector<Halide::Func> outputs;
    for (const Argument &argument : arguments(spec)) {
        if (argument.name == "stats_out") outputs.push_back(a.stats);
        if (argument.name == "grad_student") outputs.push_back(a.grad_student);
        if (argument.name == "grad_teacher") outputs.push_back(a.grad_teacher);
    }
    // The gradients may have any stride along the vocabulary too, unless the
    // inputs' stride is fixed: then theirs is the same.
    Halide::Expr unit_stride = inputs_unit_stride;
    const bool fixed = Halide::Internal::is_const(inputs_unit_stride);
    for (Halide::Func gradient : {a.grad_student, a.grad_teacher}) {
        if (!gradient.defined()) continue;
        if (!fixed) {
            gradient.output_buffer().dim(0).set_stride(Halide::Expr());
            unit_stride = unit_stride && gradient.output_buffer().dim(0).stride() == 1;
        } else if (!Halide::Internal::is_const_one(inputs_unit_stride)) {
            gradient.output_buffer().dim(0).set_stride(Halide::Expr());
        }
    }
    if (cuda) {
        schedules::apply_distill_gpu(a);
    } else {
        schedules::apply_distill_cpu(a, options, target, unit_stride, params);
    }
    return outputs;
}

Halide::Module compile_distill_module(const DistillSpec &spec, const Halide::Target &target,
                                      const std::string &function, const schedules::DistillParams &params,
                                      std::optional<int32_t> vocab, InnerStride inner_stride) {
    dsl::DistillInputs in;
    std::vector<Halide::Argument> halide_args;
    std::map<std::string, Halide::ImageParam> images;
    for (const Argument &a : arguments(spec)) {
        if (a.is_output) continue;
        const Halide::Type type = argument_type(spec, a);
        if (a.kind == Argument::Scalar) {
            Halide::Param<> scalar(type, a.name);
            (a.name == "grad_scale" ? in.grad_scale : in.inv_temperature) = scalar;
            halide_args.push_back(scalar);
            continue;
        }
        Halide::ImageParam image(type, a.dimensions, a.name);
        images.emplace(a.name, image);
        halide_args.push_back(image);
    }
    Halide::ImageParam student = images.at("student"), teacher = images.at("teacher");
    in.student = student;
    in.teacher = teacher;
    in.row_on = images.at("row_on");
    if (spec.pass == dsl::DistillPass::Backward) {
        in.stats = images.at("stats");
        in.row_scale = images.at("row_scale");
    }
    if (vocab) student.dim(0).set_bounds(0, *vocab);
    in.vocab = vocab ? Halide::Expr(*vocab) : student.dim(0).extent();
    for (int d = 0; d < 2; d++) teacher.dim(d).set_bounds(student.dim(d).min(), student.dim(d).extent());
    // Any stride along the vocabulary; the schedule specialises for unit
    // stride, unless the caller says which it is.
    Halide::Expr unit_stride = Halide::Internal::const_true();
    if (inner_stride != InnerStride::Unit) {
        student.dim(0).set_stride(Halide::Expr());
        teacher.dim(0).set_stride(Halide::Expr());
        unit_stride = inner_stride == InnerStride::Strided
                          ? Halide::Internal::const_false()
                          : student.dim(0).stride() == 1 && teacher.dim(0).stride() == 1;
    }
    const std::vector<Halide::Func> outputs = build_distill(spec, target, in, unit_stride, params);
    Halide::Module module = Halide::Pipeline(outputs).compile_to_module(halide_args, function, target);
    for (const Halide::ExternalCode &code : fma_code(target)) module.append(code);
    return module;
}

}  // namespace kldiv::codegen
