// The search of `kldiv tune` against a model machine: a known cost surface
// with seeded noise, virtual time for compiling and timing, and candidates
// that fail to compile. Checks determinism, pruning, the budget, and that
// successive halving finds better schedules than a plain grid on a budget.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <set>

#include "tuner.h"

using kldiv::codegen::KernelSpec;
using kldiv::codegen::Pass;
using kldiv::schedules::Params;
using namespace kldiv::tools::tune;

namespace {

KernelSpec forward_sum() {
    KernelSpec spec;
    spec.pass = Pass::Forward;
    spec.reduce = true;
    return spec;
}

// Seconds per call of a schedule on the model machine: 1 ms at the optimum,
// slower by 15% per step away from it in each dimension; serial is 2x slower.
double true_seconds(const Space &space, const Params &p) {
    const std::map<std::string, int> optimum = {{"vf", 4}, {"unroll", 2}, {"slf", 4}, {"chunk", 8192},
                                                {"cpt", 4}, {"fast", 1}, {"par", 1}};
    double t = 1e-3;
    for (const Dimension &d : space.dims) {
        const auto at = [&](int v) { return (int)(std::find(d.values.begin(), d.values.end(), v) - d.values.begin()); };
        const int steps = std::abs(at(d.get(p)) - at(optimum.at(d.name)));
        t *= d.name == "par" ? 1.0 + steps : 1.0 + 0.15 * steps;
    }
    return t;
}

// The search strategies are tried on a larger space than a real kernel's:
// the CPU space of a reduction plus the chunk size and the partial sums
// (which kldiv tune leaves alone: they change the order of the adds).
Space model_space() {
    Space space = cpu_space(forward_sum());
    using kldiv::schedules::Params;
    space.dims.insert(space.dims.begin() + 2,
                      Dimension{"slf", {1, 2, 4, 8}, [](const Params &p) { return p.cpu.sum_lanes_factor; },
                                [](Params &p, int v) { p.cpu.sum_lanes_factor = v; }});
    space.dims.insert(space.dims.begin() + 3,
                      Dimension{"chunk", {512, 1024, 2048, 4096, 8192, 16384}, [](const Params &p) { return p.cpu.sum_chunk; },
                                [](Params &p, int v) { p.cpu.sum_chunk = v; }});
    return space;
}

class ModelEvaluator : public Evaluator {
public:
    ModelEvaluator(const Space &space, uint64_t seed) : space_(space), noise_(seed) {}

    bool prepare(Candidate &c) override {
        clock_ += 0.3;  // a compile
        prepared_++;
        if (c.params.cpu.sum_chunk == 512 && c.params.cpu.unroll == 4) {
            c.error = "compile failed (model)";
            return false;
        }
        return true;
    }

    void measure(Candidate &c, double min_seconds, int min_samples) override {
        EXPECT_EQ(c.status, Candidate::Status::Ok) << "a candidate was timed before it passed";
        const double t = true_seconds(space_, c.params);
        std::normal_distribution<double> jitter(1.0, 0.05);
        double spent = 0;
        for (int n = 0; n < min_samples || spent < min_seconds; n++) {
            c.samples.push_back(t * std::max(0.5, jitter(noise_)));
            spent += t;
        }
        clock_ += spent + t;  // and a warm-up call
    }

