#include "tuner.h"

#include "timing.h"

#include <algorithm>
#include <cmath>
#include <set>

namespace kldiv::tools::tune {

using schedules::CpuParams;
using schedules::Params;

std::uint64_t Space::size() const {
    std::uint64_t n = 1;
    for (const Dimension &d : dims) n *= d.values.size();
    return n;
}

namespace {

Dimension cpu_int(const std::string &name, std::vector<int> values, int CpuParams::*field) {
    return {name, std::move(values), [field](const Params &p) { return p.cpu.*field; },
            [field](Params &p, int v) { p.cpu.*field = v; }};
}

Dimension cpu_flag(const std::string &name, bool CpuParams::*field) {
    return {name, {0, 1}, [field](const Params &p) { return (int)(p.cpu.*field); },
            [field](Params &p, int v) { p.cpu.*field = v != 0; }};
}

Dimension gpu_int(const std::string &name, std::vector<int> values, int schedules::GpuParams::*field) {
    return {name, std::move(values), [field](const Params &p) { return p.gpu.*field; },
            [field](Params &p, int v) { p.gpu.*field = v; }};
}

}  // namespace

Space gpu_space(const codegen::KernelSpec &spec) {
    Space space;
    const bool reduction = spec.reduce && spec.pass != codegen::Pass::Backward;
    if (reduction) {
        space.dims.push_back(gpu_int("su", {2, 4, 8, 16}, &schedules::GpuParams::sum_unroll));
    } else {
        space.dims.push_back(gpu_int("tpb", {64, 128, 256, 512, 1024}, &schedules::GpuParams::threads_per_block));
        space.dims.push_back(gpu_int("ept", {1, 2, 4, 8, 16}, &schedules::GpuParams::elements_per_thread));
        space.dims.push_back({"vec", {0, 1}, [](const Params &p) { return (int)p.gpu.vector_loads; },
                              [](Params &p, int v) { p.gpu.vector_loads = v != 0; }});
    }
    space.valid = [](const Params &p) { return schedules::validate(p).empty(); };
    space.describe = gpu_parameters;
    return space;
}

// Section `index` (0 cpu, 1 gpu, 2 distill) of schedules::to_string.
std::string section(const Params &params, int index) {
    std::string text = schedules::to_string(params);
    for (int i = 0; i < index; i++) text = text.substr(text.find(';') + 1);
    return text.substr(0, text.find(';'));
}

std::string gpu_parameters(const Params &params) { return section(params, 1); }

Space cpu_space(const codegen::KernelSpec &spec) {
    Space space;
    space.dims.push_back(cpu_int("vf", {1, 2, 4}, &CpuParams::vector_factor));
    space.dims.push_back(cpu_int("unroll", {1, 2, 4}, &CpuParams::unroll));
    const bool reduction = spec.reduce && spec.pass != codegen::Pass::Backward;
    if (reduction) {
        // Not the partial sums or the chunk (slf, chunk): they set the order
        // of the adds, and a tuned schedule must give the default's results.
        space.dims.push_back(cpu_int("cpt", {2, 4, 8, 16, 32, 64}, &CpuParams::chunks_per_task));
    } else {
        space.dims.push_back(
            cpu_int("ept", {4096, 8192, 16384, 32768, 65536, 131072, 262144}, &CpuParams::elements_per_task));
    }
    space.dims.push_back(cpu_flag("fast", &CpuParams::unit_stride_fast_path));
    space.dims.push_back(cpu_flag("par", &CpuParams::parallel));
    space.valid = [](const Params &p) {
        // At most four native vectors per loop iteration: wider bodies ran no
        // faster (2-core Zen 4, 2^20 f32 forward sum: 8 vectors 0.228 ms, 2
        // vectors 0.238 ms, within noise) and take twice as long to JIT-compile.
        if (p.cpu.vector_factor * p.cpu.unroll > 4) return false;
        return schedules::validate(p).empty();
    };
    space.describe = cpu_parameters;
    return space;
}

std::string cpu_parameters(const Params &params) { return section(params, 0); }

Space distill_space(const codegen::DistillSpec &spec) {
    Space space;
    auto dim = [](const std::string &name, std::vector<int> values, int schedules::DistillParams::*field) {
        return Dimension{name, std::move(values), [field](const Params &p) { return p.distill.*field; },
                         [field](Params &p, int v) { p.distill.*field = v; }};
    };
    if (spec.pass != dsl::DistillPass::Forward) {  // the forward pass has no gradient
        space.dims.push_back(dim("gvf", {0, 1, 2, 4}, &schedules::DistillParams::grad_vector_factor));
    }
    space.dims.push_back(dim("lu", {1, 2, 4}, &schedules::DistillParams::lane_unroll));
    space.dims.push_back(dim("rpt", {1, 2, 4, 8, 16}, &schedules::DistillParams::rows_per_task));
    space.valid = [](const Params &p) { return schedules::validate(p).empty(); };
    space.describe = distill_parameters;
    return space;
}

std::string distill_parameters(const Params &params) { return section(params, 2); }

double Candidate::median() const { return samples.empty() ? 0 : tools::median(samples); }

double Candidate::noise() const {
    const double m = median();
    if (m <= 0) return 0;
    Candidate deviations;
    for (double s : samples) deviations.samples.push_back(std::abs(s - m));
    return deviations.median() / m;
}

namespace {

class Searcher {
public:
    Searcher(const Space &space, const Params &defaults, Evaluator &evaluator, const SearchOptions &options)
        : space_(space), evaluator_(evaluator), options_(options), rng_(options.seed) {
        add(defaults, "default");
        result_.candidates[0].label = "default";
    }

