#include "kldiv/schedules/params.h"

#include <sstream>

namespace kldiv::schedules {

Params default_params(const std::string &target) {
    Params params;
    // arm-64 NEON vectors are 128 bits: more partial sums per native width keep
    // as many adds in flight as on AVX2.
    if (target.rfind("arm", 0) == 0) params.cpu.sum_lanes_factor = 4;
    return params;
}

std::string to_string(const Params &params) {
    const CpuParams &c = params.cpu;
    std::ostringstream out;
    out << "cpu:vf=" << c.vector_factor << ",slf=" << c.sum_lanes_factor << ",chunk=" << c.sum_chunk
        << ",cpt=" << c.chunks_per_task << ",ept=" << c.elements_per_task
        << ",fast=" << c.unit_stride_fast_path << ",par=" << c.parallel;
    const GpuParams &g = params.gpu;
    out << ";gpu:tpb=" << g.threads_per_block << ",lanes=" << g.sum_lanes << ",chunk=" << g.sum_chunk;
    return out.str();
}

}  // namespace kldiv::schedules
