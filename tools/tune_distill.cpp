#include "tune_distill.h"

#include <HalideRuntime.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "bandwidth.h"
#include "command_line.h"
#include "cpu_level.h"
#include "errors.h"
#include "host_buffer.h"
#include "jit/compile.h"
#include "jit/orc.h"
#include "kernel_args.h"
#include "kldiv/kldiv.hpp"
#include "tune_search.h"

namespace kldiv::tools::tune {

namespace {

using codegen::Argument;

// The data every distillation candidate runs on (all rows unmasked, T = 1,
// reduction `sum`: gradient and row scales 1), its outputs, and the outputs
// every candidate, the default schedule's too, must give bit for bit: the
// library's own (the kernel kldiv::Runtime runs for this target).
struct DistillWorkload {
    codegen::DistillSpec spec;
    int64_t rows = 0, vocab = 0;
    HostBuffer student, teacher;
    std::vector<uint8_t> row_on;
    std::vector<double> stats, row_scale;  // Backward's inputs
    std::map<std::string, HostBuffer> outputs;  // grad_student, grad_teacher
    std::vector<double> stats_out;              // Forward, Fused
    std::map<std::string, std::vector<uint8_t>> expected;
};

std::vector<uint8_t> bytes_of(const void *data, size_t size) {
    const uint8_t *p = static_cast<const uint8_t *>(data);
    return std::vector<uint8_t>(p, p + size);
}

DistillWorkload make_distill_workload(const codegen::DistillSpec &spec, int64_t rows, int64_t vocab,
                                      const std::string &target, uint64_t seed) {
    DistillWorkload w;
    w.spec = spec;
    w.rows = rows;
    w.vocab = vocab;
    const int64_t n = rows * vocab;
    w.student = HostBuffer(spec.dtype, n);
    w.teacher = HostBuffer(spec.dtype, n);
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> normal(0.0, 3.0);
    for (int64_t i = 0; i < n; i++) {
        w.student.set(i, normal(rng));
        w.teacher.set(i, normal(rng));
    }
    w.row_on.assign((size_t)rows, 1);
    w.row_scale.assign((size_t)rows, 1.0);
    w.stats.assign((size_t)(rows * kDistillStatsPerRow), 0.0);
    w.stats_out = w.stats;
    for (const Argument &a : codegen::arguments(spec)) {
        if (a.name == "grad_student" || a.name == "grad_teacher") w.outputs[a.name] = HostBuffer(spec.dtype, n);
    }

    // The library's results for this target: its AOT kernels where they run
    // this target's code, else its generic JIT kernel.
    RuntimeOptions options;
    options.target = target;
    options.cache_dir = "off";
    options.specialize = Specialize::Never;
    Runtime library(options);
    auto tensor = [&](HostBuffer &b) { return Tensor::contiguous(b.data(), spec.dtype, {rows, vocab}); };
    DistillOptions distill;
    distill.reduction = Reduction::Sum;
    distill.reverse = spec.reverse;
    HostBuffer loss(spec.dtype, 1), upstream(spec.dtype, 1);
    upstream.fill(1.0);
    const Tensor scalar = Tensor::contiguous(loss.data(), spec.dtype, {});
    switch (spec.pass) {
    case dsl::DistillPass::Forward:
        library.distill_kl(tensor(w.student), tensor(w.teacher), scalar, distill, w.stats_out.data());
        w.expected["stats_out"] = bytes_of(w.stats_out.data(), w.stats_out.size() * sizeof(double));
        break;
    case dsl::DistillPass::Fused: {
        HostBuffer grad(spec.dtype, n);
        library.distill_kl_forward_backward(tensor(w.student), tensor(w.teacher), scalar, tensor(grad), distill,
                                            w.stats_out.data());
        w.expected["stats_out"] = bytes_of(w.stats_out.data(), w.stats_out.size() * sizeof(double));
        w.expected["grad_student"] = bytes_of(grad.data(), grad.bytes());
        break;
    }
    case dsl::DistillPass::Backward: {
        library.distill_kl(tensor(w.student), tensor(w.teacher), scalar, distill, w.stats.data());
        HostBuffer gs(spec.dtype, n), gt(spec.dtype, n);
        const Tensor gs_tensor = tensor(gs), gt_tensor = tensor(gt);
        library.distill_kl_backward(Tensor::contiguous(upstream.data(), spec.dtype, {}), tensor(w.student),
                                    tensor(w.teacher), distill, w.stats.data(),
                                    spec.grad_student ? &gs_tensor : nullptr,
                                    spec.grad_teacher ? &gt_tensor : nullptr);
        if (spec.grad_student) w.expected["grad_student"] = bytes_of(gs.data(), gs.bytes());
        if (spec.grad_teacher) w.expected["grad_teacher"] = bytes_of(gt.data(), gt.bytes());
        break;
    }
    }
    return w;
}

// A halide_buffer_t over host data: `dims` as {min, extent, stride}.
struct HalideBuffer {
    halide_buffer_t buffer{};
    halide_dimension_t dims[2];
    HalideBuffer(void *data, halide_type_t type, std::initializer_list<halide_dimension_t> dimensions) {
        std::copy(dimensions.begin(), dimensions.end(), dims);
        buffer.host = static_cast<uint8_t *>(data);
        buffer.type = type;
        buffer.dimensions = (int32_t)dimensions.size();
        buffer.dim = dims;
    }
};

// Compiles distillation candidates with the JIT, fixed to the workload's
// vocabulary (as the runtime specialises them), and checks each against the
// expected bits: a schedule's parameters must never change a result.
class DistillEvaluator : public KernelEvaluator {
public:
    DistillEvaluator(DistillWorkload &workload, std::string target) : w_(workload), target_(std::move(target)) {
        runtime::jit::ensure_runtime(target_, [&] { return runtime::jit::compile_runtime(target_); });
        start_clock();
    }

