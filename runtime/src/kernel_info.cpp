// What the calling thread's last kernel was, and the names of the runtime's
// enums; shared by the JIT and the AOT-only kernel caches.
#include <algorithm>
#include <array>

#include "errors.h"
#include "kernel_cache.h"

namespace kldiv::runtime {

namespace {

// What last_kernel() reports, kept as the call found it: the name and the
// AOT kernels' schedule text are made only when asked for. Trivially
// destructible, so a thread reaches it without an initialisation check; the
// one string (a JIT kernel's schedule) lives beside it.
struct LastKernel {
    KernelName kernel;
    int extents = 0;  // a specialised kernel's fixed extents; 0 for a generic one
    std::array<int32_t, 4> extent{};
    KernelOrigin origin = KernelOrigin::Aot;
    double seconds = 0;
    bool aot_schedule = false;  // the AOT kernels' schedule, else last_schedule
    CompileTimes compile;
    bool valid = false;
};
thread_local LastKernel last;
thread_local std::string last_schedule;

const char *const kAotSchedule = "default (AOT)";

}  // namespace

std::string name_of(const KernelName &kernel) {
    return std::visit([](const auto &spec) { return spec.name(); }, kernel);
}

void remember_kernel(const KernelName &kernel, const int32_t *extent, int count, KernelOrigin origin,
                     double seconds, const std::string &schedule, const CompileTimes &compile) {
    last.kernel = kernel;
    last.extents = extent ? std::min(count, 4) : 0;
    if (extent) std::copy(extent, extent + last.extents, last.extent.begin());
    last.origin = origin;
    last.seconds = seconds;
    last.aot_schedule = false;
    last_schedule = schedule;
    last.compile = compile;
    last.valid = true;
}

void remember_aot_kernel(const KernelName &kernel) {
    LastKernel &l = last;
    l.kernel = kernel;
    l.extents = 0;
    l.origin = KernelOrigin::Aot;
    l.seconds = 0;
    l.aot_schedule = true;
    l.compile = {};
    l.valid = true;
}

}  // namespace kldiv::runtime

namespace kldiv {

KernelInfo last_kernel() {
    const auto &last = runtime::last;
    KernelInfo info;
    if (!last.valid) return info;
    info.name = runtime::name_of(last.kernel);
    if (last.extents > 0) {
        info.name += " [";
        for (int d = 0; d < last.extents; d++) info.name += (d ? "x" : "") + std::to_string(last.extent[d]);
        info.name += "]";
    }
    info.origin = last.origin;
    info.specialised = last.extents > 0;
    info.seconds = last.seconds;
    info.schedule = last.aot_schedule ? runtime::kAotSchedule : runtime::last_schedule;
    info.compile = last.compile;
    return info;
}

const char *origin_name(KernelOrigin origin) {
    switch (origin) {
    case KernelOrigin::Aot: return "aot";
    case KernelOrigin::Memory: return "memory";
    case KernelOrigin::Disk: return "disk";
    case KernelOrigin::Compiled: return "compiled";
    }
    return "?";
}

Specialize parse_specialize(const std::string &name) {
    if (name == "never") return Specialize::Never;
    if (name == "always") return Specialize::Always;
    if (name == "auto") return Specialize::Auto;
    runtime::fail(ErrorCode::InvalidArgument, "'" + name + "' is not a specialisation policy (never, always, auto)");
}

const char *specialize_name(Specialize policy) {
    switch (policy) {
    case Specialize::Never: return "never";
    case Specialize::Always: return "always";
    case Specialize::Auto: return "auto";
    }
    return "?";
}

}  // namespace kldiv
