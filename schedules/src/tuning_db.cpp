#include "kldiv/schedules/tuning_db.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <stdexcept>
#include <tuple>

namespace kldiv::schedules {

namespace fs = std::filesystem;
using nlohmann::json;

int size_bucket(std::int64_t elements) {
    if (elements < 2) return 0;
    return (int)std::lround(std::log2((double)elements));
}

std::string to_json_line(const TuningRecord &r) {
    const json j = {
        {"format", kTuningFormat},
        {"target", r.target},
        {"spec", r.spec},
        {"bucket", r.bucket},
        {"elements", r.elements},
        {"schedule", to_string(r.params)},
        {"seconds", r.seconds},
        {"noise", r.noise},
        {"gbps", r.gbps},
        {"default_gbps", r.default_gbps},
        {"ceiling_read_gbps", r.ceiling_read_gbps},
        {"ceiling_copy_gbps", r.ceiling_copy_gbps},
        {"date", r.date},
        {"version", r.version},
        {"cpu", r.cpu},
    };
    return j.dump();
}

std::optional<TuningRecord> parse_record(const std::string &line, std::string *why) {
    const json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
        *why = "not a JSON object";
        return std::nullopt;
    }
    const auto format = j.find("format");
    if (format == j.end() || !format->is_string() || format->get<std::string>() != kTuningFormat) {
        *why = "not a " + std::string(kTuningFormat) + " record";
        return std::nullopt;
    }
    TuningRecord r;
    auto text = [&](const char *key, std::string &out) {
        const auto it = j.find(key);
        if (it == j.end() || !it->is_string()) return false;
        out = it->get<std::string>();
        return true;
    };
    // Integer fields take only integers in their type's range (a converted
    // 1e40 or 2.5 would be undefined or wrong); floating fields any number.
    auto number = [&](const char *key, auto &out) {
        using T = std::decay_t<decltype(out)>;
        const auto it = j.find(key);
        if (it == j.end() || !it->is_number()) return false;
        if constexpr (std::is_integral_v<T>) {
            static_assert(std::is_signed_v<T>, "integer fields are signed");
            if (it->is_number_unsigned()) {
                const std::uint64_t value = it->template get<std::uint64_t>();
                if (value > (std::uint64_t)std::numeric_limits<T>::max()) return false;
                out = (T)value;
            } else if (it->is_number_integer()) {
                const std::int64_t value = it->template get<std::int64_t>();
                if (value < (std::int64_t)std::numeric_limits<T>::min() ||
                    value > (std::int64_t)std::numeric_limits<T>::max()) {
                    return false;
                }
                out = (T)value;
            } else {
                return false;
            }
        } else {
            out = it->template get<T>();
        }
        return true;
    };
    std::string schedule;
    for (const auto &[ok, key] : std::initializer_list<std::pair<bool, const char *>>{
             {text("target", r.target), "target"},
             {text("spec", r.spec), "spec"},
             {number("bucket", r.bucket), "bucket"},
             {number("elements", r.elements), "elements"},
             {text("schedule", schedule), "schedule"},
             {number("seconds", r.seconds), "seconds"},
             {number("noise", r.noise), "noise"},
             {number("gbps", r.gbps), "gbps"},
             {number("default_gbps", r.default_gbps), "default_gbps"},
             {number("ceiling_read_gbps", r.ceiling_read_gbps), "ceiling_read_gbps"},
             {number("ceiling_copy_gbps", r.ceiling_copy_gbps), "ceiling_copy_gbps"},
             {text("date", r.date), "date"},
             {text("version", r.version), "version"},
         }) {
        if (!ok) {
            *why = std::string("field '") + key + "' missing or of the wrong type";
            return std::nullopt;
        }
    }
    if (r.target.empty() || r.spec.empty() || r.bucket < 0 || r.bucket > 62) {
        *why = "empty target or spec, or a bucket out of range";
        return std::nullopt;
    }
    if (const auto cpu = j.find("cpu"); cpu != j.end()) {
        if (!cpu->is_string()) {
            *why = "field 'cpu' is not a string";
            return std::nullopt;
        }
        r.cpu = cpu->get<std::string>();
    }
    r.params = default_params(r.target);
    if (!parse_params(schedule, &r.params, why)) return std::nullopt;
    return r;
}

