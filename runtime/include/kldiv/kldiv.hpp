// kldiv C++ API: PyTorch's KL-divergence loss (torch.nn.functional.kl_div,
// torch.nn.KLDivLoss) and its gradients. Errors throw kldiv::Error; on error no
// output byte has been written. Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "kldiv/dsl/dtype.h"

namespace kldiv {

namespace runtime {
class KernelCache;
}

enum class Device { CPU, CUDA };

enum class Reduction { None, Mean, Sum, BatchMean };

// A strided view of memory; strides in elements. 16-bit types hold raw bits.
struct Tensor {
    void *data = nullptr;
    DType dtype = DType::Float32;
    std::vector<int64_t> sizes;
    std::vector<int64_t> strides;
    Device device = Device::CPU;

    // A row-major view of `sizes` at `data`.
    static Tensor contiguous(void *data, DType dtype, std::vector<int64_t> sizes);
    int64_t numel() const;
    int rank() const { return (int)sizes.size(); }
};

// Error codes match kldiv_status in kldiv.h.
enum class ErrorCode { InvalidArgument = 1, Shape, DType, Alias, Device, Internal };

class Error : public std::runtime_error {
public:
    Error(ErrorCode code, const std::string &message) : std::runtime_error(message), code_(code) {}
    ErrorCode code() const { return code_; }

private:
    ErrorCode code_;
};

// Receives PyTorch's warnings ('mean' reduction, legacy arguments). Process-wide;
// an empty handler (the default) drops them.
using WarningHandler = std::function<void(const std::string &)>;
void set_warning_handler(WarningHandler handler);

// "none" | "mean" | "sum" | "batchmean"; anything else throws
// "<name> is not a valid value for reduction".
Reduction parse_reduction(const std::string &name);
const char *reduction_name(Reduction reduction);

// F.kl_div(input, target, reduction=..., log_target=...). `out` has the
// broadcast shape for None, else rank 0.
void kl_div(const Tensor &input, const Tensor &target, const Tensor &out,
            Reduction reduction = Reduction::Mean, bool log_target = false);

// Gradients for upstream `grad_output`; either output may be null.
void kl_div_backward(const Tensor &grad_output, const Tensor &input, const Tensor &target,
                     Reduction reduction, bool log_target, const Tensor *grad_input,
                     const Tensor *grad_target);

// Loss and grad_input for upstream gradient 1, reading input and target once.
void kl_div_forward_backward(const Tensor &input, const Tensor &target, const Tensor &out,
                             const Tensor &grad_input, Reduction reduction = Reduction::Mean,
                             bool log_target = false);

// The functional form with PyTorch's legacy arguments:
// F.kl_div(input, target, size_average, reduce, reduction, log_target).
// When a legacy argument is given it decides the reduction (with PyTorch's
// deprecation warning), and reduction == "batchmean" still divides the result
// by input.size(0), as PyTorch's functional form does.
struct FunctionalOptions {
    std::optional<bool> size_average;
    std::optional<bool> reduce;
    std::string reduction = "mean";
    bool log_target = false;
};

// What FunctionalOptions resolve to: the kernel's reduction, and whether the
// result is then divided by input.size(0). Emits the warnings PyTorch emits.
struct ResolvedReduction {
    Reduction reduction;
    bool divide_by_batch;
};
ResolvedReduction resolve_functional(const FunctionalOptions &options);

// torch.nn.KLDivLoss: legacy arguments are mapped once, at construction (with
// the warning), and 'batchmean' is then lost, as in PyTorch.
class KLDivLoss {
public:
    explicit KLDivLoss(std::optional<bool> size_average = std::nullopt,
                       std::optional<bool> reduce = std::nullopt, const std::string &reduction = "mean",
                       bool log_target = false);
    void forward(const Tensor &input, const Tensor &target, const Tensor &out) const;
    const std::string &reduction() const { return reduction_; }

private:
    std::string reduction_;
    bool log_target_;
};

void kl_div(const Tensor &input, const Tensor &target, const Tensor &out,
            const FunctionalOptions &options);

// ---- Distillation from logits ----------------------------------------------
//
// The KL divergence between the teacher's and the student's softmax at
// temperature T over the last dimension (the vocabulary), per row of the
// leading dimensions: with p = softmax(teacher / T), q = softmax(student / T),
// forward KL sum_j p_j (log p_j - log q_j) (reverse: sum_j q_j (log q_j -
// log p_j)); a token of probability 0 adds 0. As kldiv_distill_* in kldiv.h
// (docs/distillation.md): tensors of one shape and dtype, the
// loss and gradients of that dtype; CUDA tensors as kldiv.h says.
struct DistillOptions {
    double temperature = 1.0;  // > 0
    // None: the loss per row (the leading shape); BatchMean: divided by the
    // unmasked rows; Mean: by unmasked rows x vocabulary.
    Reduction reduction = Reduction::BatchMean;
    bool reverse = false;              // reverse KL
    bool temperature_squared = false;  // the loss and gradients times T^2
    const uint8_t *row_mask = nullptr;  // null: every row; else a byte per row, 0: left out
};

// Doubles per row of the statistics a forward call may save for backward.
constexpr int kDistillStatsPerRow = 5;

// The loss into `out`; with `row_stats` (kDistillStatsPerRow x rows), the
// rows' statistics for distill_kl_backward.
void distill_kl(const Tensor &student, const Tensor &teacher, const Tensor &out, const DistillOptions &options = {},
                double *row_stats = nullptr);

// The loss and the student's gradient for upstream gradient 1, in one pass
// over each row; `grad_student` may be `student` itself (the same view).
void distill_kl_forward_backward(const Tensor &student, const Tensor &teacher, const Tensor &out,
                                 const Tensor &grad_student, const DistillOptions &options = {},
                                 double *row_stats = nullptr);

// Gradients for upstream `grad_output` (the loss's shape); either output may
// be null; `row_stats` from distill_kl on the same logits and options, or null.
void distill_kl_backward(const Tensor &grad_output, const Tensor &student, const Tensor &teacher,
                         const DistillOptions &options, const double *row_stats, const Tensor *grad_student,
                         const Tensor *grad_teacher);

// Threads used by the CPU kernels (0: one per core). One thread pool serves
// every kernel in the process, AOT and JIT alike.
void set_num_threads(int threads);

// ---- Runtime: JIT-compiled kernels and the kernel caches -----------------

// When the JIT compiles kernels for a call's exact shape (extents and strides)
// instead of using a shape-generic kernel.
enum class Specialize {
    Never,   // shape-generic kernels only
    Always,  // a shape-specialised kernel for every new shape
    Auto     // once a shape's calls reach `specialize_after` and `specialize_work`
};
// "never" | "always" | "auto"; anything else throws InvalidArgument.
Specialize parse_specialize(const std::string &name);
const char *specialize_name(Specialize policy);

struct RuntimeOptions {
    // On-disk kernel cache: "" for $KLDIV_CACHE_DIR, else $XDG_CACHE_HOME/kldiv,
    // else ~/.cache/kldiv; "off" (here or in KLDIV_CACHE_DIR) keeps kernels in
    // memory only. An unusable directory degrades to memory-only with a warning.
    std::string cache_dir;
    uint64_t disk_cache_bytes = uint64_t(1) << 30;  // pruned least recently used first
    // In-memory cache bounds; the least recently used kernel is evicted first.
    size_t memory_cache_entries = 1024;
    uint64_t memory_cache_bytes = uint64_t(256) << 20;  // object code bytes
    // Unset: $KLDIV_SPECIALIZE ("never" | "always" | "auto"), else Auto.
    std::optional<Specialize> specialize;
    // Auto specialises a shape once it has been seen specialize_after times
    // and its calls have covered specialize_work elements in all (2^32: about
    // a second of calls on two cores, five times a compile), so that no
    // workload pays more for a compile than it can gain.
    int specialize_after = 3;
    uint64_t specialize_work = uint64_t(1) << 32;
    // false: AOT kernels only, nothing is compiled.
    bool jit = true;
    // Shape-generic calls use the library's AOT kernels when it has them for
    // the target; false compiles generic kernels with the JIT as well.
    bool generic_from_aot = true;
    // false: while a kernel compiles in the background, calls run the AOT
    // kernel instead of waiting (where the build has one).
    bool blocking = true;
    // Halide target string of JIT kernels, or "host" (this CPU).
    std::string target = "host";
    // The highest x86 feature level of "host" JIT kernels: "sse41", "avx2" or
    // "avx512" (a level above the CPU's is the CPU's); "": $KLDIV_CPU_TARGET,
    // which caps the AOT kernels' dispatch too, else no cap.
    std::string cpu_target;
    // Threads of the process's kernel thread pool (0: leave it as it is).
    int threads = 0;
    // Tuning database (JSON lines from `kldiv tune`) consulted before the one
    // shipped with the library: "" for $KLDIV_TUNING_DB, else tuning.jsonl in
    // the cache directory; "off" for none (the shipped one still applies);
    // "none" for neither: default schedules only.
    std::string tuning_db;
    // Receives this runtime's warnings (cache faults, PyTorch's warnings for
    // its calls); empty: the process-wide handler.
    WarningHandler warning_handler;
    // CUDA kernels from the JIT too (compiled as `specialize` says, shape-
    // generic ones only with generic_from_aot false); unset: $KLDIV_CUDA_JIT
    // ("on" | "off"), else off: CUDA calls run the AOT CUDA kernels.
    std::optional<bool> cuda_jit;
    // CUDA stream (a CUstream or cudaStream_t) of calls on CUDA tensors; null:
    // the legacy default stream. A thread's own stream (set_thread_cuda_stream)
    // takes precedence.
    void *cuda_stream = nullptr;
};

struct CacheStats {
    uint64_t hits = 0;        // calls served by a kernel already in memory
    uint64_t misses = 0;      // JIT kernels not in memory when asked for
    uint64_t disk_hits = 0;   // ... of which loaded from the disk cache
    uint64_t compiles = 0;    // ... of which compiled
    uint64_t failures = 0;    // compiles that failed
    uint64_t evictions = 0;   // kernels dropped from memory
    uint64_t aot_calls = 0;   // calls served by AOT kernels
    double compile_seconds = 0;  // total time compiling
    uint64_t entries = 0;     // kernels in memory now
    uint64_t code_bytes = 0;  // their object code
};

// Where a call's kernel came from.
enum class KernelOrigin { Aot, Memory, Disk, Compiled };
const char *origin_name(KernelOrigin origin);

// Where a compiled kernel's time went, in seconds.
struct CompileTimes {
    double lower = 0;         // Halide: the pipeline and its schedule to lowered statements
    double llvm_ir = 0;       // Halide's LLVM IR, with LLVM's optimisation passes
    double machine_code = 0;  // LLVM's code generation to an object
    double load = 0;          // linking the object into this process
};

struct KernelInfo {
    std::string name;          // KernelSpec name, with the shape when specialised
    KernelOrigin origin = KernelOrigin::Aot;
    bool specialised = false;
    double seconds = 0;        // spent finding, loading or compiling it (0 for AOT kernels: not timed)
    // Where its schedule parameters came from: "default", "default (AOT)" or
    // "tuned (<database>, 2^<bucket> elements, <speed-up> the default there)"
    // (distillation kernels: "2^<bucket> logits a row").
    std::string schedule;
    // Its compile by phase, when this call compiled it (origin Compiled).
    CompileTimes compile;
};

// The calling thread's most recent kernel (its first piece, for calls cut
// into several).
KernelInfo last_kernel();

// A kernel runtime: JIT compiler, in-memory and on-disk kernel caches, and
// the policy choosing between AOT, generic and shape-specialised kernels. The
// free functions above use process_default(). Thread-safe.
class Runtime {
public:
    explicit Runtime(RuntimeOptions options = {});
    ~Runtime();
    Runtime(const Runtime &) = delete;
    Runtime &operator=(const Runtime &) = delete;