    SearchResult run() {
        if (options_.strategy == Strategy::Grid) {
            grid();
        } else {
            halving();
        }
        result_.best = best();
        return std::move(result_);
    }

private:
    bool over_budget() const { return evaluator_.elapsed() >= options_.budget_seconds; }

    // A new candidate, or -1 when `params` was tried already.
    int add(const Params &params, const std::string &origin) {
        if (!seen_.insert(schedules::to_string(params)).second) return -1;
        Candidate c;
        c.id = (int)result_.candidates.size();
        c.params = params;
        c.origin = origin;
        c.label = space_.describe ? space_.describe(params) : cpu_parameters(params);
        result_.candidates.push_back(std::move(c));
        return result_.candidates.back().id;
    }

    size_t pick(size_t n) { return (size_t)(rng_() % n); }

    Params random_point() {
        Params p = result_.candidates[0].params;
        for (const Dimension &d : space_.dims) d.set(p, d.values[pick(d.values.size())]);
        return p;
    }

    Params mutation(const Params &from) {
        Params p = from;
        const int changes = 1 + (int)pick(2);
        for (int k = 0; k < changes; k++) {
            const Dimension &d = space_.dims[pick(space_.dims.size())];
            const auto at = std::find(d.values.begin(), d.values.end(), d.get(p));
            size_t index = at == d.values.end() ? 0 : (size_t)(at - d.values.begin());
            if (pick(2) == 0 && d.values.size() > 1) {
                index = (index == 0 || (index + 1 < d.values.size() && pick(2) == 0)) ? index + 1 : index - 1;
            } else {
                index = pick(d.values.size());
            }
            d.set(p, d.values[index]);
        }
        return p;
    }

    // Proposes up to `count` new valid candidates; mutations of the best so
    // far make up `mutated` of them.
    std::vector<int> propose(int count, int mutated) {
        std::vector<int> ids;
        const Params incumbent = result_.candidates[best()].params;
        for (int attempt = 0; (int)ids.size() < count && attempt < 200 * count; attempt++) {
            const bool mutate = (int)ids.size() < mutated;
            const Params p = mutate ? mutation(incumbent) : random_point();
            if (!space_.valid(p)) continue;
            const int id = add(p, mutate ? "mutation" : "random");
            if (id >= 0) ids.push_back(id);
        }
        return ids;
    }

