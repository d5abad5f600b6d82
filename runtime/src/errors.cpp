#include "errors.h"

#include <memory>
#include <mutex>
#include <utility>

namespace kldiv::runtime {

namespace {

std::mutex handler_mutex;
std::shared_ptr<const WarningHandler> handler;  // null: warnings are dropped

thread_local std::string thread_last_error;

}  // namespace

void fail(ErrorCode code, const std::string &message) { throw Error(code, message); }

void warn(const std::string &message) {
    std::shared_ptr<const WarningHandler> current;
    {
        std::lock_guard<std::mutex> lock(handler_mutex);
        current = handler;
    }
    if (current && *current) (*current)(message);
}

const std::string &mean_reduction_warning() {
    static const std::string text =
        "reduction: 'mean' divides the total loss by both the batch size and the support size."
        "'batchmean' divides only by the batch size, and aligns with the KL div math definition."
        "'mean' will be changed to behave the same as 'batchmean' in the next major release.";
    return text;
}

void warn(const WarningHandler &preferred, const std::string &message) {
    if (preferred) {
        preferred(message);
    } else {
        warn(message);
    }
}

void warn_mean_reduction() { warn(mean_reduction_warning()); }

namespace {
thread_local std::string thread_kernel_error;
}

void record_kernel_error(void *user_context, const char *message) {
    std::string &sink = user_context ? static_cast<KernelErrorContext *>(user_context)->message : thread_kernel_error;
    sink += message;
}

std::string take_kernel_error() { return std::exchange(thread_kernel_error, std::string()); }

// Whether the thread's last call failed: a plain flag, which a call that
// succeeds sets without reaching the message's string.
thread_local bool thread_has_error = false;

void set_last_error(const std::string &message) {
    thread_last_error = message;
    thread_has_error = true;
}

void clear_last_error() { thread_has_error = false; }

const char *last_error() { return thread_has_error ? thread_last_error.c_str() : ""; }

}  // namespace kldiv::runtime

namespace kldiv {

void set_warning_handler(WarningHandler new_handler) {
    auto next = new_handler ? std::make_shared<const WarningHandler>(std::move(new_handler)) : nullptr;
    std::lock_guard<std::mutex> lock(runtime::handler_mutex);
    runtime::handler = std::move(next);
}

}  // namespace kldiv
