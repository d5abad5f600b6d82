// The C ABI on calls decoded from the fuzz input: which function (the loss's
// three and distillation's three), the reduction and log_target (enum values
// out of range included), distillation's options (temperatures of every kind,
// a row mask or none, saved row statistics or none), and for every
// tensor slot its presence, dtype, device, rank (negative, over the limit),
// sizes and strides (zero, huge, negative, products past int64), and where
// its data lies: its own buffer, another slot's (outputs aliasing inputs or
// each other), or nowhere.
//
// Buffers hold exactly the bytes a view reaches and sit against a guard page
// (after the end or before the start, as the input says), so a kernel that
// reads or writes one element too far faults; kldiv's own code runs under
// AddressSanitizer and UndefinedBehaviorSanitizer. Views too large to back
// with memory are passed only when their sizes and strides overflow, where
// the library must refuse them before touching memory.
//
// Checked on every call: a failure has a message and writes nothing; a
// success leaves the inputs unchanged and clears the message.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kldiv/kldiv.h"

namespace {

constexpr size_t kMaxBytes = 1 << 16;      // the most a slot's buffer holds
constexpr int64_t kMaxElements = 1 << 14;  // more would only spend time
constexpr int kSlots = 5;
constexpr int kArrayLength = 8;  // sizes and strides arrays: a larger rank must not be read
constexpr std::array<double, 8> kTemperatures = {1.0, 0.0, 2.0, 0.25, -1.0, __builtin_nan(""), __builtin_inf(), 1e-300};

// One slot's memory: [guard page][kMaxBytes][guard page].
struct GuardedRegion {
    unsigned char *base = nullptr;
    size_t page = 0;

    GuardedRegion() {
        page = (size_t)sysconf(_SC_PAGESIZE);
        const size_t total = kMaxBytes + 2 * page;
        void *p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) std::abort();
        base = static_cast<unsigned char *>(p);
        if (mprotect(base, page, PROT_NONE) != 0 || mprotect(base + page + kMaxBytes, page, PROT_NONE) != 0) {
            std::abort();
        }
    }
    // `bytes` against the rear guard, or against the front one.
    unsigned char *place(size_t bytes, bool at_end) const {
        return at_end ? base + page + kMaxBytes - bytes : base + page;
    }
};

struct Reader {
    const uint8_t *data;
    size_t size;
    uint8_t byte() {
        if (size == 0) return 0;
        --size;
        return *data++;
    }
    template<size_t N>
    int64_t pick(const std::array<int64_t, N> &values) { return values[byte() % N]; }
};

constexpr std::array<int64_t, 14> kSizes = {1, 2, 3, 4, 5, 7, 16, 33, 0, 1, 2, -1, INT64_MAX, int64_t(1) << 32};
constexpr std::array<int64_t, 12> kStrides = {0, 1, 1, 2, 3, 4, 5, 40, -1, INT64_MAX, int64_t(1) << 40, INT64_MAX / 3};

size_t element_bytes(int dtype) { return dtype == KLDIV_FLOAT64 ? 8 : dtype == KLDIV_FLOAT32 ? 4 : 2; }

// What memory a view needs: `bytes` when it can be backed; else whether the
// library must refuse it (overflow, negative values, rank) or merely cannot be
// given memory here (valid but large: not called).
struct Need {
    enum { Backed, MustRefuse, TooLarge } kind;
    size_t bytes;
};

Need need_of(int32_t rank, const int64_t *sizes, const int64_t *strides, int dtype) {
    if (rank < 0 || rank > KLDIV_MAX_RANK) return {Need::MustRefuse, 0};
    if (rank > kArrayLength) return {Need::TooLarge, 0};  // not built by this harness
    __int128 elements = 1, last = 0;
    bool empty = false, overflow = false;
    for (int d = 0; d < rank; d++) {
        if (sizes[d] < 0 || strides[d] < 0) return {Need::MustRefuse, 0};
        empty |= sizes[d] == 0;
        elements *= sizes[d];
        if (elements > INT64_MAX) overflow = true;
        if (elements > INT64_MAX) elements = INT64_MAX;  // stays an upper bound
    }
    if (overflow) return {Need::MustRefuse, 0};
    if (empty) return {Need::Backed, 0};
    for (int d = 0; d < rank; d++) {
        last += (__int128)(sizes[d] - 1) * strides[d];  // each term < 2^126: no overflow before the test
        if (last > INT64_MAX) return {Need::MustRefuse, 0};
    }
    const __int128 bytes = (last + 1) * (__int128)element_bytes(dtype);
    if (bytes > INT64_MAX) return {Need::MustRefuse, 0};
    if (elements > kMaxElements || bytes > (__int128)kMaxBytes) return {Need::TooLarge, 0};
    return {Need::Backed, (size_t)bytes};
}

struct Slot {
    bool present = true;
    int dtype = 0;  // as stored in view.dtype (kept as an int: it may be out of the enum's range)
    kldiv_tensor view{};
    std::array<int64_t, kArrayLength> sizes{}, strides{};
    unsigned char *bytes = nullptr;  // its own buffer, or nullptr
    size_t length = 0;
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
    kldiv_set_num_threads(1);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static GuardedRegion regions[kSlots];
    Reader in{data, size};