void TuningDb::add_text(const std::string &text, const std::string &source, const TuningWarning &warn) {
    const size_t layer = sources_.size();
    sources_.push_back(source);
    std::istringstream in(text);
    std::string line;
    for (int number = 1; std::getline(in, line); number++) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        std::string why;
        if (std::optional<TuningRecord> record = parse_record(line, &why)) {
            records_.push_back({std::move(*record), layer});
        } else if (warn) {
            warn("kldiv: tuning database " + source + ":" + std::to_string(number) + ": " + why + "; line skipped");
        }
    }
}

void TuningDb::add_file(const std::string &path, const TuningWarning &warn) {
    std::error_code ec;
    if (!fs::exists(path, ec)) return;
    std::ifstream in(path, std::ios::binary);
    std::ostringstream text;
    if (fs::is_regular_file(path, ec) && in && fs::file_size(path, ec) == 0) return;
    text << in.rdbuf();
    if (!fs::is_regular_file(path, ec) || !in || !text) {
        if (warn) warn("kldiv: tuning database " + path + " cannot be read; not used");
        return;
    }
    add_text(text.str(), path, warn);
}

namespace {

// A Halide target string taken apart: "arch-bits-os" and its features.
struct TargetParts {
    std::string base;
    std::set<std::string> features;
};

TargetParts split_target(const std::string &target) {
    TargetParts parts;
    std::istringstream in(target);
    std::string token;
    for (int i = 0; std::getline(in, token, '-'); i++) {
        if (i < 3) {
            parts.base += (i ? "-" : "") + token;
        } else {
            parts.features.insert(token);
        }
    }
    return parts;
}

std::string isa_class(const TargetParts &t) {
    if (t.features.count("cuda")) {
        std::string capability;
        for (const std::string &f : t.features) {
            if (f.rfind("cuda_capability", 0) == 0) capability = f;
        }
        return "cuda " + capability;
    }
    if (t.base.rfind("x86", 0) != 0) return t.base;
    for (const std::string &f : t.features) {
        if (f.rfind("avx512", 0) == 0) return "avx512";
    }
    return t.features.count("avx2") ? "avx2" : "sse41";
}

}  // namespace

std::string isa_class(const std::string &target) { return isa_class(split_target(target)); }

std::optional<std::string> compatible_target(const std::string &record_target, const std::string &target) {
    if (record_target == target) return std::string("its exact target");
    const TargetParts record = split_target(record_target), wanted = split_target(target);
    if (record.base != wanted.base || isa_class(record) != isa_class(wanted)) return std::nullopt;
    for (const std::string &f : record.features) {
        if (!wanted.features.count(f)) return std::nullopt;
    }
    return "the nearest compatible target, " + record_target + " (" + isa_class(record) +
           ", features this one has)";
}

std::optional<TuningDb::Match> TuningDb::find(const std::string &target, const std::string &spec, int bucket) const {
    for (size_t layer = 0; layer < sources_.size(); layer++) {
        const Entry *best = nullptr;
        std::string best_why;
        auto rank = [&](const Entry &e) {
            // the exact target, else the most features in common; then the
            // nearer bucket, the larger one, the better speed-up
            const size_t shared = split_target(e.record.target).features.size();
            return std::make_tuple(e.record.target == target, shared, -std::abs(e.record.bucket - bucket),
                                   e.record.bucket, e.record.speedup());
        };
        for (const Entry &e : records_) {
            if (e.layer != layer || e.record.spec != spec) continue;
            const std::optional<std::string> why = compatible_target(e.record.target, target);
            if (!why) continue;
            if (best == nullptr || rank(e) > rank(*best)) {
                best = &e;
                best_why = *why;
            }
        }
        if (best) return Match{best->record, sources_[layer], best_why};
    }
    return std::nullopt;
}

