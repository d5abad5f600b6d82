#include "directory_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

namespace kldiv::cache {

DirectoryLock::DirectoryLock(const std::string &dir)
    : fd_(open((dir + "/.lock").c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644)),
      held_(fd_ >= 0 && flock(fd_, LOCK_EX) == 0) {}

DirectoryLock::~DirectoryLock() {
    if (fd_ >= 0) close(fd_);  // releases the lock
}

}  // namespace kldiv::cache