    // The loss's forward, backward, forward_backward; distillation's forward,
    // forward_backward, backward.
    const int function = in.byte() % 6;
    const int reduction_pick = in.byte() % 6;
    // Values that are no enumerator on purpose (the enums span every int).
    const auto reduction = (kldiv_reduction)(reduction_pick < 4 ? reduction_pick : reduction_pick == 4 ? 17 : -1);
    const int log_target = in.byte() % 3 == 0;
    const int dtype_common = in.byte() % 4;

    // forward: input, target, out; backward: grad_output, input, target,
    // grad_input, grad_target; forward_backward: input, target, out, grad_input.
    // Distillation likewise, with student and teacher for input and target.
    const int slot_count = function == 1 || function == 5 ? 5 : function == 0 || function == 3 ? 3 : 4;
    Slot slots[kSlots];
    for (int s = 0; s < slot_count; s++) {
        Slot &slot = slots[s];
        kldiv_tensor &v = slot.view;
        const uint8_t flags = in.byte();
        slot.present = flags % 16 != 0;
        // Enum fields take any int from C: store the bytes, as a C caller would.
        slot.dtype = flags % 32 == 1 ? (in.byte() % 6) - 1 : dtype_common;
        const int device = flags % 64 == 2 ? (in.byte() % 3) + 1 : (int)KLDIV_DEVICE_CPU;
        std::memcpy(&v.dtype, &slot.dtype, sizeof(int));
        std::memcpy(&v.device, &device, sizeof(int));
        const uint8_t shape_mode = in.byte();
        if (shape_mode % 4 == 0 && s > 0) {
            // Another slot's shape (most calls need matching or broadcast shapes).
            const Slot &other = slots[shape_mode / 4 % s];
            v.rank = other.view.rank;
            slot.sizes = other.sizes;
        } else if (shape_mode % 16 == 1) {
            v.rank = shape_mode % 3 == 0 ? -1 : shape_mode % 3 == 1 ? KLDIV_MAX_RANK + 1 : INT32_MAX;
        } else {
            v.rank = in.byte() % 5;
            for (int d = 0; d < v.rank; d++) slot.sizes[d] = in.pick(kSizes);
        }
        // Contiguous strides, or drawn ones.
        int64_t step = 1;
        const bool drawn = in.byte() % 3 == 0;
        for (int d = std::min<int32_t>(std::max<int32_t>(v.rank, 0), kArrayLength) - 1; d >= 0; d--) {
            slot.strides[d] = drawn ? in.pick(kStrides) : step;
            if (!__builtin_mul_overflow(step, std::max<int64_t>(slot.sizes[d], 1), &step)) continue;
            step = 1;
        }
        v.sizes = slot.sizes.data();
        v.strides = slot.strides.data();
    }

    // Memory, once every shape is known: own buffers, aliases, or none.
    for (int s = 0; s < slot_count; s++) {
        Slot &slot = slots[s];
        kldiv_tensor &v = slot.view;
        const uint8_t placement = in.byte();
        const Need need = need_of(v.rank, v.sizes, v.strides, slot.dtype);
        if (need.kind == Need::TooLarge) return 0;
        const bool at_end = placement & 1;
        const Slot *other = s > 0 ? &slots[placement / 16 % s] : nullptr;
        const size_t own_need = need.kind == Need::Backed ? need.bytes : 16;
        if (placement % 16 == 2 && other && other->view.data && other->length >= own_need) {
            // The same memory as another slot (which holds enough of it for this view).
            v.data = other->view.data;
            if (placement & 64 && other->length >= element_bytes(slot.dtype) + own_need) {
                v.data = static_cast<unsigned char *>(v.data) + element_bytes(slot.dtype);
            }
        } else if (placement % 16 == 3) {
            v.data = nullptr;
        } else {
            const size_t bytes = own_need;
            slot.bytes = regions[s].place(bytes, at_end);
            slot.length = bytes;
            for (size_t i = 0; i < bytes; i++) slot.bytes[i] = (unsigned char)in.byte();
            v.data = slot.bytes;
        }
    }

