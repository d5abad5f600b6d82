// Small pieces the subcommands share for reading their arguments.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace kldiv::tools {

// A mistake in the command line: reported with a hint to --help, exit status 2.
class UsageError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

inline constexpr int kExitPass = 0;
inline constexpr int kExitFail = 1;
inline constexpr int kExitUsage = 2;

// Walks "--name value" and "--name=value" arguments.
class ArgumentReader {
public:
    explicit ArgumentReader(std::vector<std::string> args) : args_(std::move(args)) {}

    bool done() const { return position_ >= args_.size(); }
    // The next option's name ("--shape" of "--shape=4x8"); consumes it.
    std::string next_option();
    // The value of the option just read: the part after '=', or the next argument.
    std::string value();
    // Throws when the option just read, a flag, came with "=value".
    void no_value();

private:
    std::vector<std::string> args_;
    std::size_t position_ = 0;
    std::string option_;
    std::optional<std::string> inline_value_;
};

// Integer in [min, max], or a UsageError naming `option`.
std::int64_t parse_integer(const std::string &option, const std::string &text, std::int64_t min,
                           std::int64_t max);

// "64x32000" -> {64, 32000}; sizes >= 0, at least one.
std::vector<std::int64_t> parse_shape(const std::string &text);
std::string format_shape(const std::vector<std::int64_t> &shape);

}  // namespace kldiv::tools
