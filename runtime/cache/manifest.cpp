#include "manifest.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <nlohmann/json.hpp>

#include "payload_store.h"
#include "trust.h"

namespace kldiv::cache {

namespace {

constexpr char kFormatName[] = "kldiv-kernel-cache";
constexpr int kFormatVersion = 1;

// Text fields hold any bytes: each byte is stored as the code point of the
// same value, which keeps the JSON valid and ASCII keys readable.

std::string bytes_to_json_text(const std::string &bytes) {
    std::string text;
    text.reserve(bytes.size());
    for (const char c : bytes) {
        const auto byte = static_cast<unsigned char>(c);
        if (byte < 0x80) {
            text += c;
        } else {
            text += char(0xc0 | (byte >> 6));
            text += char(0x80 | (byte & 0x3f));
        }
    }
    return text;
}

std::optional<std::string> json_text_to_bytes(const std::string &text) {
    std::string bytes;
    bytes.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
        const auto lead = static_cast<unsigned char>(text[i]);
        if (lead < 0x80) {
            bytes += text[i];
        } else if ((lead == 0xc2 || lead == 0xc3) && i + 1 < text.size() &&
                   (static_cast<unsigned char>(text[i + 1]) & 0xc0) == 0x80) {
            bytes += char(((lead & 0x03) << 6) | (static_cast<unsigned char>(text[i + 1]) & 0x3f));
            ++i;
        } else {
            return std::nullopt;  // a code point above 255: not written by us
        }
    }
    return bytes;
}

}  // namespace

std::string manifest_text(const Manifest &manifest) {
    const nlohmann::json json = {
        {"format", kFormatName},
        {"format_version", kFormatVersion},
        {"version", bytes_to_json_text(manifest.version)},
        {"key", bytes_to_json_text(manifest.key)},
        {"description", bytes_to_json_text(manifest.description)},
        {"payload", manifest.payload},
        {"payload_bytes", manifest.payload_bytes},
        {"payload_checksum", hex16(manifest.payload_checksum)},
    };
    return json.dump(1) + "\n";
}

std::optional<Manifest> parse_manifest(const std::string &text, std::string *reason,
                                       bool *foreign_format) {
    *foreign_format = false;
    const nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded() || !json.is_object()) {
        *reason = "not valid JSON";
        return std::nullopt;
    }
    auto string_field = [&](const char *name) -> std::optional<std::string> {
        const auto it = json.find(name);
        if (it == json.end() || !it->is_string()) return std::nullopt;
        return json_text_to_bytes(it->get<std::string>());
    };
    auto count_field = [&](const char *name) -> std::optional<std::uint64_t> {
        const auto it = json.find(name);
        if (it == json.end() || !it->is_number_unsigned()) return std::nullopt;
        return it->get<std::uint64_t>();
    };
    if (string_field("format") != std::string(kFormatName)) {
        *reason = "not a kernel cache manifest";
        return std::nullopt;
    }
    const std::optional<std::uint64_t> format_version = count_field("format_version");
    if (format_version != std::uint64_t(kFormatVersion)) {
        *foreign_format = true;
        *reason = "format version " +
                  (format_version ? std::to_string(*format_version) : std::string("missing")) +
                  ", expected " + std::to_string(kFormatVersion);
        return std::nullopt;
    }
    Manifest manifest;
    const std::optional<std::string> version = string_field("version"), key = string_field("key"),
                                     description = string_field("description"),
                                     payload = string_field("payload"),
                                     checksum = string_field("payload_checksum");
    const std::optional<std::uint64_t> payload_bytes = count_field("payload_bytes");
    if (!version || !key || !description || !payload || !checksum || !payload_bytes) {
        *reason = "a field is missing or has the wrong type";
        return std::nullopt;
    }
    if (checksum->size() != kChecksumDigits || !is_hex(*checksum, 0, kChecksumDigits)) {
        *reason = "bad payload_checksum";
        return std::nullopt;
    }
    manifest.version = *version;
    manifest.key = *key;
    manifest.description = *description;
    manifest.payload = *payload;
    manifest.payload_bytes = *payload_bytes;
    manifest.payload_checksum = std::strtoull(checksum->c_str(), nullptr, 16);
    return manifest;
}

std::optional<Manifest> read_manifest(const std::string &dir, const std::string &name,
                                      uid_t user) {
    const std::string path = dir + "/" + name;
    const int fd = open(path.c_str(), kOpenForReading);
    if (fd < 0) return std::nullopt;
    struct stat info;
    std::string text;
    const bool read_ok = fstat(fd, &info) == 0 && untrusted_file_reason(info, user).empty() &&
                         info.st_size <= kMaxManifestBytes &&
                         read_all(fd, std::size_t(info.st_size), &text);
    close(fd);
    if (!read_ok) return std::nullopt;
    std::string reason;
    bool foreign_format = false;
    return parse_manifest(text, &reason, &foreign_format);
}

}  // namespace kldiv::cache
