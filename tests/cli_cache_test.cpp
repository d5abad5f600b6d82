// `kldiv cache` end to end: the CLI binary (KLDIV_CLI) run on a directory the
// cache library filled; and `kldiv run` on a directory it must refuse.
#include <ftw.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "disk_cache.h"

namespace {

struct CliResult {
    int status;  // the exit status; -1 when it did not exit normally
    std::string output;  // stdout and stderr together
};

// Runs `kldiv <arguments>` through the shell, with `environment` before it.
CliResult run_cli(const std::string &arguments, const std::string &environment = "") {
    const std::string command =
        environment + " '" + std::string(KLDIV_CLI) + "' " + arguments + " 2>&1";
    CliResult result{-1, ""};
    FILE *pipe = popen(command.c_str(), "r");
    if (!pipe) return result;
    char buffer[4096];
    std::size_t got;
    while ((got = fread(buffer, 1, sizeof buffer, pipe)) > 0) result.output.append(buffer, got);
    const int status = pclose(pipe);
    if (WIFEXITED(status)) result.status = WEXITSTATUS(status);
    return result;
}

int remove_one(const char *path, const struct stat *, int, struct FTW *) { return remove(path); }

std::size_t count_lines(const std::string &text) {
    std::size_t lines = 0;
    for (const char c : text) lines += c == '\n';
    return lines;
}

const char *const kDescriptions[] = {
    "kldiv_fwd_sum_f32 64x32000 x86-64-linux-avx2",
    "kldiv_bwd_input_tensor_bf16 dynamic x86-64-linux-avx512",
    "kldiv_fused_none_f16 1048576 x86-64-linux-sse41",
};

class CliCache : public ::testing::Test {
protected:
    void SetUp() override {
        char pattern[] = "/tmp/kldiv_cli_cache_XXXXXX";
        ASSERT_NE(mkdtemp(pattern), nullptr);
        dir_ = pattern;
    }
    void TearDown() override { nftw(dir_.c_str(), remove_one, 16, FTW_DEPTH | FTW_PHYS); }

    // The three kernels of kDescriptions, as the runtime would store them.
    void fill() {
        kldiv::cache::DiskCache cache(dir_, kldiv::cache::kDefaultMaxBytes, "test", nullptr);
        int i = 0;
        for (const char *description : kDescriptions) {
            cache.store("key " + std::to_string(i), std::string(1000 * (i + 1), char('a' + i)),
                        description);
            ++i;
        }
        ASSERT_EQ(cache.list().size(), 3u);
    }

    nlohmann::json json_of(const std::string &arguments) {
        const CliResult result = run_cli(arguments);
        EXPECT_EQ(result.status, 0) << result.output;
        return nlohmann::json::parse(result.output, nullptr, false);
    }

