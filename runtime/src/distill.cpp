#include "distill.h"

#include <HalideRuntime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "aot_registry.h"
#include "cuda_device.h"
#include "errors.h"
#include "host_convert.h"
#include "kldiv/codegen/kernel_spec.h"
#include "kernel_args.h"
#include "kernel_cache.h"
#include "layout.h"
#include "validation.h"

namespace kldiv::runtime {

namespace {

// Logits as rows of the last dimension: the leading dimensions must be one
// strided dimension (any contiguous tensor, and most views, are).
struct Rows {
    int64_t rows = 1;
    int64_t vocab = 0;
    int64_t row_stride = 0;
    int64_t vocab_stride = 1;
};

std::optional<Rows> rows_of(const Tensor &t) {
    Rows r;
    r.vocab = t.sizes.back();
    r.vocab_stride = t.strides.back();
    // A view of no rows has any strides (check_tensor checked only the span
    // of views with elements).
    for (int d = 0; d < t.rank() - 1; d++) {
        if (t.sizes[d] == 0) {
            r.rows = 0;
            return r;
        }
    }
    for (int d = t.rank() - 2; d >= 0; d--) {
        const int64_t size = t.sizes[d];
        if (size == 1) continue;
        int64_t step = 0;
        if (r.rows == 1) {
            r.row_stride = t.strides[d];
        } else if (__builtin_mul_overflow(r.row_stride, r.rows, &step) || t.strides[d] != step) {
            return std::nullopt;
        }
        // (check_tensor refuses sizes whose product overflows before a zero;
        // this keeps the product defined whatever the caller checked.)
        if (__builtin_mul_overflow(r.rows, size, &r.rows)) {
            fail(ErrorCode::InvalidArgument, "the logits have more than 2^63 - 1 rows");
        }
    }
    return r;
}

std::vector<int64_t> leading_shape(const Tensor &t) { return {t.sizes.begin(), t.sizes.end() - 1}; }

const char *device_name(Device device) { return device == Device::CUDA ? "a CUDA" : "a CPU"; }

// CUDA logits run the CUDA kernels when the build has them and
// KLDIV_DISTILL_CUDA=1 asks for them: they have not yet run on a GPU in the
// tests, so they are off by default.
void check_cuda_enabled() {
    if (!cuda::built_with_cuda()) {
        fail(ErrorCode::Device, "the logits are CUDA tensors, and this build of kldiv has no CUDA kernels");
    }
    const char *enabled = std::getenv("KLDIV_DISTILL_CUDA");
    if (enabled == nullptr || std::string(enabled) != "1") {
        fail(ErrorCode::Device, "the logits are CUDA tensors; the CUDA distillation kernels are experimental "
                                "(not yet tested on a GPU) and run only with KLDIV_DISTILL_CUDA=1");
    }
}

// What a call validated: rows of both logits, the options, and the divisor.
struct Call {
    bool cuda = false;
    Rows student, teacher;
    std::vector<uint8_t> row_on;
    int64_t rows_on = 0;
    double divisor = 1.0;      // of the summed row losses
    double loss_factor = 1.0;  // T^2 or 1
};

Call validate(const Tensor &student, const Tensor &teacher, const DistillOptions &options) {
    check_tensor(student, "student");
    check_tensor(teacher, "teacher");
    check_same_dtype(student, "student", teacher, "teacher");
    if (teacher.device != student.device) {
        fail(ErrorCode::Device, std::string("student is ") + device_name(student.device) + " tensor but teacher is " +
                                    device_name(teacher.device) + " tensor");
    }
    if (student.device == Device::CUDA) check_cuda_enabled();
    if (student.rank() == 0) fail(ErrorCode::Shape, "student: logits need at least one dimension (the vocabulary)");
    if (student.sizes != teacher.sizes) {
        fail(ErrorCode::Shape, "student has shape " + shape_text(student.sizes) + " but teacher has shape " +
                                   shape_text(teacher.sizes) + "; the logits must have one shape");
    }
    if (!(options.temperature > 0.0) || !std::isfinite(options.temperature)) {
        fail(ErrorCode::InvalidArgument,
             "temperature must be positive and finite, got " + std::to_string(options.temperature));
    }
    check_reduction(options.reduction);
    Call c;
    c.cuda = student.device == Device::CUDA;
    const std::optional<Rows> s = rows_of(student), t = rows_of(teacher);
    if (!s)
        fail(ErrorCode::Shape,
             "student: the leading dimensions cannot be viewed as one dimension of rows (make it contiguous)");
    if (!t)
        fail(ErrorCode::Shape,
             "teacher: the leading dimensions cannot be viewed as one dimension of rows (make it contiguous)");
    c.student = *s;
    c.teacher = *t;
    if (c.cuda && c.student.vocab > 0 && c.student.vocab < dsl::kDistillLanes) {
        fail(ErrorCode::Shape, "a vocabulary of " + std::to_string(c.student.vocab) + " on CUDA: the CUDA kernels "
                               "take at least " + std::to_string(dsl::kDistillLanes) + " logits per row");
    }
    // The mask as the kernels take it, for rows with logits (a view of no
    // elements may have any number of rows).
    const int64_t rows = c.student.rows;
    const bool kernels_run = rows > 0 && c.student.vocab > 0;
    if (kernels_run) c.row_on.assign((size_t)rows, 1);
    c.rows_on = rows;
    if (options.row_mask) {
        c.rows_on = 0;
        for (int64_t r = 0; r < rows; r++) {
            const bool on = options.row_mask[r] != 0;
            c.rows_on += on;
            if (kernels_run) c.row_on[r] = on;
        }
    }
    switch (options.reduction) {
        case Reduction::BatchMean:
            c.divisor = (double)c.rows_on;
            break;
        case Reduction::Mean:
            c.divisor = (double)c.rows_on * (double)c.student.vocab;
            break;
        default:
            c.divisor = 1.0;
    }
    c.loss_factor = options.temperature_squared ? options.temperature * options.temperature : 1.0;
    return c;
}

void check_same_device(const Tensor &t, const char *name, const Tensor &student) {
    if (t.device != student.device) {
        fail(ErrorCode::Device, std::string(name) + " is " + device_name(t.device) + " tensor but the logits are " +
                                    (student.device == Device::CUDA ? "CUDA tensors" : "CPU tensors"));
    }
}

void check_loss_shape(const Tensor &t, const char *name, const Tensor &student, Reduction reduction) {
    check_tensor(t, name);
    check_same_dtype(t, name, student, "student");
    check_same_device(t, name, student);
    check_shape(t, name, reduction == Reduction::None ? leading_shape(student) : std::vector<int64_t>{});
}

void check_grad(const Tensor &grad, const char *name, const Tensor &student) {
    check_tensor(grad, name);
    check_same_dtype(grad, name, student, "student");
    check_same_device(grad, name, student);
    check_shape(grad, name, student.sizes);
    if (!rows_of(grad)) {
        fail(ErrorCode::Shape,
             std::string(name) + ": the leading dimensions cannot be viewed as one dimension of rows");
    }
}

// ---- kernels --------------------------------------------------------------

codegen::DistillSpec kernel_spec(dsl::DistillPass pass, bool reverse, DType dtype, bool grad_student,
                                 bool grad_teacher, bool cuda) {
    return codegen::DistillSpec{pass, dtype, reverse, grad_student, grad_teacher, cuda};
}

// Where a kernel buffer's data is: host memory (CPU kernels); the caller's
// device memory (CUDA logits and gradients); or host memory that a CUDA
// kernel copies to the device itself (the mask, statistics, row scales),
// `output` ones copied back after the call.
enum class Memory { Host, Device, Mirrored };

// A halide_buffer_t over `data` in `memory`; a device one is wrapped for the
// library's Halide CUDA runtime while this lives, a mirrored one's device
// copy is freed (to that runtime's cache of allocations) when it goes.
struct KernelBuffer {
    halide_buffer_t buffer{};
    halide_dimension_t dims[2];
    Memory memory;
    bool output;
    bool wrapped = false;

