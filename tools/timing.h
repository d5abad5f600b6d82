// Wall-clock timing shared by the CLI, the bandwidth loops and the benchmark.
#pragma once

#include <functional>
#include <vector>

namespace kldiv::tools {

// Median of `values` (not empty).
double median(std::vector<double> values);

// Seconds `call` takes, by the steady clock.
double seconds_of(const std::function<void()> &call);

// Seconds of each of `repeat` calls, after `warmup` untimed ones.
std::vector<double> time_calls(const std::function<void()> &call, int warmup, int repeat);

}  // namespace kldiv::tools
