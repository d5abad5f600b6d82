// The on-disk kernel cache: compiled kernels kept between processes, keyed by
// the full identity text of a kernel. Every file is written under a temporary
// name and renamed into place (payload first, manifest last), so processes
// sharing one directory never see a half-written entry; every load is verified
// and a bad entry is removed and rebuilt. A directory or file that another
// user could have written is not used (trust.h). No Halide or LLVM type
// appears here.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace kldiv::cache {

// The size limit when none is configured.
inline constexpr std::uint64_t kDefaultMaxBytes = std::uint64_t(1) << 30;

// Where the cache lives: `configured` if not empty, else $KLDIV_CACHE_DIR, else
// $XDG_CACHE_HOME/kldiv, else $HOME/.cache/kldiv. Returns "" when the cache is
// disabled: "off" as the configured value or as $KLDIV_CACHE_DIR, or no home.
std::string resolve_cache_dir(const std::string &configured);

// 32 hex digits naming a key's files; the same on every run and machine.
std::string hash_key(const std::string &key);

// The 64-bit checksum of payloads and manifests; stable like hash_key. It
// catches torn and corrupt files, not an attacker: anyone can compute it.
std::uint64_t checksum64(const std::string &bytes);

// "123 B", "4.5 KiB", "1.2 GiB".
std::string format_bytes(std::uint64_t bytes);

// "512M", "1G", "4096", "64KiB" -> bytes; nullopt when `text` is not a size.
std::optional<std::uint64_t> parse_bytes(const std::string &text);

// One entry as list() sees it.
struct Entry {
    enum class State {
        Valid,       // written by a cache with this cache's version tag
        Foreign,     // another version tag: a load removes it
        Unreadable,  // the manifest cannot be parsed: a load removes it
    };

    std::string key;          // the full identity text ("" when unreadable)
    std::string description;  // what the kernel is, for people
    std::string version;      // the version tag of the cache that wrote it
    std::string manifest;     // the manifest's file name, "<hash>.json"
    std::uint64_t bytes = 0;  // payload + manifest
    std::int64_t last_used_unix = 0;
    State state = State::Valid;
};

struct Stats {
    std::uint64_t hits = 0;
    std::uint64_t misses = 0;
    std::uint64_t stores = 0;
    std::uint64_t store_failures = 0;
    std::uint64_t corrupt_removed = 0;
};

class DiskCache {
public:
    using Warn = std::function<void(const std::string &)>;

    // dir == "" -> disabled (every load misses, store does nothing). `version`
    // (library, Halide, LLVM versions) is recorded in every manifest; an entry
    // with another tag is foreign. `warn` receives every warning, one call at a
    // time; when empty, warnings go to stderr.
    DiskCache(std::string dir, std::uint64_t max_bytes, std::string version, Warn warn);

    // False when disabled, refused, or after a store found the directory
    // unusable; a degraded cache still serves loads from a directory it can read.
    bool enabled() const;

    // Why the directory is refused (trust.h), e.g. "/tmp/k is writable by
    // others (mode 0777)"; "" when it may be used or does not exist yet. The
    // directory is judged before the first file in it is used (and again
    // while it is missing); a refused one is off for this cache, every call
    // doing nothing, and gives one warning per process.
    std::string refusal() const;
    const std::string &dir() const { return dir_; }
    const std::string &version() const { return version_; }
    std::uint64_t max_bytes() const { return max_bytes_; }

    // The payload stored under `key` (any bytes), or nullopt. A corrupt,
    // truncated or foreign entry is reported through `warn`, removed, and
    // counts as a miss; a hit marks the entry as recently used.
    std::optional<std::string> load(const std::string &key);

    // Never throws and never fails the caller: a missing directory is created;
    // a read-only, unusable or full directory gives one warning, then the cache
    // stops writing (enabled() == false). Prunes to max_bytes afterwards.
    void store(const std::string &key, const std::string &payload,
               const std::string &description);

    // Entries, least recently used first; foreign and unreadable ones included.
    std::vector<Entry> list() const;
    std::uint64_t total_bytes() const;

    // Removes least-recently-used entries until the total is <= max_bytes, and
    // orphan payloads and temporaries left for over ten minutes; returns the
    // bytes freed.
    std::uint64_t prune(std::uint64_t max_bytes);

    // Removes every entry, orphan payload and temporary; returns the number of
    // entries removed. Files this cache did not name are left alone.
    std::uint64_t clear();

    Stats stats() const;

private:
    enum class LoadStep { Hit, Miss, Retry };
    enum class DirState { Unchecked, Trusted, Refused };

    // Whether the directory may be used now: judged (trust.h) until it is
    // found trusted or refused, which then holds (a directory removed under a
    // store is judged afresh). The first refusal of a directory in the
    // process is warned about.
    bool trusted() const;
    // Before a store: makes a missing directory, then judges it; false (with
    // one warning when it is unusable) when the store must not go ahead.
    bool ready_to_write();

    LoadStep load_once(const std::string &key, const std::string &hash, std::string *payload);
    bool write_entry(const std::string &key, const std::string &payload,
                     const std::string &description, int *error, std::string *failed_path);
    void degrade(const std::string &what, const std::string &path, int error);
    void report_corrupt(const std::string &manifest_path, const std::string &reason);
    void remove_link(const std::string &path, const std::string &reason);
    void emit(const std::string &message) const;
    std::string new_temporary_path();

    std::string dir_;
    std::uint64_t max_bytes_;
    std::string version_;
    Warn warn_;
    mutable std::mutex warn_mutex_;
    std::atomic<bool> writable_;
    uid_t user_;
    mutable std::mutex trust_mutex_;
    mutable std::atomic<DirState> dir_state_{DirState::Unchecked};
    mutable std::string refusal_;  // guarded by trust_mutex_
    std::atomic<bool> degraded_warned_{false};
    std::atomic<std::uint64_t> hits_{0}, misses_{0}, stores_{0}, store_failures_{0},
        corrupt_removed_{0};
};

}  // namespace kldiv::cache
