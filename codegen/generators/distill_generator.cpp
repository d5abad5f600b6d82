// Distillation from logits (dsl/distill.h), CPU targets. Buffers: logits
// (vocab, rows) with any strides (a fast path for unit stride along the
// vocabulary), row_on (rows) as uint8, stats (kDistillStats, rows) float64.
#include <Halide.h>

#include "kldiv/codegen/build.h"
#include "kldiv/codegen/math_code.h"

namespace kldiv::codegen {

class DistillGenerator : public Halide::Generator<DistillGenerator> {
public:
    Halide::GeneratorParam<DType> dtype{
        "dtype",
        DType::Float32,
        {{"f32", DType::Float32}, {"f64", DType::Float64}, {"f16", DType::Float16}, {"bf16", DType::BFloat16}}};
    Halide::GeneratorParam<dsl::DistillPass> pass{"pass",
                                                  dsl::DistillPass::Forward,
                                                  {{"forward", dsl::DistillPass::Forward},
                                                   {"fused", dsl::DistillPass::Fused},
                                                   {"backward", dsl::DistillPass::Backward}}};
    Halide::GeneratorParam<bool> reverse{"reverse", false};
    Halide::GeneratorParam<bool> grad_student{"grad_student", true};
    Halide::GeneratorParam<bool> grad_teacher{"grad_teacher", false};

    void configure() {
        const Halide::Type storage = dsl::storage_type(dtype);
        const Halide::Type f64 = Halide::Float(64);
        student_ = add_input<Halide::Buffer<>>("student", storage, 2);
        teacher_ = add_input<Halide::Buffer<>>("teacher", storage, 2);
        row_on_ = add_input<Halide::Buffer<>>("row_on", Halide::UInt(8), 1);
        inv_temperature_ = add_input<Halide::Expr>("inv_temperature", f64);
        if (pass == dsl::DistillPass::Fused) grad_scale_ = add_input<Halide::Expr>("grad_scale", f64);
        if (pass == dsl::DistillPass::Backward) {
            stats_in_ = add_input<Halide::Buffer<>>("stats", f64, 2);
            row_scale_ = add_input<Halide::Buffer<>>("row_scale", f64, 1);
        } else {
            stats_out_ = add_output<Halide::Buffer<>>("stats_out", f64, 2);
        }
        if (pass == dsl::DistillPass::Fused || (pass == dsl::DistillPass::Backward && grad_student)) {
            grad_student_ = add_output<Halide::Buffer<>>("grad_student", storage, 2);
        }
        if (pass == dsl::DistillPass::Backward && grad_teacher) {
            grad_teacher_ = add_output<Halide::Buffer<>>("grad_teacher", storage, 2);
        }
    }

    void generate() {
        const Halide::Target target = with_kernel_features(get_target());
        const DistillSpec spec{pass, dtype, reverse, grad_student, grad_teacher};
        dsl::DistillInputs in;
        in.student = *student_;
        in.teacher = *teacher_;
        in.row_on = *row_on_;
        in.inv_temperature = *inv_temperature_;
        in.vocab = student_->dim(0).extent();
        if (grad_scale_) in.grad_scale = *grad_scale_;
        if (stats_in_) {
            in.stats = *stats_in_;
            in.row_scale = *row_scale_;
        }
        for (int d = 0; d < 2; d++) {
            teacher_->dim(d).set_bounds(student_->dim(d).min(), student_->dim(d).extent());
        }
        // Any stride is valid along the vocabulary; the schedule specialises
        // for unit stride.
        for (auto *b : {student_, teacher_}) (*b).dim(0).set_stride(Halide::Expr());
        const std::vector<Halide::Func> outputs = build_distill(
            spec, target, in, student_->dim(0).stride() == 1 && teacher_->dim(0).stride() == 1);
        size_t next = 0;
        for (auto *out : {stats_out_, grad_student_, grad_teacher_}) {
            if (out) *out = outputs.at(next++);
        }
        for (const Halide::ExternalCode &code : fma_code(target)) get_externs_map()->emplace(code.name(), code);

        // Estimates for tools: 64 rows of 32000.
        student_->set_estimates({{0, 32000}, {0, 64}});
        teacher_->set_estimates({{0, 32000}, {0, 64}});
        row_on_->set_estimates({{0, 64}});
    }

private:
    Halide::GeneratorInput<Halide::Buffer<>> *student_ = nullptr, *teacher_ = nullptr, *row_on_ = nullptr;
    Halide::GeneratorInput<Halide::Buffer<>> *stats_in_ = nullptr, *row_scale_ = nullptr;
    Halide::GeneratorInput<Halide::Expr> *inv_temperature_ = nullptr, *grad_scale_ = nullptr;
    Halide::GeneratorOutput<Halide::Buffer<>> *stats_out_ = nullptr, *grad_student_ = nullptr, *grad_teacher_ = nullptr;
};

}  // namespace kldiv::codegen

HALIDE_REGISTER_GENERATOR(kldiv::codegen::DistillGenerator, kldiv_distill)
