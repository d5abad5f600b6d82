#include "distill.h"

#include <HalideRuntime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "aot_registry.h"
#include "errors.h"
#include "host_convert.h"
#include "kldiv/codegen/kernel_spec.h"
#include "kernel_args.h"
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
    for (int d = t.rank() - 2; d >= 0; d--) {
        const int64_t size = t.sizes[d];
        if (size == 0) {
            r.rows = 0;
            return r;
        }
        if (size == 1) continue;
        if (r.rows == 1) {
            r.row_stride = t.strides[d];
        } else if (t.strides[d] != r.row_stride * r.rows) {
            return std::nullopt;
        }
        r.rows *= size;
    }
    // (The row count cannot overflow: check_tensor counted the elements.)
    return r;
}

std::vector<int64_t> leading_shape(const Tensor &t) { return {t.sizes.begin(), t.sizes.end() - 1}; }

// What a call validated: rows of both logits, the options, and the divisor.
struct Call {
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
    for (const auto &[t, name] : {std::pair{&student, "student"}, std::pair{&teacher, "teacher"}}) {
        if (t->device != Device::CPU) {
            fail(ErrorCode::Device,
                 std::string(name) + " is a CUDA tensor; distillation kernels run on the CPU in this version");
        }
    }
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
    const std::optional<Rows> s = rows_of(student), t = rows_of(teacher);
    if (!s)
        fail(ErrorCode::Shape,
             "student: the leading dimensions cannot be viewed as one dimension of rows (make it contiguous)");
    if (!t)
        fail(ErrorCode::Shape,
             "teacher: the leading dimensions cannot be viewed as one dimension of rows (make it contiguous)");
    c.student = *s;
    c.teacher = *t;
    // The mask as the kernels take it, for rows with logits (a view of no
    // elements may have any number of rows).
    const int64_t rows = c.student.rows;
    c.rows_on = rows;
    if (options.row_mask) {
        c.rows_on = 0;
        for (int64_t r = 0; r < rows; r++) c.rows_on += options.row_mask[r] != 0;
    }
    if (rows > 0 && c.student.vocab > 0) {
        c.row_on.assign((size_t)rows, 1);
        if (options.row_mask) {
            for (int64_t r = 0; r < rows; r++) c.row_on[r] = options.row_mask[r] != 0;
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

void check_loss_shape(const Tensor &t, const char *name, const Tensor &student, Reduction reduction) {
    check_tensor(t, name);
    check_same_dtype(t, name, student, "student");
    if (t.device != Device::CPU)
        fail(ErrorCode::Device, std::string(name) + " is a CUDA tensor but the logits are on the CPU");
    check_shape(t, name, reduction == Reduction::None ? leading_shape(student) : std::vector<int64_t>{});
}

void check_grad(const Tensor &grad, const char *name, const Tensor &student) {
    check_tensor(grad, name);
    check_same_dtype(grad, name, student, "student");
    if (grad.device != Device::CPU)
        fail(ErrorCode::Device, std::string(name) + " is a CUDA tensor but the logits are on the CPU");
    check_shape(grad, name, student.sizes);
    if (!rows_of(grad)) {
        fail(ErrorCode::Shape,
             std::string(name) + ": the leading dimensions cannot be viewed as one dimension of rows");
    }
}

// ---- kernels --------------------------------------------------------------

std::string kernel_name(dsl::DistillPass pass, bool reverse, DType dtype, bool grad_student = true,
                        bool grad_teacher = false) {
    return codegen::DistillSpec{pass, dtype, reverse, grad_student, grad_teacher}.name();
}

// A 2-d buffer of rows [row0, row0 + rows) of a view.
struct Buffer2 {
    halide_buffer_t buffer{};
    halide_dimension_t dims[2];
    Buffer2(void *data, halide_type_t type, int64_t element_bytes, int64_t extent0, int64_t stride0, int64_t row0,
            int64_t rows, int64_t row_stride) {
        dims[0] = halide_dimension_t(0, (int32_t)extent0, (int32_t)stride0);
        dims[1] = halide_dimension_t(0, (int32_t)rows, (int32_t)row_stride);
        buffer.host = static_cast<uint8_t *>(data) + row0 * row_stride * element_bytes;
        buffer.type = type;
        buffer.dimensions = 2;
        buffer.dim = dims;
    }
};

struct Buffer1 {
    halide_buffer_t buffer{};
    halide_dimension_t dim;
    Buffer1(const void *data, halide_type_t type, int64_t extent) {
        dim = halide_dimension_t(0, (int32_t)extent, 1);
        buffer.host = static_cast<uint8_t *>(const_cast<void *>(data));
        buffer.type = type;
        buffer.dimensions = 1;
        buffer.dim = &dim;
    }
};

// Rows per kernel call: Halide 14 indexes a buffer with int32, so a call's
// rows span less than 2^31 elements of every operand.
int64_t rows_per_call(const std::vector<Rows> &views) {
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
    return std::max<int64_t>(rows, 1);
}

// One kernel over every row, `per_call` rows a call: `args(row0, rows, ...)`
// gives a call's argv, its buffers kept alive in the two vectors.
void run_rows(const std::string &name, int64_t rows, int64_t per_call,
              const std::function<std::vector<void *>(int64_t, int64_t, std::vector<std::unique_ptr<Buffer2>> &,
                                                      std::vector<std::unique_ptr<Buffer1>> &)> &args) {
    install_aot_error_handler();
    int (*kernel)(void **) = aot_entry(name);
    if (!kernel) fail(ErrorCode::Internal, "no kernel " + name + " in this build");
    for (int64_t row0 = 0; row0 < rows; row0 += per_call) {
        const int64_t n = std::min(per_call, rows - row0);
        std::vector<std::unique_ptr<Buffer2>> b2;
        std::vector<std::unique_ptr<Buffer1>> b1;
        std::vector<void *> argv = args(row0, n, b2, b1);
        if (kernel(argv.data()) != 0) fail(ErrorCode::Internal, name + " failed: " + take_kernel_error());
    }
}

struct Operands {
    const Tensor &student, &teacher;
    const Call &call;
    halide_type_t storage;
    int64_t bytes;

    Buffer2 *logits(const Tensor &t, const Rows &r, int64_t row0, int64_t n,
                    std::vector<std::unique_ptr<Buffer2>> &keep) const {
        keep.push_back(
            std::make_unique<Buffer2>(t.data, storage, bytes, r.vocab, r.vocab_stride, row0, n, r.row_stride));
        return keep.back().get();
    }
};

// The statistics of every row (and the student's gradient when `grad` is
// given) into `stats` (kDistillStatsPerRow per row).
void run_stats(const Operands &o, const DistillOptions &options, double grad_scale, const Tensor *grad, double *stats) {
    const Call &c = o.call;
    double inv_temperature = 1.0 / options.temperature;
    std::vector<Rows> views = {c.student, c.teacher};
    const std::optional<Rows> g = grad ? rows_of(*grad) : std::nullopt;
    if (g) views.push_back(*g);
    const std::string name =
        kernel_name(grad ? dsl::DistillPass::Fused : dsl::DistillPass::Forward, options.reverse, o.student.dtype);
    run_rows(name, c.student.rows, rows_per_call(views), [&](int64_t row0, int64_t n, auto &b2, auto &b1) {
        std::vector<void *> argv;
        argv.push_back(&o.logits(o.student, c.student, row0, n, b2)->buffer);
        argv.push_back(&o.logits(o.teacher, c.teacher, row0, n, b2)->buffer);
        b1.push_back(std::make_unique<Buffer1>(c.row_on.data() + row0, halide_type_t(halide_type_uint, 8), n));
        argv.push_back(&b1.back()->buffer);
        argv.push_back(&inv_temperature);
        if (grad) argv.push_back(&grad_scale);
        b2.push_back(std::make_unique<Buffer2>(stats, halide_type_t(halide_type_float, 64), 8, kDistillStatsPerRow, 1,
                                               row0, n, kDistillStatsPerRow));
        argv.push_back(&b2.back()->buffer);
        if (grad) argv.push_back(&o.logits(*grad, *g, row0, n, b2)->buffer);
        return argv;
    });
}

// Whether a call has logits to run kernels on (a view of no elements may
// have any number of rows, each of loss 0).
bool has_logits(const Call &c) { return c.student.rows > 0 && c.student.vocab > 0; }

// Writes the loss from the row losses in `stats` (empty: every row's is 0).
void store_loss(const Tensor &out, const Call &c, const DistillOptions &options, const std::vector<double> &stats) {
    auto row_loss = [&](int64_t r) { return stats.empty() ? 0.0 : stats[r * kDistillStatsPerRow]; };
    if (options.reduction == Reduction::None) {
        // Row r of the leading dimensions, in row-major order.
        for_each_offset(out.sizes, out.strides, [&](int64_t r, int64_t offset) {
            store_from_double(static_cast<uint8_t *>(out.data) + offset * (int64_t)element_size(out.dtype), out.dtype,
                              c.loss_factor * row_loss(r));
        });
        return;
    }
    double total = 0.0;
    for (int64_t r = 0; r < (int64_t)stats.size() / kDistillStatsPerRow; r++) total += row_loss(r);
    store_from_double(out.data, out.dtype, c.loss_factor * total / c.divisor);
}

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

void distill_forward(const Tensor &student, const Tensor &teacher, const DistillOptions &options, const Tensor &out,
                     double *stats) {
    const Call c = validate(student, teacher, options);
    check_loss_shape(out, "out", student, options.reduction);
    for (const auto &[t, name] : {std::pair{&student, "student"}, std::pair{&teacher, "teacher"}}) {
        if (overlaps(out, *t)) fail(ErrorCode::Alias, std::string("out overlaps ") + name);
    }
    std::vector<double> row_stats;
    if (has_logits(c)) {
        row_stats = empty_stats(c);
        const Logits l(student, teacher, c);
        const Operands o{*l.student, *l.teacher, l.call, storage_halide_type(student.dtype),
                         (int64_t)element_size(student.dtype)};
        run_stats(o, options, 0.0, nullptr, row_stats.data());
    }
    store_loss(out, c, options, row_stats);
    save_stats(c, row_stats, stats);
}

void distill_forward_backward(const Tensor &student, const Tensor &teacher, const DistillOptions &options,
                              const Tensor &out, const Tensor &grad_student, double *stats) {
    const Call c = validate(student, teacher, options);
    check_loss_shape(out, "out", student, options.reduction);
    check_grad(grad_student, "grad_student", student);
    // The gradient may be written over the student's logits (the same view):
    // each row is read for its statistics before its gradient is written, and
    // each element before it is overwritten.
    check_outputs({{&out, "out"}, {&grad_student, "grad_student"}}, {});
    for (const auto &[t, name] : {std::pair{&out, "out"}, std::pair{&grad_student, "grad_student"}}) {
        if (overlaps(*t, teacher)) fail(ErrorCode::Alias, std::string(name) + " overlaps teacher");
    }
    if (overlaps(out, student)) fail(ErrorCode::Alias, "out overlaps student");
    if (overlaps(grad_student, student) && !same_view(grad_student, student)) {
        fail(ErrorCode::Alias, "grad_student partially overlaps student");
    }
    std::vector<double> row_stats;
    const double scale = c.loss_factor / options.temperature / c.divisor;
    if (has_logits(c)) {
        row_stats = empty_stats(c);
        const Logits l(student, teacher, c);
        const Operands o{*l.student, *l.teacher, l.call, storage_halide_type(student.dtype),
                         (int64_t)element_size(student.dtype)};
        if (l.padded_rows()) {
            Padded grad = padded(student.dtype, c.student.rows, nullptr, nullptr);
            run_stats(o, options, scale, &grad.tensor, row_stats.data());
            unpad(grad, grad_student);
        } else {
            run_stats(o, options, scale, &grad_student, row_stats.data());
        }
    }
    store_loss(out, c, options, row_stats);
    save_stats(c, row_stats, stats);
}

void distill_backward(const Tensor &grad_output, const Tensor &student, const Tensor &teacher,
                      const DistillOptions &options, const double *stats, const Tensor *grad_student,
                      const Tensor *grad_teacher) {
    const Call c = validate(student, teacher, options);
    check_loss_shape(grad_output, "grad_output", student, options.reduction);
    std::vector<std::pair<const Tensor *, const char *>> outputs;
    if (grad_student) {
        check_grad(*grad_student, "grad_student", student);
        outputs.push_back({grad_student, "grad_student"});
    }
    if (grad_teacher) {
        check_grad(*grad_teacher, "grad_teacher", student);
        outputs.push_back({grad_teacher, "grad_teacher"});
    }
    if (outputs.empty()) return;
    // Both gradients are written element by element while both logits are
    // read: no output may share memory with an input.
    check_outputs(outputs, {{&grad_output, "grad_output"}});
    for (const auto &[t, name] : outputs) {
        for (const auto &[in, in_name] : {std::pair{&student, "student"}, std::pair{&teacher, "teacher"}}) {
            if (overlaps(*t, *in)) fail(ErrorCode::Alias, std::string(name) + " overlaps " + in_name);
        }
    }
    const int64_t rows = c.student.rows;
    if (!has_logits(c)) return;

    // Each row's scale: the upstream gradient, the divisor, T^2 and the 1/T
    // of the logits' scaling.
    const double common = c.loss_factor / options.temperature / c.divisor;
    std::vector<double> row_scale((size_t)rows);
    if (options.reduction == Reduction::None) {
        for_each_offset(grad_output.sizes, grad_output.strides, [&](int64_t r, int64_t offset) {
            row_scale[r] = common * load_as_double(static_cast<const uint8_t *>(grad_output.data) +
                                                       offset * (int64_t)element_size(grad_output.dtype),
                                                   grad_output.dtype);
        });
    } else {
        const double g = load_as_double(grad_output.data, grad_output.dtype);
        for (double &s : row_scale) s = common * g;
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
        run_stats(o, options, 0.0, nullptr, own_stats.data());
        stats = own_stats.data();
    }
    std::vector<Rows> views = {l.call.student, l.call.teacher};
    std::optional<Rows> gs, gt;
    if (gs_out) views.push_back(*(gs = rows_of(*gs_out)));
    if (gt_out) views.push_back(*(gt = rows_of(*gt_out)));
    double inv_temperature = 1.0 / options.temperature;
    run_rows(
        kernel_name(dsl::DistillPass::Backward, options.reverse, student.dtype, grad_student != nullptr,
                    grad_teacher != nullptr),
        rows, rows_per_call(views),
        [&](int64_t row0, int64_t n, auto &b2, auto &b1) {
            std::vector<void *> argv;
            argv.push_back(&o.logits(*l.student, l.call.student, row0, n, b2)->buffer);
            argv.push_back(&o.logits(*l.teacher, l.call.teacher, row0, n, b2)->buffer);
            b1.push_back(std::make_unique<Buffer1>(c.row_on.data() + row0, halide_type_t(halide_type_uint, 8), n));
            argv.push_back(&b1.back()->buffer);
            argv.push_back(&inv_temperature);
            b2.push_back(std::make_unique<Buffer2>(const_cast<double *>(stats), halide_type_t(halide_type_float, 64), 8,
                                                   kDistillStatsPerRow, 1, row0, n, kDistillStatsPerRow));
            argv.push_back(&b2.back()->buffer);
            b1.push_back(std::make_unique<Buffer1>(row_scale.data() + row0, halide_type_t(halide_type_float, 64), n));
            argv.push_back(&b1.back()->buffer);
            if (gs_out) argv.push_back(&o.logits(*gs_out, *gs, row0, n, b2)->buffer);
            if (gt_out) argv.push_back(&o.logits(*gt_out, *gt, row0, n, b2)->buffer);
            return argv;
        });
    if (student_copy) unpad(*student_copy, *grad_student);
    if (teacher_copy) unpad(*teacher_copy, *grad_teacher);
}

}  // namespace kldiv::runtime