    KernelBuffer(void *data, halide_type_t type, std::initializer_list<halide_dimension_t> dimensions, Memory where,
                 bool is_output = false)
        : memory(where), output(is_output) {
        std::copy(dimensions.begin(), dimensions.end(), dims);
        buffer.type = type;
        buffer.dimensions = (int32_t)dimensions.size();
        buffer.dim = dims;
        if (memory == Memory::Device) {
            const cuda::BufferFunctions f = cuda::library_buffer_functions();
            wrapped = f.wrap && f.wrap(nullptr, &buffer, reinterpret_cast<uint64_t>(data)) == 0;
            if (!wrapped) fail(ErrorCode::Internal, "CUDA pointers could not be given to the kernels' runtime");
            return;
        }
        buffer.host = static_cast<uint8_t *>(data);
        if (memory == Memory::Mirrored && !output) buffer.set_host_dirty(true);
    }
    ~KernelBuffer() {
        if (wrapped) cuda::library_buffer_functions().detach(nullptr, &buffer);
        if (memory == Memory::Mirrored) halide_device_free(nullptr, &buffer);
    }
    KernelBuffer(const KernelBuffer &) = delete;
    KernelBuffer &operator=(const KernelBuffer &) = delete;
};

// A kernel call's buffers, kept alive for it.
using Buffers = std::vector<std::unique_ptr<KernelBuffer>>;

// Rows per kernel call: Halide 14 indexes a buffer with int32, so a call's
// rows span less than 2^31 elements of every operand; a CUDA call's rows are
// a grid dimension that CUDA limits to 65535 (schedules/distill_schedule.h).
int64_t rows_per_call(const std::vector<Rows> &views, bool cuda) {
    constexpr int64_t limit = std::numeric_limits<int32_t>::max();
    int64_t rows = limit;
    for (const Rows &v : views) {
        const int64_t vocab_span = (v.vocab - 1) * v.vocab_stride;
        if (v.vocab > limit || vocab_span >= limit || v.vocab_stride > limit) {
            fail(ErrorCode::InvalidArgument,
                 "a row of " + std::to_string(v.vocab) + " logits spans more than 2^31 elements");
        }
        if (v.row_stride > 0) rows = std::min(rows, (limit - vocab_span - 1) / v.row_stride + 1);
        if (v.row_stride > limit) rows = 1;
    }
    if (cuda) rows = std::min<int64_t>(rows, 65535);
    return std::max<int64_t>(rows, 1);
}

// One kernel over every row of `views` (the logits and gradients of the
// call, rows of one vocabulary), as many rows a call as rows_per_call allows:
// `args(row0, rows, buffers)` gives a call's argv, its buffers kept in
// `buffers`. The kernel is the cache's: AOT, or JIT for the runtime's target
// or the vocabulary. Mirrored outputs are copied back after each call, once
// the call's stream is done.
void run_rows(KernelCache &cache, const codegen::DistillSpec &spec, const std::vector<Rows> &views,
              const std::function<std::vector<void *>(int64_t, int64_t, Buffers &)> &args) {
    install_runtime_hooks();
    const int64_t rows = views[0].rows, vocab = views[0].vocab;
    const bool unit_stride =
        std::all_of(views.begin(), views.end(), [](const Rows &v) { return v.vocab_stride == 1; });
    const int64_t per_call = rows_per_call(views, spec.cuda);
    const std::string name = spec.name();
    const KernelCall kernel = cache.distill_kernel(spec, (int32_t)vocab, unit_stride, (uint64_t)(rows * vocab));
    for (int64_t row0 = 0; row0 < rows; row0 += per_call) {
        const int64_t n = std::min(per_call, rows - row0);
        Buffers buffers;
        std::vector<void *> argv = args(row0, n, buffers);
        KernelErrorContext context;
        void *user_context = &context;
        if (kernel.user_context) argv.insert(argv.begin(), &user_context);
        if (int status = kernel.entry(argv.data()); status != 0) {
            fail(ErrorCode::Internal, name + " failed (" + std::to_string(status) +
                                          "): " + (kernel.user_context ? context.message : take_kernel_error()));
        }
        const bool copies_back = std::any_of(buffers.begin(), buffers.end(), [](const auto &b) {
            return b->memory == Memory::Mirrored && b->output;
        });
        if (copies_back) cuda::wait_for_call_stream();
        for (const auto &b : buffers) {
            if (b->memory != Memory::Mirrored || !b->output) continue;
            if (int status = halide_copy_to_host(nullptr, &b->buffer); status != 0) {
                fail(ErrorCode::Internal, name + ": copying its statistics back failed: " + take_kernel_error());
            }
        }
    }
}

struct Operands {
    const Tensor &student, &teacher;
    const Call &call;
    halide_type_t storage;
    int64_t bytes;

