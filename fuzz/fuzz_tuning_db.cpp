// The tuning-database line parser on arbitrary lines, and TuningDb on whole
// files of them. A line may be refused (with a reason); an accepted record
// must write back to a line that parses to the same record.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "kldiv/schedules/tuning_db.h"

using namespace kldiv::schedules;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const std::string text(reinterpret_cast<const char *>(data), size);

    std::string why;
    const std::optional<TuningRecord> record = parse_record(text, &why);
    if (record) {
        const std::string line = to_json_line(*record);
        const std::optional<TuningRecord> again = parse_record(line, &why);
        if (!again || to_json_line(*again) != line) std::abort();
        (void)compatible_target(record->target, "x86-64-linux-avx2-fma-f16c-sse41");
        (void)isa_class(record->target);
    } else if (why.empty()) {
        std::abort();
    }

    // The same bytes as a database file: bad lines are warned about and skipped.
    TuningDb db;
    db.add_text(text, "fuzz", [](const std::string &) {});
    (void)db.find("x86-64-linux-avx512_skylake-avx2-fma-f16c-sse41", record ? record->spec : "fwd", 16);
    return 0;
}
