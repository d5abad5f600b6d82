// The memory-bandwidth ceiling KL-div is judged against, measured in the same
// process and with the same number of threads as the kernel. One place for the
// CLI and the benchmark.
#pragma once

#include <cstddef>
#include <memory>

namespace kldiv::tools {

// Each array is at least this large, so that no cache holds it.
inline constexpr std::size_t kMinCeilingArrayBytes = std::size_t{256} << 20;

struct BandwidthCeiling {
    double read_gbps = 0;  // a loop summing two arrays: what a reduced forward does
    double copy_gbps = 0;  // a loop reading two arrays and writing a third (writes counted once)
    int threads = 0;
    std::size_t array_bytes = 0;
    int runs = 0;
};

// The three arrays of a ceiling measurement, allocated and first-touched
// once, so that a benchmark can measure the ceiling again next to each kernel
// it times (on a shared machine the bandwidth left to a process can change
// within minutes). Each array is max(kMinCeilingArrayBytes, min_array_bytes),
// split evenly over `threads` std::threads (0: one per core); each thread
// first-touches its part.
class BandwidthProbe {
public:
    explicit BandwidthProbe(int threads, std::size_t min_array_bytes = 0);
    ~BandwidthProbe();
    BandwidthProbe(const BandwidthProbe &) = delete;
    BandwidthProbe &operator=(const BandwidthProbe &) = delete;

    // Median GB/s (1e9 bytes/s) over `runs` timed runs after one warm-up.
    BandwidthCeiling measure(int runs) const;

private:
    struct Arrays;
    std::unique_ptr<Arrays> arrays_;
    int threads_;
};

// BandwidthProbe(threads, min_array_bytes).measure(runs).
BandwidthCeiling measure_bandwidth(int threads, std::size_t min_array_bytes = 0, int runs = 5);

// The thread count `threads` stands for (0: one per core).
int resolve_threads(int threads);

}  // namespace kldiv::tools