    // Rows [row0, row0 + n) of the logits (or a gradient) `t`.
    halide_buffer_t *logits(const Tensor &t, const Rows &r, int64_t row0, int64_t n, Buffers &keep) const {
        void *data = static_cast<uint8_t *>(t.data) + row0 * r.row_stride * bytes;
        keep.push_back(std::make_unique<KernelBuffer>(
            data, storage,
            std::initializer_list<halide_dimension_t>{{0, (int32_t)r.vocab, (int32_t)r.vocab_stride},
                                                      {0, (int32_t)n, (int32_t)r.row_stride}},
            call.cuda ? Memory::Device : Memory::Host));
        return &keep.back()->buffer;
    }
    // Rows [row0, row0 + n) of host data the kernel reads or writes: `per_row`
    // values of `type` a row.
    halide_buffer_t *host(const void *data, halide_type_t type, int per_row, int64_t row0, int64_t n, Buffers &keep,
                          bool output = false) const {
        void *start = static_cast<uint8_t *>(const_cast<void *>(data)) + row0 * per_row * (type.bits / 8);
        const Memory memory = call.cuda ? Memory::Mirrored : Memory::Host;
        if (per_row == 1) {
            keep.push_back(std::make_unique<KernelBuffer>(
                start, type, std::initializer_list<halide_dimension_t>{{0, (int32_t)n, 1}}, memory, output));
        } else {
            keep.push_back(std::make_unique<KernelBuffer>(
                start, type, std::initializer_list<halide_dimension_t>{{0, per_row, 1}, {0, (int32_t)n, per_row}},
                memory, output));
        }
        return &keep.back()->buffer;
    }
};

// The statistics of every row (and the student's gradient when `grad` is
// given) into `stats` (kDistillStatsPerRow per row).
void run_stats(KernelCache &cache, const Operands &o, const DistillOptions &options, double grad_scale,
               const Tensor *grad, double *stats) {
    const Call &c = o.call;
    double inv_temperature = 1.0 / options.temperature;
    std::vector<Rows> views = {c.student, c.teacher};
    const std::optional<Rows> g = grad ? rows_of(*grad) : std::nullopt;
    if (g) views.push_back(*g);
    const codegen::DistillSpec spec = kernel_spec(grad ? dsl::DistillPass::Fused : dsl::DistillPass::Forward,
                                                  options.reverse, o.student.dtype, true, false, c.cuda);
    const halide_type_t u8(halide_type_uint, 8), f64(halide_type_float, 64);
    run_rows(cache, spec, views, [&](int64_t row0, int64_t n, Buffers &keep) {
        std::vector<void *> argv;
        argv.push_back(o.logits(o.student, c.student, row0, n, keep));
        argv.push_back(o.logits(o.teacher, c.teacher, row0, n, keep));
        argv.push_back(o.host(c.row_on.data(), u8, 1, row0, n, keep));
        argv.push_back(&inv_temperature);
        if (grad) argv.push_back(&grad_scale);
        argv.push_back(o.host(stats, f64, kDistillStatsPerRow, row0, n, keep, true));
        if (grad) argv.push_back(o.logits(*grad, *g, row0, n, keep));
        return argv;
    });
}

// Whether a call has logits to run kernels on (a view of no elements may
// have any number of rows, each of loss 0).
bool has_logits(const Call &c) { return c.student.rows > 0 && c.student.vocab > 0; }

// Whether `t`'s elements lie in row-major order without gaps.
bool is_contiguous(const Tensor &t) {
    int64_t step = 1;
    for (int d = t.rank() - 1; d >= 0; d--) {
        if (t.sizes[d] != 1 && t.strides[d] != step) return false;
        step *= t.sizes[d];
    }
    return true;
}

// Writes value(i) to element i (row-major) of `out`, in host or device memory
// (on the call's stream).
void store_values(const Tensor &out, const std::function<double(int64_t)> &value) {
    const int64_t size = (int64_t)element_size(out.dtype);
    if (out.device == Device::CPU) {
        for_each_offset(out.sizes, out.strides, [&](int64_t i, int64_t offset) {
            store_from_double(static_cast<uint8_t *>(out.data) + offset * size, out.dtype, value(i));
        });
        return;
    }
    if (out.numel() == 0) return;
    if (is_contiguous(out)) {
        std::vector<uint8_t> bytes((size_t)(out.numel() * size));
        for (int64_t i = 0; i < out.numel(); i++) store_from_double(bytes.data() + i * size, out.dtype, value(i));
        cuda::copy_to_device(out.data, bytes.data(), bytes.size());
        return;
    }
    for_each_offset(out.sizes, out.strides, [&](int64_t i, int64_t offset) {
        uint8_t bytes[8];
        store_from_double(bytes, out.dtype, value(i));
        cuda::copy_to_device(static_cast<uint8_t *>(out.data) + offset * size, bytes, (size_t)size);
    });
}

// The values of `t` (row-major), from host or device memory; a CUDA `t` must
// be contiguous.
std::vector<double> load_values(const Tensor &t) {
    const int64_t size = (int64_t)element_size(t.dtype);
    std::vector<double> values((size_t)t.numel());
    if (t.device == Device::CPU) {
        for_each_offset(t.sizes, t.strides, [&](int64_t i, int64_t offset) {
            values[i] = load_as_double(static_cast<const uint8_t *>(t.data) + offset * size, t.dtype);
        });
        return values;
    }
    if (values.empty()) return values;
    if (!is_contiguous(t)) fail(ErrorCode::InvalidArgument, "a CUDA grad_output must be contiguous");
    cuda::wait_for_call_stream();  // the work that wrote it
    std::vector<uint8_t> bytes((size_t)(t.numel() * size));
    KernelBuffer device(t.data, halide_type_t(halide_type_uint, 8),
                        {halide_dimension_t(0, (int32_t)bytes.size(), 1)}, Memory::Device);
    device.buffer.host = bytes.data();
    device.buffer.set_device_dirty(true);
    if (halide_copy_to_host(nullptr, &device.buffer) != 0) {
        fail(ErrorCode::Device, "reading grad_output from the GPU failed: " + take_kernel_error());
    }
    device.buffer.host = nullptr;
    for (size_t i = 0; i < values.size(); i++) values[i] = load_as_double(bytes.data() + i * size, t.dtype);
    return values;
}

// Writes the loss from the row losses in `stats` (empty: every row's is 0).
void store_loss(const Tensor &out, const Call &c, const DistillOptions &options, const std::vector<double> &stats) {
    auto row_loss = [&](int64_t r) { return stats.empty() ? 0.0 : stats[r * kDistillStatsPerRow]; };
    if (options.reduction == Reduction::None) {
        // Row r of the leading dimensions, in row-major order.
        store_values(out, [&](int64_t r) { return c.loss_factor * row_loss(r); });
        return;
    }
    double total = 0.0;
    for (int64_t r = 0; r < (int64_t)stats.size() / kDistillStatsPerRow; r++) total += row_loss(r);
    store_values(out, [&](int64_t) { return c.loss_factor * total / c.divisor; });
}

// While alive, CUDA calls run in the tensors' GPU's context on the call's stream.
struct DeviceScope {
    std::optional<cuda::Scope> scope;
    DeviceScope(const Call &c, NamedViews tensors) {
        if (c.cuda) scope.emplace(cuda::place(tensors), cuda::call_stream(Runtime::process_default().cuda_stream()));
    }
};

// Rows of fewer than kDistillLanes logits (the kernels' step, whose loads
// are whole) go through copies padded with -inf: a logit of -inf has
// probability 0, so it adds nothing to the sums or the loss and changes no
// maximum; its gradient is dropped.
constexpr int64_t kDistillLanes = dsl::kDistillLanes;

struct Padded {
    std::vector<uint8_t> bytes;
    Tensor tensor;
    Rows rows;
};

Padded padded(DType dtype, int64_t rows, const Tensor *source, const Rows *source_rows) {
    const int64_t size = (int64_t)element_size(dtype);
    Padded p;
    p.bytes.resize((size_t)(rows * kDistillLanes * size));
    p.tensor = Tensor::contiguous(p.bytes.data(), dtype, {rows, kDistillLanes});
    p.rows = Rows{rows, kDistillLanes, kDistillLanes, 1};
    if (!source) return p;
    const double minus_infinity = -std::numeric_limits<double>::infinity();
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t j = 0; j < kDistillLanes; j++) {
            uint8_t *to = p.bytes.data() + (r * kDistillLanes + j) * size;
            if (j < source_rows->vocab) {
                const int64_t offset = r * source_rows->row_stride + j * source_rows->vocab_stride;
                std::memcpy(to, static_cast<const uint8_t *>(source->data) + offset * size, (size_t)size);
            } else {
                store_from_double(to, dtype, minus_infinity);
            }
        }
    }
    return p;
}