    double elapsed() const override { return clock_; }
    int prepared() const { return prepared_; }

private:
    const Space &space_;
    std::mt19937_64 noise_;
    double clock_ = 0;
    int prepared_ = 0;
};

SearchResult run(Strategy strategy, uint64_t seed, double budget, ModelEvaluator *evaluator = nullptr) {
    static const Space space = model_space();
    ModelEvaluator local(space, seed);
    ModelEvaluator &e = evaluator ? *evaluator : local;
    SearchOptions options;
    options.budget_seconds = budget;
    options.seed = seed;
    options.strategy = strategy;
    return search(space, Params(), e, options);
}

std::vector<std::string> names(const Space &s) {
    std::vector<std::string> n;
    for (const Dimension &d : s.dims) n.push_back(d.name);
    return n;
}

// Calls check(params, dimension, value) for every value every dimension of
// `space` proposes, set on default parameters.
template<typename Check>
void for_each_value(const Space &space, Check check) {
    for (const Dimension &d : space.dims) {
        for (int v : d.values) {
            Params p;
            d.set(p, v);
            EXPECT_EQ(d.get(p), v) << d.name;
            check(p, d, v);
        }
    }
}

std::vector<std::string> labels(const SearchResult &r) {
    std::vector<std::string> out;
    for (const Candidate &c : r.candidates) out.push_back(c.label + "/" + c.origin);
    return out;
}

}  // namespace

TEST(tuner, gpu_spaces_leave_the_summation_order_alone) {
    KernelSpec sum = forward_sum();
    sum.cuda = true;
    KernelSpec none;
    none.cuda = true;
    const Space reduced = gpu_space(sum), elementwise = gpu_space(none);
    EXPECT_EQ(names(reduced), (std::vector<std::string>{"su"}));
    EXPECT_EQ(names(elementwise), (std::vector<std::string>{"tpb", "ept", "vec"}));
    for (const Space *s : {&reduced, &elementwise}) {
        for_each_value(*s, [&](const Params &p, const Dimension &d, int v) {
            EXPECT_TRUE(s->valid(p)) << d.name << "=" << v;
            EXPECT_TRUE(kldiv::schedules::same_summation_order(p, Params())) << d.name << "=" << v;
        });
    }
    // Candidates are labelled with the GPU part of their schedule.
    Params p;
    p.gpu.threads_per_block = 128;
    EXPECT_EQ(elementwise.describe(p).rfind("gpu:tpb=128,", 0), 0u) << elementwise.describe(p);
    EXPECT_EQ(cpu_space(none).describe(p).rfind("cpu:", 0), 0u);
}

TEST(tuner, spaces_hold_what_each_kind_of_pass_tunes) {
    const Space reduced = cpu_space(forward_sum());
    KernelSpec none;
    const Space elementwise = cpu_space(none);
    EXPECT_EQ(names(reduced), (std::vector<std::string>{"vf", "unroll", "cpt", "fast", "par"}));
    EXPECT_EQ(names(elementwise), (std::vector<std::string>{"vf", "unroll", "ept", "fast", "par"}));
    EXPECT_EQ(reduced.size(), 3u * 3 * 6 * 2 * 2);
    // ... of which the valid ones keep at most four native vectors per iteration.
    Params wide;
    wide.cpu.vector_factor = 4;
    wide.cpu.unroll = 2;
    wide.cpu.sum_lanes_factor = 4;
    EXPECT_FALSE(reduced.valid(wide));
    wide.cpu.unroll = 1;
    EXPECT_TRUE(reduced.valid(wide));
    // Every value a dimension proposes is one the parameters accept.
    for (const Space *s : {&reduced, &elementwise}) {
        for_each_value(*s, [](const Params &p, const Dimension &d, int v) {
            EXPECT_EQ(kldiv::schedules::validate(p), "") << d.name << "=" << v;
        });
    }
    // No point of the space sums in another order than the default schedule.
    for_each_value(reduced, [](const Params &p, const Dimension &d, int v) {
        EXPECT_TRUE(kldiv::schedules::same_summation_order(p, Params())) << d.name << "=" << v;
    });
}

