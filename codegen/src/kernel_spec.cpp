#include "kldiv/codegen/kernel_spec.h"

namespace kldiv::codegen {

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

std::vector<Argument> arguments(const KernelSpec &spec) {
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

}  // namespace kldiv::codegen