    bool prepare(Candidate &c) {
        const bool ok = evaluator_.prepare(c);
        c.status = ok ? Candidate::Status::Ok : Candidate::Status::Failed;
        report();
        return ok;
    }

    void measure(Candidate &c, double seconds) {
        evaluator_.measure(c, seconds, 3);
        report();
    }

    void report() {
        if (options_.progress) options_.progress(result_.candidates, best());
    }

    // Successive halving over `ids`: all timed briefly, the best 1/eta timed
    // eta times longer, and so on until one is left.
    void bracket(std::vector<int> ids) {
        result_.brackets++;
        std::vector<int> alive;
        for (int id : ids) {
            if (over_budget()) return;
            Candidate &c = result_.candidates[id];
            if (prepare(c)) {
                measure(c, options_.rung_seconds);
                alive.push_back(id);
            }
        }
        double seconds = options_.rung_seconds;
        for (int rung = 1; alive.size() > 1 && !over_budget(); rung++) {
            std::stable_sort(alive.begin(), alive.end(), [&](int a, int b) {
                return result_.candidates[a].median() < result_.candidates[b].median();
            });
            alive.resize(std::max<size_t>(1, alive.size() / options_.eta));
            seconds *= options_.eta;
            for (int id : alive) {
                if (over_budget()) return;
                Candidate &c = result_.candidates[id];
                c.rung = rung;
                measure(c, seconds);
            }
        }
    }

    void halving() {
        std::vector<int> first = {0};
        for (int id : propose(options_.bracket - 1, 0)) first.push_back(id);
        bracket(first);
        while (!over_budget()) {
            const std::vector<int> ids = propose(options_.bracket, options_.bracket / 2);
            if (ids.empty()) return;  // the space is exhausted
            bracket(ids);
        }
    }

    // Every valid point in order (the first dimension varying slowest), each
    // timed as long as a halving bracket's last rung.
    void grid() {
        double seconds = options_.rung_seconds;
        for (int n = options_.bracket; n > 1; n /= options_.eta) seconds *= options_.eta;
        std::vector<size_t> index(space_.dims.size(), 0);
        if (over_budget()) return;
        if (prepare(result_.candidates[0])) measure(result_.candidates[0], seconds);
        for (bool exhausted = false; !exhausted && !over_budget();) {
            Params p = result_.candidates[0].params;
            for (size_t d = 0; d < index.size(); d++) space_.dims[d].set(p, space_.dims[d].values[index[d]]);
            size_t d = index.size();
            while (d > 0 && ++index[d - 1] == space_.dims[d - 1].values.size()) index[--d] = 0;
            exhausted = d == 0;
            if (!space_.valid(p)) continue;
            const int id = add(p, "grid");
            if (id < 0) continue;
            Candidate &c = result_.candidates[id];
            if (prepare(c)) measure(c, seconds);
        }
    }

    // The fastest passing candidate among those timed the longest.
    int best() const {
        int top_rung = -1;
        for (const Candidate &c : result_.candidates) {
            if (c.status == Candidate::Status::Ok && !c.samples.empty()) top_rung = std::max(top_rung, c.rung);
        }
        int best = 0;
        double best_median = 0;
        for (const Candidate &c : result_.candidates) {
            if (c.status != Candidate::Status::Ok || c.samples.empty() || c.rung != top_rung) continue;
            if (best_median == 0 || c.median() < best_median) {
                best = c.id;
                best_median = c.median();
            }
        }
        return best;
    }

    const Space &space_;
    Evaluator &evaluator_;
    SearchOptions options_;
    std::mt19937_64 rng_;
    std::set<std::string> seen_;
    SearchResult result_;
};

}  // namespace

SearchResult search(const Space &space, const Params &defaults, Evaluator &evaluator, const SearchOptions &options) {
    return Searcher(space, defaults, evaluator, options).run();
}

}  // namespace kldiv::tools::tune
