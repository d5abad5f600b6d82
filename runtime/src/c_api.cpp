// The C ABI: converts kldiv_tensor to Tensor and exceptions to status codes.
#include <mutex>

#include "errors.h"
#include "kldiv/kldiv.h"
#include "kldiv/kldiv.hpp"

using namespace kldiv;

namespace {

Tensor to_tensor(const kldiv_tensor *t, const char *name) {
    if (t == nullptr) runtime::fail(ErrorCode::InvalidArgument, std::string(name) + " is null");
    if (t->rank < 0) runtime::fail(ErrorCode::InvalidArgument, std::string(name) + ": negative rank");
    if (t->rank > 0 && (t->sizes == nullptr || t->strides == nullptr)) {
        runtime::fail(ErrorCode::InvalidArgument, std::string(name) + ": sizes or strides is null");
    }
    Tensor out;
    out.data = t->data;
    switch (t->dtype) {
    case KLDIV_FLOAT32: out.dtype = DType::Float32; break;
    case KLDIV_FLOAT64: out.dtype = DType::Float64; break;
    case KLDIV_FLOAT16: out.dtype = DType::Float16; break;
    case KLDIV_BFLOAT16: out.dtype = DType::BFloat16; break;
    default:
        runtime::fail(ErrorCode::DType, std::string(name) + ": unknown dtype " + std::to_string((int)t->dtype) +
                                            " (kl_div supports float32, float64, float16 and bfloat16)");
    }
    switch (t->device) {
    case KLDIV_DEVICE_CPU: out.device = Device::CPU; break;
    case KLDIV_DEVICE_CUDA: out.device = Device::CUDA; break;
    default: runtime::fail(ErrorCode::Device, std::string(name) + ": unknown device " + std::to_string((int)t->device));
    }
    out.sizes.assign(t->sizes, t->sizes + t->rank);
    out.strides.assign(t->strides, t->strides + t->rank);
    return out;
}

Reduction to_reduction(kldiv_reduction r) {
    switch (r) {
    case KLDIV_REDUCTION_NONE: return Reduction::None;
    case KLDIV_REDUCTION_MEAN: return Reduction::Mean;
    case KLDIV_REDUCTION_SUM: return Reduction::Sum;
    case KLDIV_REDUCTION_BATCHMEAN: return Reduction::BatchMean;
    }
    runtime::fail(ErrorCode::InvalidArgument, std::to_string((int)r) + " is not a valid value for reduction");
}

template<typename F>
int guarded(F &&body) {
    try {
        body();
        runtime::set_last_error("");
        return KLDIV_OK;
    } catch (const Error &e) {
        runtime::set_last_error(e.what());
        return (int)e.code();
    } catch (const std::bad_alloc &) {
        runtime::set_last_error("out of memory");
        return KLDIV_ERROR_INTERNAL;
    } catch (const std::exception &e) {
        runtime::set_last_error(e.what());
        return KLDIV_ERROR_INTERNAL;
    }
}

}  // namespace

extern "C" {

int kldiv_forward(const kldiv_tensor *input, const kldiv_tensor *target, kldiv_reduction reduction, int log_target,
                  const kldiv_tensor *out) {
    return guarded([&] {
        kl_div(to_tensor(input, "input"), to_tensor(target, "target"), to_tensor(out, "out"), to_reduction(reduction),
               log_target != 0);
    });
}

int kldiv_backward(const kldiv_tensor *grad_output, const kldiv_tensor *input, const kldiv_tensor *target,
                   kldiv_reduction reduction, int log_target, const kldiv_tensor *grad_input,
                   const kldiv_tensor *grad_target) {
    return guarded([&] {
        Tensor gi, gt;
        if (grad_input) gi = to_tensor(grad_input, "grad_input");
        if (grad_target) gt = to_tensor(grad_target, "grad_target");
        kl_div_backward(to_tensor(grad_output, "grad_output"), to_tensor(input, "input"), to_tensor(target, "target"),
                        to_reduction(reduction), log_target != 0, grad_input ? &gi : nullptr,
                        grad_target ? &gt : nullptr);
    });
}

int kldiv_forward_backward(const kldiv_tensor *input, const kldiv_tensor *target, kldiv_reduction reduction,
                           int log_target, const kldiv_tensor *out, const kldiv_tensor *grad_input) {
    return guarded([&] {
        kl_div_forward_backward(to_tensor(input, "input"), to_tensor(target, "target"), to_tensor(out, "out"),
                                to_tensor(grad_input, "grad_input"), to_reduction(reduction), log_target != 0);
    });
}

const char *kldiv_last_error(void) { return runtime::last_error(); }

void kldiv_set_warning_handler(kldiv_warning_handler handler, void *user_data) {
    if (handler == nullptr) {
        set_warning_handler(nullptr);
        return;
    }
    set_warning_handler([handler, user_data](const std::string &message) { handler(message.c_str(), user_data); });
}

void kldiv_set_num_threads(int threads) { set_num_threads(threads); }

const char *kldiv_cpu_target(void) {
    static const std::string target = cpu_target();
    return target.c_str();
}

}  // extern "C"
