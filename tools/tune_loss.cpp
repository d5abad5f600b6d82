#include "tune_loss.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "aot_command.h"
#include "bandwidth.h"
#include "command_line.h"
#include "cpu_level.h"
#include "cuda_device.h"
#include "errors.h"
#include "host_buffer.h"
#include "jit/compile.h"
#include "jit/orc.h"
#include "kernel_args.h"
#include "reference.h"
#include "timing.h"
#include "tune_search.h"
#include "workload.h"

namespace kldiv::tools::tune {

namespace {

using codegen::Argument;
using codegen::KernelSpec;

tools::Pass tools_pass(codegen::Pass pass) {
    switch (pass) {
    case codegen::Pass::Forward: return tools::Pass::Forward;
    case codegen::Pass::Backward: return tools::Pass::Backward;
    case codegen::Pass::Fused: return tools::Pass::Fused;
    }
    return tools::Pass::Forward;
}

// The data every candidate runs on, its outputs, and the reference they are
// checked against.
struct Workload {
    KernelSpec spec;
    codegen::FixedShape shape;
    int64_t numel = 0;
    KlOperands operands;
    HostBuffer grad_output;  // ones (backward with a tensor gradient)
    std::map<std::string, HostBuffer> outputs;
    double total = 0;
    std::vector<int64_t> sample;  // elements checked
    Term reference_total{0, 0};
};

Workload make_workload(const AotSpec &a, uint64_t seed) {
    Workload w;
    w.spec = a.spec;
    w.shape = fixed_shape(a);
    w.numel = element_count(a.shape);
    w.operands = make_operands(a.shape, a.spec.dtype, a.spec.log_target, seed);
    w.grad_output = HostBuffer(a.spec.dtype, w.numel);
    w.grad_output.fill(1.0);
    for (const Argument &arg : codegen::arguments(a.spec)) {
        if (arg.is_output && arg.name != "total") {
            HostBuffer &out = w.outputs[arg.name] = HostBuffer(a.spec.dtype, w.numel);
            out.fill(0.0);
        }
    }
    // Every element of a small tensor; else 2^16 spread evenly, and both ends.
    const int64_t step = std::max<int64_t>(1, w.numel >> 16);
    for (int64_t i = 0; i < w.numel; i += step) w.sample.push_back(i);
    if (w.sample.back() != w.numel - 1) w.sample.push_back(w.numel - 1);
    if (a.spec.reduce && a.spec.pass != codegen::Pass::Backward) {
        CompensatedSum value, magnitude;
        for (int64_t i = 0; i < w.numel; i++) {
            const Term t = pointwise_loss(w.operands.input.get(i), w.operands.target.get(i), a.spec.log_target);
            value.add(t.value);
            magnitude.add(t.magnitude);
        }
        w.reference_total = {value.value(), magnitude.value()};
    }
    return w;
}

// Empty when the outputs in `w.outputs` (and `total`, the sum of a reduced
// forward or fused pass) match the float64 reference on the sampled elements.
std::string check_outputs(const Workload &w, double total) {
    const bool log_target = w.spec.log_target;
    auto report = [](const std::string &what, const ErrorCheck &check) {
        return check.passed() ? std::string() : what + ": " + check.describe_worst();
    };
    if (w.spec.reduce && w.spec.pass != codegen::Pass::Backward) {
        ErrorCheck check(w.spec.dtype);
        check.add(0, total, w.reference_total);
        if (auto why = report("sum", check); !why.empty()) return why;
    }
    for (const auto &[name, buffer] : w.outputs) {
        if (name == "out") continue;  // a CUDA kernel's sum: `total`
        ErrorCheck check(w.spec.dtype);
        for (int64_t i : w.sample) {
            const double x = w.operands.input.get(i), t = w.operands.target.get(i);
            const Term expected = name == "loss"         ? pointwise_loss(x, t, log_target)
                                  : name == "grad_input" ? grad_input_term(1.0, x, t, log_target)
                                                         : grad_target_term(1.0, x, t, log_target);
            check.add(i, buffer.get(i), expected);
        }
        if (auto why = report(name, check); !why.empty()) return why;
    }
    return {};
}

// Compiles candidates with the JIT (the code the runtime would run), checks
// them, and times them on the workload.
class JitEvaluator : public KernelEvaluator {
public:
    JitEvaluator(Workload &workload, std::string target) : w_(workload), target_(std::move(target)) {
        runtime::jit::ensure_runtime(target_, [&] { return runtime::jit::compile_runtime(target_); });
        start_clock();
    }

