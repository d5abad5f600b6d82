// Shared body of the kernel Generators: arguments come from arguments(spec),
// the pipeline from codegen::build, so AOT kernels and JIT kernels agree.
#pragma once

#include <Halide.h>

#include "kldiv/codegen/build.h"
#include "kldiv/codegen/math_code.h"
#include "kldiv/dsl/math.h"
#include "kldiv/schedules/params.h"

namespace kldiv::codegen {

template<typename T>
class KernelGenerator : public Halide::Generator<T> {
public:
    Halide::GeneratorParam<DType> dtype{"dtype", DType::Float32,
                                        {{"f32", DType::Float32},
                                         {"f64", DType::Float64},
                                         {"f16", DType::Float16},
                                         {"bf16", DType::BFloat16}}};
    Halide::GeneratorParam<bool> log_target{"log_target", false};
    // CUDA only: KernelSpec::aligned.
    Halide::GeneratorParam<bool> aligned{"aligned", false};

    void configure() {
        for (const Argument &argument : arguments(spec())) {
            const Halide::Type type = argument_type(spec(), argument);
            const int dims = argument.dimensions;
            if (argument.is_output) {
                outputs_.push_back(this->template add_output<Halide::Buffer<>>(argument.name, type, dims));
            } else if (argument.kind == Argument::Scalar) {
                scalar_ = this->template add_input<Halide::Expr>(argument.name, type);
                scalar_name_ = argument.name;
            } else {
                buffers_.emplace_back(argument.name,
                                      this->template add_input<Halide::Buffer<>>(argument.name, type, dims));
            }
        }
    }

    void generate() {
        const KernelSpec kernel = spec();
        PipelineInputs inputs;
        for (auto &[name, buffer] : buffers_) {
            inputs.buffers[name] = *buffer;
            if (buffer->dims() != 4) continue;  // one element
            if (kernel.aligned) {
                constrain_aligned(*buffer);
                continue;
            }
            // Any stride is valid input; the schedule specialises for unit stride.
            (*buffer).dim(0).set_stride(Halide::Expr());
            inputs.inner_strides[name] = (*buffer).dim(0).stride();
        }
        if (kernel.aligned) inputs.unit_stride = true;
        auto &input = *buffers_for("input");
        for (int d = 0; d < 4; d++) inputs.extent[d] = input.dim(d).extent();
        if (scalar_) (scalar_name_ == "divisor" ? inputs.divisor : inputs.grad_scale) = *scalar_;

        const std::string target_name = this->get_target().to_string();
        const schedules::Params params = schedules::default_params(target_name);
        const Halide::Target target = with_kernel_features(this->get_target());
        std::vector<Halide::Func> funcs = build(kernel, params, target, inputs);
        for (const Halide::ExternalCode &code : math_code(kernel, target)) {
            this->get_externs_map()->emplace(code.name(), code);
        }
        for (size_t i = 0; i < funcs.size(); i++) {
            *outputs_[i] = funcs[i];
            if (outputs_[i]->dims() != 4) continue;
            if (kernel.aligned) {
                constrain_aligned(*outputs_[i]);
            } else {
                outputs_[i]->dim(0).set_stride(Halide::Expr());
            }
        }

        // Estimates for autoschedulers and tools: a 64 x 32000 batch.
        for (auto &[name, buffer] : buffers_) {
            if (buffer->dims() == 4) (*buffer).set_estimates({{0, 32000}, {0, 64}, {0, 1}, {0, 1}});
        }
        for (auto *output : outputs_) {
            if (output->dims() == 4) output->set_estimates({{0, 32000}, {0, 64}, {0, 1}, {0, 1}});
        }
        if (scalar_ && scalar_name_ == "divisor") scalar_->set_estimate(Halide::Expr(64.0));
        if (scalar_ && scalar_name_ != "divisor") scalar_->set_estimate(1.0f / 64);
    }

protected:
    // The pass this Generator builds; CUDA when its target has the feature.
    KernelSpec spec() const {
        KernelSpec s = pass_spec();
        s.cuda = this->get_target().has_feature(Halide::Target::CUDA);
        s.aligned = s.cuda && aligned;
        return s;
    }
    virtual KernelSpec pass_spec() const = 0;

private:
    Halide::GeneratorInput<Halide::Buffer<>> *buffers_for(const std::string &name) {
        for (auto &[n, buffer] : buffers_) {
            if (n == name) return buffer;
        }
        return nullptr;
    }

    std::vector<std::pair<std::string, Halide::GeneratorInput<Halide::Buffer<>> *>> buffers_;
    std::vector<Halide::GeneratorOutput<Halide::Buffer<>> *> outputs_;
    Halide::GeneratorInput<Halide::Expr> *scalar_ = nullptr;
    std::string scalar_name_;
};

}  // namespace kldiv::codegen
