// Fused forward+backward: the loss (per element or summed) and grad_input for
// an upstream gradient of 1, from one read of input and target.
#include "kernel_generator.h"

namespace kldiv::codegen {

class FusedGenerator : public KernelGenerator<FusedGenerator> {
public:
    Halide::GeneratorParam<bool> reduce{"reduce", false};

protected:
    KernelSpec pass_spec() const override { return {Pass::Fused, dtype, log_target, reduce, true, false}; }
};

}  // namespace kldiv::codegen

HALIDE_REGISTER_GENERATOR(kldiv::codegen::FusedGenerator, kldiv_fused)
