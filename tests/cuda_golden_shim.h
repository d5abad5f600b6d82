// golden_test on a GPU: every kldiv_forward / kldiv_backward /
// kldiv_forward_backward call of the test runs on cudaMalloc'd copies of its
// tensors (outputs keep their sentinel bytes), and the results are copied back
// for the test's comparisons. Calls that CUDA refuses by design (the gradient
// of a broadcast operand) run on the host instead and are counted.
#pragma once

#include <atomic>
#include <cstring>

#include "cuda_support.h"

namespace kldiv_test {

inline std::atomic<int> &refused_on_cuda() {
    static std::atomic<int> n{0};
    return n;
}
inline std::atomic<int> &calls_on_cuda() {
    static std::atomic<int> n{0};
    return n;
}

// A device copy of a host view (its whole byte span).
class DeviceCopy {
public:
    explicit DeviceCopy(const kldiv_tensor *host) : host_(host) {
        if (!host) return;
        int64_t last = 0;
        bool empty = false;
        for (int d = 0; d < host->rank; d++) {
            if (host->sizes[d] == 0) empty = true;
            last += (host->sizes[d] - 1) * host->strides[d];
        }
        bytes_ = empty ? dtype_bytes(host->dtype) : (size_t)(last + 1) * dtype_bytes(host->dtype);
        const Cudart &c = Cudart::get();
        c.cudaMalloc(&data_, bytes_);
        c.cudaMemcpy(data_, host->data, bytes_, Cudart::kHostToDevice);
        view_ = *host;
        view_.data = data_;
        view_.device = KLDIV_DEVICE_CUDA;
    }
    ~DeviceCopy() {
        if (data_) Cudart::get().cudaFree(data_);
    }
    const kldiv_tensor *view() const { return host_ ? &view_ : nullptr; }
    void copy_back() const {
        if (!host_) return;
        Cudart::get().cudaDeviceSynchronize();
        Cudart::get().cudaMemcpy(host_->data, data_, bytes_, Cudart::kDeviceToHost);
    }

private:
    const kldiv_tensor *host_;
    kldiv_tensor view_{};
    size_t bytes_ = 0;
    void *data_ = nullptr;
};

inline bool refused_by_design(int rc) {
    return rc == KLDIV_ERROR_SHAPE && std::strstr(kldiv_last_error(), "not supported for CUDA tensors") != nullptr;
}

inline int device_forward(const kldiv_tensor *input, const kldiv_tensor *target, kldiv_reduction reduction,
                          int log_target, const kldiv_tensor *out) {
    DeviceCopy i(input), t(target), o(out);
    calls_on_cuda()++;
    const int rc = kldiv_forward(i.view(), t.view(), reduction, log_target, o.view());
    if (rc == 0) o.copy_back();
    return rc;
}

inline int device_backward(const kldiv_tensor *grad_output, const kldiv_tensor *input, const kldiv_tensor *target,
                           kldiv_reduction reduction, int log_target, const kldiv_tensor *grad_input,
                           const kldiv_tensor *grad_target) {
    DeviceCopy g(grad_output), i(input), t(target), gi(grad_input), gt(grad_target);
    calls_on_cuda()++;
    const int rc = kldiv_backward(g.view(), i.view(), t.view(), reduction, log_target, gi.view(), gt.view());
    if (refused_by_design(rc)) {
        refused_on_cuda()++;
        return kldiv_backward(grad_output, input, target, reduction, log_target, grad_input, grad_target);
    }
    if (rc == 0) {
        gi.copy_back();
        gt.copy_back();
    }
    return rc;
}

inline int device_forward_backward(const kldiv_tensor *input, const kldiv_tensor *target,
                                   kldiv_reduction reduction, int log_target, const kldiv_tensor *out,
                                   const kldiv_tensor *grad_input) {
    DeviceCopy i(input), t(target), o(out), gi(grad_input);
    calls_on_cuda()++;
    const int rc = kldiv_forward_backward(i.view(), t.view(), reduction, log_target, o.view(), gi.view());
    if (refused_by_design(rc)) {
        refused_on_cuda()++;
        return kldiv_forward_backward(input, target, reduction, log_target, out, grad_input);
    }
    if (rc == 0) {
        o.copy_back();
        gi.copy_back();
    }
    return rc;
}

}  // namespace kldiv_test

#define kldiv_forward kldiv_test::device_forward
#define kldiv_backward kldiv_test::device_backward
#define kldiv_forward_backward kldiv_test::device_forward_backward
