#include "disk_cache.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <unordered_set>

#include "directory_lock.h"
#include "manifest.h"
#include "payload_store.h"
#include "trust.h"

namespace kldiv::cache {

namespace {

// A temporary or orphan payload this old belongs to no live writer.
constexpr std::int64_t kStaleSeconds = 600;
// A payload can vanish under a reader when another process replaces the entry.
constexpr int kLoadAttempts = 3;

std::string lowercase(std::string text) {
    for (char &c : text) c = char(std::tolower(static_cast<unsigned char>(c)));
    return text;
}

std::string environment(const char *name) {
    const char *value = std::getenv(name);
    return value ? value : "";
}

std::int64_t now_unix() { return std::int64_t(std::time(nullptr)); }

// True the first time `dir` is refused in this process: one warning each,
// however many caches use it.
bool first_refusal(const std::string &dir) {
    static std::mutex mutex;
    static auto *const refused = new std::unordered_set<std::string>();  // never destroyed
    std::lock_guard<std::mutex> lock(mutex);
    return refused->insert(dir).second;
}

}  // namespace

// ---------------------------------------------------------------------------

std::string resolve_cache_dir(const std::string &configured) {
    auto disabled = [](const std::string &text) { return lowercase(text) == "off"; };
    if (!configured.empty()) return disabled(configured) ? "" : configured;
    const std::string explicit_dir = environment("KLDIV_CACHE_DIR");
    if (!explicit_dir.empty()) return disabled(explicit_dir) ? "" : explicit_dir;
    // The XDG spec says a relative XDG_CACHE_HOME is to be ignored.
    const std::string xdg = environment("XDG_CACHE_HOME");
    if (!xdg.empty() && xdg[0] == '/') return xdg + "/kldiv";
    const std::string home = environment("HOME");
    if (!home.empty()) return home + "/.cache/kldiv";
    return "";
}

std::string hash_key(const std::string &key) {
    return hex16(hash64(key, 0x6b6c6469765f6b31ULL)) + hex16(hash64(key, 0x6b6c6469765f6b32ULL));
}

std::uint64_t checksum64(const std::string &bytes) { return hash64(bytes, 0); }

std::string format_bytes(std::uint64_t bytes) {
    static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    if (bytes < 1024) return std::to_string(bytes) + " B";
    double value = double(bytes) / 1024;
    std::size_t unit = 0;
    while (value >= 1024 && unit + 1 < sizeof units / sizeof units[0]) {
        value /= 1024;
        ++unit;
    }
    char text[32];
    std::snprintf(text, sizeof text, "%.1f %s", value, units[unit]);
    return text;
}

std::optional<std::uint64_t> parse_bytes(const std::string &text) {
    std::size_t digits = 0;
    while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
    if (digits == 0 || digits > 20) return std::nullopt;
    errno = 0;
    const unsigned long long number = std::strtoull(text.substr(0, digits).c_str(), nullptr, 10);
    if (errno == ERANGE) return std::nullopt;
    const std::string unit = lowercase(text.substr(digits));
    int shift = 0;
    if (unit.empty() || unit == "b") {
        shift = 0;
    } else if (unit == "k" || unit == "kb" || unit == "kib") {
        shift = 10;
    } else if (unit == "m" || unit == "mb" || unit == "mib") {
        shift = 20;
    } else if (unit == "g" || unit == "gb" || unit == "gib") {
        shift = 30;
    } else if (unit == "t" || unit == "tb" || unit == "tib") {
        shift = 40;
    } else {
        return std::nullopt;
    }
    if (shift > 0 && number > (UINT64_MAX >> shift)) return std::nullopt;
    return std::uint64_t(number) << shift;
}

// ---------------------------------------------------------------------------

DiskCache::DiskCache(std::string dir, std::uint64_t max_bytes, std::string version, Warn warn)
    : dir_(std::move(dir)),
      max_bytes_(max_bytes),
      version_(std::move(version)),
      warn_(std::move(warn)),
      writable_(!dir_.empty()),
      user_(geteuid()) {
    while (dir_.size() > 1 && dir_.back() == '/') dir_.pop_back();
}

bool DiskCache::enabled() const {
    if (!writable_.load()) return false;
    trusted();  // judges the directory if it exists
    return dir_state_.load() != DirState::Refused;
}

std::string DiskCache::refusal() const {
    if (dir_.empty() || trusted()) return "";
    std::lock_guard<std::mutex> lock(trust_mutex_);
    return refusal_;
}

bool DiskCache::trusted() const {
    const DirState state = dir_state_.load();
    if (state != DirState::Unchecked) return state == DirState::Trusted;
    std::lock_guard<std::mutex> lock(trust_mutex_);
    if (dir_state_.load() != DirState::Unchecked) return dir_state_.load() == DirState::Trusted;
    const DirectoryTrust trust = check_directory(dir_, user_);
    if (trust.verdict == DirectoryTrust::Verdict::Trusted) {
        dir_state_ = DirState::Trusted;
        return true;
    }
    if (trust.verdict == DirectoryTrust::Verdict::Refused) {
        refusal_ = trust.reason;
        dir_state_ = DirState::Refused;
        if (first_refusal(dir_)) {
            emit("kldiv: kernel cache directory " + dir_ + " refused: " + refusal_ +
                 "; the disk cache is off for this process");
        }
    }
    return false;  // missing or unusable: judged again next time
}

bool DiskCache::ready_to_write() {
    if (trusted()) return true;
    if (dir_state_.load() == DirState::Refused) return false;
    int error = 0;
    if (!make_directories(dir_, &error)) {
        ++store_failures_;
        degrade("cannot create", dir_, error);
        return false;
    }
    if (trusted()) return true;
    if (dir_state_.load() == DirState::Refused) return false;
    ++store_failures_;
    degrade("cannot use", dir_, ENOENT);
    return false;
}

Stats DiskCache::stats() const {
    Stats stats;
    stats.hits = hits_.load();
    stats.misses = misses_.load();
    stats.stores = stores_.load();
    stats.store_failures = store_failures_.load();
    stats.corrupt_removed = corrupt_removed_.load();
    return stats;
}

void DiskCache::emit(const std::string &message) const {
    std::lock_guard<std::mutex> lock(warn_mutex_);
    if (warn_) {
        warn_(message);
    } else {
        std::fprintf(stderr, "%s\n", message.c_str());
    }
}

std::string DiskCache::new_temporary_path() {
    static std::atomic<std::uint64_t> counter{0};
    const long thread = syscall(SYS_gettid);
    return dir_ + "/" + kTemporaryPrefix + std::to_string(getpid()) + "." +
           std::to_string(thread) + "." + std::to_string(counter.fetch_add(1));
}

void DiskCache::degrade(const std::string &what, const std::string &path, int error) {
    writable_ = false;
    if (degraded_warned_.exchange(true)) return;
    emit("kldiv: kernel cache directory " + dir_ + " is unusable (" + what + " " + path + ": " +
         std::strerror(error) + "); kernels compiled from now on are kept in memory only");
}

void DiskCache::report_corrupt(const std::string &manifest_path, const std::string &reason) {
    emit("kldiv: kernel cache entry " + manifest_path + " is " + reason +
         "; removed, it will be rebuilt");
}

// The cache never writes a link, so one in its place is someone's doing.
void DiskCache::remove_link(const std::string &path, const std::string &reason) {
    struct stat info;
    if (lstat(path.c_str(), &info) != 0 || !S_ISLNK(info.st_mode)) return;
    if (unlink(path.c_str()) != 0) {
        emit("kldiv: kernel cache entry " + path + " is " + reason + "; it could not be removed (" +
             std::strerror(errno) + ")");
        return;
    }
    ++corrupt_removed_;
    report_corrupt(path, reason);
}

std::optional<std::string> DiskCache::load(const std::string &key) {
    if (dir_.empty() || !trusted()) {
        ++misses_;
        return std::nullopt;
    }
    try {
        const std::string hash = hash_key(key);
        std::string payload;
        for (int attempt = 0; attempt < kLoadAttempts; ++attempt) {
            const LoadStep step = load_once(key, hash, &payload);
            if (step == LoadStep::Hit) {
                ++hits_;
                return payload;
            }
            if (step == LoadStep::Miss) break;
        }
    } catch (const std::exception &) {
        // Out of memory for a payload: a miss, the kernel is rebuilt.
    }
    ++misses_;
    return std::nullopt;
}

DiskCache::LoadStep DiskCache::load_once(const std::string &key, const std::string &hash,
                                         std::string *payload) {
    const std::string manifest_path = dir_ + "/" + hash + kManifestSuffix;
    const int manifest_fd = open(manifest_path.c_str(), kOpenForReading);
    if (manifest_fd < 0) {
        if (errno == ELOOP) remove_link(manifest_path, "untrusted (a symbolic link)");
        return LoadStep::Miss;
    }
    struct ManifestFd {
        int fd;
        ~ManifestFd() { close(fd); }
    } manifest_guard{manifest_fd};

    struct stat manifest_info;
    if (fstat(manifest_fd, &manifest_info) != 0) return LoadStep::Miss;

    // Removes the entry as it was read, unless another process has replaced
    // the manifest meanwhile (then the new one is theirs to judge).
    auto remove_entry = [&](const std::string &payload_file, const std::string &reason) {
        struct stat now;
        const bool replaced = lstat(manifest_path.c_str(), &now) != 0 ||
                              now.st_ino != manifest_info.st_ino ||
                              now.st_dev != manifest_info.st_dev;
        int error = 0;
        if (!replaced && unlink(manifest_path.c_str()) != 0 && errno != ENOENT) error = errno;
        if (error == 0 && !replaced && !payload_file.empty()) {
            unlink((dir_ + "/" + payload_file).c_str());
        }
        if (error != 0) {
            emit("kldiv: kernel cache entry " + manifest_path + " is " + reason +
                 "; it could not be removed (" + std::strerror(error) + ")");
            return;
        }
        ++corrupt_removed_;
        report_corrupt(manifest_path, reason);
    };

    if (std::string why = untrusted_file_reason(manifest_info, user_); !why.empty()) {
        remove_entry("", "untrusted (" + why + ")");
        return LoadStep::Miss;
    }
    std::string text;
    if (manifest_info.st_size > kMaxManifestBytes) {
        remove_entry("", "corrupt (manifest of " + std::to_string(manifest_info.st_size) +
                             " bytes)");
        return LoadStep::Miss;
    }
    if (!read_all(manifest_fd, std::size_t(manifest_info.st_size), &text)) return LoadStep::Miss;
    std::string reason;
    bool foreign_format = false;
    const std::optional<Manifest> manifest = parse_manifest(text, &reason, &foreign_format);
    if (!manifest) {
        remove_entry("", (foreign_format ? "foreign (" : "corrupt (") + reason + ")");
        return LoadStep::Miss;
    }
    if (manifest->version != version_) {
        const std::string expected = payload_name(hash, manifest->payload_checksum);
        remove_entry(manifest->payload == expected ? expected : "",
                     "foreign (written for '" + manifest->version + "', this is '" + version_ +
                         "')");
        return LoadStep::Miss;
    }
    // Two keys with one hash: the other key's entry stays; a store replaces it.
    if (manifest->key != key) return LoadStep::Miss;
    const std::string expected_payload = payload_name(hash, manifest->payload_checksum);
    if (manifest->payload != expected_payload) {
        remove_entry("", "corrupt (it names payload '" + manifest->payload + "', expected " +
                             expected_payload + ")");
        return LoadStep::Miss;
    }

    const std::string payload_path = dir_ + "/" + expected_payload;
    const int payload_fd = open(payload_path.c_str(), kOpenForReading);
    if (payload_fd < 0) {
        if (errno == ELOOP) {
            remove_entry(expected_payload,
                         "untrusted (payload " + expected_payload + " is a symbolic link)");
            return LoadStep::Miss;
        }
        if (errno != ENOENT) return LoadStep::Miss;
        // Replaced or removed by another process since we read it: look again.
        struct stat now;
        if (lstat(manifest_path.c_str(), &now) != 0) return LoadStep::Miss;
        if (now.st_ino != manifest_info.st_ino || now.st_dev != manifest_info.st_dev) {
            return LoadStep::Retry;
        }
        remove_entry("", "corrupt (payload " + expected_payload + " is missing)");
        return LoadStep::Miss;
    }
    struct PayloadFd {
        int fd;
        ~PayloadFd() { close(fd); }
    } payload_guard{payload_fd};
    struct stat payload_info;
    if (fstat(payload_fd, &payload_info) != 0) return LoadStep::Miss;
    if (std::string why = untrusted_file_reason(payload_info, user_); !why.empty()) {
        remove_entry(expected_payload, "untrusted (payload " + expected_payload + " is " + why + ")");
        return LoadStep::Miss;
    }
    if (std::uint64_t(payload_info.st_size) != manifest->payload_bytes) {
        remove_entry(expected_payload, "corrupt (payload of " +
                                           std::to_string(payload_info.st_size) +
                                           " bytes, the manifest says " +
                                           std::to_string(manifest->payload_bytes) + ")");
        return LoadStep::Miss;
    }
    if (!read_all(payload_fd, std::size_t(payload_info.st_size), payload)) return LoadStep::Miss;
    if (checksum64(*payload) != manifest->payload_checksum) {
        remove_entry(expected_payload, "corrupt (checksum mismatch)");
        return LoadStep::Miss;
    }
    // Least recently used is judged by the manifest's mtime. In a read-only
    // directory this fails, and the entry only ages.
    futimens(manifest_fd, nullptr);
    return LoadStep::Hit;
}

bool DiskCache::write_entry(const std::string &key, const std::string &payload,
                            const std::string &description, int *error,
                            std::string *failed_path) {
    const std::string hash = hash_key(key);
    Manifest manifest;
    manifest.version = version_;
    manifest.key = key;
    manifest.description = description;
    manifest.payload_checksum = checksum64(payload);
    manifest.payload = payload_name(hash, manifest.payload_checksum);
    manifest.payload_bytes = payload.size();

    const std::string payload_path = dir_ + "/" + manifest.payload;
    const std::string manifest_name = hash + kManifestSuffix;
    const std::string manifest_path = dir_ + "/" + manifest_name;

    // Both files are written to temporary names first, outside the lock.
    const std::string payload_temporary = new_temporary_path();
    *failed_path = payload_temporary;
    if (!write_new_file(payload_temporary, payload, error)) return false;
    const std::string manifest_temporary = new_temporary_path();
    *failed_path = manifest_temporary;
    if (!write_new_file(manifest_temporary, manifest_text(manifest), error)) {
        unlink(payload_temporary.c_str());
        return false;
    }
    // Writers rename their files into place one at a time (directory_lock.h).
    // Processes that compile the same bytes share a payload name, so without
    // the lock one writer could remove, as the payload of the entry it
    // replaced, a payload that another has just renamed in again and is about
    // to name in the manifest. Without the lock the replaced payload stays,
    // for prune() to remove as an orphan.
    const DirectoryLock lock(dir_);
    // Payload first: a manifest is only ever renamed in beside a whole payload.
    if (rename(payload_temporary.c_str(), payload_path.c_str()) != 0) {
        *error = errno;
        *failed_path = payload_path;
        unlink(payload_temporary.c_str());
        unlink(manifest_temporary.c_str());
        return false;
    }
    const std::optional<Manifest> replaced = read_manifest(dir_, manifest_name, user_);
    if (rename(manifest_temporary.c_str(), manifest_path.c_str()) != 0) {
        *error = errno;
        *failed_path = manifest_path;
        unlink(manifest_temporary.c_str());
        return false;
    }
    // The payload of the entry this one replaced (same key, other bytes) is
    // nobody's now; a reader still holding its old manifest looks again.
    if (lock.held() && replaced && replaced->payload != manifest.payload &&
        classify(replaced->payload) == FileKind::Payload &&
        replaced->payload.compare(0, kHashDigits, hash) == 0) {
        unlink((dir_ + "/" + replaced->payload).c_str());
    }
    return true;
}

void DiskCache::store(const std::string &key, const std::string &payload,
                      const std::string &description) {
    if (dir_.empty() || !writable_) return;
    try {
        // An entry that alone is over the limit would be pruned at once.
        if (payload.size() + key.size() + description.size() > max_bytes_) return;
        if (!ready_to_write()) return;
        int error = 0;
        std::string failed_path;
        bool stored = write_entry(key, payload, description, &error, &failed_path);
        if (!stored && error == ENOENT) {
            // Removed under us: made and judged afresh, once.
            {
                std::lock_guard<std::mutex> lock(trust_mutex_);
                if (dir_state_.load() == DirState::Trusted) dir_state_ = DirState::Unchecked;
            }
            if (!ready_to_write()) return;
            stored = write_entry(key, payload, description, &error, &failed_path);
        }
        if (!stored) {
            ++store_failures_;
            degrade("cannot write", failed_path, error);
            return;
        }
        ++stores_;
        if (total_bytes() > max_bytes_) prune(max_bytes_);
    } catch (const std::exception &error) {
        ++store_failures_;
        emit(std::string("kldiv: kernel cache store failed: ") + error.what());
    }
}

std::vector<Entry> DiskCache::list() const {
    std::vector<Entry> entries;
    if (dir_.empty() || !trusted()) return entries;
    const std::vector<CacheFile> files = scan(dir_);
    const auto payloads = payloads_by_name(files);
    std::vector<timespec> modified;
    for (const CacheFile &file : files) {
        if (file.kind != FileKind::Manifest) continue;
        Entry entry;
        entry.manifest = file.name;
        entry.bytes = file.size;
        entry.last_used_unix = file.modified.tv_sec;
        const std::optional<Manifest> manifest = read_manifest(dir_, file.name, user_);
        if (!manifest) {
            entry.state = Entry::State::Unreadable;
        } else {
            entry.key = manifest->key;
            entry.description = manifest->description;
            entry.version = manifest->version;
            entry.state = manifest->version == version_ ? Entry::State::Valid
                                                        : Entry::State::Foreign;
            const auto payload = payloads.find(manifest->payload);
            if (payload != payloads.end()) entry.bytes += payload->second->size;
        }
        entries.push_back(std::move(entry));
        modified.push_back(file.modified);
    }
    std::vector<std::size_t> order(entries.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        if (older(modified[a], modified[b])) return true;
        if (older(modified[b], modified[a])) return false;
        return entries[a].manifest < entries[b].manifest;
    });
    std::vector<Entry> sorted;
    sorted.reserve(entries.size());
    for (std::size_t i : order) sorted.push_back(std::move(entries[i]));
    return sorted;
}

