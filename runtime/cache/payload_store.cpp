#include "payload_store.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>

namespace kldiv::cache {

// Hashing: 8 bytes a step, little-endian whatever the host, so names and
// checksums agree across machines. Every step is a bijection of the state for
// a fixed word, so a change confined to one word always changes the result.

namespace {

std::uint64_t rotate_left(std::uint64_t x, int bits) { return (x << bits) | (x >> (64 - bits)); }

std::uint64_t load_little_endian(const unsigned char *bytes, std::size_t count) {
    std::uint64_t word = 0;
    for (std::size_t i = 0; i < count; ++i) word |= std::uint64_t(bytes[i]) << (8 * i);
    return word;
}

std::uint64_t finalize(std::uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

bool ends_with(const std::string &text, const std::string &suffix) {
    return text.size() >= suffix.size() &&
           text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::uint64_t hash64(const std::string &text, std::uint64_t seed) {
    constexpr std::uint64_t k1 = 0x87c37b91114253d5ULL, k2 = 0x4cf5ad432745937fULL;
    const auto *bytes = reinterpret_cast<const unsigned char *>(text.data());
    const std::size_t size = text.size();
    std::uint64_t h = seed ^ 0x9e3779b97f4a7c15ULL;
    auto absorb = [&](std::uint64_t word) {
        word = rotate_left(word * k1, 31) * k2;
        h = rotate_left(h ^ word, 27) * 5 + 0x52dce729;
    };
    std::size_t i = 0;
    for (; i + 8 <= size; i += 8) absorb(load_little_endian(bytes + i, 8));
    if (i < size) absorb(load_little_endian(bytes + i, size - i));
    return finalize(h ^ size);
}

std::string hex16(std::uint64_t value) {
    char text[17];
    std::snprintf(text, sizeof text, "%016" PRIx64, value);
    return text;
}

bool is_hex(const std::string &text, std::size_t begin, std::size_t count) {
    if (begin + count > text.size()) return false;
    for (std::size_t i = begin; i < begin + count; ++i) {
        const char c = text[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    }
    return true;
}

std::string payload_name(const std::string &hash, std::uint64_t checksum) {
    return hash + "." + hex16(checksum) + kPayloadSuffix;
}

// Files.

FileKind classify(const std::string &name) {
    const std::size_t manifest_length = kHashDigits + sizeof kManifestSuffix - 1;
    const std::size_t payload_length =
        kHashDigits + 1 + kChecksumDigits + sizeof kPayloadSuffix - 1;
    if (name.rfind(kTemporaryPrefix, 0) == 0) return FileKind::Temporary;
    if (name.size() == manifest_length && is_hex(name, 0, kHashDigits) &&
        ends_with(name, kManifestSuffix)) {
        return FileKind::Manifest;
    }
    if (name.size() == payload_length && is_hex(name, 0, kHashDigits) && name[kHashDigits] == '.' &&
        is_hex(name, kHashDigits + 1, kChecksumDigits) && ends_with(name, kPayloadSuffix)) {
        return FileKind::Payload;
    }
    return FileKind::Other;
}

std::unordered_map<std::string, const CacheFile *> payloads_by_name(
    const std::vector<CacheFile> &files) {
    std::unordered_map<std::string, const CacheFile *> payloads;
    for (const CacheFile &file : files) {
        if (file.kind == FileKind::Payload) payloads.emplace(file.name, &file);
    }
    return payloads;
}

bool older(const timespec &a, const timespec &b) {
    return a.tv_sec != b.tv_sec ? a.tv_sec < b.tv_sec : a.tv_nsec < b.tv_nsec;
}

std::vector<CacheFile> scan(const std::string &dir) {
    std::vector<CacheFile> files;
    DIR *stream = opendir(dir.c_str());
    if (!stream) return files;
    const int dir_fd = dirfd(stream);
    while (const dirent *item = readdir(stream)) {
        const std::string name = item->d_name;
        const FileKind kind = classify(name);
        if (kind == FileKind::Other) continue;
        struct stat info;
        if (fstatat(dir_fd, name.c_str(), &info, AT_SYMLINK_NOFOLLOW) != 0) continue;
        if (!S_ISREG(info.st_mode)) continue;
        files.push_back({name, kind, std::uint64_t(info.st_size), info.st_mtim});
    }
    closedir(stream);
    return files;
}

bool read_all(int fd, std::size_t size, std::string *text) {
    text->resize(size);
    std::size_t done = 0;
    while (done < size) {
        const ssize_t got = read(fd, text->data() + done, size - done);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return false;
        done += std::size_t(got);
    }
    return true;
}

bool write_new_file(const std::string &path, const std::string &data, int *error) {
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        *error = errno;
        return false;
    }
    std::size_t done = 0;
    while (done < data.size()) {
        const ssize_t wrote = write(fd, data.data() + done, data.size() - done);
        if (wrote < 0 && errno == EINTR) continue;
        if (wrote <= 0) {
            *error = wrote < 0 ? errno : ENOSPC;
            close(fd);
            unlink(path.c_str());
            return false;
        }
        done += std::size_t(wrote);
    }
    // Without an fsync a crash can leave a short payload behind a manifest;
    // the checksum on load catches that, which is cheaper than syncing every store.
    if (close(fd) != 0) {
        *error = errno;
        unlink(path.c_str());
        return false;
    }
    return true;
}

bool make_directories(const std::string &path, int *error) {
    std::size_t position = 0;
    while (position != std::string::npos) {
        position = path.find('/', position + 1);
        const std::string prefix = path.substr(0, position);
        if (prefix.empty()) continue;
        if (mkdir(prefix.c_str(), 0700) != 0 && errno != EEXIST) {
            *error = errno;
            return false;
        }
    }
    struct stat info;
    if (stat(path.c_str(), &info) != 0) {
        *error = errno;
        return false;
    }
    if (!S_ISDIR(info.st_mode)) {
        *error = ENOTDIR;
        return false;
    }
    return true;
}

}  // namespace kldiv::cache
