// KernelSpec + schedule parameters + target -> scheduled Halide Funcs. The one
// path from a spec to a pipeline: the AOT generators and the JIT both call it.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include <Halide.h>

#include "kldiv/codegen/kernel_spec.h"
#include "kldiv/dsl/distill.h"
#include "kldiv/schedules/params.h"

namespace kldiv::codegen {

// A kernel's inputs as a Generator or the JIT provides them, keyed by the
// names in arguments(spec).
struct PipelineInputs {
    std::map<std::string, Halide::Func> buffers;
    std::map<std::string, Halide::Expr> inner_strides;  // dimension 0 stride of each buffer
    std::array<Halide::Expr, 4> extent;                 // of the 4-d domain
    Halide::Expr grad_scale;                            // only when arguments(spec) has it
    Halide::Expr divisor;                               // likewise (CUDA reductions)
    // Whether every buffer's dimension 0 has unit stride, when the strides are
    // fixed (shape-specialised kernels); unknown otherwise.
    std::optional<bool> unit_stride;
    // Dimension 0's extent, when the shape is fixed.
    std::optional<int32_t> fixed_extent0;
};

// What an `aligned` kernel (KernelSpec::aligned) asks of each 4-d buffer: one
// contiguous run from min 0, at a kAlignedBytes boundary; dimensions 1 to 3
// have extent 1 and stride 0 (any stride is as good for one element, and 0
// keeps their index terms out of the address). Halide then loads 8 or 16
// bytes at a time where the index shows alignment. (Halide checks the host
// pointer, null for device buffers; the runtime checks the device pointers.)
template<typename Buffer>
void constrain_aligned(Buffer &buffer) {
    buffer.dim(0).set_min(0).set_stride(1);
    for (int d = 1; d < 4; d++) buffer.dim(d).set_bounds(0, 1).set_stride(0);
    buffer.set_host_alignment(kAlignedBytes);
}

// The halide types of a kernel's arguments.
Halide::Type argument_type(const KernelSpec &spec, const Argument &argument);

// Defines and schedules the pipeline (leaves it unscheduled when `schedule`
// is false); returns the output Funcs in the order of arguments(spec). Each
// output Func is named after its argument.
std::vector<Halide::Func> build(const KernelSpec &spec, const schedules::Params &params,
                                const Halide::Target &target, const PipelineInputs &inputs, bool schedule = true);

// Halide's autoschedulers that Debian's Halide 14 ships as plugins.
const std::vector<std::string> &autoscheduler_names();  // Mullapudi2016, Adams2019, Li2018

// The kernel as a Halide Module named `function`: arguments from
// arguments(spec) (dimension 0 of every buffer may have any stride), every
// buffer pinned to `shape` when there is one; without one, `inner_stride`
// says what the kernel may assume of dimension 0. For the JIT and `kldiv aot`.
// With an `autoscheduler` (one of autoscheduler_names()) the project's
// schedule is replaced by that autoscheduler's, given estimates from `shape`
// (or 2^20 elements) and this machine's cores: a baseline for `kldiv tune`.
// `tables`: where its 16-bit lookup tables are (math_code.h).
Halide::Module compile_module(const KernelSpec &spec, const std::optional<FixedShape> &shape,
                              const schedules::Params &params, const Halide::Target &target,
                              const std::string &function, const std::string &autoscheduler = "",
                              InnerStride inner_stride = InnerStride::Any, Tables tables = Tables::Embedded);

// A distillation kernel: its argument types; its pipeline over `in`
// (dsl::distill), scheduled for `target` (a CPU or CUDA target;
// std::invalid_argument for another GPU) with `params` (CPU targets), the
// outputs in the order of arguments(spec), their dimension 0 of any stride.
// `inputs_unit_stride` holds when the input logits' dimension 0 has stride 1;
// with the outputs' it selects the schedule's fast path.
Halide::Type argument_type(const DistillSpec &spec, const Argument &argument);
std::vector<Halide::Func> build_distill(const DistillSpec &spec, const Halide::Target &target,
                                        const dsl::DistillInputs &in, const Halide::Expr &inputs_unit_stride,
                                        const schedules::DistillParams &params = {});

// The distillation kernel as a Halide Module named `function`: rows of at
// least dsl::kDistillLanes logits. As the AOT library's generator and
// `kldiv aot` make it by default: any strides, the default schedule. The JIT
// may fix the vocabulary (`vocab` logits a row) and what every 2-d buffer's
// dimension 0 has (`inner_stride`: stride 1, or not), and pass tuned `params`.
Halide::Module compile_distill_module(const DistillSpec &spec, const Halide::Target &target,
                                      const std::string &function, const schedules::DistillParams &params = {},
                                      std::optional<int32_t> vocab = std::nullopt,
                                      InnerStride inner_stride = InnerStride::Any);

// This CPU's Halide target, without features Halide 14 reports wrongly (see
// build.cpp). `kldiv aot` and the JIT use it for "host".
Halide::Target host_target();

// Whether `name` is "host" or "host-F1-F2": a target named_target derives
// from host_target().
bool names_host(const std::string &name);

// A Halide target string, where "host" is host_target() and "host-F1-F2"
// host_target() plus the features named after it. std::invalid_argument for
// a string that is not a target.
Halide::Target named_target(const std::string &name);

// `target` without the x86 features above `level`, one of the levels the AOT
// library dispatches between: "sse41", "avx2" (with FMA and F16C), "avx512"
// (Skylake's set and any later one). Other architectures as they are.
Halide::Target cap_x86_level(Halide::Target target, const std::string &level);

// Feature flags every kernel is compiled with (IEEE semantics for the edge
// values in SPEC.md; on CPUs, no loop unrolling by LLVM beyond the
// schedule's), added to a target.
Halide::Target with_kernel_features(Halide::Target target);

}  // namespace kldiv::codegen
