#include "tune_search.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "command_line.h"
#include "cpu_level.h"
#include "kldiv/schedules/params.h"
#include "kldiv/schedules/tuning_db.h"
#include "timing.h"

namespace kldiv::tools::tune {

namespace {

std::string utc_now() {
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&now, &tm);
    char text[32];
    std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return text;
}

// Progress on standard error: one redrawn line on a terminal, else a line
// per candidate prepared and per new best.
class Progress {
public:
    Progress(double budget, double bytes) : budget_(budget), bytes_(bytes), terminal_(isatty(STDERR_FILENO)) {}

    void update(const std::vector<Candidate> &candidates, int best, double elapsed, double ceiling) {
        int tried = 0, failed = 0;
        for (const Candidate &c : candidates) {
            tried += c.status != Candidate::Status::Untried;
            failed += c.status == Candidate::Status::Failed;
        }
        const Candidate &b = candidates[best];
        const double gbps = b.median() > 0 ? bytes_ / b.median() / 1e9 : 0;
        if (terminal_) {
            const int width = 24;
            const int filled = (int)std::lround(std::min(1.0, elapsed / budget_) * width);
            std::fprintf(stderr, "\r[%s%s] %5.1fs/%.0fs  %d candidates (%d failed)  best %.1f GB/s (%.0f%% of ceiling)  ",
                         std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(), elapsed,
                         budget_, tried, failed, gbps, ceiling > 0 ? 100 * gbps / ceiling : 0);
            std::fflush(stderr);
            return;
        }
        for (; reported_ < (int)candidates.size() && candidates[reported_].status != Candidate::Status::Untried;
             reported_++) {
            const Candidate &c = candidates[reported_];
            if (c.status == Candidate::Status::Failed) {
                std::fprintf(stderr, "kldiv tune: %6.1fs #%d %s: %s\n", elapsed, c.id, c.label.c_str(),
                             c.error.c_str());
            } else if (c.samples.empty()) {
                return;  // reported when its first timing is in
            } else {
                std::fprintf(stderr, "kldiv tune: %6.1fs #%d %s: %.2f GB/s\n", elapsed, c.id, c.label.c_str(),
                             bytes_ / c.median() / 1e9);
            }
        }
        if (best != best_) {
            best_ = best;
            std::fprintf(stderr, "kldiv tune: %6.1fs best so far #%d, %.2f GB/s\n", elapsed, best, gbps);
        }
    }