namespace {

[[noreturn]] void fail_io(const std::string &what, const std::string &path) {
    throw std::runtime_error("tuning database " + path + ": " + what + ": " + std::strerror(errno));
}

// The database opened and locked exclusively, and still the file at `path`
// (a prune may have replaced it while we waited for the lock).
int open_locked(const std::string &path) {
    const fs::path parent = fs::path(path).parent_path();
    std::error_code ec;
    if (!parent.empty()) fs::create_directories(parent, ec);
    for (;;) {
        const int fd = ::open(path.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) fail_io("cannot open", path);
        if (::flock(fd, LOCK_EX) != 0) {
            ::close(fd);
            fail_io("cannot lock", path);
        }
        struct stat opened {}, current {};
        if (::fstat(fd, &opened) == 0 && ::stat(path.c_str(), &current) == 0 && opened.st_ino == current.st_ino &&
            opened.st_dev == current.st_dev) {
            return fd;
        }
        ::close(fd);
    }
}

}  // namespace

void append_record(const std::string &path, const TuningRecord &record) {
    const std::string line = to_json_line(record) + "\n";
    const int fd = open_locked(path);
    const ssize_t written = ::write(fd, line.data(), line.size());
    const int saved = errno;
    ::close(fd);
    errno = saved;
    if (written != (ssize_t)line.size()) fail_io("cannot append a record", path);
}

PruneResult prune_database(const std::string &path, const TuningWarning &warn) {
    const int fd = open_locked(path);
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{fd};
    std::string text;
    char buffer[65536];
    ::lseek(fd, 0, SEEK_SET);
    for (ssize_t n; (n = ::read(fd, buffer, sizeof buffer)) > 0;) text.append(buffer, (size_t)n);

    PruneResult result;
    std::map<std::tuple<std::string, std::string, int>, std::pair<size_t, TuningRecord>> best;  // class -> (order, record)
    std::istringstream in(text);
    std::string line;
    size_t order = 0;
    for (int number = 1; std::getline(in, line); number++) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        std::string why;
        std::optional<TuningRecord> record = parse_record(line, &why);
        if (!record) {
            result.skipped++;
            if (warn) warn("kldiv: tuning database " + path + ":" + std::to_string(number) + ": " + why + "; dropped");
            continue;
        }
        const auto key = std::make_tuple(record->target, record->spec, record->bucket);
        auto it = best.find(key);
        if (it == best.end()) {
            best.emplace(key, std::make_pair(order++, std::move(*record)));
        } else {
            result.removed++;
            if (record->speedup() > it->second.second.speedup()) it->second.second = std::move(*record);
        }
    }
    std::vector<std::pair<size_t, const TuningRecord *>> kept;
    for (const auto &[key, value] : best) kept.emplace_back(value.first, &value.second);
    std::sort(kept.begin(), kept.end());
    std::string out;
    for (const auto &[index, record] : kept) out += to_json_line(*record) + "\n";
    result.kept = kept.size();

    const std::string temporary = path + ".prune." + std::to_string(::getpid());
    {
        std::ofstream file(temporary, std::ios::binary | std::ios::trunc);
        file << out;
        file.flush();
        if (!file) fail_io("cannot write", temporary);
    }
    if (std::rename(temporary.c_str(), path.c_str()) != 0) {
        std::remove(temporary.c_str());
        fail_io("cannot replace", path);
    }
    return result;
}

TuningDb load_tuning_databases(const std::string &user, const std::string &cache_dir, const TuningWarning &warn) {
    TuningDb db;
    const char *env = std::getenv("KLDIV_TUNING_DB");
    if (user == "none" || (user.empty() && env != nullptr && std::string(env) == "none")) return db;
    const std::string path = user.empty() ? user_database_path(cache_dir) : user == "off" ? std::string() : user;
    if (!path.empty()) db.add_file(path, warn);
    db.add_text(shipped_database(), "shipped database", warn);
    return db;
}

std::string user_database_path(const std::string &cache_dir) {
    if (const char *env = std::getenv("KLDIV_TUNING_DB"); env != nullptr && *env != '\0') {
        return std::string(env) == "off" || std::string(env) == "none" ? std::string() : std::string(env);
    }
    if (cache_dir.empty()) return {};
    return (fs::path(cache_dir) / "tuning.jsonl").string();
}

}  // namespace kldiv::schedules
