#include "kldiv/schedules/params.h"

#include <cerrno>
#include <cstdlib>
#include <sstream>
#include <vector>

namespace kldiv::schedules {

Params default_params(const std::string &target) {
    // One set for every CPU: the partial sums do not depend on the vector
    // width (see kSumLanesUnit), so arm-64 sums as x86 does.
    (void)target;
    return Params();
}

std::string to_string(const Params &params) {
    const CpuParams &c = params.cpu;
    std::ostringstream out;
    out << "cpu:vf=" << c.vector_factor << ",unroll=" << c.unroll << ",slf=" << c.sum_lanes_factor
        << ",chunk=" << c.sum_chunk << ",cpt=" << c.chunks_per_task << ",ept=" << c.elements_per_task
        << ",fast=" << c.unit_stride_fast_path << ",par=" << c.parallel;
    const GpuParams &g = params.gpu;
    out << ";gpu:tpb=" << g.threads_per_block << ",ept=" << g.elements_per_thread << ",vec=" << g.vector_loads
        << ",lanes=" << g.sum_lanes << ",chunk=" << g.sum_chunk << ",su=" << g.sum_unroll
        << ",tl=" << g.total_lanes;
    const DistillParams &d = params.distill;
    out << ";distill:gvf=" << d.grad_vector_factor << ",lu=" << d.lane_unroll << ",rpt=" << d.rows_per_task;
    return out.str();
}

bool same_summation_order(const Params &a, const Params &b) {
    return a.cpu.sum_lanes_factor == b.cpu.sum_lanes_factor && a.cpu.sum_chunk == b.cpu.sum_chunk &&
           a.gpu.sum_lanes == b.gpu.sum_lanes && a.gpu.sum_chunk == b.gpu.sum_chunk &&
           a.gpu.total_lanes == b.gpu.total_lanes;
}

Params with_summation_order(Params params, const Params &order) {
    params.cpu.sum_lanes_factor = order.cpu.sum_lanes_factor;
    params.cpu.sum_chunk = order.cpu.sum_chunk;
    params.gpu.sum_lanes = order.gpu.sum_lanes;
    params.gpu.sum_chunk = order.gpu.sum_chunk;
    params.gpu.total_lanes = order.gpu.total_lanes;
    return params;
}

namespace {

bool power_of_two(int v) { return v > 0 && (v & (v - 1)) == 0; }

std::vector<std::string> split(const std::string &text, char separator) {
    std::vector<std::string> parts;
    std::string part;
    std::istringstream in(text);
    while (std::getline(in, part, separator)) parts.push_back(part);
    return parts;
}

}  // namespace

std::string validate(const Params &params) {
    const CpuParams &c = params.cpu;
    const GpuParams &g = params.gpu;
    const DistillParams &d = params.distill;
    auto check = [](bool ok, const std::string &why) { return ok ? std::string() : why; };
    for (const std::string &why : {
             check(power_of_two(c.vector_factor) && c.vector_factor <= 16, "cpu vf must be a power of two, 1 to 16"),
             check(power_of_two(c.unroll) && c.unroll <= 16, "cpu unroll must be a power of two, 1 to 16"),
             check(power_of_two(c.sum_lanes_factor) && c.sum_lanes_factor <= 32,
                   "cpu slf must be a power of two, 1 to 32"),
             check(power_of_two(c.sum_chunk) && c.sum_chunk >= 64 && c.sum_chunk <= (1 << 20),
                   "cpu chunk must be a power of two, 64 to 2^20"),
             check(c.chunks_per_task >= 1 && c.chunks_per_task <= (1 << 16), "cpu cpt must be 1 to 65536"),
             check(c.elements_per_task >= 64 && c.elements_per_task <= (1 << 26), "cpu ept must be 64 to 2^26"),
             check(power_of_two(g.threads_per_block) && g.threads_per_block >= 32 && g.threads_per_block <= 1024,
                   "gpu tpb must be a power of two, 32 to 1024"),
             check(power_of_two(g.elements_per_thread) && g.elements_per_thread <= 16,
                   "gpu ept must be a power of two, 1 to 16"),
             check(power_of_two(g.sum_lanes) && g.sum_lanes >= 32 && g.sum_lanes <= 1024,
                   "gpu lanes must be a power of two, 32 to 1024"),
             check(power_of_two(g.sum_chunk) && g.sum_chunk >= g.sum_lanes && g.sum_chunk <= (1 << 20),
                   "gpu chunk must be a power of two, lanes to 2^20"),
             check(power_of_two(g.sum_unroll) && g.sum_unroll <= 16, "gpu su must be a power of two, 1 to 16"),
             check(power_of_two(g.total_lanes) && g.total_lanes >= 32 && g.total_lanes <= 1024,
                   "gpu tl must be a power of two, 32 to 1024"),
             check(d.grad_vector_factor == 0 || (power_of_two(d.grad_vector_factor) && d.grad_vector_factor <= 8),
                   "distill gvf must be 0 or a power of two, 1 to 8"),
             check(power_of_two(d.lane_unroll) && d.lane_unroll <= 8, "distill lu must be a power of two, 1 to 8"),
             check(d.rows_per_task >= 1 && d.rows_per_task <= 4096, "distill rpt must be 1 to 4096"),
         }) {
        if (!why.empty()) return why;
    }
    return {};
}

bool parse_params(const std::string &text, Params *out, std::string *error) {
    Params p = *out;
    for (const std::string &section : split(text, ';')) {
        if (section.empty()) continue;
        const size_t colon = section.find(':');
        const std::string family = section.substr(0, colon == std::string::npos ? 0 : colon);
        if (family != "cpu" && family != "gpu" && family != "distill") {
            *error = "schedule section '" + section + "' does not start with cpu:, gpu: or distill:";
            return false;
        }
        for (const std::string &item : split(section.substr(colon + 1), ',')) {
            const size_t eq = item.find('=');
            const std::string key = item.substr(0, eq);
            const std::string value = eq == std::string::npos ? "" : item.substr(eq + 1);
            errno = 0;
            char *end = nullptr;
            const long number = std::strtol(value.c_str(), &end, 10);
            if (value.empty() || *end != '\0' || errno != 0 || number < 0 || number > (1L << 30)) {
                *error = "schedule parameter '" + family + ":" + item + "' needs a whole number";
                return false;
            }
            const int v = (int)number;
            int *target = nullptr;
            bool *flag = nullptr;
            if (family == "cpu") {
                CpuParams &c = p.cpu;
                if (key == "vf") target = &c.vector_factor;
                if (key == "unroll") target = &c.unroll;
                if (key == "slf") target = &c.sum_lanes_factor;
                if (key == "chunk") target = &c.sum_chunk;
                if (key == "cpt") target = &c.chunks_per_task;
                if (key == "ept") target = &c.elements_per_task;
                if (key == "fast") flag = &c.unit_stride_fast_path;
                if (key == "par") flag = &c.parallel;
            } else if (family == "distill") {
                DistillParams &d = p.distill;
                if (key == "gvf") target = &d.grad_vector_factor;
                if (key == "lu") target = &d.lane_unroll;
                if (key == "rpt") target = &d.rows_per_task;
            } else {
                GpuParams &g = p.gpu;
                if (key == "tpb") target = &g.threads_per_block;
                if (key == "ept") target = &g.elements_per_thread;
                if (key == "vec") flag = &g.vector_loads;
                if (key == "lanes") target = &g.sum_lanes;
                if (key == "chunk") target = &g.sum_chunk;
                if (key == "su") target = &g.sum_unroll;
                if (key == "tl") target = &g.total_lanes;
            }
            if (target) {
                *target = v;
            } else if (flag && v <= 1) {
                *flag = v == 1;
            } else {
                *error = flag ? "schedule parameter '" + family + ":" + item + "' must be 0 or 1"
                              : "unknown schedule parameter '" + family + ":" + key + "'";
                return false;
            }
        }
    }
    if (std::string why = validate(p); !why.empty()) {
        *error = "schedule '" + text + "': " + why;
        return false;
    }
    *out = p;
    return true;
}

}  // namespace kldiv::schedules
