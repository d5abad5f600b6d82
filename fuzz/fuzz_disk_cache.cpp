// The on-disk kernel cache's loader on entries other processes could have
// written: the fuzz input is a manifest, then (after a 0x00 0xFF 0x00 mark)
// the payload, stored under the payload name the loader expects. A load may
// miss or remove the entry; it must never crash, and a hit must return the
// payload's bytes exactly.
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

// One directory for the run, removed when the fuzzer exits (a static buffer:
// no destructor that could run before the removal).
char cache_dir_name[] = "/tmp/kldiv-fuzz-cache-XXXXXX";

void remove_cache_dir() {
    std::error_code ignored;
    fs::remove_all(cache_dir_name, ignored);
}

std::string cache_dir() {
    static const bool made = [] {
        if (mkdtemp(cache_dir_name) == nullptr) std::abort();
        std::atexit(remove_cache_dir);
        return true;
    }();
    (void)made;
    return cache_dir_name;
}

void write_file(const std::string &path, const std::string &bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), (std::streamsize)bytes.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const std::string input(reinterpret_cast<const char *>(data), size);
    const std::string mark("\0\xff\0", 3);
    const size_t at = input.find(mark);
    const std::string manifest = input.substr(0, at);
    const std::string payload = at == std::string::npos ? std::string() : input.substr(at + mark.size());

    const std::string dir = cache_dir();
    const std::string key = "fuzz kernel";
    const std::string hash = kldiv::cache::hash_key(key);
    char checksum[17];
    std::snprintf(checksum, sizeof checksum, "%016llx", (unsigned long long)kldiv::cache::checksum64(payload));
    write_file(dir + "/" + hash + ".json", manifest);
    write_file(dir + "/" + hash + "." + checksum + ".obj", payload);

    DiskCache cache(dir, 1 << 20, "fuzz version", [](const std::string &) {});
    const std::optional<std::string> loaded = cache.load(key);
    if (loaded && *loaded != payload) std::abort();
    (void)cache.list();
    (void)cache.total_bytes();
    cache.prune(1 << 20);

    std::error_code error;
    for (const auto &entry : fs::directory_iterator(dir, error)) fs::remove_all(entry.path(), error);
    return 0;
}