// The first `vocab` logits of each padded row into `out`.
void unpad(const Padded &p, const Tensor &out) {
    const Rows r = *rows_of(out);
    const int64_t size = (int64_t)element_size(out.dtype);
    for (int64_t row = 0; row < r.rows; row++) {
        for (int64_t j = 0; j < r.vocab; j++) {
            std::memcpy(static_cast<uint8_t *>(out.data) + (row * r.row_stride + j * r.vocab_stride) * size,
                        p.bytes.data() + (row * kDistillLanes + j) * size, (size_t)size);
        }
    }
}

// The logits as the kernels take them: the call's own, or padded copies.
struct Logits {
    std::optional<Padded> student_copy, teacher_copy;
    const Tensor *student, *teacher;
    Call call;
    Logits(const Tensor &s, const Tensor &t, const Call &c) : student(&s), teacher(&t), call(c) {
        if (c.student.vocab == 0 || c.student.vocab >= kDistillLanes) return;
        student_copy = padded(s.dtype, c.student.rows, &s, &c.student);
        teacher_copy = padded(t.dtype, c.teacher.rows, &t, &c.teacher);
        student = &student_copy->tensor;
        teacher = &teacher_copy->tensor;
        call.student = student_copy->rows;
        call.teacher = teacher_copy->rows;
    }
    bool padded_rows() const { return student_copy.has_value(); }
};

