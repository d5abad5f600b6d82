// Tuning records and databases: the JSON-lines format, lookups by target and
// size bucket, malformed and foreign lines, pruning, and concurrent writers.
// Also the schedule parameters' text form, which records carry.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <set>
#include <thread>

#include "kldiv/schedules/params.h"
#include "kldiv/schedules/tuning_db.h"
#include "test_support.h"

namespace fs = std::filesystem;
using kldiv::schedules::append_record;
using kldiv::schedules::Params;
using kldiv::schedules::parse_params;
using kldiv::schedules::parse_record;
using kldiv::schedules::prune_database;
using kldiv::schedules::size_bucket;
using kldiv::schedules::TuningDb;
using kldiv::schedules::TuningRecord;
using kldiv_test::TempDir;

namespace {

const char kX86[] = "x86-64-linux-avx-avx2-fma-sse41";
const char kArm[] = "arm-64-linux";

TuningRecord record(const std::string &target, const std::string &spec, int bucket, double speedup, int vf = 4) {
    TuningRecord r;
    r.target = target;
    r.spec = spec;
    r.bucket = bucket;
    r.elements = int64_t(1) << bucket;
    r.params.cpu.vector_factor = vf;
    r.params.cpu.sum_chunk = 4096;
    r.seconds = 1e-3;
    r.noise = 0.01;
    r.default_gbps = 10;
    r.gbps = 10 * speedup;
    r.ceiling_read_gbps = 50;
    r.ceiling_copy_gbps = 45;
    r.date = "2026-11-25T00:00:00Z";
    r.version = "0.1.0";
    r.cpu = "Test CPU 9000";
    return r;
}

std::vector<std::string> lines_of(const std::string &path) {
    std::ifstream in(path);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
}

struct Warnings {
    std::vector<std::string> seen;
    kldiv::schedules::TuningWarning handler() {
        return [this](const std::string &m) { seen.push_back(m); };
    }
};

}  // namespace

TEST(params, text_form_round_trips_and_validates) {
    Params p;
    p.cpu.vector_factor = 4;
    p.cpu.unroll = 2;
    p.cpu.sum_chunk = 8192;
    p.cpu.unit_stride_fast_path = false;
    p.gpu.threads_per_block = 128;
    p.gpu.vector_loads = true;
    p.distill.grad_vector_factor = 4;
    p.distill.rows_per_task = 8;
    Params back;
    std::string error;
    ASSERT_TRUE(parse_params(kldiv::schedules::to_string(p), &back, &error)) << error;
    EXPECT_EQ(back, p);

    // Keys left out keep their values; unknown keys, bad numbers and
    // out-of-range values are refused without changing the output.
    Params partial;
    ASSERT_TRUE(parse_params("cpu:vf=1", &partial, &error)) << error;
    EXPECT_EQ(partial.cpu.vector_factor, 1);
    EXPECT_EQ(partial.cpu.sum_chunk, Params().cpu.sum_chunk);
    ASSERT_TRUE(parse_params("distill:lu=2", &partial, &error)) << error;
    EXPECT_EQ(partial.distill.lane_unroll, 2);
    EXPECT_EQ(partial.cpu.vector_factor, 1);
    for (const char *bad : {"cpu:vf=3", "cpu:warp=2", "cpu:vf=x", "cpu:fast=2", "gpu:tpb=16", "cpu:chunk=100",
                            "tpu:vf=2", "cpu:vf=", "cpu:vf=-1", "distill:gvf=3", "distill:lu=16",
                            "distill:rpt=0", "distill:vf=2"}) {
        Params untouched;
        error.clear();
        EXPECT_FALSE(parse_params(bad, &untouched, &error)) << bad;
        EXPECT_FALSE(error.empty()) << bad;
        EXPECT_EQ(untouched, Params()) << bad;
    }
}

TEST(tuning_db, record_round_trips_through_a_json_line) {
    const TuningRecord r = record(kX86, "kldiv_fwd_sum_f32", 20, 1.25);
    const std::string line = kldiv::schedules::to_json_line(r);
    EXPECT_EQ(line.find('\n'), std::string::npos);
    std::string why;
    const auto back = parse_record(line, &why);
    ASSERT_TRUE(back) << why;
    EXPECT_EQ(back->target, r.target);
    EXPECT_EQ(back->spec, r.spec);
    EXPECT_EQ(back->bucket, 20);
    EXPECT_EQ(back->elements, int64_t(1) << 20);
    EXPECT_EQ(back->params, r.params);
    EXPECT_DOUBLE_EQ(back->speedup(), 1.25);
    EXPECT_EQ(back->date, r.date);
    EXPECT_EQ(back->version, r.version);
    EXPECT_EQ(back->cpu, r.cpu);
}

