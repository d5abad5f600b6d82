// Time per call of kldiv's CUDA kernels from C++ at small sizes, where launch
// overhead decides: 2^20 float32 elements (32 x 32768), reduced forward and
// fused forward+backward, back to back on one stream (the time per call a
// training step sees) and with a synchronisation after every call.
//
//   cuda_latency [calls]      (libcudart is found as the CUDA tests find it)
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "kldiv/kldiv.h"

namespace {

struct Cudart {
    int (*malloc_)(void **, size_t) = nullptr;
    int (*memcpy_)(void *, const void *, size_t, int) = nullptr;
    int (*sync)(void *) = nullptr;
    int (*stream_create)(void **) = nullptr;
};

bool load(Cudart &c) {
    std::vector<std::string> names;
    if (const char *path = std::getenv("KLDIV_CUDART")) names.push_back(path);
    for (const char *n : {"libcudart.so", "libcudart.so.13", "libcudart.so.12"}) names.push_back(n);
    void *lib = nullptr;
    for (const std::string &n : names) {
        if ((lib = dlopen(n.c_str(), RTLD_NOW | RTLD_GLOBAL))) break;
    }
    if (!lib) return false;
    c.malloc_ = reinterpret_cast<decltype(c.malloc_)>(dlsym(lib, "cudaMalloc"));
    c.memcpy_ = reinterpret_cast<decltype(c.memcpy_)>(dlsym(lib, "cudaMemcpy"));
    c.sync = reinterpret_cast<decltype(c.sync)>(dlsym(lib, "cudaStreamSynchronize"));
    c.stream_create = reinterpret_cast<decltype(c.stream_create)>(dlsym(lib, "cudaStreamCreate"));
    return c.malloc_ && c.memcpy_ && c.sync && c.stream_create;
}

using Clock = std::chrono::steady_clock;

}  // namespace

int main(int argc, char **argv) {
    const int calls = argc > 1 ? std::atoi(argv[1]) : 2000;
    Cudart cu;
    if (!load(cu)) {
        std::printf("[SKIP] no CUDA runtime library (libcudart; set KLDIV_CUDART)\n");
        return 0;
    }
    const int64_t rows = 32, cols = 32768, n = rows * cols;
    std::vector<float> x(n), t(n);
    for (int64_t i = 0; i < n; i++) {
        t[i] = (float)((i * 2654435761u) % 1000 + 1) / 1000.0f / (float)cols;
        x[i] = -10.0f + (float)(i % 977) / 977.0f;
    }
    void *dx = nullptr, *dt = nullptr, *dg = nullptr, *dout = nullptr, *stream = nullptr;
    if (cu.malloc_(&dx, n * 4) || cu.malloc_(&dt, n * 4) || cu.malloc_(&dg, n * 4) || cu.malloc_(&dout, 4) ||
        cu.stream_create(&stream)) {
        std::printf("[SKIP] no CUDA GPU (cudaMalloc failed)\n");
        return 0;
    }
    cu.memcpy_(dx, x.data(), n * 4, 1);
    cu.memcpy_(dt, t.data(), n * 4, 1);
    const int64_t sizes[2] = {rows, cols}, strides[2] = {cols, 1};
    const kldiv_tensor in{dx, KLDIV_FLOAT32, 2, sizes, strides, KLDIV_DEVICE_CUDA};
    const kldiv_tensor tg{dt, KLDIV_FLOAT32, 2, sizes, strides, KLDIV_DEVICE_CUDA};
    const kldiv_tensor gi{dg, KLDIV_FLOAT32, 2, sizes, strides, KLDIV_DEVICE_CUDA};
    const kldiv_tensor out{dout, KLDIV_FLOAT32, 0, nullptr, nullptr, KLDIV_DEVICE_CUDA};
    kldiv_set_thread_cuda_stream(stream);

    struct Pass {
        const char *name;
        int (*run)(const kldiv_tensor &, const kldiv_tensor &, const kldiv_tensor &, const kldiv_tensor &);
    };
    const Pass passes[] = {
        {"forward batchmean", [](const kldiv_tensor &a, const kldiv_tensor &b, const kldiv_tensor &o,
                                 const kldiv_tensor &) { return kldiv_forward(&a, &b, KLDIV_REDUCTION_BATCHMEAN, 0, &o); }},
        {"forward+backward batchmean",
         [](const kldiv_tensor &a, const kldiv_tensor &b, const kldiv_tensor &o, const kldiv_tensor &g) {
             return kldiv_forward_backward(&a, &b, KLDIV_REDUCTION_BATCHMEAN, 0, &o, &g);
         }},
    };
    std::printf("kldiv CUDA, 2^20 float32 (32 x 32768), %d calls per figure\n", calls);
    for (const Pass &p : passes) {
        for (int i = 0; i < 50; i++) {
            if (p.run(in, tg, out, gi) != 0) {
                std::printf("error: %s\n", kldiv_last_error());
                return 1;
            }
        }
        cu.sync(stream);
        // Back to back, one synchronisation at the end; best of 5.
        double best = 1e30, synced = 1e30;
        for (int rep = 0; rep < 5; rep++) {
            const auto start = Clock::now();
            for (int i = 0; i < calls; i++) p.run(in, tg, out, gi);
            cu.sync(stream);
            best = std::min(best, std::chrono::duration<double, std::micro>(Clock::now() - start).count() / calls);
        }
        for (int rep = 0; rep < 5; rep++) {
            const auto start = Clock::now();
            for (int i = 0; i < calls / 10; i++) {
                p.run(in, tg, out, gi);
                cu.sync(stream);
            }
            synced = std::min(synced,
                              std::chrono::duration<double, std::micro>(Clock::now() - start).count() / (calls / 10));
        }
        std::printf("%-28s %7.2f us per call back to back, %7.2f us with a synchronisation after each\n", p.name, best,
                    synced);
    }
    return 0;
}
