// kldiv C++ API: PyTorch's KL-divergence loss (torch.nn.functional.kl_div,
// torch.nn.KLDivLoss) and its gradients. Errors throw kldiv::Error; on error no
// output byte has been written. Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "kldiv/dsl/dtype.h"

namespace kldiv {

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

// Threads used by the CPU kernels (0: one per core).
void set_num_threads(int threads);

// The x86 feature level the AOT kernels run with on this CPU.
std::string cpu_target();

}  // namespace kldiv