    // Distillation's options. The mask and the statistics hold one byte and
    // KLDIV_DISTILL_STATS_PER_ROW doubles per row of the student's leading
    // dimensions: given only where those fit here (the library reads them).
    kldiv_distill_options distill{};
    distill.temperature = kTemperatures[in.byte() % kTemperatures.size()];
    distill.reduction = reduction;
    distill.reverse = in.byte() % 2;
    distill.temperature_squared = in.byte() % 2;
    const Slot &student = slots[function == 5 ? 1 : 0];
    int64_t rows = -1;  // unknown: not given memory
    if (student.view.rank >= 1 && student.view.rank <= kArrayLength) {
        __int128 product = 1;
        for (int d = 0; d + 1 < student.view.rank; d++) {
            product *= std::max<int64_t>(student.sizes[d], 0);
            if (product > kMaxElements) break;
        }
        if (product <= kMaxElements) rows = (int64_t)product;
    }
    static std::vector<uint8_t> mask(kMaxElements);
    static std::vector<double> stats(kMaxElements * KLDIV_DISTILL_STATS_PER_ROW);
    const uint8_t extras = in.byte();
    if (rows >= 0 && extras % 2 == 1) {
        for (int64_t r = 0; r < rows; r++) mask[r] = in.byte() % 3;
        distill.row_mask = mask.data();
    }
    double *row_stats = rows >= 0 && extras % 4 >= 2 ? stats.data() : nullptr;
    const size_t stats_length = row_stats ? (size_t)rows * KLDIV_DISTILL_STATS_PER_ROW : 0;
    for (size_t i = 0; i < stats_length; i++) stats[i] = (double)in.byte() - 100.0;
    const std::vector<double> stats_before(stats.begin(), stats.begin() + stats_length);

    // What every buffer held before the call.
    std::vector<unsigned char> before[kSlots];
    for (int s = 0; s < slot_count; s++) before[s].assign(slots[s].bytes, slots[s].bytes + slots[s].length);

    auto arg = [&](int s) -> const kldiv_tensor * { return slots[s].present ? &slots[s].view : nullptr; };
    if (std::getenv("KLDIV_FUZZ_VERBOSE")) {  // describes the call (run a saved input to see it)
        std::fprintf(stderr, "function %d reduction %d log_target %d temperature %g mask %d stats %d\n", function,
                     reduction_pick, log_target, distill.temperature, distill.row_mask != nullptr, row_stats != nullptr);
        for (int s = 0; s < slot_count; s++) {
            const kldiv_tensor &v = slots[s].view;
            std::fprintf(stderr, "  slot %d%s dtype %d rank %d data %p (own %p, %zu bytes):", s,
                         slots[s].present ? "" : " (absent)", slots[s].dtype, v.rank, v.data, (void *)slots[s].bytes,
                         slots[s].length);
            for (int d = 0; d < std::min(std::max(v.rank, 0), kArrayLength); d++) {
                std::fprintf(stderr, " %lld/%lld", (long long)v.sizes[d], (long long)v.strides[d]);
            }
            std::fprintf(stderr, "\n");
        }
    }
    int status = 0;
    bool output[kSlots] = {};
    switch (function) {
    case 0:
        status = kldiv_forward(arg(0), arg(1), reduction, log_target, arg(2));
        output[2] = true;
        break;
    case 1:
        status = kldiv_backward(arg(0), arg(1), arg(2), reduction, log_target, arg(3), arg(4));
        output[3] = output[4] = true;
        break;
    case 2:
        status = kldiv_forward_backward(arg(0), arg(1), reduction, log_target, arg(2), arg(3));
        output[2] = output[3] = true;
        break;
    case 3:
        status = kldiv_distill_forward(arg(0), arg(1), &distill, arg(2), row_stats);
        output[2] = true;
        break;
    case 4:
        status = kldiv_distill_forward_backward(arg(0), arg(1), &distill, arg(2), arg(3), row_stats);
        output[2] = output[3] = true;
        break;
    default:
        status = kldiv_distill_backward(arg(0), arg(1), arg(2), &distill, row_stats, arg(3), arg(4));
        output[3] = output[4] = true;
        break;
    }
    // Statistics are written by a successful forward call only.
    const bool stats_changed = !std::equal(stats_before.begin(), stats_before.end(), stats.begin());
    if (stats_changed && (status != 0 || function == 5)) {
        std::fprintf(stderr, "the row statistics were written (call status %d)\n", status);
        std::abort();
    }

    if (std::getenv("KLDIV_FUZZ_VERBOSE")) std::fprintf(stderr, "status %d: %s\n", status, kldiv_last_error());
    const bool has_message = kldiv_last_error()[0] != '\0';
    if (status != 0 && !has_message) std::abort();
    if (status == 0 && has_message) std::abort();
    // An output may share an input's memory only as the very same view (in place).
    auto written_in_place = [&](int s) {
        const kldiv_tensor &a = slots[s].view;
        for (int o = 0; o < slot_count; o++) {
            const kldiv_tensor &b = slots[o].view;
            if (!output[o] || !slots[o].present || b.data != a.data || slots[o].dtype != slots[s].dtype ||
                b.rank != a.rank) {
                continue;
            }
            bool same = true;
            for (int d = 0; d < std::min(std::max(a.rank, 0), kArrayLength); d++) {
                same &= a.sizes[d] == b.sizes[d] && a.strides[d] == b.strides[d];
            }
            if (same) return true;
        }
        return false;
    };
    for (int s = 0; s < slot_count; s++) {
        const bool changed = before[s] != std::vector<unsigned char>(slots[s].bytes, slots[s].bytes + slots[s].length);
        if (changed && (status != 0 || !(output[s] || written_in_place(s)))) {  // written on failure, or an input
            std::fprintf(stderr, "slot %d's memory was written (call status %d)\n", s, status);
            std::abort();
        }
    }
    return 0;
}
