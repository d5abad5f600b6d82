#include "tune_report.h"

#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "cpu_level.h"
#include "kldiv/schedules/tuning_db.h"

namespace kldiv::tools::tune {

namespace {

// Candidates tried, and of those the ones that failed to compile or check.
struct Tally {
    int tried = 0, failed = 0;
};

Tally tally(const std::vector<Candidate> &candidates) {
    Tally t;
    for (const Candidate &c : candidates) {
        t.tried += c.status != Candidate::Status::Untried;
        t.failed += c.status == Candidate::Status::Failed;
    }
    return t;
}

std::string utc_now() {
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&now, &tm);
    char text[32];
    std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return text;
}

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

// The results as JSON: the run, the record, the final table's rows and
// every candidate tried.
void write_json(const Options &o, const TuneJob &job, const Outcome &outcome,
                const schedules::TuningRecord &record) {
    const std::string &target = job.target;
    const double bytes = job.bytes;
    const BandwidthCeiling &ceiling = job.ceiling;
    const SearchResult &result = outcome.result;
    const double search_seconds = outcome.search_seconds;
    const std::vector<Row> &rows = outcome.rows;
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

}  // namespace

Progress::Progress(double budget, double bytes)
    : budget_(budget), bytes_(bytes), terminal_(isatty(STDERR_FILENO)) {}

void Progress::update(const std::vector<Candidate> &candidates, int best, double elapsed, double ceiling) {
    const auto [tried, failed] = tally(candidates);
    const Candidate &b = candidates[best];
    const double gbps = gbps_of(bytes_, b);
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

void Progress::finish() {
    if (terminal_) std::fputc('\n', stderr);
}

void report_and_record(const Options &o, const TuneJob &job, const Space &space, const Outcome &outcome) {
    const std::string &target = job.target;
    const bool gpu = !job.device.empty();
    const double bytes = job.bytes;
    const BandwidthCeiling &ceiling = job.ceiling;
    const SearchResult &result = outcome.result;
    const double search_seconds = outcome.search_seconds;
    const std::vector<Row> &rows = outcome.rows;
    const Candidate &winner = *outcome.winner, &fallback = *outcome.fallback;
    const auto [tried, failed] = tally(result.candidates);

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
    if (!o.json.empty()) write_json(o, job, outcome, record);
    if (!o.plot.empty()) {
        write_plot(o.plot, result, rows, bytes, ceiling, job.name + " " + job.shape, target);
        std::printf("plot written to %s\n", o.plot.c_str());
    }
}

}  // namespace kldiv::tools::tune
