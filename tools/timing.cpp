#include "timing.h"

#include <algorithm>
#include <chrono>

namespace kldiv::tools {

double median(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    const std::size_t mid = values.size() / 2;
    return values.size() % 2 ? values[mid] : 0.5 * (values[mid - 1] + values[mid]);
}

double seconds_of(const std::function<void()> &call) {
    const auto start = std::chrono::steady_clock::now();
    call();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::vector<double> time_calls(const std::function<void()> &call, int warmup, int repeat) {
    for (int i = 0; i < warmup; ++i) call();
    std::vector<double> seconds;
    seconds.reserve((std::size_t)repeat);
    for (int i = 0; i < repeat; ++i) seconds.push_back(seconds_of(call));
    return seconds;
}

}  // namespace kldiv::tools