std::vector<double> empty_stats(const Call &c) {
    return std::vector<double>((size_t)(c.student.rows * kDistillStatsPerRow), 0.0);
}

// The caller's copy of the statistics: every row's, zeros when no kernel ran.
void save_stats(const Call &c, const std::vector<double> &row_stats, double *stats) {
    if (!stats) return;
    if (row_stats.empty()) {
        std::fill(stats, stats + c.student.rows * kDistillStatsPerRow, 0.0);
    } else {
        std::copy(row_stats.begin(), row_stats.end(), stats);
    }
}

}  // namespace

void distill_forward(KernelCache &cache, const Tensor &student, const Tensor &teacher, const DistillOptions &options,
                     const Tensor &out, double *stats) {
    const Call c = validate(student, teacher, options);
    check_loss_shape(out, "out", student, options.reduction);
    for (const auto &[t, name] : {std::pair{&student, "student"}, std::pair{&teacher, "teacher"}}) {
        if (overlaps(out, *t)) fail(ErrorCode::Alias, std::string("out overlaps ") + name);
    }
    const TensorView student_view = student, teacher_view = teacher, out_view = out;
    const DeviceScope device(c, {{&student_view, "student"}, {&teacher_view, "teacher"}, {&out_view, "out"}});
    std::vector<double> row_stats;
    if (has_logits(c)) {
        row_stats = empty_stats(c);
        const Logits l(student, teacher, c);
        const Operands o{*l.student, *l.teacher, l.call, storage_halide_type(student.dtype),
                         (int64_t)element_size(student.dtype)};
        run_stats(cache, o, options, 0.0, nullptr, row_stats.data());
    }
    store_loss(out, c, options, row_stats);
    save_stats(c, row_stats, stats);
}

