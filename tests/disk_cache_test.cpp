// The on-disk kernel cache: round trips, every kind of damaged entry, unusable
// directories, directories and files another user could have written, LRU
// pruning, directory resolution, and many processes and threads sharing one
// directory.
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "disk_cache.h"

using kldiv::cache::DiskCache;
using kldiv::cache::Entry;

namespace {

int remove_one(const char *path, const struct stat *, int, struct FTW *) { return remove(path); }

void remove_tree(const std::string &path) {
    nftw(path.c_str(), remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

std::string read_file(const std::string &path) {
    std::ifstream stream(path, std::ios::binary);
    std::stringstream text;
    text << stream.rdbuf();
    return text.str();
}

void write_file(const std::string &path, const std::string &data) {
    std::ofstream stream(path, std::ios::binary | std::ios::trunc);
    stream << data;
    ASSERT_TRUE(stream.good()) << path;
}

bool exists(const std::string &path) {
    struct stat info;
    return lstat(path.c_str(), &info) == 0;
}

// Names of the files in `dir` that start with `prefix`, sorted.
std::vector<std::string> files_starting_with(const std::string &dir, const std::string &prefix) {
    std::vector<std::string> names;
    if (DIR *stream = opendir(dir.c_str())) {
        while (const dirent *item = readdir(stream)) {
            const std::string name = item->d_name;
            if (name != "." && name != ".." && name.rfind(prefix, 0) == 0) names.push_back(name);
        }
        closedir(stream);
    }
    std::sort(names.begin(), names.end());
    return names;
}

// The payload file of `key` in `dir`, or "".
std::string payload_path_in(const std::string &dir, const std::string &key) {
    for (const std::string &name : files_starting_with(dir, kldiv::cache::hash_key(key) + ".")) {
        if (name.size() > 4 && name.compare(name.size() - 4, 4, ".obj") == 0) {
            return dir + "/" + name;
        }
    }
    return "";
}

std::string manifest_path_in(const std::string &dir, const std::string &key) {
    return dir + "/" + kldiv::cache::hash_key(key) + ".json";
}

// Another user and group, for the files and directories of hostile cases
// (only root can hand a file to them).
constexpr uid_t kOtherUser = 65534;   // nobody
constexpr gid_t kOtherGroup = 65534;  // nogroup
constexpr char kNotRoot[] = "[SKIP] not root: this case hands a file to another user (chown)";

// Puts a file of `bytes` owned by another user in place of `path`, as anyone
// who could write its directory could.
void replace_with_file_of_another_user(const std::string &path, const std::string &bytes) {
    const std::string planted = path + ".planted";
    write_file(planted, bytes);
    ASSERT_EQ(chown(planted.c_str(), kOtherUser, kOtherGroup), 0) << planted;
    ASSERT_EQ(rename(planted.c_str(), path.c_str()), 0) << path;
}

// Moves `path` to `outside` and leaves a symbolic link to it in its place.
void replace_with_link(const std::string &path, const std::string &outside) {
    ASSERT_EQ(rename(path.c_str(), outside.c_str()), 0) << path;
    ASSERT_EQ(symlink(outside.c_str(), path.c_str()), 0) << path;
}

void set_mtime(const std::string &path, std::int64_t unix_seconds) {
    const timespec times[2] = {{unix_seconds, 0}, {unix_seconds, 0}};
    ASSERT_EQ(utimensat(AT_FDCWD, path.c_str(), times, 0), 0) << path;
}

// Bytes of every value, NULs included, in a pattern that depends on `seed`.
std::string binary_payload(std::size_t size, unsigned seed) {
    std::string payload(size, '\0');
    std::uint32_t state = seed * 2654435761u + 1;
    for (std::size_t i = 0; i < size; ++i) {
        state = state * 1664525u + 1013904223u;
        payload[i] = char(state >> 24);
    }
    if (size > 2) payload[1] = '\0';
    return payload;
}

class DiskCacheTest : public ::testing::Test {
protected:
    void SetUp() override {
        char pattern[] = "/tmp/kldiv_disk_cache_XXXXXX";
        ASSERT_NE(mkdtemp(pattern), nullptr);
        root_ = pattern;
        dir_ = root_ + "/cache";
    }

    void TearDown() override {
        chmod(root_.c_str(), 0700);
        chmod(dir_.c_str(), 0700);
        remove_tree(root_);
    }

    std::unique_ptr<DiskCache> make_cache(const std::string &version = "v1",
                                          std::uint64_t max_bytes = kldiv::cache::kDefaultMaxBytes,
                                          const std::string &dir = "") {
        return std::make_unique<DiskCache>(dir.empty() ? dir_ : dir, max_bytes, version,
                                           [this](const std::string &message) {
                                               std::lock_guard<std::mutex> lock(mutex_);
                                               warnings_.push_back(message);
                                           });
    }

    std::vector<std::string> warnings() {
        std::lock_guard<std::mutex> lock(mutex_);
        return warnings_;
    }

    std::string manifest_path(const std::string &key) const { return manifest_path_in(dir_, key); }
    std::string payload_path(const std::string &key) const { return payload_path_in(dir_, key); }

    std::string root_, dir_;
    std::mutex mutex_;
    std::vector<std::string> warnings_;
};

TEST_F(DiskCacheTest, StoreLoadRoundTripsBinaryPayload) {
    auto cache = make_cache();
    const std::string key = std::string("kldiv_fwd_sum_f32|x86-64-linux-avx2\0|\xff\xfe", 39);
    std::string payload = binary_payload(70000, 1);
    payload[0] = '\0';
    payload.back() = '\0';
    cache->store(key, payload, "forward sum f32, 64x32000");

    const std::optional<std::string> loaded = cache->load(key);
    ASSERT_TRUE(loaded.has_value());
    EXPECT_EQ(loaded->size(), payload.size());
    EXPECT_TRUE(*loaded == payload);
    EXPECT_TRUE(exists(manifest_path(key)));
    EXPECT_FALSE(payload_path(key).empty());
    EXPECT_TRUE(files_starting_with(dir_, ".tmp.").empty());
    EXPECT_TRUE(warnings().empty());
    EXPECT_TRUE(cache->enabled());

    const kldiv::cache::Stats stats = cache->stats();
    EXPECT_EQ(stats.hits, 1u);
    EXPECT_EQ(stats.misses, 0u);
    EXPECT_EQ(stats.stores, 1u);
    EXPECT_EQ(stats.store_failures, 0u);

    const std::vector<Entry> entries = cache->list();
    ASSERT_EQ(entries.size(), 1u);
    EXPECT_EQ(entries[0].key, key);
    EXPECT_EQ(entries[0].description, "forward sum f32, 64x32000");
    EXPECT_EQ(entries[0].version, "v1");
    EXPECT_EQ(entries[0].state, Entry::State::Valid);
    EXPECT_GT(entries[0].bytes, payload.size());
    EXPECT_EQ(entries[0].bytes, cache->total_bytes());

    // Another DiskCache on the same directory (another process) sees it too.
    auto other = make_cache();
    EXPECT_TRUE(other->load(key) == payload);
}

TEST_F(DiskCacheTest, EmptyPayloadRoundTrips) {
    auto cache = make_cache();
    cache->store("empty", "", "nothing");
    EXPECT_EQ(cache->load("empty"), std::optional<std::string>(""));
}

TEST_F(DiskCacheTest, AbsentKeyMisses) {
    auto cache = make_cache();
    EXPECT_FALSE(cache->load("never stored").has_value());  // no directory yet
    cache->store("a", "payload a", "a");
    EXPECT_FALSE(cache->load("b").has_value());
    EXPECT_EQ(cache->stats().misses, 2u);
    EXPECT_TRUE(warnings().empty());
}

TEST_F(DiskCacheTest, StoreReplacesAnEntryAndItsPayload) {
    auto cache = make_cache();
    cache->store("key", "first payload", "one");
    const std::string first_payload = payload_path("key");
    cache->store("key", "second, longer payload", "two");
    EXPECT_EQ(cache->load("key"), std::optional<std::string>("second, longer payload"));
    EXPECT_FALSE(exists(first_payload));
    EXPECT_EQ(files_starting_with(dir_, kldiv::cache::hash_key("key")).size(), 2u);
    EXPECT_EQ(cache->list().at(0).description, "two");
}

TEST_F(DiskCacheTest, DisabledCacheDoesNothing) {
    DiskCache cache("", kldiv::cache::kDefaultMaxBytes, "v1", nullptr);
    EXPECT_FALSE(cache.enabled());
    cache.store("key", "payload", "description");
    EXPECT_FALSE(cache.load("key").has_value());
    EXPECT_TRUE(cache.list().empty());
    EXPECT_EQ(cache.total_bytes(), 0u);
    EXPECT_EQ(cache.stats().stores, 0u);
    EXPECT_EQ(cache.stats().misses, 1u);
}

// ---------------------------------------------------------------------------
// Damaged entries: each one warns once, is removed, misses, and is rebuilt.

struct Damage {
    const char *name;
    // Damages the entry of `key`, stored as `payload` in `dir`.
    std::function<void(const std::string &dir, const std::string &key, const std::string &payload)>
        apply;
    const char *reason;  // what the warning must say
    bool needs_root = false;  // hands a file to another user
};

void PrintTo(const Damage &damage, std::ostream *stream) { *stream << damage.name; }

class DamagedEntry : public DiskCacheTest, public ::testing::WithParamInterface<Damage> {};

TEST_P(DamagedEntry, WarnsOnceRemovesAndRebuilds) {
    const Damage &damage = GetParam();
    if (damage.needs_root && geteuid() != 0) GTEST_SKIP() << kNotRoot;
    const std::string key = "kldiv_bwd_input_tensor_f32|host";
    const std::string payload = binary_payload(4096, 7);
    make_cache()->store(key, payload, "backward");
    ASSERT_TRUE(exists(manifest_path(key)));
    damage.apply(dir_, key, payload);

    auto cache = make_cache();
    EXPECT_FALSE(cache->load(key).has_value());
    const std::vector<std::string> seen = warnings();
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_NE(seen[0].find(manifest_path(key)), std::string::npos) << seen[0];
    EXPECT_NE(seen[0].find(damage.reason), std::string::npos) << seen[0];
    EXPECT_NE(seen[0].find("removed"), std::string::npos) << seen[0];
    EXPECT_FALSE(exists(manifest_path(key)));
    EXPECT_EQ(cache->stats().corrupt_removed, 1u);
    EXPECT_EQ(cache->stats().misses, 1u);

    // Gone for good: the next load misses quietly.
    EXPECT_FALSE(cache->load(key).has_value());
    EXPECT_EQ(warnings().size(), 1u);

    cache->store(key, payload, "backward, rebuilt");
    const std::optional<std::string> loaded = cache->load(key);
    ASSERT_TRUE(loaded.has_value());
    EXPECT_TRUE(*loaded == payload);
    EXPECT_EQ(warnings().size(), 1u);
}

const Damage kDamages[] = {
    {"TruncatedPayload",
     [](const std::string &dir, const std::string &key, const std::string &) {
         const std::string path = payload_path_in(dir, key);
         ASSERT_EQ(truncate(path.c_str(), 1000), 0);
     },
     "corrupt (payload of 1000 bytes, the manifest says 4096)"},
    {"FlippedPayloadBytes",
     [](const std::string &dir, const std::string &key, const std::string &) {
         const std::string path = payload_path_in(dir, key);
         std::string bytes = read_file(path);
         ASSERT_EQ(bytes.size(), 4096u);
         bytes[100] ^= 0x01;
         bytes[3000] ^= 0x80;
         write_file(path, bytes);
     },
     "corrupt (checksum mismatch)"},
    {"MissingPayload",
     [](const std::string &dir, const std::string &key, const std::string &) {
         ASSERT_EQ(unlink(payload_path_in(dir, key).c_str()), 0);
     },
     "is missing"},
    {"GarbageManifest",
     [](const std::string &dir, const std::string &key, const std::string &) {
         write_file(manifest_path_in(dir, key),
                    std::string("\x01\x02garbage\0{{", 12));
     },
     "corrupt (not valid JSON)"},
    {"TruncatedManifest",
     [](const std::string &dir, const std::string &key, const std::string &) {
         const std::string path = manifest_path_in(dir, key);
         const std::string text = read_file(path);
         write_file(path, text.substr(0, text.size() / 2));
     },
     "corrupt (not valid JSON)"},
    {"ManifestOfAnotherKind",
     [](const std::string &dir, const std::string &key, const std::string &) {
         write_file(manifest_path_in(dir, key), "{\"format\": \"other\"}");
     },
     "corrupt (not a kernel cache manifest)"},
    {"ManifestNamesAnotherPayload",
     [](const std::string &dir, const std::string &key, const std::string &) {
         const std::string path = manifest_path_in(dir, key);
         nlohmann::json manifest = nlohmann::json::parse(read_file(path));
         manifest["payload"] = "../../etc/passwd";
         write_file(path, manifest.dump());
     },
     "corrupt (it names payload '../../etc/passwd'"},
    {"WrongSizeInManifest",
     [](const std::string &dir, const std::string &key, const std::string &) {
         const std::string path = manifest_path_in(dir, key);
         nlohmann::json manifest = nlohmann::json::parse(read_file(path));
         manifest["payload_bytes"] = 4097;
         write_file(path, manifest.dump());
     },
     "corrupt (payload of 4096 bytes, the manifest says 4097)"},
    {"OtherFormatVersion",
     [](const std::string &dir, const std::string &key, const std::string &) {
         const std::string path = manifest_path_in(dir, key);
         nlohmann::json manifest = nlohmann::json::parse(read_file(path));
         manifest["format_version"] = 2;
         write_file(path, manifest.dump());
     },
     "foreign (format version 2, expected 1)"},
    {"WrongVersion",
     [](const std::string &dir, const std::string &key, const std::string &payload) {
         // Written by a library built against another Halide/LLVM.
         DiskCache other(dir, kldiv::cache::kDefaultMaxBytes, "v0-halide13", nullptr);
         other.store(key, payload, "backward, old toolchain");
     },
     "foreign (written for 'v0-halide13', this is 'v1')"},
    // Files that another user could have put there. Each has the right bytes
    // (the checksum matches), so only the file's own nature refuses it.
    {"PayloadIsASymbolicLink",
     [](const std::string &dir, const std::string &key, const std::string &) {
         replace_with_link(payload_path_in(dir, key), dir + "/../elsewhere.obj");
     },
     ".obj is a symbolic link)"},
    {"ManifestIsASymbolicLink",
     [](const std::string &dir, const std::string &key, const std::string &) {
         replace_with_link(manifest_path_in(dir, key), dir + "/../elsewhere.json");
     },
     "is untrusted (a symbolic link)"},
    {"PayloadOfAnotherUser",
     [](const std::string &dir, const std::string &key, const std::string &payload) {
         replace_with_file_of_another_user(payload_path_in(dir, key), payload);
     },
     ".obj is owned by nobody (uid 65534), not by root (uid 0))", true},
    {"ManifestOfAnotherUser",
     [](const std::string &dir, const std::string &key, const std::string &) {
         const std::string path = manifest_path_in(dir, key);
         replace_with_file_of_another_user(path, read_file(path));
     },
     "is untrusted (owned by nobody (uid 65534), not by root (uid 0))", true},
    {"PayloadWritableByOthers",
     [](const std::string &dir, const std::string &key, const std::string &) {
         ASSERT_EQ(chmod(payload_path_in(dir, key).c_str(), 0666), 0);
     },
     ".obj is writable by others (mode 0666))"},
    {"ManifestWritableByItsGroup",
     [](const std::string &dir, const std::string &key, const std::string &) {
         ASSERT_EQ(chmod(manifest_path_in(dir, key).c_str(), 0664), 0);
     },
     "is untrusted (writable by group "},
    {"PayloadIsAFifo",
     [](const std::string &dir, const std::string &key, const std::string &) {
         const std::string path = payload_path_in(dir, key);
         ASSERT_EQ(unlink(path.c_str()), 0);
         ASSERT_EQ(mkfifo(path.c_str(), 0600), 0);
     },
     ".obj is not a regular file)"},
};

INSTANTIATE_TEST_SUITE_P(Kinds, DamagedEntry, ::testing::ValuesIn(kDamages),
                         [](const ::testing::TestParamInfo<Damage> &info) {
                             return std::string(info.param.name);
                         });

// A link in the cache is removed, never what it points to.
TEST_F(DiskCacheTest, LinksAreNeitherFollowedNorRemovedThrough) {
    const std::string payload = binary_payload(2048, 8);
    make_cache()->store("key", payload, "linked");
    const std::string outside_payload = root_ + "/outside.obj";
    const std::string outside_manifest = root_ + "/outside.json";
    replace_with_link(payload_path("key"), outside_payload);
    auto cache = make_cache();
    EXPECT_FALSE(cache->load("key").has_value());
    EXPECT_EQ(read_file(outside_payload), payload);

    make_cache()->store("key", payload, "linked");
    const std::string manifest = read_file(manifest_path("key"));
    replace_with_link(manifest_path("key"), outside_manifest);
    EXPECT_FALSE(cache->load("key").has_value());
    EXPECT_EQ(read_file(outside_manifest), manifest);
    EXPECT_FALSE(exists(manifest_path("key")));
    EXPECT_EQ(warnings().size(), 2u);
    EXPECT_EQ(cache->stats().corrupt_removed, 2u);
}

TEST_F(DiskCacheTest, KeyCollisionMissesAndKeepsTheOtherEntry) {
    auto cache = make_cache();
    const std::string payload = binary_payload(512, 3);
    cache->store("key one", payload, "one");
    // The manifest now claims another key with the same hash: a collision.
    const std::string path = manifest_path("key one");
    nlohmann::json manifest = nlohmann::json::parse(read_file(path));
    manifest["key"] = "key two";
    write_file(path, manifest.dump());

    EXPECT_FALSE(cache->load("key one").has_value());
    EXPECT_TRUE(warnings().empty());
    EXPECT_TRUE(exists(path));
    EXPECT_EQ(cache->stats().corrupt_removed, 0u);
    EXPECT_EQ(cache->stats().misses, 1u);

    cache->store("key one", payload, "one again");
    EXPECT_TRUE(cache->load("key one") == payload);
}

// ---------------------------------------------------------------------------
// Unusable directories: one warning, memory-only, no exception.

// Runs `body` as an unprivileged user: root ignores permissions. Returns false
// (and the test skips) when there is no way to drop privileges.
bool run_without_privileges(const std::string &root, const std::function<void()> &body) {
    if (geteuid() != 0) {
        body();
        return true;
    }
    constexpr uid_t kNobody = 65534;
    if (chown(root.c_str(), kNobody, kNobody) != 0) return false;
    std::fflush(stdout);
    const pid_t child = fork();
    if (child < 0) return false;
    if (child == 0) {
        if (setgid(kNobody) != 0 || setuid(kNobody) != 0) _exit(3);
        body();
        std::fflush(stdout);
        _exit(::testing::Test::HasFailure() ? 1 : 0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 3) return false;
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "the unprivileged part failed (status " << status << ")";
    return true;
}

TEST_F(DiskCacheTest, ReadOnlyDirectoryDegradesToMemoryOnly) {
    const bool ran = run_without_privileges(root_, [&] {
        ASSERT_EQ(geteuid() == 0, false);
        auto writer = make_cache();
        writer->store("old", "an entry from before", "old");
        ASSERT_TRUE(writer->load("old").has_value());
        ASSERT_EQ(chmod(dir_.c_str(), 0555), 0);

        auto cache = make_cache();
        EXPECT_TRUE(cache->enabled());
        EXPECT_NO_THROW(cache->store("new", binary_payload(2048, 5), "new"));
        EXPECT_FALSE(cache->enabled());
        std::vector<std::string> seen = warnings();
        ASSERT_EQ(seen.size(), 1u);
        EXPECT_NE(seen[0].find(dir_), std::string::npos) << seen[0];
        EXPECT_NE(seen[0].find("Permission denied"), std::string::npos) << seen[0];
        EXPECT_NE(seen[0].find("memory only"), std::string::npos) << seen[0];

        EXPECT_NO_THROW(cache->store("newer", "x", "newer"));
        EXPECT_EQ(warnings().size(), 1u);
        EXPECT_FALSE(cache->load("new").has_value());
        EXPECT_EQ(cache->stats().store_failures, 1u);
        EXPECT_EQ(cache->stats().stores, 0u);
        // What is already there still serves; nothing was left behind.
        EXPECT_EQ(cache->load("old"), std::optional<std::string>("an entry from before"));
        EXPECT_TRUE(files_starting_with(dir_, ".tmp.").empty());
        chmod(dir_.c_str(), 0700);
    });
    if (!ran) GTEST_SKIP() << "running as root and cannot drop privileges to test permissions";
}

// ---------------------------------------------------------------------------
// Directories another user could write: refused, with one warning; nothing is
// read, written or removed there (trust.h has the rule).

struct Hostility {
    const char *name;
    // Makes the cache directory `dir` (in `root`), which holds an entry,
    // writable by another user; returns the path to configure.
    std::function<std::string(const std::string &root, const std::string &dir)> apply;
    // Why it is refused.
    std::function<std::string(const std::string &root, const std::string &dir)> reason;
    bool needs_root = false;  // hands a file to another user
};

void PrintTo(const Hostility &hostility, std::ostream *stream) { *stream << hostility.name; }

class HostileDirectory : public DiskCacheTest, public ::testing::WithParamInterface<Hostility> {};

TEST_P(HostileDirectory, IsRefusedWithOneWarning) {
    const Hostility &hostility = GetParam();
    if (hostility.needs_root && geteuid() != 0) GTEST_SKIP() << kNotRoot;
    const std::string payload = binary_payload(4096, 11);
    make_cache()->store("kernel", payload, "kernel");
    ASSERT_TRUE(exists(manifest_path("kernel")));
    const std::string dir = hostility.apply(root_, dir_);
    const std::string reason = hostility.reason(root_, dir_);
    const std::vector<std::string> files = files_starting_with(dir, "");

    auto cache = make_cache("v1", kldiv::cache::kDefaultMaxBytes, dir);
    EXPECT_FALSE(cache->load("kernel").has_value());  // it is there, but not loaded
    EXPECT_FALSE(cache->enabled());
    EXPECT_EQ(cache->refusal(), reason);
    ASSERT_EQ(warnings().size(), 1u);
    EXPECT_EQ(warnings()[0], "kldiv: kernel cache directory " + dir + " refused: " + reason +
                                 "; the disk cache is off for this process");

    // Nothing is written, listed, pruned or cleared there either.
    cache->store("another kernel", payload, "another");
    EXPECT_FALSE(cache->load("another kernel").has_value());
    EXPECT_TRUE(cache->list().empty());
    EXPECT_EQ(cache->total_bytes(), 0u);
    EXPECT_EQ(cache->prune(0), 0u);
    EXPECT_EQ(cache->clear(), 0u);
    EXPECT_EQ(files_starting_with(dir, ""), files);
    const kldiv::cache::Stats stats = cache->stats();
    EXPECT_EQ(stats.hits, 0u);
    EXPECT_EQ(stats.stores, 0u);
    EXPECT_EQ(stats.store_failures, 0u);
    EXPECT_EQ(stats.corrupt_removed, 0u);

    // One warning a process: another cache on the directory says nothing more.
    auto again = make_cache("v1", kldiv::cache::kDefaultMaxBytes, dir);
    EXPECT_FALSE(again->load("kernel").has_value());
    EXPECT_EQ(again->refusal(), reason);
    EXPECT_EQ(warnings().size(), 1u);
}

const Hostility kHostilities[] = {
    {"DirectoryOfAnotherUser",
     [](const std::string &, const std::string &dir) {
         EXPECT_EQ(chown(dir.c_str(), kOtherUser, kOtherGroup), 0);
         return dir;
     },
     [](const std::string &, const std::string &dir) {
         return dir + " is owned by nobody (uid 65534), not by root (uid 0)";
     },
     true},
    {"DirectoryWritableByAll",
     [](const std::string &, const std::string &dir) {
         EXPECT_EQ(chmod(dir.c_str(), 0777), 0);
         return dir;
     },
     [](const std::string &, const std::string &dir) {
         return dir + " is writable by others (mode 0777)";
     }},
    {"DirectoryWritableByAnotherGroup",
     [](const std::string &, const std::string &dir) {
         EXPECT_EQ(chown(dir.c_str(), uid_t(-1), kOtherGroup), 0);
         EXPECT_EQ(chmod(dir.c_str(), 0770), 0);
         return dir;
     },
     [](const std::string &, const std::string &dir) {
         return dir + " is writable by group nogroup (mode 0770)";
     },
     true},
    {"StickyDirectoryWritableByAll",  // others could still add files
     [](const std::string &, const std::string &dir) {
         EXPECT_EQ(chmod(dir.c_str(), 01777), 0);
         return dir;
     },
     [](const std::string &, const std::string &dir) {
         return dir + " is writable by others (mode 1777)";
     }},
    {"ParentWritableByAllWithoutStickyBit",  // others could rename the directory away
     [](const std::string &root, const std::string &dir) {
         EXPECT_EQ(chmod(root.c_str(), 0777), 0);
         return dir;
     },
     [](const std::string &root, const std::string &) {
         return root + " is writable by others and has no sticky bit (mode 0777)";
     }},
    {"ParentOfAnotherUser",
     [](const std::string &root, const std::string &dir) {
         EXPECT_EQ(chown(root.c_str(), kOtherUser, kOtherGroup), 0);
         return dir;
     },
     [](const std::string &root, const std::string &) {
         return root + " is owned by nobody (uid 65534), not by root";
     },
     true},
    {"LinkOfAnotherUserInAStickyParent",  // its owner could point it elsewhere
     [](const std::string &root, const std::string &dir) {
         EXPECT_EQ(chmod(root.c_str(), 01777), 0);
         const std::string link = root + "/link";
         EXPECT_EQ(symlink(dir.c_str(), link.c_str()), 0);
         EXPECT_EQ(lchown(link.c_str(), kOtherUser, kOtherGroup), 0);
         return link;
     },
     [](const std::string &root, const std::string &) {
         return root + "/link is a symbolic link owned by nobody (uid 65534)";
     },
     true},
    {"LinkToADirectoryInAWritableParent",  // the link is resolved, then judged
     [](const std::string &root, const std::string &dir) {
         const std::string open = root + "/open";
         EXPECT_EQ(mkdir(open.c_str(), 0700), 0);
         EXPECT_EQ(chmod(open.c_str(), 0777), 0);
         EXPECT_EQ(rename(dir.c_str(), (open + "/cache").c_str()), 0);
         EXPECT_EQ(symlink("open/cache", (root + "/link").c_str()), 0);
         return root + "/link";
     },
     [](const std::string &root, const std::string &) {
         return root + "/open is writable by others and has no sticky bit (mode 0777)";
     }},
};

INSTANTIATE_TEST_SUITE_P(Kinds, HostileDirectory, ::testing::ValuesIn(kHostilities),
                         [](const ::testing::TestParamInfo<Hostility> &info) {
                             return std::string(info.param.name);
                         });

// What the rule allows: a sticky parent like /tmp, a directory others may
// read, a link of the user's own, a relative path.
TEST_F(DiskCacheTest, StickyParentsReadableDirectoriesAndOwnLinksAreTrusted) {
    ASSERT_EQ(chmod(root_.c_str(), 01777), 0);
    auto cache = make_cache();
    cache->store("key", "payload", "description");
    EXPECT_EQ(cache->load("key"), std::optional<std::string>("payload"));
    EXPECT_EQ(cache->refusal(), "");
    EXPECT_TRUE(cache->enabled());

    ASSERT_EQ(chmod(dir_.c_str(), 0755), 0);
    EXPECT_EQ(make_cache()->load("key"), std::optional<std::string>("payload"));
    const std::string link = root_ + "/link";
    ASSERT_EQ(symlink("cache", link.c_str()), 0);
    auto linked = make_cache("v1", kldiv::cache::kDefaultMaxBytes, link);
    EXPECT_EQ(linked->load("key"), std::optional<std::string>("payload"));
    EXPECT_EQ(linked->refusal(), "");

    char here[4096];
    ASSERT_NE(getcwd(here, sizeof here), nullptr);
    ASSERT_EQ(chdir(root_.c_str()), 0);
    auto relative = make_cache("v1", kldiv::cache::kDefaultMaxBytes, "cache/../link");
    EXPECT_EQ(relative->load("key"), std::optional<std::string>("payload"));
    ASSERT_EQ(chdir(here), 0);
    EXPECT_TRUE(warnings().empty());
}

// A missing directory is judged by what exists above it: made below a sticky
// parent, refused below one that others may write.
TEST_F(DiskCacheTest, MissingDirectoryIsMadeOnlyBelowTrustedParents) {
    ASSERT_EQ(chmod(root_.c_str(), 01777), 0);
    auto cache = make_cache("v1", kldiv::cache::kDefaultMaxBytes, root_ + "/a/b");
    EXPECT_FALSE(cache->load("key").has_value());
    cache->store("key", "payload", "description");
    EXPECT_EQ(cache->load("key"), std::optional<std::string>("payload"));
    EXPECT_TRUE(warnings().empty());

    ASSERT_EQ(chmod(root_.c_str(), 0777), 0);
    auto refused = make_cache("v1", kldiv::cache::kDefaultMaxBytes, root_ + "/c/d");
    refused->store("key", "payload", "description");
    EXPECT_FALSE(exists(root_ + "/c"));
    ASSERT_EQ(warnings().size(), 1u);
    EXPECT_NE(warnings()[0].find(root_ + " is writable by others and has no sticky bit"),
              std::string::npos)
        << warnings()[0];
}

// Another user makes the directory first in a shared sticky parent (/tmp).
TEST_F(DiskCacheTest, DirectoryMadeFirstByAnotherUserIsRefused) {
    if (geteuid() != 0) GTEST_SKIP() << kNotRoot;
    ASSERT_EQ(chmod(root_.c_str(), 01777), 0);
    ASSERT_EQ(mkdir(dir_.c_str(), 0777), 0);
    ASSERT_EQ(chmod(dir_.c_str(), 0777), 0);
    ASSERT_EQ(chown(dir_.c_str(), kOtherUser, kOtherGroup), 0);
    auto cache = make_cache("v1", kldiv::cache::kDefaultMaxBytes, dir_ + "/kldiv");
    cache->store("key", "payload", "description");
    EXPECT_FALSE(exists(dir_ + "/kldiv"));
    EXPECT_EQ(cache->refusal(),
              dir_ + " is owned by nobody (uid 65534), not by root");
    EXPECT_EQ(warnings().size(), 1u);
}

TEST_F(DiskCacheTest, MissingDirectoryIsCreated) {
    const std::string nested = root_ + "/a/b/c";
    auto cache = make_cache("v1", kldiv::cache::kDefaultMaxBytes, nested);
    cache->store("key", "payload", "description");
    EXPECT_TRUE(cache->enabled());
    EXPECT_TRUE(warnings().empty());
    struct stat info;
    ASSERT_EQ(stat(nested.c_str(), &info), 0);
    EXPECT_TRUE(S_ISDIR(info.st_mode));
    EXPECT_EQ(info.st_mode & 0777, 0700u);
    EXPECT_EQ(cache->load("key"), std::optional<std::string>("payload"));
}

TEST_F(DiskCacheTest, DirectoryThatIsAFileDegrades) {
    const std::string file = root_ + "/not_a_directory";
    write_file(file, "hello");
    for (const std::string &dir : {file, file + "/below"}) {
        warnings_.clear();
        auto cache = make_cache("v1", kldiv::cache::kDefaultMaxBytes, dir);
        EXPECT_NO_THROW(cache->store("key", "payload", "description"));
        EXPECT_NO_THROW(cache->store("key2", "payload", "description"));
        EXPECT_FALSE(cache->enabled());
        const std::vector<std::string> seen = warnings();
        ASSERT_EQ(seen.size(), 1u) << dir;
        EXPECT_NE(seen[0].find("Not a directory"), std::string::npos) << seen[0];
        EXPECT_FALSE(cache->load("key").has_value());
        EXPECT_EQ(cache->stats().store_failures, 1u);
    }
    EXPECT_EQ(read_file(file), "hello");
}

// A full disk, as the file-size limit makes it: the write fails part way.
TEST_F(DiskCacheTest, FullDiskDegradesAndLeavesNoTemporaries) {
    auto cache = make_cache();
    cache->store("small", "fits", "small");
    ASSERT_TRUE(cache->enabled());

    struct rlimit saved;
    ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
    const auto previous_handler = signal(SIGXFSZ, SIG_IGN);
    struct rlimit small = saved;
    small.rlim_cur = 16384;
    ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
    cache->store("big", binary_payload(100000, 9), "big");
    ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &saved), 0);
    signal(SIGXFSZ, previous_handler);

    EXPECT_FALSE(cache->enabled());
    const std::vector<std::string> seen = warnings();
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_NE(seen[0].find("File too large"), std::string::npos) << seen[0];
    EXPECT_TRUE(files_starting_with(dir_, ".tmp.").empty());
    EXPECT_FALSE(cache->load("big").has_value());
    EXPECT_EQ(cache->load("small"), std::optional<std::string>("fits"));
    // Later stores do not try again, and do not warn again.
    cache->store("later", "x", "later");
    EXPECT_EQ(warnings().size(), 1u);
    EXPECT_FALSE(exists(manifest_path("later")));
}

// ---------------------------------------------------------------------------
// Size limit, LRU order, leftovers.

TEST_F(DiskCacheTest, PruneKeepsTheMostRecentlyUsed) {
    auto cache = make_cache();
    const std::int64_t base = 1700000000;
    for (int i = 0; i < 5; ++i) {
        const std::string key = "key " + std::to_string(i);
        cache->store(key, binary_payload(10000, i), "entry " + std::to_string(i));
    }
    // Used in the order 0, 1, 2, 3, 4; then a hit makes 0 the most recent.
    for (int i = 0; i < 5; ++i) set_mtime(manifest_path("key " + std::to_string(i)), base + i);
    ASSERT_TRUE(cache->load("key 0").has_value());

    std::vector<Entry> entries = cache->list();
    ASSERT_EQ(entries.size(), 5u);
    EXPECT_EQ(entries.front().description, "entry 1");
    EXPECT_EQ(entries.front().last_used_unix, base + 1);
    EXPECT_EQ(entries.back().description, "entry 0");

    const std::uint64_t entry_bytes = entries[0].bytes;
    const std::uint64_t before = cache->total_bytes();
    ASSERT_EQ(before, 5 * entry_bytes);
    const std::uint64_t freed = cache->prune(2 * entry_bytes + entry_bytes / 2);
    EXPECT_EQ(freed, 3 * entry_bytes);
    EXPECT_EQ(cache->total_bytes(), before - freed);

    entries = cache->list();
    ASSERT_EQ(entries.size(), 2u);
    EXPECT_EQ(entries[0].description, "entry 4");
    EXPECT_EQ(entries[1].description, "entry 0");
    for (int i = 1; i < 4; ++i) {
        const std::string key = "key " + std::to_string(i);
        EXPECT_FALSE(cache->load(key).has_value()) << key;
        EXPECT_TRUE(payload_path(key).empty()) << key;
    }
    EXPECT_TRUE(cache->load("key 4") == binary_payload(10000, 4));
    EXPECT_TRUE(cache->load("key 0") == binary_payload(10000, 0));
    EXPECT_TRUE(warnings().empty());

    EXPECT_EQ(cache->prune(0), 2 * entry_bytes);
    EXPECT_TRUE(cache->list().empty());
    EXPECT_EQ(cache->total_bytes(), 0u);
}

TEST_F(DiskCacheTest, StoreKeepsTheCacheWithinItsLimit) {
    const std::uint64_t limit = 3 * 10000 + 3 * 1000;  // three entries and their manifests
    auto cache = make_cache("v1", limit);
    for (int i = 0; i < 6; ++i) {
        const std::string key = "key " + std::to_string(i);
        cache->store(key, binary_payload(10000, i), "entry " + std::to_string(i));
        set_mtime(manifest_path(key), 1700000000 + i);
        EXPECT_LE(cache->total_bytes(), limit) << "after storing " << key;
    }
    const std::vector<Entry> entries = cache->list();
    ASSERT_EQ(entries.size(), 3u);
    EXPECT_EQ(entries[0].description, "entry 3");
    EXPECT_EQ(entries[2].description, "entry 5");
    EXPECT_TRUE(cache->load("key 5") == binary_payload(10000, 5));
    EXPECT_FALSE(cache->load("key 0").has_value());

    // An entry larger than the whole limit is not stored at all.
    cache->store("huge", binary_payload(limit + 1, 1), "huge");
    EXPECT_FALSE(exists(manifest_path("huge")));
    EXPECT_EQ(cache->list().size(), 3u);
    EXPECT_TRUE(warnings().empty());
}

TEST_F(DiskCacheTest, PruneRemovesStaleLeftoversOnly) {
    auto cache = make_cache();
    cache->store("live", "live payload", "live");
    const std::string old_temporary = dir_ + "/.tmp.1.1.1";
    const std::string young_temporary = dir_ + "/.tmp.2.2.2";
    const std::string orphan =
        dir_ + "/" + kldiv::cache::hash_key("gone") + ".0123456789abcdef.obj";
    const std::string young_orphan =
        dir_ + "/" + kldiv::cache::hash_key("gone2") + ".0123456789abcdef.obj";
    const std::string unrelated = dir_ + "/README";
    for (const std::string &path :
         {old_temporary, young_temporary, orphan, young_orphan, unrelated}) {
        write_file(path, "leftover");
    }
    const std::int64_t long_ago = std::int64_t(time(nullptr)) - 3600;
    set_mtime(old_temporary, long_ago);
    set_mtime(orphan, long_ago);
    set_mtime(unrelated, long_ago);

    EXPECT_EQ(cache->prune(kldiv::cache::kDefaultMaxBytes), 16u);
    EXPECT_FALSE(exists(old_temporary));
    EXPECT_FALSE(exists(orphan));
    EXPECT_TRUE(exists(young_temporary));
    EXPECT_TRUE(exists(young_orphan));
    EXPECT_TRUE(exists(unrelated));
    EXPECT_EQ(cache->load("live"), std::optional<std::string>("live payload"));
}

TEST_F(DiskCacheTest, ClearRemovesEveryEntryAndNothingElse) {
    auto cache = make_cache();
    for (int i = 0; i < 3; ++i) cache->store("key " + std::to_string(i), "payload", "entry");
    write_file(dir_ + "/.tmp.9.9.9", "half written");
    write_file(dir_ + "/notes.txt", "not ours");
    EXPECT_EQ(cache->clear(), 3u);
    EXPECT_TRUE(cache->list().empty());
    EXPECT_EQ(cache->total_bytes(), 0u);
    EXPECT_FALSE(exists(dir_ + "/.tmp.9.9.9"));
    EXPECT_EQ(read_file(dir_ + "/notes.txt"), "not ours");
    EXPECT_FALSE(cache->load("key 0").has_value());
    EXPECT_EQ(cache->clear(), 0u);
    cache->store("key 0", "again", "entry");
    EXPECT_EQ(cache->load("key 0"), std::optional<std::string>("again"));
}

TEST_F(DiskCacheTest, ListMarksForeignAndUnreadableEntries) {
    make_cache("v1")->store("mine", "1", "mine");
    make_cache("v2")->store("theirs", "2", "theirs");
    write_file(dir_ + "/" + kldiv::cache::hash_key("broken") + ".json", "{not json");
    const std::vector<Entry> entries = make_cache("v1")->list();
    ASSERT_EQ(entries.size(), 3u);
    int valid = 0, foreign = 0, unreadable = 0;
    for (const Entry &entry : entries) {
        if (entry.state == Entry::State::Valid) {
            ++valid;
            EXPECT_EQ(entry.description, "mine");
        } else if (entry.state == Entry::State::Foreign) {
            ++foreign;
            EXPECT_EQ(entry.description, "theirs");
            EXPECT_EQ(entry.version, "v2");
        } else {
            ++unreadable;
            EXPECT_EQ(entry.manifest, kldiv::cache::hash_key("broken") + ".json");
        }
    }
    EXPECT_EQ(valid, 1);
    EXPECT_EQ(foreign, 1);
    EXPECT_EQ(unreadable, 1);
}

// ---------------------------------------------------------------------------
// Names, sizes and where the cache lives.

TEST(DiskCacheNames, HashKeyIsStableAndSpreads) {
    // Fixed values: names must not change between runs, builds or machines.
    EXPECT_EQ(kldiv::cache::hash_key(""), "c47af10b2a9a83805a8961c76d2c8cf7");
    EXPECT_EQ(kldiv::cache::hash_key("kldiv_fwd_sum_f32"), "bf4ccfe42b5922d10f688b784e07d51f");
    EXPECT_EQ(kldiv::cache::checksum64("kldiv"), 0x2a948852e09bc037ULL);
    std::set<std::string> hashes;
    for (int i = 0; i < 10000; ++i) {
        const std::string hash = kldiv::cache::hash_key("key " + std::to_string(i));
        ASSERT_EQ(hash.size(), 32u);
        ASSERT_EQ(hash.find_first_not_of("0123456789abcdef"), std::string::npos);
        hashes.insert(hash);
    }
    EXPECT_EQ(hashes.size(), 10000u);
    EXPECT_NE(kldiv::cache::hash_key(std::string("a\0b", 3)), kldiv::cache::hash_key("a"));
    EXPECT_NE(kldiv::cache::checksum64(std::string(16, '\0')),
              kldiv::cache::checksum64(std::string(17, '\0')));
}

TEST(DiskCacheNames, SizesParseAndFormat) {
    using kldiv::cache::format_bytes;
    using kldiv::cache::parse_bytes;
    EXPECT_EQ(parse_bytes("0"), std::optional<std::uint64_t>(0));
    EXPECT_EQ(parse_bytes("4096"), std::optional<std::uint64_t>(4096));
    EXPECT_EQ(parse_bytes("512M"), std::optional<std::uint64_t>(512ull << 20));
    EXPECT_EQ(parse_bytes("2G"), std::optional<std::uint64_t>(2ull << 30));
    EXPECT_EQ(parse_bytes("64KiB"), std::optional<std::uint64_t>(64ull << 10));
    EXPECT_EQ(parse_bytes("1gb"), std::optional<std::uint64_t>(1ull << 30));
    EXPECT_FALSE(parse_bytes("").has_value());
    EXPECT_FALSE(parse_bytes("M").has_value());
    EXPECT_FALSE(parse_bytes("-1").has_value());
    EXPECT_FALSE(parse_bytes("12Q").has_value());
    EXPECT_FALSE(parse_bytes("1 G").has_value());
    EXPECT_FALSE(parse_bytes("99999999999999999999T").has_value());
    EXPECT_EQ(format_bytes(0), "0 B");
    EXPECT_EQ(format_bytes(1023), "1023 B");
    EXPECT_EQ(format_bytes(1536), "1.5 KiB");
    EXPECT_EQ(format_bytes(kldiv::cache::kDefaultMaxBytes), "1.0 GiB");
}

// Sets environment variables for one test and puts them back after it.
class ScopedEnvironment {
public:
    ~ScopedEnvironment() {
        for (const auto &[name, value] : saved_) {
            if (value) {
                setenv(name.c_str(), value->c_str(), 1);
            } else {
                unsetenv(name.c_str());
            }
        }
    }
    void set(const std::string &name, const char *value) {
        if (!saved_.count(name)) {
            const char *old = std::getenv(name.c_str());
            saved_[name] = old ? std::optional<std::string>(old) : std::nullopt;
        }
        if (value) {
            setenv(name.c_str(), value, 1);
        } else {
            unsetenv(name.c_str());
        }
    }

private:
    std::map<std::string, std::optional<std::string>> saved_;
};

// The default places work as before the rule: made private, then trusted.
TEST_F(DiskCacheTest, DefaultDirectoriesAndOffWorkAsBefore) {
    ScopedEnvironment environment;
    environment.set("KLDIV_CACHE_DIR", nullptr);
    environment.set("XDG_CACHE_HOME", nullptr);
    environment.set("HOME", (root_ + "/home").c_str());
    ASSERT_EQ(mkdir((root_ + "/home").c_str(), 0755), 0);
    environment.set("XDG_CACHE_HOME", (root_ + "/xdg").c_str());
    const std::string xdg = kldiv::cache::resolve_cache_dir("");
    environment.set("XDG_CACHE_HOME", nullptr);
    const std::string home = kldiv::cache::resolve_cache_dir("");
    EXPECT_EQ(xdg, root_ + "/xdg/kldiv");
    EXPECT_EQ(home, root_ + "/home/.cache/kldiv");
    for (const std::string &dir : {xdg, home}) {
        auto cache = make_cache("v1", kldiv::cache::kDefaultMaxBytes, dir);
        cache->store("key", "payload", "description");
        EXPECT_EQ(cache->load("key"), std::optional<std::string>("payload")) << dir;
        EXPECT_EQ(cache->refusal(), "");
        struct stat info;
        ASSERT_EQ(stat(dir.c_str(), &info), 0);
        EXPECT_EQ(info.st_mode & 07777, 0700u) << dir;
    }
    environment.set("KLDIV_CACHE_DIR", "off");
    DiskCache disabled(kldiv::cache::resolve_cache_dir(""), kldiv::cache::kDefaultMaxBytes, "v1",
                       nullptr);
    EXPECT_EQ(disabled.dir(), "");
    EXPECT_FALSE(disabled.enabled());
    EXPECT_EQ(disabled.refusal(), "");
    EXPECT_TRUE(warnings().empty());
}

TEST(DiskCacheDirectory, ResolvesInOrder) {
    using kldiv::cache::resolve_cache_dir;
    ScopedEnvironment environment;
    environment.set("KLDIV_CACHE_DIR", "/var/cache/explicit");
    environment.set("XDG_CACHE_HOME", "/xdg");
    environment.set("HOME", "/home/someone");

    EXPECT_EQ(resolve_cache_dir("/configured"), "/configured");
    EXPECT_EQ(resolve_cache_dir("off"), "");
    EXPECT_EQ(resolve_cache_dir(""), "/var/cache/explicit");

    environment.set("KLDIV_CACHE_DIR", "off");
    EXPECT_EQ(resolve_cache_dir(""), "");
    EXPECT_EQ(resolve_cache_dir("/configured"), "/configured");  // the caller's choice wins

    environment.set("KLDIV_CACHE_DIR", "");
    EXPECT_EQ(resolve_cache_dir(""), "/xdg/kldiv");
    environment.set("KLDIV_CACHE_DIR", nullptr);
    EXPECT_EQ(resolve_cache_dir(""), "/xdg/kldiv");

    environment.set("XDG_CACHE_HOME", "relative/is/ignored");
    EXPECT_EQ(resolve_cache_dir(""), "/home/someone/.cache/kldiv");
    environment.set("XDG_CACHE_HOME", nullptr);
    EXPECT_EQ(resolve_cache_dir(""), "/home/someone/.cache/kldiv");

    environment.set("HOME", nullptr);
    EXPECT_EQ(resolve_cache_dir(""), "");
}

// ---------------------------------------------------------------------------
// Sharing: processes and threads storing and loading the same keys.

constexpr int kSharedKeys = 20;

// Forks `count` processes that start `body(p)` together (released by the
// parent closing a pipe) and exit with what it returns; returns their exit
// statuses (-1 for a process that did not exit normally).
std::vector<int> run_processes_together(int count, const std::function<int(int)> &body) {
    int barrier[2];
    EXPECT_EQ(pipe(barrier), 0);
    std::fflush(stdout);
    std::vector<pid_t> children;
    for (int p = 0; p < count; ++p) {
        const pid_t child = fork();
        EXPECT_GE(child, 0);
        if (child == 0) {
            close(barrier[1]);
            char byte;
            while (read(barrier[0], &byte, 1) < 0 && errno == EINTR) {
            }
            _exit(body(p));
        }
        children.push_back(child);
    }
    close(barrier[0]);
    close(barrier[1]);
    std::vector<int> statuses;
    for (const pid_t child : children) {
        int status = 0;
        EXPECT_EQ(waitpid(child, &status, 0), child);
        statuses.push_back(WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
    return statuses;
}

std::string shared_key(int i) { return "shared kernel " + std::to_string(i); }
// Sizes from 1 byte to ~200 KiB, so a torn write would show as a wrong size.
std::string shared_payload(int i) { return binary_payload(1 + i * 10007, 100 + i); }

// Stores and loads the shared keys and some of its own; returns the number of
// loads that returned anything but nothing or the exact payload, or, with
// `own_must_hit`, that missed a key of its own just stored.
int exercise(DiskCache &cache, const std::string &worker, int rounds, bool own_must_hit) {
    int wrong = 0;
    for (int round = 0; round < rounds; ++round) {
        for (int i = 0; i < kSharedKeys; ++i) {
            const int k = (i + round * 7) % kSharedKeys;
            const std::optional<std::string> before = cache.load(shared_key(k));
            if (before && *before != shared_payload(k)) ++wrong;
            cache.store(shared_key(k), shared_payload(k), "shared " + std::to_string(k));
            const std::optional<std::string> after = cache.load(shared_key(k));
            if (after && *after != shared_payload(k)) ++wrong;
        }
        const std::string own_key = worker + " round " + std::to_string(round);
        const std::string own_payload = binary_payload(3000 + round, round * 31 + 7) + worker;
        cache.store(own_key, own_payload, own_key);
        const std::optional<std::string> own = cache.load(own_key);
        if (own ? *own != own_payload : own_must_hit) ++wrong;
    }
    return wrong;
}

TEST_F(DiskCacheTest, ProcessesSharingADirectoryNeverSeePartialEntries) {
    constexpr int kProcesses = 4;
    constexpr int kRounds = 15;
    const std::vector<int> statuses = run_processes_together(kProcesses, [&](int p) {
        std::atomic<int> warnings{0};
        DiskCache cache(dir_, kldiv::cache::kDefaultMaxBytes, "v1", [&](const std::string &message) {
            std::fprintf(stderr, "process %d: %s\n", p, message.c_str());
            ++warnings;
        });
        const int wrong = exercise(cache, "process " + std::to_string(p), kRounds, true);
        if (wrong > 0) std::fprintf(stderr, "process %d: %d wrong loads\n", p, wrong);
        return wrong > 0 ? 1 : warnings > 0 ? 2 : cache.stats().hits == 0 ? 3 : 0;
    });
    for (int status : statuses) EXPECT_EQ(status, 0) << "1: a wrong payload, 2: a warning, 3: no hit";

    auto cache = make_cache();
    for (int i = 0; i < kSharedKeys; ++i) {
        const std::optional<std::string> loaded = cache->load(shared_key(i));
        ASSERT_TRUE(loaded.has_value()) << i;
        EXPECT_TRUE(*loaded == shared_payload(i)) << i;
    }
    EXPECT_EQ(cache->list().size(), std::size_t(kSharedKeys + kProcesses * kRounds));
    EXPECT_TRUE(files_starting_with(dir_, ".tmp.").empty());
    EXPECT_TRUE(warnings().empty());
}

// With a limit that keeps only part of the keys, processes prune under each
// other's feet: loads may miss, but never return a wrong payload.
TEST_F(DiskCacheTest, ProcessesPruningEachOtherNeverSeeWrongPayloads) {
    constexpr int kProcesses = 4;
    const std::vector<int> statuses = run_processes_together(kProcesses, [&](int p) {
        DiskCache cache(dir_, 1 << 20, "v1", [](const std::string &) {});
        return exercise(cache, "process " + std::to_string(p), 10, false) > 0 ? 1 : 0;
    });
    for (int status : statuses) EXPECT_EQ(status, 0);
    // Quiet now: one more prune leaves no young orphan or temporary over the limit.
    auto cache = make_cache("v1", 1 << 20);
    cache->prune(1 << 20);
    EXPECT_LE(cache->total_bytes(), std::uint64_t(1 << 20));
    EXPECT_TRUE(files_starting_with(dir_, ".tmp.").empty());
    for (const Entry &entry : cache->list()) {
        const std::optional<std::string> loaded = cache->load(entry.key);
        if (loaded && entry.key.rfind("shared kernel ", 0) == 0) {
            EXPECT_TRUE(*loaded == shared_payload(std::stoi(entry.key.substr(14)))) << entry.key;
        }
    }
}

// Processes that compile one kernel may produce two byte-different objects
// (two payload names), and processes with the same bytes share one: however
// their stores interleave, the entry never names a payload another writer
// removed as replaced, so every load just after a store hits.
TEST_F(DiskCacheTest, ProcessesStoringTwoVariantsOfAnEntryNeverLoseIt) {
    constexpr int kProcesses = 4;
    constexpr int kRounds = 400;
    const std::string key = "kernel compiled twice";
    const std::string variants[2] = {binary_payload(5000, 1), binary_payload(5000, 2)};
    const std::vector<int> statuses = run_processes_together(kProcesses, [&](int p) {
        std::atomic<int> warnings{0};
        DiskCache cache(dir_, kldiv::cache::kDefaultMaxBytes, "v1", [&](const std::string &message) {
            std::fprintf(stderr, "process %d: %s\n", p, message.c_str());
            ++warnings;
        });
        int missed = 0;
        for (int round = 0; round < kRounds; ++round) {
            cache.store(key, variants[p % 2], key);
            const std::optional<std::string> loaded = cache.load(key);
            if (!loaded || (*loaded != variants[0] && *loaded != variants[1])) ++missed;
        }
        if (missed > 0) std::fprintf(stderr, "process %d: %d loads missed or wrong\n", p, missed);
        return missed > 0 ? 1 : warnings > 0 ? 2 : 0;
    });
    for (int status : statuses) EXPECT_EQ(status, 0) << "1: a load missed or was wrong, 2: a warning";
    EXPECT_TRUE(warnings().empty());
}

TEST_F(DiskCacheTest, ThreadsSharingOneCache) {
    constexpr int kThreads = 16;
    constexpr int kRounds = 4;
    auto cache = make_cache();
    std::atomic<int> wrong{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            wrong += exercise(*cache, "thread " + std::to_string(t), kRounds, true);
        });
    }
    for (std::thread &thread : threads) thread.join();
    EXPECT_EQ(wrong.load(), 0);
    EXPECT_TRUE(warnings().empty());

    const kldiv::cache::Stats stats = cache->stats();
    const std::uint64_t loads = std::uint64_t(kThreads) * kRounds * (2 * kSharedKeys + 1);
    EXPECT_EQ(stats.hits + stats.misses, loads);
    EXPECT_EQ(stats.stores, std::uint64_t(kThreads) * kRounds * (kSharedKeys + 1));
    EXPECT_EQ(stats.store_failures, 0u);
    EXPECT_GT(stats.hits, loads / 2);
    for (int i = 0; i < kSharedKeys; ++i) {
        EXPECT_TRUE(cache->load(shared_key(i)) == shared_payload(i)) << i;
    }
    EXPECT_TRUE(files_starting_with(dir_, ".tmp.").empty());
}

}  // namespace
