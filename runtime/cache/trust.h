// Whether the kernel cache may use a directory and the files in it. The cache
// holds machine code that the process runs, so it is as trusted as the user's
// own files and no more: only what no other user can write or swap is used.
//
// The rule (OpenSSH's safe_path(), relaxed for sticky directories such as /tmp):
// - the cache directory is owned by the process's effective user and is not
//   writable by its group or by others;
// - every directory above it, as the path resolves (through symbolic links),
//   is owned by root or by that user, and is not writable by its group or
//   others unless it has the sticky bit (in a sticky directory no one else
//   can rename or remove what the user owns);
// - every symbolic link on the way is owned by root or by that user;
// - a manifest or payload is a regular file owned by that user and not
//   writable by its group or by others (checked on the open descriptor).
// Ownership and mode bits decide, not access(): root may write anything.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <string>

namespace kldiv::cache {

struct DirectoryTrust {
    enum class Verdict {
        Trusted,   // the directory exists and follows the rule
        Missing,   // it does not exist yet; what exists above it follows the rule
        Refused,   // it, or a directory or link above it, breaks the rule: `reason`
        Unusable,  // it cannot be looked at (not a directory, no permission): `error`
    };
    Verdict verdict = Verdict::Trusted;
    // Refused: one clause naming the path at fault, e.g. "/tmp/k is writable
    // by others (mode 0777)".
    std::string reason;
    int error = 0;  // Unusable: the errno
};

// Walks `dir` (relative to the working directory unless absolute) one
// component at a time, as the kernel resolves it, and judges each directory a
// name is looked up in and the directory itself by the rule above.
DirectoryTrust check_directory(const std::string &dir, uid_t user);

// "" when `info` (fstat of an open manifest or payload) follows the rule for
// files, else why not, e.g. "owned by nobody (uid 65534), not by root (uid 0)".
std::string untrusted_file_reason(const struct stat &info, uid_t user);

}  // namespace kldiv::cache
