// Device memory for the CUDA tests, from the CUDA runtime API (cudaMalloc), as
// PyTorch gets it. libcudart is loaded at run time ($KLDIV_CUDART, else the
// usual names), so the tests build without CUDA and skip where there is none.
#pragma once

#include <dlfcn.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "test_support.h"

namespace kldiv_test {

class Cudart {
public:
    static const Cudart &get() {
        static const Cudart c;
        return c;
    }

    // Empty when a GPU can be used; else why not (the [SKIP] reason).
    const std::string &unavailable() const { return problem_; }

    int (*cudaMalloc)(void **, size_t) = nullptr;
    int (*cudaFree)(void *) = nullptr;
    int (*cudaMemcpy)(void *, const void *, size_t, int) = nullptr;
    int (*cudaMemcpyAsync)(void *, const void *, size_t, int, void *) = nullptr;
    int (*cudaMemsetAsync)(void *, int, size_t, void *) = nullptr;
    int (*cudaStreamCreateWithFlags)(void **, unsigned) = nullptr;
    int (*cudaStreamDestroy)(void *) = nullptr;
    int (*cudaStreamSynchronize)(void *) = nullptr;
    int (*cudaDeviceSynchronize)() = nullptr;
    int (*cudaGetDeviceCount)(int *) = nullptr;
    int (*cudaMallocHost)(void **, size_t) = nullptr;
    int (*cudaFreeHost)(void *) = nullptr;

    static constexpr int kHostToDevice = 1, kDeviceToHost = 2, kDeviceToDevice = 3;
    static constexpr unsigned kNonBlocking = 1;

private:
    Cudart() {
        std::vector<std::string> names;
        if (const char *path = std::getenv("KLDIV_CUDART")) names.push_back(path);
        for (const char *n : {"libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"}) names.push_back(n);
        void *lib = nullptr;
        for (const std::string &n : names) {
            if ((lib = dlopen(n.c_str(), RTLD_NOW | RTLD_GLOBAL))) break;
        }
        if (!lib) {
            problem_ = "[SKIP] no CUDA runtime library (libcudart; set KLDIV_CUDART to its path)";
            return;
        }
        bool ok = load(lib, "cudaMalloc", cudaMalloc) && load(lib, "cudaFree", cudaFree) &&
                  load(lib, "cudaMemcpy", cudaMemcpy) && load(lib, "cudaMemcpyAsync", cudaMemcpyAsync) &&
                  load(lib, "cudaMemsetAsync", cudaMemsetAsync) &&
                  load(lib, "cudaStreamCreateWithFlags", cudaStreamCreateWithFlags) &&
                  load(lib, "cudaStreamDestroy", cudaStreamDestroy) &&
                  load(lib, "cudaStreamSynchronize", cudaStreamSynchronize) &&
                  load(lib, "cudaDeviceSynchronize", cudaDeviceSynchronize) &&
                  load(lib, "cudaGetDeviceCount", cudaGetDeviceCount) && load(lib, "cudaMallocHost", cudaMallocHost) &&
                  load(lib, "cudaFreeHost", cudaFreeHost);
        int count = 0;
        if (!ok) {
            problem_ = "[SKIP] the CUDA runtime library lacks a needed function";
        } else if (cudaGetDeviceCount(&count) != 0 || count == 0) {
            problem_ = "[SKIP] no CUDA GPU (cudaGetDeviceCount found none)";
        }
    }

    template<typename F>
    static bool load(void *lib, const char *name, F &slot) {
        slot = reinterpret_cast<F>(dlsym(lib, name));
        return slot != nullptr;
    }

    std::string problem_;
};

// A cudaMalloc'd copy of a HostTensor (its whole byte span), handing out
// device views and copying results back.
class DeviceTensor {
public:
    explicit DeviceTensor(const HostTensor &host) : host_(&host), bytes_(host.bytes.size()) {
        const Cudart &c = Cudart::get();
        if (c.cudaMalloc(&data_, bytes_) != 0) data_ = nullptr;
        if (data_) c.cudaMemcpy(data_, host.bytes.data(), bytes_, Cudart::kHostToDevice);
    }
    ~DeviceTensor() {
        if (data_) Cudart::get().cudaFree(data_);
    }
    DeviceTensor(const DeviceTensor &) = delete;
    DeviceTensor &operator=(const DeviceTensor &) = delete;

    bool ok() const { return data_ != nullptr; }
    void *data() const { return data_; }
    kldiv_tensor view() const {
        kldiv_tensor v = host_->view();
        v.data = data_;
        v.device = KLDIV_DEVICE_CUDA;
        return v;
    }
    // The device bytes as a HostTensor of the same shape (waits for the GPU).
    HostTensor download() const {
        HostTensor out = *host_;
        Cudart::get().cudaDeviceSynchronize();
        Cudart::get().cudaMemcpy(out.bytes.data(), data_, bytes_, Cudart::kDeviceToHost);
        return out;
    }

private:
    const HostTensor *host_;
    size_t bytes_;
    void *data_ = nullptr;
};

}  // namespace kldiv_test
