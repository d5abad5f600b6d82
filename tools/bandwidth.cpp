#include "bandwidth.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <new>
#include <thread>
#include <vector>

#include "timing.h"

namespace kldiv::tools {

int resolve_threads(int threads) {
    if (threads > 0) return threads;
    return std::max(1u, std::thread::hardware_concurrency());
}

namespace {

using Word = std::uint64_t;

struct FreeDeleter {
    void operator()(Word *p) const { std::free(p); }
};
using Array = std::unique_ptr<Word[], FreeDeleter>;

Array allocate(std::size_t words) {
    const std::size_t bytes = (words * sizeof(Word) + 4095) / 4096 * 4096;
    auto *p = static_cast<Word *>(std::aligned_alloc(4096, bytes));
    if (!p) throw std::bad_alloc();
    return Array(p);
}

// Integer words so that the compiler may vectorise the sum (integer addition
// reassociates) without -ffast-math.
Word sum_two(const Word *a, const Word *b, std::size_t n) {
    Word sum = 0;
    for (std::size_t i = 0; i < n; ++i) sum += a[i] + b[i];
    return sum;
}

void add_two(const Word *a, const Word *b, Word *c, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) c[i] = a[i] + b[i];
}

// Runs body(begin, end) on `threads` threads over [0, words) in equal parts;
// returns the seconds from the first start to the last finish.
double run_split(int threads, std::size_t words,
                 const std::function<void(std::size_t, std::size_t)> &body) {
    return seconds_of([&] {
        std::vector<std::thread> workers;
        workers.reserve((std::size_t)threads);
        const std::size_t part = (words + (std::size_t)threads - 1) / (std::size_t)threads;
        for (int t = 0; t < threads; ++t) {
            const std::size_t begin = std::min(words, (std::size_t)t * part);
            const std::size_t end = std::min(words, begin + part);
            workers.emplace_back(body, begin, end);
        }
        for (std::thread &worker : workers) worker.join();
    });
}

}  // namespace

struct BandwidthProbe::Arrays {
    std::size_t words = 0;
    Array a, b, c;
};

BandwidthProbe::BandwidthProbe(int threads, std::size_t min_array_bytes)
    : arrays_(new Arrays), threads_(resolve_threads(threads)) {
    Arrays &arrays = *arrays_;
    arrays.words = (std::max(kMinCeilingArrayBytes, min_array_bytes) + sizeof(Word) - 1) / sizeof(Word);
    arrays.a = allocate(arrays.words);
    arrays.b = allocate(arrays.words);
    arrays.c = allocate(arrays.words);
    // First touch by the thread that later reads each part, so pages sit near it.
    run_split(threads_, arrays.words, [&](std::size_t begin, std::size_t end) {
        for (std::size_t i = begin; i < end; ++i) {
            arrays.a[i] = i;
            arrays.b[i] = 3 * i + 1;
            arrays.c[i] = 0;
        }
    });
}

BandwidthProbe::~BandwidthProbe() = default;

BandwidthCeiling BandwidthProbe::measure(int runs) const {
    const Arrays &arrays = *arrays_;
    BandwidthCeiling ceiling;
    ceiling.threads = threads_;
    ceiling.runs = std::max(1, runs);
    ceiling.array_bytes = arrays.words * sizeof(Word);

    std::atomic<Word> sink{0};  // the sums are observable, so the read loop stays
    auto read = [&](std::size_t begin, std::size_t end) {
        sink.fetch_add(sum_two(arrays.a.get() + begin, arrays.b.get() + begin, end - begin),
                       std::memory_order_relaxed);
    };
    auto copy = [&](std::size_t begin, std::size_t end) {
        add_two(arrays.a.get() + begin, arrays.b.get() + begin, arrays.c.get() + begin, end - begin);
    };

    std::vector<double> read_seconds, copy_seconds;
    for (int run = 0; run <= ceiling.runs; ++run) {  // run 0 warms up
        const double r = run_split(threads_, arrays.words, read);
        const double w = run_split(threads_, arrays.words, copy);
        if (run == 0) continue;
        read_seconds.push_back(r);
        copy_seconds.push_back(w);
    }
    const double bytes = (double)ceiling.array_bytes;
    ceiling.read_gbps = 2 * bytes / median(read_seconds) / 1e9;
    ceiling.copy_gbps = 3 * bytes / median(copy_seconds) / 1e9;
    return ceiling;
}

BandwidthCeiling measure_bandwidth(int threads, std::size_t min_array_bytes, int runs) {
    return BandwidthProbe(threads, min_array_bytes).measure(runs);
}

}  // namespace kldiv::tools
