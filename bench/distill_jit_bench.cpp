// The fused distillation pass (loss and student gradient) from the library's
// AOT kernel and from the JIT: a kernel for any vocabulary, and kernels fixed
// to the vocabulary with the default schedule and with the tuning record
// that applies (the shipped one, or $KLDIV_TUNING_DB's), on the same logits,
// timed interleaved in one process next to the copy ceiling measured there.
//   kldiv_distill_jit_bench [ROWS [VOCAB [f32|bf16 [REPEATS]]]]
// Default 1024 32000 f32 7.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bandwidth.h"
#include "kldiv/kldiv.hpp"

using namespace kldiv;
using kldiv::tools::BandwidthCeiling;
using kldiv::tools::measure_bandwidth;

int main(int argc, char **argv) {
    const int64_t rows = argc > 1 ? std::atoll(argv[1]) : 1024;
    const int64_t vocab = argc > 2 ? std::atoll(argv[2]) : 32000;
    const std::string dtype_name = argc > 3 ? argv[3] : "f32";
    const int repeats = argc > 4 ? std::atoi(argv[4]) : 7;
    if (rows < 1 || vocab < 32 || repeats < 1 || (dtype_name != "f32" && dtype_name != "bf16")) {
        std::fprintf(stderr, "usage: kldiv_distill_jit_bench [ROWS [VOCAB (>= 32) [f32|bf16 [REPEATS]]]]\n");
        return 2;
    }
    const DType dtype = dtype_name == "bf16" ? DType::BFloat16 : DType::Float32;
    const size_t size = dtype == DType::BFloat16 ? 2 : 4, n = (size_t)(rows * vocab);

    // Logits of spread 3, as language models give.
    std::vector<uint8_t> student(n * size), teacher(n * size), grad(n * size), loss(8);
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.0f, 3.0f);
    for (size_t i = 0; i < n; i++) {
        for (std::vector<uint8_t> *logits : {&student, &teacher}) {
            const float value = normal(rng);
            if (dtype == DType::Float32) {
                std::memcpy(logits->data() + 4 * i, &value, 4);
            } else {
                uint32_t bits;
                std::memcpy(&bits, &value, 4);
                const uint16_t top = (uint16_t)(bits >> 16);  // truncated: any bfloat16 does
                std::memcpy(logits->data() + 2 * i, &top, 2);
            }
        }
    }
    const Tensor s = Tensor::contiguous(student.data(), dtype, {rows, vocab});
    const Tensor t = Tensor::contiguous(teacher.data(), dtype, {rows, vocab});
    const Tensor g = Tensor::contiguous(grad.data(), dtype, {rows, vocab});
    const Tensor out = Tensor::contiguous(loss.data(), dtype, {});

    struct Contender {
        const char *name;
        RuntimeOptions options;
        std::vector<double> seconds;
        std::string schedule;
    };
    std::vector<Contender> contenders(4);
    contenders[0].name = "AOT (library)";
    contenders[0].options.jit = false;
    contenders[1].name = "JIT, any vocabulary";
    contenders[1].options.specialize = Specialize::Never;
    contenders[1].options.generic_from_aot = false;
    contenders[2].name = "JIT, fixed vocabulary, default schedule";
    contenders[2].options.specialize = Specialize::Always;
    contenders[2].options.tuning_db = "none";
    contenders[3].name = "JIT, fixed vocabulary, tuned";
    contenders[3].options.specialize = Specialize::Always;
    std::vector<std::unique_ptr<Runtime>> runtimes;
    for (Contender &c : contenders) {
        c.options.cache_dir = "off";
        runtimes.push_back(std::make_unique<Runtime>(c.options));
        runtimes.back()->distill_kl_forward_backward(s, t, out, g);  // compiles
        c.schedule = last_kernel().schedule;
    }
    // Both logits read once, the gradient written.
    const double bytes = 3.0 * (double)(n * size);
    const BandwidthCeiling ceiling = measure_bandwidth(0, (size_t)bytes);
    for (int r = 0; r < repeats; r++) {
        for (size_t k = 0; k < contenders.size(); k++) {
            const auto start = std::chrono::steady_clock::now();
            runtimes[k]->distill_kl_forward_backward(s, t, out, g);
            contenders[k].seconds.push_back(
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        }
    }
    std::printf("fused distillation pass, %lld x %lld %s, medians of %d interleaved calls; copy ceiling %.1f GB/s "
                "(%d threads)\n",
                (long long)rows, (long long)vocab, dtype_name.c_str(), repeats, ceiling.copy_gbps, ceiling.threads);
    std::printf("%-42s %10s %8s %9s %8s  %s\n", "kernel", "median ms", "vs AOT", "GB/s", "% copy", "schedule");
    double aot = 0;
    for (Contender &c : contenders) {
        std::sort(c.seconds.begin(), c.seconds.end());
        const double median = c.seconds[c.seconds.size() / 2];
        if (aot == 0) aot = median;
        const double gbps = bytes / median / 1e9;
        std::printf("%-42s %10.2f %7.2fx %9.2f %7.1f%%  %s\n", c.name, median * 1e3, median / aot, gbps,
                    100 * gbps / ceiling.copy_gbps, c.schedule.c_str());
    }
    return 0;
}