    bool prepare(Candidate &c) override {
        const std::string function = "kldiv_tune_distill_" + std::to_string(c.id);
        return prepare_with(c, [&] {
            // Outputs a candidate leaves unwritten must not pass as a former one's.
            std::fill(w_.stats_out.begin(), w_.stats_out.end(), std::nan(""));
            for (auto &[name, buffer] : w_.outputs) std::memset(buffer.data(), 0xff, buffer.bytes());
            const std::string object =
                runtime::jit::compile_distill_kernel(w_.spec, (int32_t)w_.vocab, codegen::InnerStride::Unit,
                                                     target_, c.params, function);
            kernels_[c.id] = runtime::jit::load_kernel(target_, object, function);
        });
    }

private:
    void call(const Candidate &c) override {
        const auto &kernel = kernels_.at(c.id);
        const int32_t rows = (int32_t)w_.rows, vocab = (int32_t)w_.vocab;
        const halide_type_t storage = runtime::storage_halide_type(w_.spec.dtype);
        const halide_type_t byte(halide_type_uint, 8), float64(halide_type_float, 64);
        auto logits = [&](void *data) {
            return std::make_unique<HalideBuffer>(
                data, storage, std::initializer_list<halide_dimension_t>{{0, vocab, 1}, {0, rows, vocab}});
        };
        auto per_row = [&](void *data, halide_type_t type, int values) {
            if (values == 1) {
                return std::make_unique<HalideBuffer>(data, type,
                                                      std::initializer_list<halide_dimension_t>{{0, rows, 1}});
            }
            return std::make_unique<HalideBuffer>(
                data, type, std::initializer_list<halide_dimension_t>{{0, values, 1}, {0, rows, values}});
        };
        std::vector<std::unique_ptr<HalideBuffer>> keep;
        double inv_temperature = 1.0, grad_scale = 1.0;
        runtime::KernelErrorContext context;
        void *user_context = &context;
        std::vector<void *> argv = {&user_context};
        for (const Argument &a : codegen::arguments(w_.spec)) {
            if (a.name == "inv_temperature") {
                argv.push_back(&inv_temperature);
                continue;
            }
            if (a.name == "grad_scale") {
                argv.push_back(&grad_scale);
                continue;
            }
            if (a.name == "student") keep.push_back(logits(w_.student.data()));
            if (a.name == "teacher") keep.push_back(logits(w_.teacher.data()));
            if (a.name == "row_on") keep.push_back(per_row(w_.row_on.data(), byte, 1));
            if (a.name == "stats") keep.push_back(per_row(w_.stats.data(), float64, kDistillStatsPerRow));
            if (a.name == "row_scale") keep.push_back(per_row(w_.row_scale.data(), float64, 1));
            if (a.name == "stats_out") keep.push_back(per_row(w_.stats_out.data(), float64, kDistillStatsPerRow));
            if (a.name == "grad_student" || a.name == "grad_teacher") {
                keep.push_back(logits(w_.outputs.at(a.name).data()));
            }
            argv.push_back(&keep.back()->buffer);
        }
        if (int status = kernel->entry(argv.data()); status != 0) {
            throw std::runtime_error("kernel failed (" + std::to_string(status) + "): " + context.message);
        }
    }