TEST(tuner, distillation_spaces_touch_only_the_distillation_parameters) {
    kldiv::codegen::DistillSpec forward, fused;
    fused.pass = kldiv::dsl::DistillPass::Fused;
    const Space f = distill_space(forward), g = distill_space(fused);
    EXPECT_EQ(names(f), (std::vector<std::string>{"lu", "rpt"}));  // no gradient to widen
    EXPECT_EQ(names(g), (std::vector<std::string>{"gvf", "lu", "rpt"}));
    EXPECT_EQ(g.size(), 4u * 3 * 5);
    for_each_value(g, [&](const Params &p, const Dimension &d, int v) {
        EXPECT_TRUE(g.valid(p)) << d.name << "=" << v;
        EXPECT_EQ(cpu_parameters(p), cpu_parameters(Params())) << d.name << "=" << v;
        EXPECT_EQ(gpu_parameters(p), gpu_parameters(Params())) << d.name << "=" << v;
    });
    Params p;
    p.distill.lane_unroll = 4;
    EXPECT_EQ(g.describe(p), "distill:gvf=0,lu=4,rpt=1");
}

TEST(tuner, a_seed_gives_the_same_search) {
    const SearchResult a = run(Strategy::Halving, 7, 40), b = run(Strategy::Halving, 7, 40);
    const SearchResult c = run(Strategy::Halving, 8, 40);
    EXPECT_EQ(labels(a), labels(b));
    EXPECT_EQ(a.best, b.best);
    EXPECT_NE(labels(a), labels(c));
    EXPECT_GT(a.brackets, 1);
}

TEST(tuner, the_default_comes_first_and_failures_are_pruned) {
    const Space space = model_space();
    ModelEvaluator evaluator(space, 3);
    const SearchResult r = run(Strategy::Halving, 3, 60, &evaluator);
    ASSERT_FALSE(r.candidates.empty());
    EXPECT_EQ(r.candidates[0].label, "default");
    EXPECT_EQ(r.candidates[0].status, Candidate::Status::Ok);
    EXPECT_FALSE(r.candidates[0].samples.empty());
    int failed = 0, tried = 0;
    std::set<std::string> distinct;
    for (const Candidate &c : r.candidates) {
        if (c.status == Candidate::Status::Untried) continue;
        tried++;
        EXPECT_TRUE(distinct.insert(c.label).second) << "tried twice: " << c.label;
        EXPECT_TRUE(space.valid(c.params)) << c.label;
        if (c.status == Candidate::Status::Failed) {
            failed++;
            EXPECT_TRUE(c.samples.empty());
            EXPECT_FALSE(c.error.empty());
        }
    }
    EXPECT_EQ(tried, evaluator.prepared());
    EXPECT_GT(failed, 0) << "the model's failing region was never sampled; pick another seed";
    EXPECT_EQ(r.candidates[r.best].status, Candidate::Status::Ok);
    // The budget holds, give or take the step under way when it ran out.
    EXPECT_GE(evaluator.elapsed(), 60);
    EXPECT_LT(evaluator.elapsed(), 60 + 0.3 + 2.0);
}

TEST(tuner, halving_beats_a_plain_grid_on_the_same_budget) {
    const Space space = model_space();
    int better = 0;
    double halving_total = 0, grid_total = 0;
    for (uint64_t seed = 1; seed <= 10; seed++) {
        const SearchResult h = run(Strategy::Halving, seed, 60), g = run(Strategy::Grid, seed, 60);
        const double th = true_seconds(space, h.candidates[h.best].params);
        const double tg = true_seconds(space, g.candidates[g.best].params);
        better += th <= tg;
        halving_total += th;
        grid_total += tg;
    }
    EXPECT_GE(better, 9);
    EXPECT_LT(halving_total, 0.8 * grid_total);
    // And it gets close to the optimum (1 ms) on average.
    EXPECT_LT(halving_total / 10, 1.5e-3);
}

TEST(tuner, candidate_statistics) {
    Candidate c;
    EXPECT_EQ(c.median(), 0);
    EXPECT_EQ(c.noise(), 0);
    c.samples = {1.0, 1.1, 0.9, 5.0, 1.0};
    EXPECT_DOUBLE_EQ(c.median(), 1.0);
    EXPECT_DOUBLE_EQ(c.noise(), 0.1);  // deviations 0, .1, .1, 4, 0: median .1
}
