// The on-disk kernel cache's loader on entries other processes could have
// written: the fuzz input is a manifest, then (after a 0x00 0xFF 0x00 mark)
// the payload, stored under the payload name the loader expects. An input may
// end with 0x00 0xFE 0x00 and one byte of flags (Hostile below) that make the
// files or the directory ones another user could have written. A load may
// miss or remove the entry; it must never crash, a hit must return the
// payload's bytes exactly, and nothing hostile may ever be a hit.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "disk_cache.h"

namespace fs = std::filesystem;
using kldiv::cache::DiskCache;

namespace {

enum Hostile : unsigned {
    kPayloadLink = 1,         // the payload is a symbolic link to a file of its bytes
    kManifestLink = 2,        // the manifest likewise
    kPayloadOfOther = 4,      // the payload belongs to another user (needs root)
    kManifestOfOther = 8,     // the manifest likewise
    kPayloadWritable = 16,    // anyone may write the payload
    kDirectoryWritable = 32,  // anyone may write the cache directory
    kDirectoryOfOther = 64,   // the cache directory belongs to another user (needs root)
    kPayloadFifo = 128,       // a FIFO stands in the payload's place
};
constexpr uid_t kOtherUser = 65534;  // nobody

// One directory for the run, holding the cache directory and the targets of
// links; removed when the fuzzer exits (a static buffer: no destructor that
// could run before the removal).
char root_name[] = "/tmp/kldiv-fuzz-cache-XXXXXX";

void remove_root() {
    std::error_code ignored;
    fs::remove_all(root_name, ignored);
}

std::string root() {
    static const bool made = [] {
        if (mkdtemp(root_name) == nullptr) std::abort();
        std::atexit(remove_root);
        if (mkdir((std::string(root_name) + "/cache").c_str(), 0700) != 0) std::abort();
        return true;
    }();
    (void)made;
    return root_name;
}

void write_file(const std::string &path, const std::string &bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), (std::streamsize)bytes.size());
}

// Writes `bytes` at `path`: as a link to `outside`, another user's, anyone's
// to write, or a FIFO when asked; true when something asked for was done (the
// file is then one that the cache must not trust).
bool plant(const std::string &path, const std::string &outside, const std::string &bytes,
           bool link, bool of_other, bool writable, bool fifo) {
    bool hostile = false;
    if (fifo) {
        hostile = mkfifo(path.c_str(), 0600) == 0;
    } else if (link) {
        write_file(outside, bytes);
        hostile = symlink(outside.c_str(), path.c_str()) == 0;
    } else {
        write_file(path, bytes);
    }
    if (of_other && lchown(path.c_str(), kOtherUser, kOtherUser) == 0) hostile = true;
    if (writable && !link && chmod(path.c_str(), 0666) == 0) hostile = true;
    return hostile;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    std::string input(reinterpret_cast<const char *>(data), size);
    const std::string flags_mark("\0\xfe\0", 3);
    unsigned flags = 0;
    if (input.size() >= 4 && input.compare(input.size() - 4, 3, flags_mark) == 0) {
        flags = static_cast<unsigned char>(input.back());
        input.resize(input.size() - 4);
    }
    const std::string mark("\0\xff\0", 3);
    const size_t at = input.find(mark);
    const std::string manifest = input.substr(0, at);
    const std::string payload = at == std::string::npos ? std::string() : input.substr(at + mark.size());

    const std::string base = root();
    const std::string dir = base + "/cache";
    const std::string key = "fuzz kernel";
    const std::string hash = kldiv::cache::hash_key(key);
    char checksum[17];
    std::snprintf(checksum, sizeof checksum, "%016llx", (unsigned long long)kldiv::cache::checksum64(payload));
    bool hostile = plant(dir + "/" + hash + ".json", base + "/outside.json", manifest, flags & kManifestLink,
                         flags & kManifestOfOther, false, false);
    hostile |= plant(dir + "/" + hash + "." + checksum + ".obj", base + "/outside.obj", payload,
                     flags & kPayloadLink, flags & kPayloadOfOther, flags & kPayloadWritable, flags & kPayloadFifo);
    if ((flags & kDirectoryWritable) && chmod(dir.c_str(), 0777) == 0) hostile = true;
    if ((flags & kDirectoryOfOther) && chown(dir.c_str(), kOtherUser, kOtherUser) == 0) hostile = true;

    DiskCache cache(dir, 1 << 20, "fuzz version", [](const std::string &) {});
    const std::optional<std::string> loaded = cache.load(key);
    if (loaded && (hostile || *loaded != payload)) std::abort();
    (void)cache.list();
    (void)cache.total_bytes();
    cache.prune(1 << 20);

    std::error_code error;
    if (chmod(dir.c_str(), 0700) != 0 || chown(dir.c_str(), geteuid(), getegid()) != 0) {
        if (geteuid() == 0) std::abort();
    }
    for (const auto &entry : fs::directory_iterator(dir, error)) fs::remove_all(entry.path(), error);
    fs::remove(base + "/outside.json", error);
    fs::remove(base + "/outside.obj", error);
    return 0;
}
