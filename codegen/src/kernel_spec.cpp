#include "kldiv/codegen/kernel_spec.h"

#include <array>
#include <atomic>

namespace kldiv::codegen {

namespace {

// The arguments of `spec`, made on first use and then shared: a slot per
// spec index, filled once (a thread that loses the race drops its copy).
template <typename Spec, size_t N>
const std::vector<Argument> &made_once(const Spec &spec, std::vector<Argument> (*make)(const Spec &)) {
    static std::array<std::atomic<const std::vector<Argument> *>, N> made{};
    std::atomic<const std::vector<Argument> *> &slot = made[index_of(spec)];
    if (const std::vector<Argument> *known = slot.load(std::memory_order_acquire)) return *known;
    auto *fresh = new std::vector<Argument>(make(spec));
    const std::vector<Argument> *expected = nullptr;
    if (slot.compare_exchange_strong(expected, fresh, std::memory_order_acq_rel)) return *fresh;
    delete fresh;
    return *expected;
}

}  // namespace

uint32_t index_of(const KernelSpec &s) {
    return uint32_t(s.pass) | uint32_t(s.dtype) << 2 | uint32_t(s.log_target) << 5 | uint32_t(s.reduce) << 6 |
           uint32_t(s.grad_input) << 7 | uint32_t(s.grad_target) << 8 | uint32_t(s.cuda) << 9 |
           uint32_t(s.aligned) << 10;
}

uint32_t index_of(const DistillSpec &s) {
    return uint32_t(s.pass) | uint32_t(s.dtype) << 2 | uint32_t(s.reverse) << 5 | uint32_t(s.grad_student) << 6 |
           uint32_t(s.grad_teacher) << 7 | uint32_t(s.cuda) << 8;
}

std::string KernelSpec::name() const {
    std::string n = cuda ? "kldiv_cuda_" : "kldiv_";
    switch (pass) {
    case Pass::Forward: n += reduce ? "fwd_sum" : "fwd_none"; break;
    case Pass::Fused: n += reduce ? "fused_sum" : "fused_none"; break;
    case Pass::Backward:
        n += "bwd";
        if (grad_input) n += "_input";
        if (grad_target) n += "_target";
        n += reduce ? "_scalar" : "_tensor";
        break;
    }
    n += "_";
    n += short_name(dtype);
    if (log_target) n += "_logt";
    if (aligned) n += "_aligned";
    return n;
}

std::string KernelSpec::tuning_name() const {
    KernelSpec host = *this;
    host.cuda = false;
    host.aligned = false;
    return host.name();
}

namespace {

std::vector<Argument> make_arguments(const KernelSpec &spec) {
    std::vector<Argument> args;
    const bool scalar_grad = spec.reduce && spec.pass != Pass::Forward;
    if (spec.pass == Pass::Backward && !spec.reduce) args.push_back({Argument::Buffer, "grad_output", false, 4});
    if (spec.pass == Pass::Backward && spec.reduce && spec.cuda) {
        args.push_back({Argument::Buffer, "grad_output", false, 1});
    }
    if (spec.cuda && spec.reduce) {
        args.push_back({Argument::Scalar, "divisor", false, 0});
    } else if (scalar_grad) {
        args.push_back({Argument::Scalar, "grad_scale", false, 0});
    }
    args.push_back({Argument::Buffer, "input", false, 4});
    args.push_back({Argument::Buffer, "target", false, 4});
    if (spec.pass != Pass::Backward && !spec.reduce) args.push_back({Argument::Buffer, "loss", true, 4});
    if (spec.pass != Pass::Backward && spec.reduce) {
        args.push_back(spec.cuda ? Argument{Argument::Buffer, "out", true, 1}
                                 : Argument{Argument::Buffer, "total", true, 0});
    }
    if (spec.pass == Pass::Fused || (spec.pass == Pass::Backward && spec.grad_input)) {
        args.push_back({Argument::Buffer, "grad_input", true, 4});
    }
    if (spec.pass == Pass::Backward && spec.grad_target) {
        args.push_back({Argument::Buffer, "grad_target", true, 4});
    }
    return args;
}

}  // namespace

const std::vector<Argument> &arguments(const KernelSpec &spec) {
    return made_once<KernelSpec, kSpecIndices>(spec, make_arguments);
}

std::vector<KernelSpec> aot_specs(bool cuda) {
    std::vector<KernelSpec> specs;
    auto add = [&](const KernelSpec &spec) {
        specs.push_back(spec);
        if (!cuda) return;
        specs.push_back(spec);
        specs.back().aligned = true;
    };
    for (DType dtype : kAllDTypes) {
        for (bool log_target : {false, true}) {
            for (bool reduce : {false, true}) {
                for (Pass pass : {Pass::Forward, Pass::Fused}) {
                    add({pass, dtype, log_target, reduce, pass == Pass::Fused, false, cuda});
                }
                for (auto [gi, gt] : {std::pair{true, false}, {false, true}, {true, true}}) {
                    add({Pass::Backward, dtype, log_target, reduce, gi, gt, cuda});
                }
            }
        }
    }
    return specs;
}

std::string DistillSpec::name() const {
    std::string n = cuda ? "kldiv_cuda_distill_" : "kldiv_distill_";
    switch (pass) {
    case dsl::DistillPass::Forward: n += "fwd"; break;
    case dsl::DistillPass::Fused: n += "fused"; break;
    case dsl::DistillPass::Backward:
        n += "bwd_";
        if (grad_student) n += "s";
        if (grad_teacher) n += "t";
        break;
    }
    n += reverse ? "_rkl_" : "_kl_";
    return n + short_name(dtype);
}

std::string DistillSpec::tuning_name() const {
    DistillSpec host = *this;
    host.cuda = false;
    return host.name();
}

namespace {

std::vector<Argument> make_arguments(const DistillSpec &spec) {
    using dsl::DistillPass;
    std::vector<Argument> args = {{Argument::Buffer, "student", false, 2},
                                  {Argument::Buffer, "teacher", false, 2},
                                  {Argument::Buffer, "row_on", false, 1},
                                  {Argument::Scalar, "inv_temperature", false, 0}};
    if (spec.pass == DistillPass::Fused) args.push_back({Argument::Scalar, "grad_scale", false, 0});
    if (spec.pass == DistillPass::Backward) {
        args.push_back({Argument::Buffer, "stats", false, 2});
        args.push_back({Argument::Buffer, "row_scale", false, 1});
    } else {
        args.push_back({Argument::Buffer, "stats_out", true, 2});
    }
    if (spec.pass == DistillPass::Fused || (spec.pass == DistillPass::Backward && spec.grad_student)) {
        args.push_back({Argument::Buffer, "grad_student", true, 2});
    }
    if (spec.pass == DistillPass::Backward && spec.grad_teacher) {
        args.push_back({Argument::Buffer, "grad_teacher", true, 2});
    }
    return args;
}

}  // namespace

const std::vector<Argument> &arguments(const DistillSpec &spec) {
    return made_once<DistillSpec, kDistillSpecIndices>(spec, make_arguments);
}

std::vector<DistillSpec> distill_aot_specs() {
    using dsl::DistillPass;
    std::vector<DistillSpec> specs;
    for (DType dtype : kAllDTypes) {
        for (bool reverse : {false, true}) {
            specs.push_back({DistillPass::Forward, dtype, reverse});
            specs.push_back({DistillPass::Fused, dtype, reverse});
            for (auto [s, t] : {std::pair{true, false}, {false, true}, {true, true}}) {
                specs.push_back({DistillPass::Backward, dtype, reverse, s, t});
            }
        }
    }
    return specs;
}

}  // namespace kldiv::codegen
