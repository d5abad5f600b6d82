// Backward pass: grad_input and/or grad_target from a per-element or a scalar
// upstream gradient.
#include "kernel_generator.h"

namespace kldiv::codegen {

class BackwardGenerator : public KernelGenerator<BackwardGenerator> {
public:
    Halide::GeneratorParam<bool> scalar_grad{"scalar_grad", false};
    Halide::GeneratorParam<bool> grad_input{"grad_input", true};
    Halide::GeneratorParam<bool> grad_target{"grad_target", false};

protected:
    KernelSpec pass_spec() const override {
        return {Pass::Backward, dtype, log_target, scalar_grad, grad_input, grad_target};
    }
};

}  // namespace kldiv::codegen

HALIDE_REGISTER_GENERATOR(kldiv::codegen::BackwardGenerator, kldiv_backward)