std::uint64_t DiskCache::total_bytes() const {
    if (dir_.empty() || !trusted()) return 0;
    std::uint64_t total = 0;
    for (const CacheFile &file : scan(dir_)) total += file.size;
    return total;
}

std::uint64_t DiskCache::prune(std::uint64_t max_bytes) {
    if (dir_.empty() || !trusted()) return 0;
    const std::vector<CacheFile> files = scan(dir_);
    const std::int64_t stale_before = now_unix() - kStaleSeconds;
    std::uint64_t total = 0, freed = 0;
    auto remove = [&](const std::string &name, std::uint64_t size) {
        if (unlink((dir_ + "/" + name).c_str()) != 0) return false;
        freed += size;
        total -= std::min(total, size);
        return true;
    };
    for (const CacheFile &file : files) total += file.size;

    // Entries: a manifest and the payload it names.
    struct Candidate {
        const CacheFile *manifest;
        const CacheFile *payload;
        bool readable;
    };
    std::vector<Candidate> candidates;
    std::unordered_set<std::string> referenced;
    const auto payloads = payloads_by_name(files);
    for (const CacheFile &file : files) {
        if (file.kind != FileKind::Manifest) continue;
        const std::optional<Manifest> manifest = read_manifest(dir_, file.name, user_);
        Candidate candidate{&file, nullptr, manifest.has_value()};
        if (manifest) {
            referenced.insert(manifest->payload);
            const auto payload = payloads.find(manifest->payload);
            if (payload != payloads.end()) candidate.payload = payload->second;
        }
        candidates.push_back(candidate);
    }
    // Leftovers of writers that died, or of replaced entries; young ones may
    // belong to a writer between its two renames.
    for (const CacheFile &file : files) {
        const bool leftover = file.kind == FileKind::Temporary ||
                              (file.kind == FileKind::Payload && !referenced.count(file.name));
        if (leftover && file.modified.tv_sec < stale_before) remove(file.name, file.size);
    }
    // Unreadable manifests go first, then the least recently used.
    std::sort(candidates.begin(), candidates.end(), [](const Candidate &a, const Candidate &b) {
        if (a.readable != b.readable) return !a.readable;
        if (older(a.manifest->modified, b.manifest->modified)) return true;
        if (older(b.manifest->modified, a.manifest->modified)) return false;
        return a.manifest->name < b.manifest->name;
    });
    for (const Candidate &candidate : candidates) {
        if (total <= max_bytes) break;
        if (!remove(candidate.manifest->name, candidate.manifest->size)) continue;
        if (candidate.payload) remove(candidate.payload->name, candidate.payload->size);
    }
    return freed;
}

std::uint64_t DiskCache::clear() {
    if (dir_.empty() || !trusted()) return 0;
    std::uint64_t entries = 0;
    // Manifests first, so no reader finds one whose payload is gone.
    for (const CacheFile &file : scan(dir_)) {
        if (file.kind == FileKind::Manifest && unlink((dir_ + "/" + file.name).c_str()) == 0) {
            ++entries;
        }
    }
    // Then the rest, but not the payloads of entries stored since.
    const std::vector<CacheFile> files = scan(dir_);
    std::unordered_set<std::string> referenced;
    for (const CacheFile &file : files) {
        if (file.kind != FileKind::Manifest) continue;
        if (const std::optional<Manifest> manifest = read_manifest(dir_, file.name, user_)) {
            referenced.insert(manifest->payload);
        }
    }
    for (const CacheFile &file : files) {
        if (file.kind != FileKind::Manifest && !referenced.count(file.name)) {
            unlink((dir_ + "/" + file.name).c_str());
        }
    }
    return entries;
}

}  // namespace kldiv::cache
