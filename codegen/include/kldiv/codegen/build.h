// KernelSpec + schedule parameters + target -> scheduled Halide Funcs. The one
// path from a spec to a pipeline: the AOT generators and the JIT both call it.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <Halide.h>

#include "kldiv/codegen/kernel_spec.h"
#include "kldiv/schedules/params.h"

namespace kldiv::codegen {

// A kernel's inputs as a Generator or the JIT provides them, keyed by the
// names in arguments(spec).
struct PipelineInputs {
    std::map<std::string, Halide::Func> buffers;
    std::map<std::string, Halide::Expr> inner_strides;  // dimension 0 stride of each buffer
    std::array<Halide::Expr, 4> extent;                 // of the 4-d domain
    Halide::Expr grad_scale;                            // only when arguments(spec) has it
};

// The halide types of a kernel's arguments.
Halide::Type argument_type(const KernelSpec &spec, const Argument &argument);
int argument_dimensions(const Argument &argument);

// Defines and schedules the pipeline; returns the output Funcs in the order
// of arguments(spec). Each output Func is named after its argument.
std::vector<Halide::Func> build(const KernelSpec &spec, const schedules::Params &params,
                                const Halide::Target &target, const PipelineInputs &inputs);

// Feature flags every kernel is compiled with (IEEE semantics for the edge
// values in SPEC.md), added to a target.
Halide::Target with_kernel_features(Halide::Target target);

}  // namespace kldiv::codegen
