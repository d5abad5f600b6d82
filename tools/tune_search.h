// How `kldiv tune` tunes one kernel, whatever its kind: the evaluator every
// kind's builds on, and the search (tuner.h) followed by a final timing of
// the best against the default schedule and the baselines, whose outcome
// tune_report.h prints and records. A kind of kernel brings its workload,
// its evaluator and its search space.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "bandwidth.h"
#include "tune_options.h"
#include "tuner.h"

namespace kldiv::tools::tune {

// What every kind's evaluators share: compiling (by `load`) and checking a
// candidate, timing it, and the search's clock. `call` runs the candidate's
// kernel once and returns only when it has finished.
class KernelEvaluator : public tune::Evaluator {
public:
    void measure(Candidate &c, double min_seconds, int min_samples) override;

    double elapsed() const override { return seconds_since(start_); }

protected:
    using Clock = std::chrono::steady_clock;

    virtual void call(const Candidate &c) = 0;
    // Empty when the last call's results match the reference.
    virtual std::string check() = 0;

    // Compiles and loads the candidate (`load`), runs and checks it; false
    // with candidate.error when any of that fails.
    bool prepare_with(Candidate &c, const std::function<void()> &load);

    void start_clock() { start_ = Clock::now(); }

private:
    static double seconds_since(Clock::time_point t) {
        return std::chrono::duration<double>(Clock::now() - t).count();
    }

    Clock::time_point start_ = Clock::now();
};

// What search_and_record reports and records for one kernel.
struct TuneJob {
    std::string name;         // the kernel's
    std::string shape;        // the workload's, as printed
    std::string target;
    std::string device;       // the GPU's name; empty on CPU targets
    std::string tuning_name;  // the record's spec
    int64_t elements = 0;     // the record's; its bucket is size_bucket(elements)
    double bytes = 0;         // moved per call
    BandwidthCeiling ceiling;
    double ceiling_gbps = 0;  // the one that applies
    std::vector<std::string> baselines;  // Halide autoschedulers to compare
    std::string db;           // the tuning database appended to (when o.save)
};

// Searches `space` with `evaluator`, times the best against the default
// (and the baselines) side by side, prints the table, and appends the
// record; returns the exit status.
int search_and_record(const Options &o, const TuneJob &job, tune::Evaluator &evaluator_ref,
                      const tune::Space &space);

}  // namespace kldiv::tools::tune
