#include "command_line.h"

#include <cerrno>
#include <cstdlib>
#include <limits>

namespace kldiv::tools {

std::string ArgumentReader::next_option() {
    std::string arg = args_[position_++];
    inline_value_.reset();
    if (arg.rfind("--", 0) == 0) {
        const std::size_t equals = arg.find('=');
        if (equals != std::string::npos) {
            inline_value_ = arg.substr(equals + 1);
            arg.resize(equals);
        }
    }
    option_ = arg;
    return arg;
}

std::string ArgumentReader::value() {
    if (inline_value_) return *inline_value_;
    if (done()) throw UsageError("option " + option_ + " needs a value");
    return args_[position_++];
}

void ArgumentReader::no_value() {
    if (inline_value_) throw UsageError("option " + option_ + " takes no value");
}

std::int64_t parse_integer(const std::string &option, const std::string &text, std::int64_t min,
                           std::int64_t max) {
    const char *begin = text.c_str();
    char *end = nullptr;
    errno = 0;
    const long long value = std::strtoll(begin, &end, 10);
    if (text.empty() || *end != '\0' || errno == ERANGE || text[0] == ' ') {
        throw UsageError("invalid value '" + text + "' for " + option + ": expected an integer");
    }
    if (value < min || value > max) {
        throw UsageError("invalid value '" + text + "' for " + option + ": expected " +
                         std::to_string(min) + " to " + std::to_string(max));
    }
    return value;
}

std::vector<std::int64_t> parse_shape(const std::string &text) {
    std::vector<std::int64_t> shape;
    std::size_t start = 0;
    std::int64_t numel = 1;
    const std::int64_t max_size = std::numeric_limits<std::int32_t>::max();
    while (true) {
        const std::size_t end = text.find('x', start);
        const std::string size_text = text.substr(start, end - start);
        if (size_text.empty() || size_text.find_first_not_of("0123456789") != std::string::npos) {
            throw UsageError("invalid shape '" + text +
                             "': expected sizes joined by 'x', e.g. 64x32000");
        }
        const std::int64_t size = parse_integer("--shape", size_text, 0, max_size);
        if (size > 0 && numel > std::numeric_limits<std::int64_t>::max() / size) {
            throw UsageError("shape '" + text + "' has too many elements");
        }
        numel *= size;
        shape.push_back(size);
        if (end == std::string::npos) break;
        start = end + 1;
    }
    return shape;
}

std::string format_shape(const std::vector<std::int64_t> &shape) {
    std::string text;
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) text += 'x';
        text += std::to_string(shape[i]);
    }
    return text.empty() ? "scalar" : text;
}

}  // namespace kldiv::tools