TEST(tuning_db, malformed_and_foreign_lines_are_skipped_with_a_warning) {
    const std::string good = kldiv::schedules::to_json_line(record(kX86, "kldiv_fwd_sum_f32", 20, 1.1));
    std::string wrong_type = good;
    wrong_type.replace(wrong_type.find("\"bucket\":20"), 11, "\"bucket\":\"20\"");
    std::string bad_schedule = good;
    bad_schedule.replace(bad_schedule.find("vf=4"), 4, "vf=5");
    const std::string text = good + "\n" +                                  // 1
                             "{\"format\":\"kldiv-tuning-1\",\"target\"\n" +  // 2 truncated
                             "not json at all\n" +                            // 3
                             "{\"format\":\"other-tool-7\",\"x\":1}\n" +      // 4 foreign
                             "[1,2,3]\n" +                                    // 5
                             "\n" +                                           // 6 blank: ignored
                             wrong_type + "\n" +                              // 7
                             bad_schedule + "\n" +                            // 8
                             std::string("\x01\xff\xfe garbage") + "\n" +     // 9
                             good;                                            // 10, no newline
    TuningDb db;
    Warnings warnings;
    db.add_text(text, "user.jsonl", warnings.handler());
    EXPECT_EQ(db.size(), 2u);
    ASSERT_EQ(warnings.seen.size(), 7u);
    const char *expected_lines[] = {":2:", ":3:", ":4:", ":5:", ":7:", ":8:", ":9:"};
    for (size_t i = 0; i < warnings.seen.size(); i++) {
        EXPECT_NE(warnings.seen[i].find(std::string("user.jsonl") + expected_lines[i]), std::string::npos)
            << warnings.seen[i];
    }
    EXPECT_NE(warnings.seen[2].find("not a kldiv-tuning-1 record"), std::string::npos) << warnings.seen[2];
    EXPECT_NE(warnings.seen[4].find("'bucket'"), std::string::npos) << warnings.seen[4];
    EXPECT_NE(warnings.seen[5].find("vf"), std::string::npos) << warnings.seen[5];
}

// Integer fields given as numbers outside their type, or as fractions, are
// refused: converting them would be undefined (1e40 to int) or lose the value.
TEST(tuning_db, integer_fields_take_only_integers_in_range) {
    const std::string good = kldiv::schedules::to_json_line(record(kX86, "kldiv_fwd_sum_f32", 20, 1.1));
    for (const char *value : {"1e40", "2.5", "-1e300", "2147483648", "18446744073709551615", "-2147483649"}) {
        std::string line = good;
        line.replace(line.find("\"bucket\":20"), 11, std::string("\"bucket\":") + value);
        std::string why;
        EXPECT_FALSE(parse_record(line, &why)) << value;
        EXPECT_NE(why.find("'bucket'"), std::string::npos) << value << ": " << why;
    }
    std::string line = good;
    line.replace(line.find("\"bucket\":20"), 11, "\"bucket\":24");
    std::string why;
    const auto other = parse_record(line, &why);
    ASSERT_TRUE(other) << why;
    EXPECT_EQ(other->bucket, 24);
}

