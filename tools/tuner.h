// The search behind `kldiv tune`: a space of schedule parameters per kind of
// pass, and random sampling with successive halving (brackets of candidates
// timed briefly, the better third kept and timed longer, until one is left;
// later brackets mix mutations of the best so far with new random points).
// Compiling, checking and timing are the Evaluator's, so the search runs the
// same against a model in the tests. No Halide here.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kldiv/codegen/kernel_spec.h"
#include "kldiv/schedules/params.h"

namespace kldiv::tools::tune {

// One tunable parameter: its name, the values tried, how to read and set it.
struct Dimension {
    std::string name;
    std::vector<int> values;
    std::function<int(const schedules::Params &)> get;
    std::function<void(schedules::Params &, int)> set;
};

struct Space {
    std::vector<Dimension> dims;
    // Combinations the schedule cannot use (e.g. fewer partial sums than the
    // vector width) are not proposed.
    std::function<bool(const schedules::Params &)> valid;
    // A candidate's schedule text: the part of schedules::to_string its
    // target uses.
    std::function<std::string(const schedules::Params &)> describe;

    std::uint64_t size() const;  // combinations, valid or not
};

// The CPU space for `spec`'s kind of pass: reductions tune the summation tree
// and task size, elementwise passes the block size; both the vector width,
// unrolling, the unit-stride fast path and parallelism.
Space cpu_space(const codegen::KernelSpec &spec);

// The CPU part of schedules::to_string, what a CPU target's kernel uses.
std::string cpu_parameters(const schedules::Params &params);

// The GPU (CUDA) space: elementwise passes tune threads per block, elements
// per thread and vector loads; reductions the steps per loop iteration. Not
// the partial sums, the chunk or the lanes that add the chunk sums: they set
// the order of the adds, and a tuned schedule must give the default's bits.
Space gpu_space(const codegen::KernelSpec &spec);

// The GPU part of schedules::to_string.
std::string gpu_parameters(const schedules::Params &params);

// The CPU space of distillation kernels: the gradients' vector width (not
// for the forward pass, which has none), the unrolling of a row's lane sums,
// and rows per parallel task. None changes the order of a sum
// (schedules::DistillParams).
Space distill_space(const codegen::DistillSpec &spec);

// The distillation part of schedules::to_string.
std::string distill_parameters(const schedules::Params &params);

struct Candidate {
    enum class Status { Untried, Ok, Failed };
    int id = 0;
    schedules::Params params;
    std::string label;    // "default", an autoscheduler's name, or the schedule text
    std::string origin;   // default | random | mutation | grid | baseline
    std::string autoscheduler;  // non-empty for Halide's autoscheduler baselines
    Status status = Status::Untried;
    std::string error;    // why it failed (compile, check)
    std::vector<double> samples;  // seconds per call
    int rung = 0;         // halving rounds survived

    double median() const;  // of samples; 0 without any
    double noise() const;   // median absolute deviation over the median
};

// Prepares (compiles and checks) and times candidates, and keeps the clock the
// budget is counted on.
class Evaluator {
public:
    virtual ~Evaluator() = default;
    // Compiles and checks the candidate; false (with candidate.error) prunes it.
    virtual bool prepare(Candidate &candidate) = 0;
    // Adds samples: at least `min_samples`, and calls for at least `min_seconds`.
    virtual void measure(Candidate &candidate, double min_seconds, int min_samples) = 0;
    // Seconds since the search began.
    virtual double elapsed() const = 0;
};

enum class Strategy { Halving, Grid };

struct SearchOptions {
    double budget_seconds = 60;
    std::uint64_t seed = 1;
    Strategy strategy = Strategy::Halving;
    int bracket = 27;          // candidates per bracket (halving)
    int eta = 3;               // 1/eta of a rung goes on to the next
    double rung_seconds = 0.02;  // timing per candidate on the first rung; x eta per rung
    // Called after each candidate is prepared or timed.
    std::function<void(const std::vector<Candidate> &, int best)> progress;
};

struct SearchResult {
    std::vector<Candidate> candidates;  // candidates[0] is the default
    int best = 0;                       // index of the fastest that passed
    int brackets = 0;
};

// Searches `space` from `defaults` (always the first candidate) until the
// budget is spent. Deterministic for a seed and an evaluator that is.
SearchResult search(const Space &space, const schedules::Params &defaults, Evaluator &evaluator,
                    const SearchOptions &options);

}  // namespace kldiv::tools::tune
