#include "kldiv/codegen/build.h"

#include "kldiv/dsl/algorithm.h"
#include "kldiv/dsl/math.h"
#include "kldiv/schedules/cpu_schedule.h"

namespace kldiv::codegen {

Halide::Type argument_type(const KernelSpec &spec, const Argument &argument) {
    if (argument.name == "total") return Halide::Float(64);
    if (argument.kind == Argument::Scalar) return dsl::compute_type(spec.dtype);
    return dsl::storage_type(spec.dtype);
}

int argument_dimensions(const Argument &argument) {
    if (argument.kind == Argument::Scalar || argument.name == "total") return 0;
    return dsl::kRank;
}

Halide::Target with_kernel_features(Halide::Target target) {
    return target.with_feature(Halide::Target::StrictFloat);
}

std::vector<Halide::Func> build(const KernelSpec &spec, const schedules::Params &params,
                                const Halide::Target &target, const PipelineInputs &inputs) {
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

    const dsl::LossOptions options{spec.dtype, spec.log_target};
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
        if (argument.name == "loss") outputs.push_back(algorithm.loss);
        if (argument.name == "grad_input") outputs.push_back(algorithm.grad_input);
        if (argument.name == "grad_target") outputs.push_back(algorithm.grad_target);
    }

    // Fast path: every buffer walks dimension 0 with unit stride.
    Halide::Expr unit_stride = Halide::cast<bool>(true);
    for (const auto &[name, stride] : inputs.inner_strides) unit_stride = unit_stride && stride == 1;
    for (const Halide::Func &output : outputs) {
        if (output.dimensions() > 0) unit_stride = unit_stride && output.output_buffer().dim(0).stride() == 1;
    }
    schedules::apply_cpu(algorithm, target, spec.dtype, params, unit_stride);
    return outputs;
}

}  // namespace kldiv::codegen