TEST(tuning_db, lookup_takes_the_nearest_compatible_target_and_the_nearest_bucket) {
    TuningDb db;
    std::string text;
    for (const TuningRecord &r : {record(kX86, "kldiv_fwd_sum_f32", 16, 1.1, 1), record(kX86, "kldiv_fwd_sum_f32", 20, 1.2, 2),
                                  record(kX86, "kldiv_fwd_sum_f32", 24, 1.3, 4), record(kX86, "kldiv_fwd_sum_f32", 20, 1.5, 8),
                                  record(kArm, "kldiv_fwd_sum_f32", 20, 2.0, 16)}) {
        text += kldiv::schedules::to_json_line(r) + "\n";
    }
    db.add_text(text, "db", nullptr);
    auto vf = [&](const std::string &target, const std::string &spec, int bucket) {
        auto m = db.find(target, spec, bucket);
        return m ? m->record.params.cpu.vector_factor : -1;
    };
    EXPECT_EQ(vf(kX86, "kldiv_fwd_sum_f32", 20), 8);  // best speed-up of the bucket
    EXPECT_EQ(vf(kX86, "kldiv_fwd_sum_f32", 21), 8);
    EXPECT_EQ(vf(kX86, "kldiv_fwd_sum_f32", 22), 4);  // a tie goes to the larger bucket
    EXPECT_EQ(vf(kX86, "kldiv_fwd_sum_f32", 30), 4);
    EXPECT_EQ(vf(kX86, "kldiv_fwd_sum_f32", 10), 1);
    EXPECT_EQ(vf(kArm, "kldiv_fwd_sum_f32", 12), 16);
    EXPECT_EQ(vf(kX86, "kldiv_fwd_sum_bf16", 20), -1);             // another kernel
    EXPECT_EQ(vf("x86-64-linux-avx-avx2-sse41", "kldiv_fwd_sum_f32", 20), -1);  // records need fma, the CPU lacks it
    EXPECT_EQ(vf("x86-64-linux-avx-avx2-f16c-fma-sse41", "kldiv_fwd_sum_f32", 20), 8);  // a compatible target
    EXPECT_EQ(size_bucket(1), 0);
    EXPECT_EQ(size_bucket(1 << 20), 20);
    EXPECT_EQ(size_bucket((1 << 20) + (1 << 18)), 20);
    EXPECT_EQ(size_bucket(3 << 19), 21);
}

// A record applies beyond its exact target string: the same architecture and
// class of vector instructions, no feature the CPU lacks. The exact target
// wins, then the compatible one with the most features.
TEST(tuning_db, records_travel_to_compatible_targets) {
    using kldiv::schedules::compatible_target;
    const std::string zen3 = "x86-64-linux-avx-avx2-f16c-fma-sse41";
    const std::string haswell_record = "x86-64-linux-avx-avx2-fma-sse41";
    const std::string skylake = "x86-64-linux-avx-avx2-avx512-avx512_skylake-f16c-fma-sse41";
    const std::string zen4 = "x86-64-linux-avx-avx2-avx512-avx512_cannonlake-avx512_skylake-f16c-fma-sse41";
    EXPECT_EQ(kldiv::schedules::isa_class(zen3), "avx2");
    EXPECT_EQ(kldiv::schedules::isa_class(zen4), "avx512");
    EXPECT_EQ(kldiv::schedules::isa_class("x86-64-linux-avx512_skylake"), "avx512");
    EXPECT_EQ(kldiv::schedules::isa_class("x86-64-linux-sse41"), "sse41");
    EXPECT_EQ(kldiv::schedules::isa_class("arm-64-linux"), "arm-64-linux");
    EXPECT_EQ(kldiv::schedules::isa_class("x86-64-linux-cuda-cuda_capability_80"), "cuda cuda_capability_80");
    EXPECT_EQ(compatible_target(zen3, zen3), "its exact target");
    EXPECT_TRUE(compatible_target(haswell_record, zen3));   // a subset of the CPU's features
    EXPECT_FALSE(compatible_target(zen3, haswell_record));  // f16c: the CPU lacks it
    EXPECT_TRUE(compatible_target(skylake, zen4));
    EXPECT_FALSE(compatible_target(zen4, skylake));         // avx512_cannonlake
    EXPECT_FALSE(compatible_target(zen3, zen4));            // avx2 kernels on an avx512 CPU: another class
    EXPECT_FALSE(compatible_target(zen4, zen3));
    EXPECT_FALSE(compatible_target("x86-64-linux-sse41", zen3));
    EXPECT_FALSE(compatible_target("x86-64-linux-sse41", "x86-64-linux-sse41-avx512_skylake"));
    EXPECT_FALSE(compatible_target("arm-64-linux", zen3));
    EXPECT_TRUE(compatible_target("arm-64-linux", "arm-64-linux-arm_dot_prod"));
    EXPECT_FALSE(compatible_target("x86-64-linux-cuda-cuda_capability_80", "x86-64-linux-cuda-cuda_capability_86"));
    EXPECT_TRUE(compatible_target("x86-64-linux-cuda-cuda_capability_80",
                                  "x86-64-linux-avx-avx2-f16c-fma-sse41-cuda-cuda_capability_80"));

    TuningDb db;
    db.add_text(kldiv::schedules::to_json_line(record(haswell_record, "kldiv_fwd_sum_f32", 24, 1.1, 1)) + "\n" +
                    kldiv::schedules::to_json_line(record(skylake, "kldiv_fwd_sum_f32", 24, 1.1, 2)) + "\n" +
                    kldiv::schedules::to_json_line(record("x86-64-linux-avx-avx2-avx512-avx512_skylake-fma-sse41",
                                                          "kldiv_fwd_sum_f32", 20, 1.3, 4)),
                "shipped", nullptr);
    auto m = db.find(zen3, "kldiv_fwd_sum_f32", 24);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->record.params.cpu.vector_factor, 1);
    EXPECT_NE(m->why.find("nearest compatible target, " + haswell_record), std::string::npos) << m->why;
    m = db.find(zen4, "kldiv_fwd_sum_f32", 20);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->record.params.cpu.vector_factor, 2);  // more features in common beats the nearer bucket
    m = db.find(skylake, "kldiv_fwd_sum_f32", 20);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->record.params.cpu.vector_factor, 2);
    EXPECT_EQ(m->why, "its exact target");
    EXPECT_FALSE(db.find("x86-64-linux-sse41", "kldiv_fwd_sum_f32", 24));
}