    void kl_div(const Tensor &input, const Tensor &target, const Tensor &out,
                Reduction reduction = Reduction::Mean, bool log_target = false);
    void kl_div_backward(const Tensor &grad_output, const Tensor &input, const Tensor &target,
                         Reduction reduction, bool log_target, const Tensor *grad_input,
                         const Tensor *grad_target);
    void kl_div_forward_backward(const Tensor &input, const Tensor &target, const Tensor &out,
                                 const Tensor &grad_input, Reduction reduction = Reduction::Mean,
                                 bool log_target = false);

    // Distillation from logits (see kldiv::distill_kl and the others) with
    // this runtime's kernels: AOT, or JIT-compiled for its target, tuned
    // records and, as `specialize` decides, the vocabulary.
    void distill_kl(const Tensor &student, const Tensor &teacher, const Tensor &out,
                    const DistillOptions &options = {}, double *row_stats = nullptr);
    void distill_kl_forward_backward(const Tensor &student, const Tensor &teacher, const Tensor &out,
                                     const Tensor &grad_student, const DistillOptions &options = {},
                                     double *row_stats = nullptr);
    void distill_kl_backward(const Tensor &grad_output, const Tensor &student, const Tensor &teacher,
                             const DistillOptions &options, const double *row_stats, const Tensor *grad_student,
                             const Tensor *grad_teacher);

