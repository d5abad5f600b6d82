#include "tune_options.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include "command_line.h"
#include "disk_cache.h"
#include "kldiv/codegen/build.h"
#include "kldiv/schedules/tuning_db.h"

namespace kldiv::tools::tune {

namespace {

double parse_duration(const std::string &text) {
    size_t digits = 0;
    while (digits < text.size() && (std::isdigit((unsigned char)text[digits]) || text[digits] == '.')) digits++;
    const std::string unit = text.substr(digits);
    double scale = 0;
    if (unit.empty() || unit == "s") scale = 1;
    if (unit == "ms") scale = 1e-3;
    if (unit == "m" || unit == "min") scale = 60;
    char *end = nullptr;
    const std::string number = text.substr(0, digits);
    const double value = std::strtod(number.c_str(), &end);
    if (number.empty() || *end != '\0' || scale == 0 || !(value > 0) || value * scale > 86400) {
        throw UsageError("invalid --budget '" + text + "' (e.g. 60s, 2m, 500ms)");
    }
    return value * scale;
}

int64_t parse_size(const std::string &text) {
    if (text.rfind("2^", 0) == 0) return int64_t(1) << parse_integer("--size", text.substr(2), 0, 30);
    return parse_integer("--size", text, 1, INT32_MAX);
}

// ROWSxVOCAB for a distillation kernel: rows of at least 32 logits, and
// less than 2^31 logits in all (one kernel call).
std::array<int64_t, 2> parse_distill_shape(const std::string &text) {
    const size_t x = text.find('x');
    if (x == std::string::npos) throw UsageError("--size for a distillation kernel is ROWSxVOCAB, e.g. 256x32000");
    const int64_t rows = parse_integer("--size", text.substr(0, x), 1, INT32_MAX);
    const int64_t vocab = parse_integer("--size", text.substr(x + 1), 32, INT32_MAX);
    if (rows * vocab >= (int64_t(1) << 31)) throw UsageError("--size " + text + ": 2^31 logits or more");
    return {rows, vocab};
}

}  // namespace

Options::Options() : baselines(codegen::autoscheduler_names()) {}

Options parse_options(const std::vector<std::string> &args) {
    Options o;
    std::string size_text;
    ArgumentReader reader(args);
    while (!reader.done()) {
        const std::string option = reader.next_option();
        if (option == "-h" || option == "--help") {
            o.help = true;
        } else if (option == "--spec") {
            o.spec = parse_spec(reader.value());
        } else if (option == "--size") {
            size_text = reader.value();
        } else if (option == "--target") {
            o.target = reader.value();
        } else if (option == "--budget") {
            o.budget = parse_duration(reader.value());
        } else if (option == "--seed") {
            o.seed = (uint64_t)parse_integer("--seed", reader.value(), 0, INT64_MAX);
        } else if (option == "--strategy") {
            const std::string s = reader.value();
            if (s != "halving" && s != "grid") throw UsageError("unknown --strategy '" + s + "' (halving, grid)");
            o.strategy = s == "grid" ? tune::Strategy::Grid : tune::Strategy::Halving;
        } else if (option == "--baselines") {
            const std::string list = reader.value();
            o.baselines.clear();
            if (list == "none") continue;
            if (list == "all") {
                o.baselines = codegen::autoscheduler_names();
                continue;
            }
            std::string name;
            for (size_t i = 0; i <= list.size(); i++) {
                if (i < list.size() && list[i] != ',') {
                    name += list[i];
                    continue;
                }
                const auto &known = codegen::autoscheduler_names();
                if (std::find(known.begin(), known.end(), name) == known.end()) {
                    throw UsageError("unknown autoscheduler '" + name + "' (Mullapudi2016, Adams2019, Li2018)");
                }
                o.baselines.push_back(name);
                name.clear();
            }
        } else if (option == "--db") {
            o.db = reader.value();
        } else if (option == "--no-save") {
            reader.no_value();
            o.save = false;
        } else if (option == "--json") {
            o.json = reader.value();
        } else if (option == "--plot") {
            o.plot = reader.value();
        } else if (option == "--threads") {
            o.threads = (int)parse_integer("--threads", reader.value(), 0, 1024);
        } else if (option == "--prune") {
            reader.no_value();
            o.prune = true;
        } else {
            throw UsageError(option.rfind("-", 0) == 0 ? "unknown option '" + option + "'"
                                                       : "unexpected argument '" + option + "'");
        }
    }
    if (o.help || o.prune) return o;
    if (!o.spec) throw UsageError("no --spec given");
    if (o.spec->distill) {
        if (!size_text.empty()) o.distill_shape = parse_distill_shape(size_text);
        return o;
    }
    if (!size_text.empty()) o.size = parse_size(size_text);
    if (o.spec->shape.empty()) o.spec->shape = {o.size};
    return o;
}

bool names_baselines(const Options &o) {
    return !o.baselines.empty() && o.baselines != codegen::autoscheduler_names();
}

std::string database_path(const Options &o) {
    if (!o.db.empty()) return o.db;
    const std::string path = schedules::user_database_path(cache::resolve_cache_dir(""));
    if (path.empty()) throw UsageError("no tuning database: give --db FILE (the kernel cache is off)");
    return path;
}

}  // namespace kldiv::tools::tune
