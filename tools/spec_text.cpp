// The text form of a kernel spec, PASS:DTYPE:REDUCTION[:logt][:aligned][:SHAPE]
// or distill:PASS:DTYPE[:reverse], as `kldiv aot` and `kldiv tune` take it.
// No Halide here, so that it can be tested and fuzzed alone.
#include "spec_text.h"

#include <cctype>
#include <climits>
#include <sstream>

#include "command_line.h"

namespace kldiv::tools {

using codegen::Pass;

namespace {

std::vector<std::string> split(const std::string &text, char sep) {
    std::vector<std::string> parts;
    std::stringstream in(text);
    std::string part;
    while (std::getline(in, part, sep)) parts.push_back(part);
    return parts;
}

// distill:PASS:DTYPE[:reverse].
AotSpec parse_distill_spec(const std::string &text, const std::vector<std::string> &parts) {
    using dsl::DistillPass;
    auto bad = [&](const std::string &why) { return UsageError("invalid spec '" + text + "': " + why); };
    if (parts.size() < 3 || parts.size() > 4) throw bad("expected distill:PASS:DTYPE[:reverse]");
    codegen::DistillSpec d;
    const std::string &pass = parts[1];
    if (pass == "fwd") {
        d.pass = DistillPass::Forward;
    } else if (pass == "fused") {
        d.pass = DistillPass::Fused;
    } else if (pass == "bwd" || pass == "bwd_student" || pass == "bwd_teacher") {
        d.pass = DistillPass::Backward;
        d.grad_student = pass != "bwd_teacher";
        d.grad_teacher = pass != "bwd_student";
    } else {
        throw bad("unknown distillation pass '" + pass + "' (fwd, fused, bwd, bwd_student, bwd_teacher)");
    }
    if (!parse_dtype(parts[2], &d.dtype)) throw bad("unknown dtype '" + parts[2] + "' (f32, f64, f16, bf16)");
    if (parts.size() == 4) {
        if (parts[3] != "reverse") throw bad("unexpected '" + parts[3] + "' (reverse)");
        d.reverse = true;
    }
    AotSpec a;
    a.distill = d;
    a.function = d.name();
    return a;
}

}  // namespace

AotSpec parse_spec(const std::string &text) {
    const std::vector<std::string> parts = split(text, ':');
    auto bad = [&](const std::string &why) { return UsageError("invalid spec '" + text + "': " + why); };
    if (!parts.empty() && parts[0] == "distill") return parse_distill_spec(text, parts);
    if (parts.size() < 3 || parts.size() > 6) throw bad("expected PASS:DTYPE:REDUCTION[:logt][:aligned][:SHAPE]");
    AotSpec a;
    const std::string &pass = parts[0];
    if (pass == "fwd") {
        a.spec = {Pass::Forward, DType::Float32, false, false, false, false};
    } else if (pass == "fused") {
        a.spec = {Pass::Fused, DType::Float32, false, false, true, false};
    } else if (pass == "bwd" || pass == "bwd_input" || pass == "bwd_target") {
        a.spec = {Pass::Backward, DType::Float32, false, false, pass != "bwd_target", pass != "bwd_input"};
    } else {
        throw bad("unknown pass '" + pass + "' (fwd, fused, bwd, bwd_input, bwd_target, distill)");
    }
    if (!parse_dtype(parts[1], &a.spec.dtype)) throw bad("unknown dtype '" + parts[1] + "' (f32, f64, f16, bf16)");
    a.reduction = parts[2];
    if (a.reduction != "none" && a.reduction != "mean" && a.reduction != "sum" && a.reduction != "batchmean") {
        throw bad("unknown reduction '" + a.reduction + "' (none, mean, sum, batchmean)");
    }
    a.spec.reduce = a.reduction != "none";
    for (size_t i = 3; i < parts.size(); i++) {
        if (parts[i] == "logt" && !a.spec.log_target && !a.spec.aligned && a.shape.empty()) {
            a.spec.log_target = true;
        } else if (parts[i] == "aligned" && !a.spec.aligned && a.shape.empty()) {
            a.spec.aligned = true;
        } else if (i == parts.size() - 1 && !parts[i].empty() && std::isdigit((unsigned char)parts[i][0])) {
            try {
                a.shape = parse_shape(parts[i]);
            } catch (const UsageError &e) {
                throw bad(e.what());
            }
            if (a.spec.aligned) throw bad("an aligned kernel takes any length, not a fixed shape");
            if (a.shape.size() > 4) throw bad("a fixed shape has at most 4 dimensions");
            int64_t n = 1;
            for (int64_t s : a.shape) {
                if (s <= 0) throw bad("a fixed shape has no empty dimension");
                // s <= INT64_MAX and n <= INT32_MAX: test before multiplying, never overflow.
                if (s > INT32_MAX / n) throw bad("a fixed shape has fewer than 2^31 elements");
                n *= s;
            }
        } else {
            throw bad("unexpected '" + parts[i] + "' (logt, aligned, then a shape such as 64x32000)");
        }
    }
    a.function = a.spec.name();
    if (!a.shape.empty()) a.function += "_" + format_shape(a.shape);
    return a;
}


}  // namespace kldiv::tools