    CacheStats stats() const;
    const std::string &target() const;     // resolved Halide target string
    // This runtime's CUDA stream (see RuntimeOptions::cuda_stream).
    void set_cuda_stream(void *stream);
    void *cuda_stream() const;
    const std::string &cache_dir() const;  // "" when memory-only

    // The runtime behind the free functions and the C ABI (default options,
    // created on first use, never destroyed).
    static Runtime &process_default();

    // The library's own way in to this runtime's kernels; not for users.
    runtime::KernelCache &cache() { return *cache_; }

private:
    std::unique_ptr<runtime::KernelCache> cache_;
};

// The x86 feature level the AOT kernels run with on this CPU: the best the
// CPU has, capped by $KLDIV_CPU_TARGET (sse41 | avx2 | avx512), read once.
std::string cpu_target();

// ---- CUDA tensors ----------------------------------------------------------
//
// Tensors with Device::CUDA hold device memory from the CUDA runtime or driver
// (cudaMalloc, PyTorch's allocator); every tensor of a call is on one GPU.
// Kernels run in that GPU's primary context (the one the CUDA runtime API
// uses) on the call's stream, and return without waiting for the GPU, as
// PyTorch's CUDA operators do: results are ready in stream order. Nothing is
// copied through the host; a reduced loss is written to device memory. The
// NVIDIA driver is loaded when a CUDA tensor is first passed; without one the
// call fails with ErrorCode::Device.

// Whether this build has CUDA kernels.
bool cuda_available_in_build();

// The calling thread's CUDA stream for its calls on CUDA tensors, over the
// runtime's (like PyTorch's current stream, it is per thread).
void set_thread_cuda_stream(void *stream);
// Back to the runtime's stream.
void clear_thread_cuda_stream();
// The calling thread's stream, when it has set one.
std::optional<void *> thread_cuda_stream();

// Sets the calling thread's stream for its lifetime, then restores what the
// thread had before (its own stream, or the runtime's).
class CudaStreamGuard {
public:
    explicit CudaStreamGuard(void *stream) : previous_(thread_cuda_stream()) { set_thread_cuda_stream(stream); }
    ~CudaStreamGuard() {
        if (previous_) {
            set_thread_cuda_stream(*previous_);
        } else {
            clear_thread_cuda_stream();
        }
    }
    CudaStreamGuard(const CudaStreamGuard &) = delete;
    CudaStreamGuard &operator=(const CudaStreamGuard &) = delete;

private:
    std::optional<void *> previous_;
};

}  // namespace kldiv
