// Errors and warnings at the library boundary.
#pragma once

#include <string>

#include "kldiv/kldiv.hpp"

namespace kldiv::runtime {

[[noreturn]] void fail(ErrorCode code, const std::string &message);

// Sends a warning to the installed handler (dropped when there is none).
void warn(const std::string &message);

// PyTorch's warning for reduction='mean', sent on every call that uses it.
void warn_mean_reduction();

// The calling thread's last error message, for kldiv_last_error().
void set_last_error(const std::string &message);
const char *last_error();

}  // namespace kldiv::runtime
