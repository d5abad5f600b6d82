#include "cache_command.h"

#include <sys/stat.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>
#include <optional>

#include "command_line.h"
#include "disk_cache.h"

namespace kldiv::tools {

const char kCacheHelp[] = R"(Usage: kldiv cache <command> [options]

Looks after the on-disk cache of JIT-compiled kernels, which processes share
and reuse between runs.

Commands:
  ls        one line per entry, least recently used first: when it was last
            used, its size (payload and manifest) and what kernel it holds
  stats     the directory, the number of entries, their total size and the
            size limit
  clear     removes every entry
  prune     removes least-recently-used entries until the cache fits the
            size limit, and leftovers of interrupted writers

Options:
  --dir DIR          the cache directory. Default $KLDIV_CACHE_DIR, else
                     $XDG_CACHE_HOME/kldiv, else $HOME/.cache/kldiv;
                     KLDIV_CACHE_DIR=off disables the cache
  --json             (ls, stats) print JSON
  --max-bytes N      (prune, stats) the size limit in bytes. Default 1 GiB
  --max-size SIZE    the same with a unit: 512M, 2G, 64KiB (multiples of 1024)
  -h, --help         this text

Only files the cache itself names are read or removed; anything else in the
directory is left alone. A directory that another user could write (see
docs/jit.md, on the disk cache) is refused: every command says so and reads or
removes nothing.

Exit status: 0 done, 1 the directory cannot be used or is refused, 2 a usage
error.
)";