    bool prepare(Candidate &c) override {
        const std::string function = "kldiv_tune_" + std::to_string(c.id) + (c.autoscheduler.empty() ? "" : "_as");
        return prepare_with(c, [&] {
            const std::string object = runtime::jit::compile_kernel(w_.spec, w_.shape, target_, c.params, function,
                                                                    c.autoscheduler);
            kernels_[key(c)] = runtime::jit::load_kernel(target_, object, function);
        });
    }

private:
    static constexpr int kBaselineIds = 1 << 20;

    static int key(const Candidate &c) { return c.id + (c.autoscheduler.empty() ? 0 : kBaselineIds); }

    void call(const Candidate &c) override {
        const auto &kernel = kernels_.at(key(c));
        std::vector<void *> data;
        for (const Argument &a : codegen::arguments(w_.spec)) {
            if (a.kind != Argument::Buffer || a.name == "total") continue;
            if (a.name == "input") data.push_back(w_.operands.input.data());
            if (a.name == "target") data.push_back(w_.operands.target.data());
            if (a.name == "grad_output") data.push_back(w_.grad_output.data());
            if (a.is_output) data.push_back(w_.outputs.at(a.name).data());
        }
        runtime::KernelArguments arguments(w_.spec, data, w_.shape.extent.data(), w_.shape.strides);
        runtime::KernelErrorContext context;
        void *user_context = &context;
        if (int status = kernel->entry(arguments.argv(&user_context)); status != 0) {
            throw std::runtime_error("kernel failed (" + std::to_string(status) + "): " + context.message);
        }
        w_.total = arguments.total;
    }

    std::string check() override { return check_outputs(w_, w_.total); }

    Workload &w_;
    std::string target_;
    std::map<int, std::shared_ptr<runtime::jit::LoadedKernel>> kernels_;
};

// CUDA targets: candidates compiled by the JIT for the GPU, run on device
// copies of the workload on GPU 0 (the aligned kernel: the workload is one
// contiguous run), each call waited for, and checked like JitEvaluator's
// after the outputs are copied back.
class CudaEvaluator : public KernelEvaluator {
public:
    CudaEvaluator(Workload &workload, std::string target)
        : w_(workload), target_(std::move(target)), gpu_(runtime::cuda::first_gpu()) {
        runtime::jit::ensure_runtime(target_, [&] { return runtime::jit::compile_runtime(target_); });
        for (const Argument &a : codegen::arguments(w_.spec)) {
            if (a.kind != Argument::Buffer || a.name == "total") continue;
            const HostBuffer &host = a.name == "input"         ? w_.operands.input
                                     : a.name == "target"      ? w_.operands.target
                                     : a.name == "grad_output" ? w_.grad_output
                                                               : w_.outputs.at(a.name);
            const size_t bytes = a.dimensions == 1 ? element_size(w_.spec.dtype) : host.bytes();
            void *device = runtime::cuda::device_alloc(bytes);
            data_.push_back(device);
            runtime::cuda::copy_host_to_device(device, host.data(), bytes);
            names_.push_back(a.name);
        }
        start_clock();
    }
    ~CudaEvaluator() override {
        for (void *d : data_) {
            try {
                runtime::cuda::device_free(d);
            } catch (const std::exception &) {
            }
        }
    }
    CudaEvaluator(const CudaEvaluator &) = delete;
    CudaEvaluator &operator=(const CudaEvaluator &) = delete;