TEST(tuning_db, the_first_database_with_the_kernel_takes_precedence) {
    TuningDb db;
    db.add_text(kldiv::schedules::to_json_line(record(kX86, "kldiv_fwd_sum_f32", 24, 1.01, 1)), "user", nullptr);
    db.add_text(kldiv::schedules::to_json_line(record(kX86, "kldiv_fwd_sum_f32", 20, 1.5, 2)) + "\n" +
                    kldiv::schedules::to_json_line(record(kX86, "kldiv_fused_sum_f32", 20, 1.5, 4)),
                "shipped", nullptr);
    auto m = db.find(kX86, "kldiv_fwd_sum_f32", 20);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->source, "user");  // even though the shipped one has the exact bucket
    EXPECT_EQ(m->record.params.cpu.vector_factor, 1);
    m = db.find(kX86, "kldiv_fused_sum_f32", 20);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->source, "shipped");
}

TEST(tuning_db, files_missing_or_unreadable_add_nothing) {
    TempDir dir;
    TuningDb db;
    Warnings warnings;
    db.add_file(dir.file("absent.jsonl"), warnings.handler());
    EXPECT_TRUE(db.empty());
    EXPECT_TRUE(warnings.seen.empty());
    fs::create_directory(dir.file("a-directory.jsonl"));
    db.add_file(dir.file("a-directory.jsonl"), warnings.handler());
    EXPECT_TRUE(db.empty());
    EXPECT_EQ(warnings.seen.size(), 1u);
}

TEST(tuning_db, prune_keeps_the_best_record_per_class_in_order) {
    TempDir dir;
    const std::string path = dir.file("sub/db.jsonl");  // the directory is created
    append_record(path, record(kX86, "kldiv_fwd_sum_f32", 20, 1.1, 1));
    append_record(path, record(kX86, "kldiv_fused_sum_f32", 20, 1.3, 2));
    append_record(path, record(kX86, "kldiv_fwd_sum_f32", 20, 1.4, 4));
    append_record(path, record(kX86, "kldiv_fwd_sum_f32", 24, 0.9, 8));
    append_record(path, record(kX86, "kldiv_fwd_sum_f32", 20, 1.2, 16));
    { std::ofstream(path, std::ios::app) << "{broken\n"; }
    Warnings warnings;
    const auto result = prune_database(path, warnings.handler());
    EXPECT_EQ(result.kept, 3u);
    EXPECT_EQ(result.removed, 2u);
    EXPECT_EQ(result.skipped, 1u);
    EXPECT_EQ(warnings.seen.size(), 1u);
    const std::vector<std::string> lines = lines_of(path);
    ASSERT_EQ(lines.size(), 3u);
    std::string why;
    std::vector<int> vfs;
    for (const std::string &line : lines) {
        auto r = parse_record(line, &why);
        ASSERT_TRUE(r) << why;
        vfs.push_back(r->params.cpu.vector_factor);
    }
    EXPECT_EQ(vfs, (std::vector<int>{4, 2, 8}));  // classes in first-seen order
    EXPECT_FALSE(fs::exists(path + ".prune." + std::to_string(getpid())));
}

