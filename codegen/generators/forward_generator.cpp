// Forward pass: the per-element loss (`none`) or the float64 sum that the
// runtime turns into sum, mean and batchmean.
#include "kernel_generator.h"

namespace kldiv::codegen {

class ForwardGenerator : public KernelGenerator<ForwardGenerator> {
public:
    Halide::GeneratorParam<bool> reduce{"reduce", false};

protected:
    KernelSpec pass_spec() const override { return {Pass::Forward, dtype, log_target, reduce, false, false}; }
};

}  // namespace kldiv::codegen

HALIDE_REGISTER_GENERATOR(kldiv::codegen::ForwardGenerator, kldiv_forward)
