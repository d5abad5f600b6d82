// `kldiv cache`: lists, measures, prunes and clears the on-disk kernel cache.
#pragma once

#include <string>
#include <vector>

namespace kldiv::tools {

extern const char kCacheHelp[];

// `args` follow "cache"; returns the exit status (0 done, 1 failed, 2 usage).
int cache_command(const std::vector<std::string> &args);

}  // namespace kldiv::tools
