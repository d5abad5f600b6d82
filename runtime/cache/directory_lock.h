// The lock writers of one kernel cache directory take to rename an entry's
// files into place one at a time: an exclusive flock on the directory's
// `.lock` file (which the cache's scans skip). Part of the disk cache
// (disk_cache.h).
#pragma once

#include <string>

namespace kldiv::cache {

class DirectoryLock {
public:
    // Waits for the lock of `dir`; held() says whether it was taken (a
    // read-only directory, for one, has no lock file to take).
    explicit DirectoryLock(const std::string &dir);
    ~DirectoryLock();
    DirectoryLock(const DirectoryLock &) = delete;
    DirectoryLock &operator=(const DirectoryLock &) = delete;

    bool held() const { return held_; }

private:
    int fd_ = -1;
    bool held_ = false;
};

}  // namespace kldiv::cache
