// A kernel cache entry's manifest: the JSON file "<hash>.json" that names the
// entry's key, description, version tag and payload (payload_store.h), with the
// payload's size and checksum. Part of the disk cache (disk_cache.h).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>

namespace kldiv::cache {

// Larger "manifests" are garbage; reading them whole would only waste memory.
inline constexpr off_t kMaxManifestBytes = off_t(64) << 20;

struct Manifest {
    std::string version;
    std::string key;
    std::string description;
    std::string payload;
    std::uint64_t payload_bytes = 0;
    std::uint64_t payload_checksum = 0;
};

std::string manifest_text(const Manifest &manifest);

// What a manifest says, or why it cannot be read (`*reason`). A manifest of
// another format version parses with `*foreign_format` set.
std::optional<Manifest> parse_manifest(const std::string &text, std::string *reason, bool *foreign_format);

// The manifest file `name` in `dir`, parsed; nullopt when absent, unreadable,
// or not a file `user` may trust.
std::optional<Manifest> read_manifest(const std::string &dir, const std::string &name, uid_t user);

}  // namespace kldiv::cache
