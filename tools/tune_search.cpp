#include "tune_search.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <exception>

#include "command_line.h"
#include "kldiv/schedules/params.h"
#include "timing.h"
#include "tune_report.h"

namespace kldiv::tools::tune {

void KernelEvaluator::measure(Candidate &c, double min_seconds, int min_samples) {
    call(c);  // warm-up
    const auto begin = Clock::now();
    for (int n = 0; n < min_samples || seconds_since(begin) < min_seconds; n++) {
        c.samples.push_back(seconds_of([&] { call(c); }));
        if (n > 100000) break;
    }
}

bool KernelEvaluator::prepare_with(Candidate &c, const std::function<void()> &load) {
    try {
        load();
        call(c);
        const std::string why = check();
        if (!why.empty()) {
            c.error = "wrong result: " + why;
            return false;
        }
    } catch (const std::exception &e) {
        c.error = e.what();
        while (!c.error.empty() && std::isspace((unsigned char)c.error.back())) c.error.pop_back();
        return false;
    }
    return true;
}

int search_and_record(const Options &o, const TuneJob &job, tune::Evaluator &evaluator_ref,
                      const tune::Space &space) {
    tune::Evaluator *evaluator = &evaluator_ref;
    const double ceiling_gbps = job.ceiling_gbps;
    const schedules::Params defaults = schedules::default_params(job.target);
    Progress progress(o.budget, job.bytes);
    tune::SearchOptions search_options;
    search_options.budget_seconds = o.budget;
    search_options.seed = o.seed;
    search_options.strategy = o.strategy;
    search_options.progress = [&](const std::vector<Candidate> &candidates, int best) {
        progress.update(candidates, best, evaluator->elapsed(), ceiling_gbps);
    };
    Outcome outcome;
    outcome.result = tune::search(space, defaults, *evaluator, search_options);
    progress.finish();
    outcome.search_seconds = evaluator->elapsed();
    const tune::SearchResult &result = outcome.result;
    if (result.candidates[0].status != Candidate::Status::Ok) {
        std::fprintf(stderr, "kldiv tune: the default schedule failed: %s\n", result.candidates[0].error.c_str());
        return kExitFail;
    }

    // The final comparison: fresh timings, interleaved over rounds so that
    // drift on a shared machine falls on every contender alike.
    std::vector<Candidate> &finals = outcome.finals;
    auto contender = [&](const Candidate &from, const std::string &name) {
        Candidate c = from;
        c.samples.clear();
        c.label = name;
        finals.push_back(c);
    };
    // finals[0] is the search's best, finals.back() of these two the default
    // (the same one when nothing beat it).
    if (result.best != 0) contender(result.candidates[result.best], "tuned");
    contender(result.candidates[0], "default");
    std::vector<Row> &rows = outcome.rows;
    for (const std::string &name : job.baselines) {
        Candidate c;
        c.id = (int)result.candidates.size() + (int)finals.size();
        c.params = defaults;
        c.label = name;
        c.origin = "baseline";
        c.autoscheduler = name;
        std::fprintf(stderr, "kldiv tune: scheduling with %s\n", name.c_str());
        if (evaluator->prepare(c)) {
            finals.push_back(c);
        } else {
            rows.push_back({name, "", nullptr, c.error});
            std::fprintf(stderr, "kldiv tune: %s: %s\n", name.c_str(), c.error.c_str());
        }
    }
    const double final_seconds = std::max(0.3, std::min(2.0, 0.05 * o.budget));
    for (int round = 0; round < 3; round++) {
        for (Candidate &c : finals) evaluator->measure(c, final_seconds / 3, 5);
    }
    // Rows in contender order, failed baselines last.
    std::vector<Row> failed_rows;
    failed_rows.swap(rows);
    for (const Candidate &c : finals) {
        rows.push_back({c.label, c.autoscheduler.empty() ? space.describe(c.params) : "(autoscheduled)", &c, ""});
    }
    rows.insert(rows.end(), failed_rows.begin(), failed_rows.end());

    // The record: the tuned schedule, unless the default beat it in the final timing.
    const Candidate &tuned = finals[0], &fallback = finals[result.best != 0 ? 1 : 0];
    outcome.winner = tuned.median() <= fallback.median() ? &tuned : &fallback;
    outcome.fallback = &fallback;
    report_and_record(o, job, space, outcome);
    return kExitPass;
}

}  // namespace kldiv::tools::tune