void distill_forward_backward(KernelCache &cache, const Tensor &student, const Tensor &teacher,
                              const DistillOptions &options, const Tensor &out, const Tensor &grad_student,
                              double *stats) {
    const Call c = validate(student, teacher, options);
    check_loss_shape(out, "out", student, options.reduction);
    check_grad(grad_student, "grad_student", student);
    // The gradient may be written over the student's logits (the same view):
    // each row is read for its statistics before its gradient is written, and
    // each element before it is overwritten.
    const TensorView student_view = student, teacher_view = teacher, out_view = out, grad_view = grad_student;
    check_outputs({{&out_view, "out"}, {&grad_view, "grad_student"}}, {});
    for (const auto &[t, name] : {std::pair{&out, "out"}, std::pair{&grad_student, "grad_student"}}) {
        if (overlaps(*t, teacher)) fail(ErrorCode::Alias, std::string(name) + " overlaps teacher");
    }
    if (overlaps(out, student)) fail(ErrorCode::Alias, "out overlaps student");
    if (overlaps(grad_student, student) && !same_view(grad_student, student)) {
        fail(ErrorCode::Alias, "grad_student partially overlaps student");
    }
    const DeviceScope device(c, {{&student_view, "student"}, {&teacher_view, "teacher"}, {&out_view, "out"},
                                 {&grad_view, "grad_student"}});
    std::vector<double> row_stats;
    const double scale = c.loss_factor / options.temperature / c.divisor;
    if (has_logits(c)) {
        row_stats = empty_stats(c);
        const Logits l(student, teacher, c);
        const Operands o{*l.student, *l.teacher, l.call, storage_halide_type(student.dtype),
                         (int64_t)element_size(student.dtype)};
        if (l.padded_rows()) {
            Padded grad = padded(student.dtype, c.student.rows, nullptr, nullptr);
            run_stats(cache, o, options, scale, &grad.tensor, row_stats.data());
            unpad(grad, grad_student);
        } else {
            run_stats(cache, o, options, scale, &grad_student, row_stats.data());
        }
    }
    store_loss(out, c, options, row_stats);
    save_stats(c, row_stats, stats);
}