    bool prepare(Candidate &c) override {
        const std::string function = "kldiv_tune_cuda_" + std::to_string(c.id);
        return prepare_with(c, [&] {
            const std::string object = runtime::jit::compile_kernel(w_.spec, w_.shape, target_, c.params, function);
            kernels_[c.id] = runtime::jit::load_kernel(target_, object, function);
        });
    }

private:
    void call(const Candidate &c) override {
        const auto &kernel = kernels_.at(c.id);
        runtime::cuda::Scope scope(gpu_.placement, nullptr);
        runtime::KernelArguments arguments(w_.spec, data_, w_.shape.extent.data(), w_.shape.strides,
                                           &kernel->buffers);
        if (arguments.wrap_failed()) throw std::runtime_error("the device pointers could not be given to the kernel");
        arguments.divisor = 1.0;
        runtime::KernelErrorContext context;
        void *user_context = &context;
        if (int status = kernel->entry(arguments.argv(&user_context)); status != 0) {
            throw std::runtime_error("kernel failed (" + std::to_string(status) + "): " + context.message);
        }
        runtime::cuda::synchronize();
    }

    // The outputs copied back into the workload's host buffers, then checked.
    std::string check() override {
        double total = 0;
        for (size_t k = 0; k < names_.size(); k++) {
            const std::string &name = names_[k];
            if (name == "out") {
                HostBuffer out(w_.spec.dtype, 1);
                runtime::cuda::copy_device_to_host(out.data(), data_[k], out.bytes());
                total = out.get(0);  // divided by 1
            } else if (w_.outputs.count(name)) {
                HostBuffer &buffer = w_.outputs.at(name);
                runtime::cuda::copy_device_to_host(buffer.data(), data_[k], buffer.bytes());
            }
        }
        return check_outputs(w_, total);
    }

