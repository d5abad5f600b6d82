// The options of `kldiv tune`, read from its command line; every kind of
// kernel tuned takes them as they are.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "spec_text.h"
#include "tuner.h"

namespace kldiv::tools::tune {

struct Options {
    Options();  // baselines: all of Halide's autoschedulers (codegen's list; Halide.h stays out of here)

    bool help = false;
    bool prune = false;
    std::optional<AotSpec> spec;
    int64_t size = int64_t(1) << 20;
    std::array<int64_t, 2> distill_shape = {256, 32000};  // rows, vocabulary
    std::string target = "host";
    double budget = 60;
    uint64_t seed = 1;
    tune::Strategy strategy = tune::Strategy::Halving;
    std::vector<std::string> baselines;
    std::string db;
    bool save = true;
    std::string json;
    std::string plot;
    int threads = 0;
};

// `args` follow "tune"; throws UsageError. A loss spec without a shape gets
// --size's elements.
Options parse_options(const std::vector<std::string> &args);

// Whether --baselines asked for some autoschedulers, neither none nor all (the
// default): kinds and targets without autoscheduler baselines refuse that.
bool names_baselines(const Options &o);

// The tuning database to append to: --db, else the user's
// (schedules::user_database_path); UsageError when there is none.
std::string database_path(const Options &o);

}  // namespace kldiv::tools::tune