    void finish() {
        if (terminal_) std::fputc('\n', stderr);
    }

private:
    double budget_, bytes_;
    bool terminal_;
    int reported_ = 0;
    int best_ = 0;
};

struct Row {
    std::string name;     // "tuned", "default", an autoscheduler
    std::string schedule;
    const Candidate *candidate = nullptr;  // final timing; null when it failed
    std::string error;
};

double gbps_of(double bytes, const Candidate &c) { return c.median() > 0 ? bytes / c.median() / 1e9 : 0; }

void write_plot(const std::string &path, const tune::SearchResult &result, const std::vector<Row> &rows,
                double bytes, const BandwidthCeiling &ceiling, const std::string &kernel, const std::string &target) {
    const std::string data = path + ".dat";
    {
        std::ofstream out(data);
        for (const Candidate &c : result.candidates) {
            if (c.status == Candidate::Status::Ok && !c.samples.empty()) {
                out << c.id << " " << gbps_of(bytes, c) << "\n";
            }
        }
    }
    // Two title lines: a full target string is wider than the plot.
    std::string script = "set terminal png size 1000,600\nset output '" + path + "'\nset title '" + kernel +
                         "' . \"\\n\" . 'on " + target +
                         "' noenhanced\nset xlabel 'candidate (in the order tried)'\nset ylabel 'GB/s'\n"
                         "set yrange [0:*]\nset key outside right\n";
    script += "plot '" + data + "' using 1:2 with points pt 7 ps 0.6 title 'candidates'";
    script += ", " + std::to_string(ceiling.read_gbps) + " with lines lw 2 title 'read ceiling'";
    script += ", " + std::to_string(ceiling.copy_gbps) + " with lines lw 2 title 'copy ceiling'";
    for (const Row &row : rows) {
        if (row.candidate) {
            script += ", " + std::to_string(gbps_of(bytes, *row.candidate)) + " with lines dt 2 title '" + row.name + "'";
        }
    }
    script += "\n";
    const std::string script_path = path + ".gp";
    std::ofstream(script_path) << script;
    const std::string command = "gnuplot '" + script_path + "'";
    const int status = std::system(command.c_str());
    std::remove(script_path.c_str());
    std::remove(data.c_str());
    if (status != 0) {
        throw std::runtime_error("gnuplot failed or is not installed (Debian package gnuplot-nox); no plot written");
    }
}

// The CPU's model name (/proc/cpuinfo), with its x86 family and model (a
// virtual machine's name often leaves out the generation: "AMD EPYC" is a
// Zen 3 as family 25 model 1, a Zen 5 as family 26), and the feature level in
// force when KLDIV_CPU_TARGET caps it: what a record was measured on.
std::string cpu_model() {
    std::ifstream in("/proc/cpuinfo");
    std::string line, model = "unknown CPU", family, number;
    while (std::getline(in, line) && !line.empty()) {  // the first processor's fields
        const size_t colon = line.find(':');
        if (colon == std::string::npos || colon + 2 > line.size()) continue;
        const std::string value = line.substr(colon + 2);
        if (line.rfind("model name", 0) == 0) model = value;
        else if (line.rfind("cpu family", 0) == 0) family = value;
        else if (line.rfind("model\t", 0) == 0) number = value;
    }
    if (!family.empty() && !number.empty()) model += " (family " + family + ", model " + number + ")";
    if (!runtime::cpu_level_cap().empty()) model += " (KLDIV_CPU_TARGET=" + runtime::cpu_level_cap() + ")";
    return model;
}

}  // namespace

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
    const std::string &target = job.target;
    const bool gpu = !job.device.empty();
    const double bytes = job.bytes;
    const BandwidthCeiling &ceiling = job.ceiling;
    const double ceiling_gbps = job.ceiling_gbps;
    const schedules::Params defaults = schedules::default_params(target);
    Progress progress(o.budget, bytes);
    tune::SearchOptions search_options;
    search_options.budget_seconds = o.budget;
    search_options.seed = o.seed;
    search_options.strategy = o.strategy;
    search_options.progress = [&](const std::vector<Candidate> &candidates, int best) {
        progress.update(candidates, best, evaluator->elapsed(), ceiling_gbps);
    };
    tune::SearchResult result = tune::search(space, defaults, *evaluator, search_options);
    progress.finish();
    const double search_seconds = evaluator->elapsed();
    int tried = 0, failed = 0;
    for (const Candidate &c : result.candidates) {
        tried += c.status != Candidate::Status::Untried;
        failed += c.status == Candidate::Status::Failed;
    }
    if (result.candidates[0].status != Candidate::Status::Ok) {
        std::fprintf(stderr, "kldiv tune: the default schedule failed: %s\n", result.candidates[0].error.c_str());
        return kExitFail;
    }

    // The final comparison: fresh timings, interleaved over rounds so that
    // drift on a shared machine falls on every contender alike.
    std::vector<Candidate> finals;
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
    std::vector<Row> rows;
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
    const Candidate &winner = tuned.median() <= fallback.median() ? tuned : fallback;
    schedules::TuningRecord record;
    record.target = target;
    record.spec = job.tuning_name;
    record.elements = job.elements;
    record.bucket = schedules::size_bucket(job.elements);
    record.params = winner.params;
    record.seconds = winner.median();
    record.noise = winner.noise();
    record.gbps = gbps_of(bytes, winner);
    record.default_gbps = gbps_of(bytes, fallback);
    record.ceiling_read_gbps = ceiling.read_gbps;
    record.ceiling_copy_gbps = ceiling.copy_gbps;
    record.date = utc_now();
    record.version = KLDIV_VERSION;
    record.cpu = gpu ? job.device : cpu_model();

    std::printf("kldiv tune: %s, %s elements, %s%s\n", job.name.c_str(), job.shape.c_str(), target.c_str(),
                gpu ? (" on " + job.device).c_str() : "");
    std::printf("search: %s, seed %" PRIu64 ", %.1f s, %d candidates tried (%d failed to compile or check), %d "
                "bracket(s), space of %" PRIu64 "\n",
                o.strategy == tune::Strategy::Grid ? "grid" : "successive halving", o.seed, search_seconds, tried,
                failed, result.brackets, space.size());
    std::printf("ceiling: %.1f GB/s read, %.1f GB/s copy; %.2f MB per call\n", ceiling.read_gbps,
                ceiling.copy_gbps, bytes / 1e6);
    if (bytes < 64e6) {
        std::printf("(the operands may stay in cache from call to call; the ceilings stream %zu MiB arrays from "
                    "memory, so more than 100%% is possible)\n",
                    ceiling.array_bytes >> 20);
    }
    std::printf("\n");
    std::printf("%-14s %10s %7s %9s %7s %7s %9s  %s\n", "schedule", "median ms", "noise", "GB/s", "% read", "% copy",
                "vs default", "parameters");
    for (const Row &row : rows) {
        if (!row.candidate) {
            std::printf("%-14s %10s %7s %9s %7s %7s %9s  failed: %s\n", row.name.c_str(), "-", "-", "-", "-", "-", "-",
                        row.error.c_str());
            continue;
        }
        const Candidate &c = *row.candidate;
        const double gbps = gbps_of(bytes, c);
        std::printf("%-14s %10.4f %6.1f%% %9.2f %6.1f%% %6.1f%% %8.2fx  %s\n", row.name.c_str(), c.median() * 1e3,
                    100 * c.noise(), gbps, 100 * gbps / ceiling.read_gbps, 100 * gbps / ceiling.copy_gbps,
                    fallback.median() / c.median(), row.schedule.c_str());
    }
    if (result.best == 0) {
        std::printf("\nno candidate beat the default schedule in the search; recorded as is\n");
    } else if (&winner == &fallback) {
        std::printf("\nthe default schedule was fastest in the final timing; recorded as is\n");
    }

    if (o.save) {
        schedules::append_record(job.db, record);
        std::printf("\nrecorded in %s\n", job.db.c_str());
    }
    if (!o.json.empty()) {
        nlohmann::json j;
        j["spec"] = job.name;
        j["shape"] = job.shape;
        j["target"] = target;
        j["strategy"] = o.strategy == tune::Strategy::Grid ? "grid" : "halving";
        j["seed"] = o.seed;
        j["budget_seconds"] = o.budget;
        j["search_seconds"] = search_seconds;
        j["bytes_per_call"] = bytes;
        j["ceiling"] = {{"read_gbps", ceiling.read_gbps}, {"copy_gbps", ceiling.copy_gbps}, {"threads", ceiling.threads}};
        j["record"] = nlohmann::json::parse(schedules::to_json_line(record));
        for (const Row &row : rows) {
            nlohmann::json r = {{"name", row.name}, {"schedule", row.schedule}};
            if (row.candidate) {
                r["median_seconds"] = row.candidate->median();
                r["noise"] = row.candidate->noise();
                r["gbps"] = gbps_of(bytes, *row.candidate);
                r["samples"] = row.candidate->samples.size();
            } else {
                r["error"] = row.error;
            }
            j["results"].push_back(r);
        }
        for (const Candidate &c : result.candidates) {
            if (c.status == Candidate::Status::Untried) continue;
            nlohmann::json r = {{"id", c.id}, {"origin", c.origin}, {"schedule", c.label}, {"rung", c.rung}};
            if (c.status == Candidate::Status::Failed) {
                r["error"] = c.error;
            } else if (!c.samples.empty()) {
                r["median_seconds"] = c.median();
                r["noise"] = c.noise();
                r["gbps"] = gbps_of(bytes, c);
            }
            j["candidates"].push_back(r);
        }
        const std::string text = j.dump(2) + "\n";
        if (o.json == "-") {
            std::fputs(text.c_str(), stdout);
        } else {
            std::ofstream(o.json) << text;
        }
    }
    if (!o.plot.empty()) {
        write_plot(o.plot, result, rows, bytes, ceiling, job.name + " " + job.shape, target);
        std::printf("plot written to %s\n", o.plot.c_str());
    }
    return kExitPass;
}

}  // namespace kldiv::tools::tune
