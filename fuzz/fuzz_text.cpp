// The schedule-string parser (cpu:vf=...;gpu:...) and the spec parser of
// `kldiv aot` and `kldiv tune` on arbitrary text. Either may refuse the text;
// neither may crash, and what they accept must read back the same.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "command_line.h"
#include "kldiv/schedules/params.h"
#include "spec_text.h"

using namespace kldiv;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const std::string text(reinterpret_cast<const char *>(data), size);

    schedules::Params params;
    std::string error;
    if (schedules::parse_params(text, &params, &error)) {
        // Accepted parameters are in range, and their text form parses to themselves.
        if (!schedules::validate(params).empty()) std::abort();
        schedules::Params again;
        if (!schedules::parse_params(schedules::to_string(params), &again, &error) || again != params) std::abort();
    } else if (error.empty()) {
        std::abort();  // a refusal says why
    }

    try {
        const tools::AotSpec spec = tools::parse_spec(text);
        if (spec.function.empty()) std::abort();
    } catch (const tools::UsageError &e) {
        if (std::string(e.what()).empty()) std::abort();
    }
    return 0;
}
