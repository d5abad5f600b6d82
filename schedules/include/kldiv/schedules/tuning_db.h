// Tuning records: the schedule `kldiv tune` measured best for a kernel on a
// target, as JSON lines. No Halide here: the runtime and `kldiv aot` read
// them, `kldiv tune` writes them.
//
// A record's class is (target, spec, size bucket): the full Halide target
// string (CPU features or GPU architecture), the kernel's KernelSpec name and
// round(log2(elements)). Lookups take the nearest compatible target (the
// exact one first) and the nearest bucket.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "kldiv/schedules/params.h"

namespace kldiv::schedules {

// The "format" every record carries; lines with another are foreign.
inline constexpr const char *kTuningFormat = "kldiv-tuning-1";

// Bucket of shape-generic kernels (no shape to go by): 2^22 elements.
inline constexpr int kGenericBucket = 22;

// Distillation kernels' records are bucketed by vocabulary (their `elements`
// is the tuned workload's logits per row); a kernel for any vocabulary takes
// the record nearest 2^15 logits, the common vocabularies.
inline constexpr int kDistillGenericBucket = 15;

// round(log2(elements)), 0 for fewer than 2.
int size_bucket(std::int64_t elements);

struct TuningRecord {
    std::string target;   // resolved Halide target string
    std::string spec;     // KernelSpec name, e.g. kldiv_fwd_sum_f32
    int bucket = 0;
    std::int64_t elements = 0;  // the shape tuned (contiguous)
    Params params;
    double seconds = 0;         // median time of one call
    double noise = 0;           // median absolute deviation / median
    double gbps = 0;            // by the bytes-moved model
    double default_gbps = 0;    // the default schedule, same run
    double ceiling_read_gbps = 0, ceiling_copy_gbps = 0;  // same run
    std::string date;     // UTC, ISO 8601
    std::string version;  // kldiv version that measured it
    std::string cpu;      // the machine's CPU model ("" in records of older versions)

    // Speed-up over the default schedule measured in the same run: what
    // records of one class are ranked by (figures of different runs are not
    // comparable on a shared machine).
    double speedup() const { return default_gbps > 0 ? gbps / default_gbps : 0; }
};

// The class of vector instructions a Halide target's kernels use: "cuda
// cuda_capability_NN" for CUDA, else the x86 level ("sse41", "avx2",
// "avx512"), else the architecture ("arm-64-linux": NEON).
std::string isa_class(const std::string &target);

// Whether a record tuned on `record_target` applies to `target`, and why: the
// same target, or the same architecture and OS, the same class of vector
// instructions (x86: sse41, avx2 or avx512; CUDA: the compute capability) and
// no feature `target` lacks. Nothing when it does not apply.
std::optional<std::string> compatible_target(const std::string &record_target, const std::string &target);

// One JSON object, no newline.
std::string to_json_line(const TuningRecord &record);

// The record on `line`, or nothing with the reason in `why` (not JSON, not
// this format, a field missing or of the wrong type, parameters out of range).
std::optional<TuningRecord> parse_record(const std::string &line, std::string *why);

using TuningWarning = std::function<void(const std::string &)>;

// Records from several databases, the first added taking precedence.
class TuningDb {
public:
    struct Match {
        TuningRecord record;
        std::string source;  // which database it came from
        std::string why;     // why its target applies (compatible_target)
    };

    // Adds the records in `text` (JSON lines) under the name `source`. A
    // malformed or foreign line is skipped with a warning naming source:line.
    void add_text(const std::string &text, const std::string &source, const TuningWarning &warn);

    // add_text of a file's contents; a missing file adds nothing, silently;
    // an unreadable one warns.
    void add_file(const std::string &path, const TuningWarning &warn);

    // The first database with records for `spec` on a target compatible with
    // `target` gives the one of the exact target, else of the compatible
    // target with the most features; then of the nearest bucket (the larger
    // on a tie), the best speed-up among those. Nothing when no database has
    // a compatible target.
    std::optional<Match> find(const std::string &target, const std::string &spec, int bucket) const;

    size_t size() const { return records_.size(); }
    bool empty() const { return records_.empty(); }

private:
    struct Entry {
        TuningRecord record;
        size_t layer;
    };
    std::vector<Entry> records_;
    std::vector<std::string> sources_;
};

// Appends `record` as one line. Safe with concurrent writers (one write of the
// whole line under an exclusive lock, retried if the file was replaced by a
// prune meanwhile). Creates the file and its directory. Throws std::runtime_error.
void append_record(const std::string &path, const TuningRecord &record);

struct PruneResult {
    size_t kept = 0, removed = 0, skipped = 0;  // skipped: malformed or foreign lines dropped
};

// Keeps the best record (speed-up) per class, under the same lock as
// append_record; replaces the file atomically. Throws std::runtime_error.
PruneResult prune_database(const std::string &path, const TuningWarning &warn);

// The user's database: $KLDIV_TUNING_DB when set ("off": none), else
// tuning.jsonl in the kernel cache directory `cache_dir` ("" when there is none).
std::string user_database_path(const std::string &cache_dir);

// The database checked in under schedules/ (tuned.jsonl), built into the library.
const std::string &shipped_database();

// What the JIT and `kldiv aot` consult: the user's database (`user`: "" for
// user_database_path(cache_dir), "off" for none, else its path), then the
// shipped one. "none" (as `user`, or in KLDIV_TUNING_DB when `user` is "")
// consults neither: default schedules only.
TuningDb load_tuning_databases(const std::string &user, const std::string &cache_dir, const TuningWarning &warn);

}  // namespace kldiv::schedules
