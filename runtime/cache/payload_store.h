// The files of a kernel cache directory: their names, the hash that names
// them and the checksum that guards them, scanning the directory, and whole
// files read and written. Part of the disk cache (disk_cache.h); manifests
// are manifest.h's, the writers' lock directory_lock.h's.
#pragma once

#include <fcntl.h>
#include <sys/types.h>
#include <time.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace kldiv::cache {

// Files: "<hash>.json" (manifest), "<hash>.<checksum>.obj" (payload, immutable:
// its name changes with its content) and ".tmp.<pid>.<tid>.<n>" (being written).
inline constexpr std::size_t kHashDigits = 32;
inline constexpr std::size_t kChecksumDigits = 16;
inline constexpr char kManifestSuffix[] = ".json";
inline constexpr char kPayloadSuffix[] = ".obj";
inline constexpr char kTemporaryPrefix[] = ".tmp.";
// Opening a manifest or payload: a symbolic link fails (ELOOP) rather than
// being followed, and a FIFO does not block; trust.h judges what opened.
inline constexpr int kOpenForReading = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;

// A stable 64-bit hash of `text` (the same on every run and machine).
std::uint64_t hash64(const std::string &text, std::uint64_t seed);
std::string hex16(std::uint64_t value);
// Whether text[begin, begin + count) is lowercase hex digits.
bool is_hex(const std::string &text, std::size_t begin, std::size_t count);

// The payload file of the entry `hash` whose bytes have `checksum`.
std::string payload_name(const std::string &hash, std::uint64_t checksum);

enum class FileKind { Manifest, Payload, Temporary, Other };
FileKind classify(const std::string &name);

struct CacheFile {
    std::string name;
    FileKind kind;
    std::uint64_t size;
    timespec modified;
};

// This cache's files in `dir` (regular files only; others are not ours).
std::vector<CacheFile> scan(const std::string &dir);
std::unordered_map<std::string, const CacheFile *> payloads_by_name(const std::vector<CacheFile> &files);
bool older(const timespec &a, const timespec &b);

// Reads the whole of `fd` (whose size is `size`) into `text`; false on error.
bool read_all(int fd, std::size_t size, std::string *text);
// Writes `data` to a new file `path`; on failure removes it and sets `*error`.
bool write_new_file(const std::string &path, const std::string &data, int *error);
// mkdir -p; new directories are private to the user, as the XDG spec asks.
bool make_directories(const std::string &path, int *error);

}  // namespace kldiv::cache