TEST(tuning_db, concurrent_appends_and_prunes_lose_nothing) {
    TempDir dir;
    const std::string path = dir.file("db.jsonl");
    constexpr int kWriters = 8, kRecords = 40;
    std::atomic<bool> writing{true};
    std::atomic<int> prunes{0};
    std::thread pruner([&] {
        // Prunes while the writers append: each record is its own class, so
        // every one must survive, whichever file it was appended to.
        while (writing) {
            prune_database(path, nullptr);
            prunes++;
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
    });
    std::vector<std::thread> writers;
    for (int w = 0; w < kWriters; w++) {
        writers.emplace_back([&, w] {
            for (int i = 0; i < kRecords; i++) {
                TuningRecord r = record(kX86, "kldiv_writer_" + std::to_string(w), i, 1.0 + i);
                r.version = std::string(200, 'v');  // long lines: a torn write would show
                append_record(path, r);
                // Every 8 records, wait until a whole prune has run since:
                // appends and prunes interleave however threads are scheduled.
                if (i % 8 == 7) {
                    const int seen = prunes.load();
                    while (prunes.load() < seen + 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
                }
            }
        });
    }
    for (std::thread &t : writers) t.join();
    writing = false;
    pruner.join();
    EXPECT_GE(prunes, 3) << "the prunes did not overlap the appends";
    const std::vector<std::string> lines = lines_of(path);
    EXPECT_EQ(lines.size(), (size_t)kWriters * kRecords);
    std::set<std::pair<std::string, int>> classes;
    std::string why;
    for (const std::string &line : lines) {
        auto r = parse_record(line, &why);
        ASSERT_TRUE(r) << why << ": " << line;
        classes.insert({r->spec, r->bucket});
    }
    EXPECT_EQ(classes.size(), (size_t)kWriters * kRecords);
}

TEST(tuning_db, user_database_path_follows_the_environment) {
    unsetenv("KLDIV_TUNING_DB");
    EXPECT_EQ(kldiv::schedules::user_database_path("/cache/kldiv"), "/cache/kldiv/tuning.jsonl");
    EXPECT_EQ(kldiv::schedules::user_database_path(""), "");
    setenv("KLDIV_TUNING_DB", "/somewhere/mine.jsonl", 1);
    EXPECT_EQ(kldiv::schedules::user_database_path("/cache/kldiv"), "/somewhere/mine.jsonl");
    setenv("KLDIV_TUNING_DB", "off", 1);
    EXPECT_EQ(kldiv::schedules::user_database_path("/cache/kldiv"), "");
    unsetenv("KLDIV_TUNING_DB");
}

// "off" drops the user's database, "none" the shipped one as well.
TEST(tuning_db, off_keeps_the_shipped_database_and_none_drops_it) {
    Warnings warnings;
    unsetenv("KLDIV_TUNING_DB");
    TuningDb shipped;
    shipped.add_text(kldiv::schedules::shipped_database(), "shipped", warnings.handler());
    EXPECT_EQ(kldiv::schedules::load_tuning_databases("off", "", warnings.handler()).size(), shipped.size());
    EXPECT_TRUE(kldiv::schedules::load_tuning_databases("none", "/cache/kldiv", warnings.handler()).empty());
    setenv("KLDIV_TUNING_DB", "none", 1);
    EXPECT_TRUE(kldiv::schedules::load_tuning_databases("", "/cache/kldiv", warnings.handler()).empty());
    EXPECT_EQ(kldiv::schedules::user_database_path("/cache/kldiv"), "");
    unsetenv("KLDIV_TUNING_DB");
}

TEST(tuning_db, the_shipped_database_parses_cleanly) {
    TuningDb db;
    Warnings warnings;
    db.add_text(kldiv::schedules::shipped_database(), "shipped", warnings.handler());
    EXPECT_TRUE(warnings.seen.empty()) << warnings.seen.front();
}