    // The outputs against the expected bits (the library's, for the default).
    std::string check() override {
        std::map<std::string, std::vector<uint8_t>> got;
        if (w_.spec.pass != dsl::DistillPass::Backward) {
            got["stats_out"] = bytes_of(w_.stats_out.data(), w_.stats_out.size() * sizeof(double));
        }
        for (auto &[name, buffer] : w_.outputs) got[name] = bytes_of(buffer.data(), buffer.bytes());
        for (const auto &[name, bytes] : got) {
            const std::vector<uint8_t> &want = w_.expected.at(name);
            if (bytes == want) continue;
            size_t first = 0;
            while (bytes[first] == want[first]) first++;
            return name + " differs from the library's kernel from byte " + std::to_string(first) + " of " +
                   std::to_string(want.size());
        }
        return {};
    }

    DistillWorkload &w_;
    std::string target_;
    std::map<int, std::shared_ptr<runtime::jit::LoadedKernel>> kernels_;
};

}  // namespace

// `kldiv tune --spec distill:...`: rows x vocabulary from --size (default
// 256x32000), CPU targets only; the record's `elements` is the vocabulary,
// by which the runtime looks records up.
int run_distill_tune(const Options &o) {
    const codegen::DistillSpec spec = *o.spec->distill;
    std::string target;
    try {
        if (o.target.find("cuda") != std::string::npos) {
            throw UsageError("distillation kernels are tuned on CPU targets only; their CUDA schedule is fixed");
        }
        target = runtime::jit::resolve_target(o.target, runtime::cpu_level_cap());
    } catch (const Error &e) {
        throw UsageError(e.what());
    }
    if (names_baselines(o)) {
        throw UsageError("--baselines: distillation kernels have no autoscheduler baselines");
    }
    const std::string db = o.save ? database_path(o) : std::string();
    if (o.threads > 0) set_num_threads(o.threads);
    const int64_t rows = o.distill_shape[0], vocab = o.distill_shape[1];
    std::fprintf(stderr, "kldiv tune: %s, %" PRId64 "x%" PRId64 " logits, target %s\n", spec.name().c_str(), rows,
                 vocab, target.c_str());
    DistillWorkload workload = make_distill_workload(spec, rows, vocab, target, o.seed);
    // Bytes per call: both logits read once, and the gradients written (the
    // statistics are 40 bytes a row).
    const double logits_bytes = (double)(rows * vocab) * (double)element_size(spec.dtype);
    const int written = spec.pass == dsl::DistillPass::Fused      ? 1
                        : spec.pass == dsl::DistillPass::Backward ? (int)spec.grad_student + (int)spec.grad_teacher
                                                                  : 0;
    const double bytes = (2.0 + written) * logits_bytes + (double)(rows * kDistillStatsPerRow * 8);
    const BandwidthCeiling ceiling = measure_bandwidth(o.threads, (size_t)(4 * bytes));
    const double ceiling_gbps = written == 0 ? ceiling.read_gbps : ceiling.copy_gbps;
    std::fprintf(stderr, "kldiv tune: ceiling %.1f GB/s read, %.1f GB/s copy (%d threads); %.2f MB per call\n",
                 ceiling.read_gbps, ceiling.copy_gbps, ceiling.threads, bytes / 1e6);
    DistillEvaluator evaluator(workload, target);
    TuneJob job;
    job.name = spec.name();
    job.shape = std::to_string(rows) + "x" + std::to_string(vocab);
    job.target = target;
    job.tuning_name = spec.tuning_name();
    job.elements = vocab;
    job.bytes = bytes;
    job.ceiling = ceiling;
    job.ceiling_gbps = ceiling_gbps;
    job.db = db;
    return search_and_record(o, job, evaluator, tune::distill_space(spec));
}

}  // namespace kldiv::tools::tune