namespace {

enum class Action { List, Stats, Clear, Prune };

struct CacheOptions {
    Action action = Action::List;
    std::string dir;  // "" -> resolve_cache_dir("")
    bool json = false;
    std::uint64_t max_bytes = cache::kDefaultMaxBytes;
    bool help = false;
};

Action parse_action(const std::string &name) {
    if (name == "ls") return Action::List;
    if (name == "stats") return Action::Stats;
    if (name == "clear") return Action::Clear;
    if (name == "prune") return Action::Prune;
    throw UsageError("unknown cache command '" + name + "' (expected ls, stats, clear or prune)");
}

CacheOptions parse_cache_options(const std::vector<std::string> &args) {
    CacheOptions options;
    if (args.empty()) throw UsageError("missing cache command (ls, stats, clear or prune)");
    if (args[0] == "-h" || args[0] == "--help") {
        options.help = true;
        return options;
    }
    options.action = parse_action(args[0]);
    ArgumentReader reader(std::vector<std::string>(args.begin() + 1, args.end()));
    while (!reader.done()) {
        const std::string option = reader.next_option();
        if (option == "-h" || option == "--help") {
            options.help = true;
        } else if (option == "--dir") {
            options.dir = reader.value();
            if (options.dir.empty()) throw UsageError("option --dir needs a directory");
        } else if (option == "--json") {
            reader.no_value();
            if (options.action != Action::List && options.action != Action::Stats) {
                throw UsageError("option --json applies to ls and stats only");
            }
            options.json = true;
        } else if (option == "--max-bytes" || option == "--max-size") {
            if (options.action != Action::Prune && options.action != Action::Stats) {
                throw UsageError("option " + option + " applies to prune and stats only");
            }
            const std::string text = reader.value();
            if (option == "--max-bytes") {
                options.max_bytes = (std::uint64_t)parse_integer(option, text, 0, INT64_MAX);
            } else {
                const std::optional<std::uint64_t> bytes = cache::parse_bytes(text);
                if (!bytes) {
                    throw UsageError("invalid value '" + text +
                                     "' for --max-size: expected a size such as 512M or 2G");
                }
                options.max_bytes = *bytes;
            }
        } else if (option.rfind("-", 0) == 0) {
            throw UsageError("unknown option '" + option + "'");
        } else {
            throw UsageError("unexpected argument '" + option + "'");
        }
    }
    return options;
}

std::string format_time(std::int64_t unix_seconds) {
    const std::time_t time = (std::time_t)unix_seconds;
    std::tm local{};
    char text[32] = "?";
    if (localtime_r(&time, &local)) std::strftime(text, sizeof text, "%Y-%m-%d %H:%M:%S", &local);
    return text;
}

// Descriptions and keys may hold any bytes; JSON output replaces invalid UTF-8.
std::string dump(const nlohmann::json &json) {
    return json.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
}

// One entry is one line: control characters in a description become '?'.
std::string printable(std::string text) {
    for (char &c : text) {
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
    }
    return text;
}

std::string bytes_and_unit(std::uint64_t bytes) {
    return cache::format_bytes(bytes) + " (" + std::to_string(bytes) + " bytes)";
}

int list_entries(const cache::DiskCache &disk_cache, bool json) {
    const std::vector<cache::Entry> entries = disk_cache.list();
    if (json) {
        nlohmann::json items = nlohmann::json::array();
        for (const cache::Entry &entry : entries) {
            const bool unreadable = entry.state == cache::Entry::State::Unreadable;
            items.push_back({{"last_used_unix", entry.last_used_unix},
                             {"last_used", format_time(entry.last_used_unix)},
                             {"bytes", entry.bytes},
                             {"description", entry.description},
                             {"key", entry.key},
                             {"version", entry.version},
                             {"manifest", entry.manifest},
                             {"readable", !unreadable}});
        }
        std::printf("%s\n", dump(items).c_str());
        return kExitPass;
    }
    for (const cache::Entry &entry : entries) {
        const std::string what = entry.state == cache::Entry::State::Unreadable
                                     ? entry.manifest + " (unreadable; a load or prune removes it)"
                                     : printable(entry.description);
        std::printf("%s  %10s  %s\n", format_time(entry.last_used_unix).c_str(),
                    cache::format_bytes(entry.bytes).c_str(), what.c_str());
    }
    return kExitPass;
}

// The runtime's warning in short: why the cache will not use its directory.
std::string refused_verdict(const std::string &refusal) {
    return "refused: " + refusal + "; the disk cache is off";
}

int show_stats(const cache::DiskCache &disk_cache, bool json) {
    struct stat info;
    const bool exists = stat(disk_cache.dir().c_str(), &info) == 0;
    const std::string refusal = disk_cache.refusal();
    if (!refusal.empty()) {
        if (json) {
            const nlohmann::json stats = {{"directory", disk_cache.dir()},
                                          {"usable", false},
                                          {"verdict", refused_verdict(refusal)},
                                          {"max_bytes", disk_cache.max_bytes()}};
            std::printf("%s\n", dump(stats).c_str());
        } else {
            std::printf("%-10s %s\n", "directory", disk_cache.dir().c_str());
            std::printf("%-10s %s\n", "verdict", refused_verdict(refusal).c_str());
        }
        return kExitFail;
    }
    const std::vector<cache::Entry> entries = disk_cache.list();
    std::size_t unreadable = 0;
    for (const cache::Entry &entry : entries) {
        if (entry.state == cache::Entry::State::Unreadable) ++unreadable;
    }
    // Files outside entries too: orphans and temporaries count towards the limit.
    const std::uint64_t total = disk_cache.total_bytes();
    if (json) {
        const nlohmann::json stats = {{"directory", disk_cache.dir()},
                                      {"usable", true},
                                      {"verdict", "usable"},
                                      {"entries", entries.size()},
                                      {"unreadable_entries", unreadable},
                                      {"total_bytes", total},
                                      {"max_bytes", disk_cache.max_bytes()}};
        std::printf("%s\n", dump(stats).c_str());
        return kExitPass;
    }
    std::printf("%-10s %s%s\n", "directory", disk_cache.dir().c_str(),
                exists ? "" : " (not created yet)");
    std::printf("%-10s %s\n", "verdict", "usable");
    std::printf("%-10s %zu", "entries", entries.size());
    if (unreadable > 0) std::printf(" (%zu unreadable)", unreadable);
    std::printf("\n%-10s %s\n", "total", bytes_and_unit(total).c_str());
    std::printf("%-10s %s\n", "limit", bytes_and_unit(disk_cache.max_bytes()).c_str());
    return kExitPass;
}

int run_cache_command(const CacheOptions &options) {
    const std::string dir = cache::resolve_cache_dir(options.dir);
    if (dir.empty()) {
        std::printf("kldiv cache: the kernel cache is disabled (KLDIV_CACHE_DIR=off, or no "
                    "HOME to put it in); nothing to do\n");
        return kExitPass;
    }
    // A missing directory is an empty cache; anything else unusable is an error.
    struct stat info;
    if (stat(dir.c_str(), &info) == 0) {
        if (!S_ISDIR(info.st_mode)) {
            std::fprintf(stderr, "kldiv cache: %s is not a directory\n", dir.c_str());
            return kExitFail;
        }
    } else if (errno != ENOENT) {
        std::fprintf(stderr, "kldiv cache: cannot use %s: %s\n", dir.c_str(),
                     std::strerror(errno));
        return kExitFail;
    }
    // The CLI judges no entry's version, so its own tag is empty. It says
    // itself why a directory is refused, so the cache's warning is dropped.
    cache::DiskCache disk_cache(dir, options.max_bytes, "", [](const std::string &) {});
    if (options.action != Action::Stats) {
        if (const std::string refusal = disk_cache.refusal(); !refusal.empty()) {
            std::FILE *stream = options.action == Action::List && !options.json ? stdout : stderr;
            std::fprintf(stream, "kldiv cache: %s%s\n", refused_verdict(refusal).c_str(),
                         options.action == Action::List ? "" : "; nothing removed");
            return kExitFail;
        }
    }
    switch (options.action) {
    case Action::List:
        return list_entries(disk_cache, options.json);
    case Action::Stats:
        return show_stats(disk_cache, options.json);
    case Action::Clear: {
        const std::uint64_t removed = disk_cache.clear();
        std::printf("kldiv cache: removed %" PRIu64 " entr%s from %s\n", removed,
                    removed == 1 ? "y" : "ies", dir.c_str());
        return kExitPass;
    }
    case Action::Prune: {
        const std::uint64_t freed = disk_cache.prune(options.max_bytes);
        const std::size_t remaining = disk_cache.list().size();
        std::printf("kldiv cache: pruned %s to at most %s: freed %s; %zu entr%s (%s) remain\n",
                    dir.c_str(), cache::format_bytes(options.max_bytes).c_str(),
                    cache::format_bytes(freed).c_str(), remaining, remaining == 1 ? "y" : "ies",
                    cache::format_bytes(disk_cache.total_bytes()).c_str());
        return kExitPass;
    }
    }
    return kExitFail;
}

}  // namespace

int cache_command(const std::vector<std::string> &args) {
    CacheOptions options;
    try {
        options = parse_cache_options(args);
    } catch (const UsageError &error) {
        std::fprintf(stderr, "kldiv cache: %s\nTry 'kldiv cache --help'.\n", error.what());
        return kExitUsage;
    }
    if (options.help) {
        std::fputs(kCacheHelp, stdout);
        return kExitPass;
    }
    return run_cache_command(options);
}

}  // namespace kldiv::tools
