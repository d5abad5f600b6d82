// What `kldiv tune` shows and writes: progress on standard error while it
// searches, then the final table on standard output, the record appended to
// the tuning database, and the JSON and the gnuplot plot asked for.
#pragma once

#include <string>
#include <vector>

#include "tune_search.h"
#include "tuner.h"

namespace kldiv::tools::tune {

// Progress on standard error: one redrawn line on a terminal, else a line
// per candidate prepared and per new best.
class Progress {
public:
    Progress(double budget, double bytes);

    void update(const std::vector<Candidate> &candidates, int best, double elapsed, double ceiling);

    void finish();

private:
    double budget_, bytes_;
    bool terminal_;
    int reported_ = 0;
    int best_ = 0;
};

// A row of the final table.
struct Row {
    std::string name;     // "tuned", "default", an autoscheduler
    std::string schedule;
    const Candidate *candidate = nullptr;  // final timing; null when it failed
    std::string error;
};

// What the search and the final timing found (search_and_record).
struct Outcome {
    SearchResult result;            // every candidate; result.best is the search's best
    double search_seconds = 0;
    std::vector<Candidate> finals;  // the final timing's contenders
    std::vector<Row> rows;          // the table: finals in order, failed baselines last
    const Candidate *winner = nullptr;    // recorded: the tuned schedule, unless the default beat it
    const Candidate *fallback = nullptr;  // the default schedule in the final timing
};

// Prints the table, appends the record to job.db (unless --no-save), and
// writes the JSON and the plot asked for.
void report_and_record(const Options &o, const TuneJob &job, const Space &space, const Outcome &outcome);

}  // namespace kldiv::tools::tune
