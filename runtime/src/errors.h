// Errors and warnings at the library boundary.
#pragma once

#include <string>

#include "kldiv/kldiv.hpp"

namespace kldiv::runtime {

[[noreturn]] void fail(ErrorCode code, const std::string &message);

// Sends a warning to the installed handler (dropped when there is none).
void warn(const std::string &message);

// Sends a warning to `preferred` (a runtime's own handler), else as warn() does.
void warn(const WarningHandler &preferred, const std::string &message);

// PyTorch's warning for reduction='mean', sent on every call that uses it.
const std::string &mean_reduction_warning();
void warn_mean_reduction();

// Halide's error handler in every kernel. JIT kernels pass a
// KernelErrorContext as user context and get their message there; AOT
// kernels (no user context) leave it for take_kernel_error() on the thread.
struct KernelErrorContext {
    std::string message;
};
void record_kernel_error(void *user_context, const char *message);
std::string take_kernel_error();

// The calling thread's last error message, for kldiv_last_error().
void set_last_error(const std::string &message);
void clear_last_error();  // after a call that succeeded
const char *last_error();

}  // namespace kldiv::runtime