    Workload &w_;
    std::string target_;
    runtime::cuda::Gpu gpu_;
    std::vector<void *> data_;  // device memory, in argument order
    std::vector<std::string> names_;
    std::map<int, std::shared_ptr<runtime::jit::LoadedKernel>> kernels_;
};

// A device-to-device copy of `bytes`, in GB/s counting bytes read and
// written: the GPU's bandwidth ceiling.
double gpu_copy_gbps(size_t bytes) {
    void *a = runtime::cuda::device_alloc(bytes), *b = runtime::cuda::device_alloc(bytes);
    std::vector<double> samples;
    for (int i = 0; i < 12; i++) {
        const double s = seconds_of([&] {
            runtime::cuda::copy_device_to_device(b, a, bytes);
            runtime::cuda::synchronize();
        });
        if (i >= 2) samples.push_back(s);
    }
    runtime::cuda::device_free(a);
    runtime::cuda::device_free(b);
    return 2.0 * (double)bytes / median(samples) / 1e9;
}

}  // namespace

int run_loss_tune(const Options &o) {
    AotSpec a = *o.spec;
    // A GPU target: CUDA kernels timed on GPU 0.
    const bool gpu = o.target.find("cuda") != std::string::npos;
    std::string target;
    try {
        if (gpu) {
            // The target the runtime compiles CUDA kernels for (its records
            // must match it), at the compute capability asked for.
            std::string cuda = KLDIV_CUDA_JIT_TARGET;
            const size_t at = o.target.find("cuda_capability_");
            if (at != std::string::npos) {
                cuda = cuda.substr(0, cuda.find("-cuda_capability_")) + "-" +
                       o.target.substr(at, o.target.find('-', at) - at);
            }
            if (o.target.rfind("host", 0) != 0 && o.target.rfind("x86-64-linux", 0) != 0) {
                throw Error(ErrorCode::InvalidArgument, "a GPU target is host-cuda[-cuda_capability_NN]");
            }
            target = runtime::jit::resolve_target(cuda, "", true);
        } else {
            target = runtime::jit::resolve_target(o.target, runtime::cpu_level_cap());
        }
    } catch (const Error &e) {
        throw UsageError(e.what());
    }
    if (gpu && names_baselines(o)) {
        throw UsageError("--baselines: Halide's autoschedulers are compared on CPU targets only");
    }
    const std::string db = o.save ? database_path(o) : std::string();
    if (o.threads > 0) set_num_threads(o.threads);
    runtime::cuda::Gpu device;
    if (gpu) {
        try {
            device = runtime::cuda::first_gpu();
        } catch (const Error &e) {
            std::fprintf(stderr, "kldiv tune: no GPU to tune %s on: %s\n", target.c_str(), e.what());
            return kExitFail;
        }
        // The kernel contiguous tensors get (KernelSpec::aligned): one run,
        // dimensions 1 to 3 of extent 1 and stride 0.
        a.spec.cuda = a.spec.aligned = true;
    }

    std::fprintf(stderr, "kldiv tune: %s, %s elements, target %s%s\n", a.spec.name().c_str(),
                 format_shape(a.shape).c_str(), target.c_str(), gpu ? (" on " + device.name).c_str() : "");
    Workload workload = make_workload(a, o.seed);
    if (gpu) {
        workload.shape.extent = {(int32_t)workload.numel, 1, 1, 1};
        for (auto &strides : workload.shape.strides) strides = {1, 0, 0, 0};
    }
    const Reduction reduction = a.spec.reduce ? Reduction::Sum : Reduction::None;
    const Traffic traffic = bytes_moved(tools_pass(a.spec.pass), reduction, workload.numel, a.spec.dtype,
                                        a.spec.grad_input, a.spec.grad_target);
    const double bytes = (double)traffic.total();
    BandwidthCeiling ceiling;
    if (gpu) {
        // A copy (at least 256 MiB) is the GPU's ceiling, for reads as for
        // reads and writes.
        ceiling.array_bytes = std::max(4 * (size_t)traffic.total(), size_t(256) << 20);
        ceiling.copy_gbps = ceiling.read_gbps = gpu_copy_gbps(ceiling.array_bytes);
    } else {
        ceiling = measure_bandwidth(o.threads, 4 * (size_t)traffic.total());
    }
    // A reduced pass only reads; the others also write.
    const double ceiling_gbps = traffic.written_bytes * 100 < traffic.read_bytes ? ceiling.read_gbps : ceiling.copy_gbps;
    std::fprintf(stderr, "kldiv tune: ceiling %.1f GB/s read, %.1f GB/s copy (%s); %.2f MB per call\n",
                 ceiling.read_gbps, ceiling.copy_gbps,
                 gpu ? "device-to-device copy" : (std::to_string(ceiling.threads) + " threads").c_str(), bytes / 1e6);

    std::unique_ptr<tune::Evaluator> evaluator;
    if (gpu) {
        evaluator = std::make_unique<CudaEvaluator>(workload, target);
    } else {
        evaluator = std::make_unique<JitEvaluator>(workload, target);
    }
    const tune::Space space = gpu ? tune::gpu_space(a.spec) : tune::cpu_space(a.spec);
    TuneJob job;
    job.name = a.spec.name();
    job.shape = format_shape(a.shape);
    job.target = target;
    job.device = gpu ? device.name : std::string();
    job.tuning_name = a.spec.tuning_name();
    job.elements = workload.numel;
    job.bytes = bytes;
    job.ceiling = ceiling;
    job.ceiling_gbps = ceiling_gbps;
    job.baselines = gpu ? std::vector<std::string>() : o.baselines;
    job.db = db;
    return search_and_record(o, job, *evaluator, space);
}

}  // namespace kldiv::tools::tune