void distill_backward(KernelCache &cache, const Tensor &grad_output, const Tensor &student, const Tensor &teacher,
                      const DistillOptions &options, const double *stats, const Tensor *grad_student,
                      const Tensor *grad_teacher) {
    const Call c = validate(student, teacher, options);
    check_loss_shape(grad_output, "grad_output", student, options.reduction);
    const TensorView student_view = student, teacher_view = teacher, grad_output_view = grad_output;
    const TensorView grad_student_view = grad_student ? TensorView(*grad_student) : TensorView();
    const TensorView grad_teacher_view = grad_teacher ? TensorView(*grad_teacher) : TensorView();
    std::vector<NamedView> outputs;
    if (grad_student) {
        check_grad(*grad_student, "grad_student", student);
        outputs.push_back({&grad_student_view, "grad_student"});
    }
    if (grad_teacher) {
        check_grad(*grad_teacher, "grad_teacher", student);
        outputs.push_back({&grad_teacher_view, "grad_teacher"});
    }
    if (outputs.empty()) return;
    // Both gradients are written element by element while both logits are
    // read: no output may share memory with an input.
    check_outputs(outputs, {{&grad_output_view, "grad_output"}});
    for (const auto &[t, name] : outputs) {
        for (const auto &[in, in_name] : {std::pair{&student, "student"}, std::pair{&teacher, "teacher"}}) {
            if (overlaps(*t, *in)) fail(ErrorCode::Alias, std::string(name) + " overlaps " + in_name);
        }
    }
    const int64_t rows = c.student.rows;
    if (!has_logits(c)) return;
    std::vector<NamedView> tensors = {
        {&grad_output_view, "grad_output"}, {&student_view, "student"}, {&teacher_view, "teacher"}};
    tensors.insert(tensors.end(), outputs.begin(), outputs.end());
    const DeviceScope device(c, tensors);

    // Each row's scale: the upstream gradient, the divisor, T^2 and the 1/T
    // of the logits' scaling.
    const double common = c.loss_factor / options.temperature / c.divisor;
    const std::vector<double> upstream = load_values(grad_output);
    std::vector<double> row_scale((size_t)rows);
    for (int64_t r = 0; r < rows; r++) {
        row_scale[r] = common * upstream[options.reduction == Reduction::None ? r : 0];
    }

    const Logits l(student, teacher, c);
    const Operands o{*l.student, *l.teacher, l.call, storage_halide_type(student.dtype),
                     (int64_t)element_size(student.dtype)};
    std::optional<Padded> student_copy, teacher_copy;
    if (l.padded_rows()) {
        if (grad_student) student_copy = padded(student.dtype, rows, nullptr, nullptr);
        if (grad_teacher) teacher_copy = padded(student.dtype, rows, nullptr, nullptr);
    }
    const Tensor *gs_out = student_copy ? &student_copy->tensor : grad_student;
    const Tensor *gt_out = teacher_copy ? &teacher_copy->tensor : grad_teacher;
    std::vector<double> own_stats;
    if (!stats) {
        own_stats = empty_stats(c);
        run_stats(cache, o, options, 0.0, nullptr, own_stats.data());
        stats = own_stats.data();
    }
    std::vector<Rows> views = {l.call.student, l.call.teacher};
    std::optional<Rows> gs, gt;
    if (gs_out) views.push_back(*(gs = rows_of(*gs_out)));
    if (gt_out) views.push_back(*(gt = rows_of(*gt_out)));
    double inv_temperature = 1.0 / options.temperature;
    const halide_type_t u8(halide_type_uint, 8), f64(halide_type_float, 64);
    run_rows(cache,
             kernel_spec(dsl::DistillPass::Backward, options.reverse, student.dtype, grad_student != nullptr,
                         grad_teacher != nullptr, c.cuda),
             views, [&](int64_t row0, int64_t n, Buffers &keep) {
                 std::vector<void *> argv;
                 argv.push_back(o.logits(*l.student, l.call.student, row0, n, keep));
                 argv.push_back(o.logits(*l.teacher, l.call.teacher, row0, n, keep));
                 argv.push_back(o.host(c.row_on.data(), u8, 1, row0, n, keep));
                 argv.push_back(&inv_temperature);
                 argv.push_back(o.host(stats, f64, kDistillStatsPerRow, row0, n, keep));
                 argv.push_back(o.host(row_scale.data(), f64, 1, row0, n, keep));
                 if (gs_out) argv.push_back(o.logits(*gs_out, *gs, row0, n, keep));
                 if (gt_out) argv.push_back(o.logits(*gt_out, *gt, row0, n, keep));
                 return argv;
             });
    if (student_copy) unpad(*student_copy, *grad_student);
    if (teacher_copy) unpad(*teacher_copy, *grad_teacher);
}

}  // namespace kldiv::runtime