    std::string dir_;
};

TEST_F(CliCache, ListsEntries) {
    fill();
    const CliResult result = run_cli("cache ls --dir " + dir_);
    ASSERT_EQ(result.status, 0) << result.output;
    EXPECT_EQ(count_lines(result.output), 3u) << result.output;
    for (const char *description : kDescriptions) {
        EXPECT_NE(result.output.find(description), std::string::npos) << result.output;
    }
    EXPECT_NE(result.output.find("KiB"), std::string::npos) << result.output;

    const nlohmann::json entries = json_of("cache ls --json --dir=" + dir_);
    ASSERT_TRUE(entries.is_array()) << entries;
    ASSERT_EQ(entries.size(), 3u);
    std::set<std::string> descriptions;
    for (const nlohmann::json &entry : entries) {
        descriptions.insert(entry.at("description").get<std::string>());
        EXPECT_GT(entry.at("bytes").get<std::uint64_t>(), 1000u);
        EXPECT_EQ(entry.at("version"), "test");
        EXPECT_TRUE(entry.at("readable").get<bool>());
    }
    EXPECT_EQ(descriptions,
              std::set<std::string>(std::begin(kDescriptions), std::end(kDescriptions)));

    // The directory comes from the environment when --dir is not given.
    const CliResult from_environment = run_cli("cache ls", "KLDIV_CACHE_DIR=" + dir_);
    EXPECT_EQ(from_environment.status, 0);
    EXPECT_EQ(from_environment.output, result.output);
}

TEST_F(CliCache, StatsPruneAndClear) {
    fill();
    const std::uint64_t total = kldiv::cache::DiskCache(dir_, 0, "", nullptr).total_bytes();
    const CliResult text = run_cli("cache stats --dir " + dir_);
    ASSERT_EQ(text.status, 0) << text.output;
    EXPECT_NE(text.output.find(dir_), std::string::npos) << text.output;
    EXPECT_NE(text.output.find("entries    3\n"), std::string::npos) << text.output;
    EXPECT_NE(text.output.find("(" + std::to_string(total) + " bytes)"), std::string::npos)
        << text.output;
    EXPECT_NE(text.output.find("1.0 GiB"), std::string::npos) << text.output;

    nlohmann::json stats = json_of("cache stats --json --max-size 512M --dir " + dir_);
    EXPECT_EQ(stats.at("entries"), 3);
    EXPECT_EQ(stats.at("total_bytes"), total);
    EXPECT_EQ(stats.at("max_bytes"), 512ull << 20);
    EXPECT_EQ(stats.at("directory"), dir_);

    // A limit above the total removes nothing; 0 removes everything.
    CliResult prune = run_cli("cache prune --max-size 1M --dir " + dir_);
    ASSERT_EQ(prune.status, 0) << prune.output;
    EXPECT_EQ(json_of("cache stats --json --dir " + dir_).at("entries"), 3);
    prune = run_cli("cache prune --max-bytes 0 --dir " + dir_);
    ASSERT_EQ(prune.status, 0) << prune.output;
    EXPECT_NE(prune.output.find("0 entries"), std::string::npos) << prune.output;
    stats = json_of("cache stats --json --dir " + dir_);
    EXPECT_EQ(stats.at("entries"), 0);
    EXPECT_EQ(stats.at("total_bytes"), 0);
    EXPECT_EQ(run_cli("cache ls --dir " + dir_).output, "");

    fill();
    const CliResult clear = run_cli("cache clear --dir " + dir_);
    ASSERT_EQ(clear.status, 0) << clear.output;
    EXPECT_NE(clear.output.find("removed 3 entries"), std::string::npos) << clear.output;
    EXPECT_EQ(json_of("cache stats --json --dir " + dir_).at("entries"), 0);
    EXPECT_NE(run_cli("cache clear --dir " + dir_).output.find("removed 0 entries"),
              std::string::npos);
}

// A directory that others may write: every command gives the runtime's
// verdict, exits 1, and reads or removes nothing.
TEST_F(CliCache, RefusedDirectoryIsReportedAndLeftAlone) {
    fill();
    EXPECT_NE(run_cli("cache stats --dir " + dir_).output.find("verdict    usable\n"),
              std::string::npos);
    ASSERT_EQ(chmod(dir_.c_str(), 0777), 0);
    const std::string verdict =
        "refused: " + dir_ + " is writable by others (mode 0777); the disk cache is off";

    const CliResult stats = run_cli("cache stats --dir " + dir_);
    EXPECT_EQ(stats.status, 1) << stats.output;
    EXPECT_EQ(stats.output, "directory  " + dir_ + "\nverdict    " + verdict + "\n");
    const CliResult json = run_cli("cache stats --json --dir " + dir_);
    EXPECT_EQ(json.status, 1) << json.output;
    const nlohmann::json parsed = nlohmann::json::parse(json.output, nullptr, false);
    EXPECT_EQ(parsed.value("usable", true), false) << json.output;
    EXPECT_EQ(parsed.value("verdict", ""), verdict) << json.output;

    const CliResult list = run_cli("cache ls --dir " + dir_);
    EXPECT_EQ(list.status, 1);
    EXPECT_EQ(list.output, "kldiv cache: " + verdict + "\n");
    for (const std::string command : {"clear", "prune --max-bytes 0"}) {
        const CliResult result = run_cli("cache " + command + " --dir " + dir_);
        EXPECT_EQ(result.status, 1) << command;
        EXPECT_EQ(result.output, "kldiv cache: " + verdict + "; nothing removed\n") << command;
    }
    ASSERT_EQ(chmod(dir_.c_str(), 0700), 0);
    EXPECT_EQ(json_of("cache stats --json --dir " + dir_).at("entries"), 3);
}

// What was seen: `kldiv run` with KLDIV_CACHE_DIR a directory of another user
// that anyone may write stored its kernels there, and the next run loaded them.
TEST_F(CliCache, RunNeitherStoresInNorLoadsFromADirectoryOfAnotherUser) {
    if (geteuid() != 0) GTEST_SKIP() << "[SKIP] not root: making a directory another user's needs chown";
    const std::string shared = dir_ + "/shared";
    ASSERT_EQ(mkdir(shared.c_str(), 0777), 0);
    ASSERT_EQ(chmod(shared.c_str(), 0777), 0);
    ASSERT_EQ(chown(shared.c_str(), 65534, 65534), 0);  // nobody
    for (int run = 0; run < 2; run++) {
        const CliResult result = run_cli("run --shape 64x1000 --dtype f32 --reduction sum",
                                         "KLDIV_CACHE_DIR=" + shared);
        EXPECT_EQ(result.status, 0) << result.output;
        EXPECT_NE(result.output.find("kldiv run: warning: kldiv: kernel cache directory " + shared +
                                     " refused: " + shared +
                                     " is owned by nobody (uid 65534), not by root (uid 0); the "
                                     "disk cache is off for this process\n"),
                  std::string::npos)
            << result.output;
        EXPECT_EQ(result.output.find("from the disk cache"), std::string::npos) << result.output;
        EXPECT_NE(result.output.find("\nresult          PASS\n"), std::string::npos) << result.output;
    }
    EXPECT_TRUE(std::filesystem::is_empty(shared)) << "something was written to " << shared;
}

TEST_F(CliCache, UsageErrorsExitTwo) {
    for (const std::string arguments :
         {"cache", "cache frobnicate", "cache ls --bogus", "cache ls extra", "cache ls --dir",
          "cache clear --json", "cache ls --max-bytes 5", "cache prune --max-bytes abc",
          "cache prune --max-bytes -1", "cache prune --max-size 12Q", "cache ls --json=yes"}) {
        const CliResult result = run_cli(arguments + " --dir " + dir_);
        EXPECT_EQ(result.status, 2) << arguments << ": " << result.output;
        EXPECT_NE(result.output.find("Try 'kldiv cache --help'"), std::string::npos)
            << arguments << ": " << result.output;
    }
}

TEST_F(CliCache, HelpDisabledAndNotADirectory) {
    for (const std::string arguments : {"help cache", "cache --help", "cache ls --help"}) {
        const CliResult result = run_cli(arguments);
        EXPECT_EQ(result.status, 0) << arguments;
        EXPECT_EQ(result.output.rfind("Usage: kldiv cache", 0), 0u) << arguments;
    }
    const CliResult help = run_cli("--help");
    EXPECT_NE(help.output.find("\n  cache "), std::string::npos) << help.output;

    for (const std::string command : {"ls", "stats", "clear", "prune"}) {
        const CliResult result = run_cli("cache " + command, "KLDIV_CACHE_DIR=off");
        EXPECT_EQ(result.status, 0) << command;
        EXPECT_NE(result.output.find("disabled"), std::string::npos) << result.output;
    }

    const std::string file = dir_ + "/file";
    std::ofstream(file) << "not a directory";
    const CliResult result = run_cli("cache stats --dir " + file);
    EXPECT_EQ(result.status, 1) << result.output;
    EXPECT_NE(result.output.find("is not a directory"), std::string::npos) << result.output;
}

}  // namespace
