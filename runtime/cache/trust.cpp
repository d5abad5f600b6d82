#include "trust.h"

#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <deque>
#include <vector>

namespace kldiv::cache {

namespace {

// The kernel's own limit on links followed in one lookup (MAXSYMLINKS).
constexpr int kMaxSymbolicLinks = 40;

std::string user_text(uid_t uid) {
    std::vector<char> buffer(4096);
    struct passwd entry;
    struct passwd *found = nullptr;
    if (getpwuid_r(uid, &entry, buffer.data(), buffer.size(), &found) == 0 && found) {
        return std::string(found->pw_name) + " (uid " + std::to_string(uid) + ")";
    }
    return "uid " + std::to_string(uid);
}

std::string group_text(gid_t gid) {
    std::vector<char> buffer(4096);
    struct group entry;
    struct group *found = nullptr;
    if (getgrgid_r(gid, &entry, buffer.data(), buffer.size(), &found) == 0 && found) {
        return found->gr_name;
    }
    return "gid " + std::to_string(gid);
}

std::string mode_text(mode_t mode) {
    char text[16];
    std::snprintf(text, sizeof text, "mode %04o", unsigned(mode & 07777));
    return text;
}

// "" when only the owner may write; else who else may: "others" (everyone),
// or "group staff".
std::string other_writers(const struct stat &info) {
    if (info.st_mode & S_IWOTH) return "others";
    if (info.st_mode & S_IWGRP) return "group " + group_text(info.st_gid);
    return "";
}

std::string owner_problem(const struct stat &info, uid_t user) {
    if (info.st_uid == user) return "";
    return "owned by " + user_text(info.st_uid) + ", not by " + user_text(user);
}

// A directory a name is looked up in: whoever may write it may swap the name.
std::string ancestor_problem(const std::string &path, const struct stat &info, uid_t user) {
    if (info.st_uid != 0 && info.st_uid != user) {
        return path + " is owned by " + user_text(info.st_uid) + ", not by root" +
               (user == 0 ? "" : " or " + user_text(user));
    }
    const std::string writers = other_writers(info);
    if (!writers.empty() && !(info.st_mode & S_ISVTX)) {
        return path + " is writable by " + writers + " and has no sticky bit (" +
               mode_text(info.st_mode) + ")";
    }
    return "";
}

std::vector<std::string> components(const std::string &path) {
    std::vector<std::string> parts;
    std::size_t begin = 0;
    while (begin <= path.size()) {
        std::size_t end = path.find('/', begin);
        if (end == std::string::npos) end = path.size();
        if (end > begin) parts.push_back(path.substr(begin, end - begin));
        begin = end + 1;
    }
    return parts;
}

std::string parent_of(const std::string &path) {
    const std::size_t slash = path.rfind('/');
    return slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
}

std::string child_of(const std::string &dir, const std::string &name) {
    return dir == "/" ? "/" + name : dir + "/" + name;
}

DirectoryTrust refused(std::string reason) {
    DirectoryTrust trust;
    trust.verdict = DirectoryTrust::Verdict::Refused;
    trust.reason = std::move(reason);
    return trust;
}

DirectoryTrust unusable(int error) {
    DirectoryTrust trust;
    trust.verdict = DirectoryTrust::Verdict::Unusable;
    trust.error = error;
    return trust;
}

}  // namespace

DirectoryTrust check_directory(const std::string &dir, uid_t user) {
    std::string path = dir;
    if (path.empty() || path[0] != '/') {
        char cwd[PATH_MAX];
        if (getcwd(cwd, sizeof cwd) == nullptr) return unusable(errno);
        path = std::string(cwd) + "/" + path;
    }
    const std::vector<std::string> parts = components(path);
    std::deque<std::string> pending(parts.begin(), parts.end());
    // `current` never holds a link or "..": it is the path resolved so far.
    std::string current = "/";
    int links = 0;
    struct stat info;
    while (!pending.empty()) {
        const std::string name = pending.front();
        pending.pop_front();
        if (name == ".") continue;
        if (name == "..") {
            current = parent_of(current);  // already judged on the way down
            continue;
        }
        if (lstat(current.c_str(), &info) != 0) return unusable(errno);
        if (std::string problem = ancestor_problem(current, info, user); !problem.empty()) {
            return refused(problem);
        }
        const std::string next = child_of(current, name);
        if (lstat(next.c_str(), &info) != 0) {
            if (errno == ENOENT) return DirectoryTrust{DirectoryTrust::Verdict::Missing, "", 0};
            return unusable(errno);
        }
        if (S_ISLNK(info.st_mode)) {
            if (info.st_uid != 0 && info.st_uid != user) {
                return refused(next + " is a symbolic link owned by " + user_text(info.st_uid));
            }
            if (++links > kMaxSymbolicLinks) return unusable(ELOOP);
            std::vector<char> target(PATH_MAX + 1);
            const ssize_t length = readlink(next.c_str(), target.data(), target.size());
            if (length < 0) return unusable(errno);
            if (std::size_t(length) >= target.size()) return unusable(ENAMETOOLONG);
            const std::string text(target.data(), std::size_t(length));
            if (!text.empty() && text[0] == '/') current = "/";
            const std::vector<std::string> more = components(text);
            pending.insert(pending.begin(), more.begin(), more.end());
            continue;
        }
        if (!S_ISDIR(info.st_mode)) return unusable(ENOTDIR);
        current = next;
    }
    if (lstat(current.c_str(), &info) != 0) return unusable(errno);
    if (std::string problem = owner_problem(info, user); !problem.empty()) {
        return refused(current + " is " + problem);
    }
    if (std::string writers = other_writers(info); !writers.empty()) {
        return refused(current + " is writable by " + writers + " (" + mode_text(info.st_mode) +
                       ")");
    }
    return DirectoryTrust{};
}

std::string untrusted_file_reason(const struct stat &info, uid_t user) {
    if (!S_ISREG(info.st_mode)) return "not a regular file";
    if (std::string problem = owner_problem(info, user); !problem.empty()) return problem;
    if (std::string writers = other_writers(info); !writers.empty()) {
        return "writable by " + writers + " (" + mode_text(info.st_mode) + ")";
    }
    return "";
}

}  // namespace kldiv::cache
