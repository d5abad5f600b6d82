#include "kldiv/dsl/distill.h"

#include <limits>
#include <vector>

namespace kldiv::dsl {

using Halide::Expr;
using Halide::Func;
using Halide::RDom;
using Halide::Tuple;

namespace {

Expr constant(Halide::Type t, double v) { return Halide::cast(t, Expr(v)); }
Expr minus_inf(Halide::Type t) { return constant(t, -std::numeric_limits<double>::infinity()); }

// Which operand: the student's logits or the teacher's.
enum Operand { kStudent = 0, kTeacher = 1 };

// The elements of a row, their logits over T in the compute type, a step of
// kDistillLanes at a time. Every step loads kDistillLanes adjacent logits
// (one dense vector load, no per-lane clamp): the last, partial step loads the
// row's last kDistillLanes, overlapping its predecessor, and steps past the
// end load them too. Lanes that belong to another step take `pad`; maxima,
// which an element counted twice does not change, take no test at all. Rows
// of fewer than kDistillLanes logits are the runtime's to pad (with -inf).
struct RowReader {
    const DistillInputs &in;
    DType dtype;
    Halide::Type type;

    Expr scaled(Operand operand, const Expr &j, const Expr &row) const {
        const Func &logits = operand == kStudent ? in.student : in.teacher;
        return widen(logits(j, row), dtype) * Halide::cast(type, in.inv_temperature);
    }

    // f(j, row) at element step_start + lane of the row, or `pad` (unless
    // `idempotent`) where that lane belongs to another step or is past the end.
    template<typename F>
    Expr step(const Expr &step_start, const Expr &lane, const Expr &row, const Expr &pad, F f,
              bool idempotent = false) const {
        const Expr start = Halide::min(step_start, in.vocab - kDistillLanes);
        const Expr value = f(start + lane, row);
        if (idempotent) return value;
        return Halide::select(start + lane >= step_start, value, pad);
    }
};

// log p_j (teacher) or log q_j (student): (x_j - max) - log sum: the first
// subtraction is exact near the maximum, where the probabilities are large.
Expr log_probability(const Expr &scaled, const Expr &max, const Expr &log_sum) { return (scaled - max) - log_sum; }

// The gradient of `operand` at one element for row loss `loss` (used by the
// forms that need it), unscaled.
Expr gradient(Operand operand, bool reverse, const Expr &log_p, const Expr &log_q, const Expr &loss,
              const MathOptions &math) {
    const Halide::Type t = log_p.type();
    const Expr p = exp(log_p, math), q = exp(log_q, math);
    const Expr zero = constant(t, 0.0);
    if (operand == kStudent) {
        return reverse ? Halide::select(q == zero, zero, q * ((log_q - log_p) - loss)) : q - p;
    }
    return reverse ? p - q : Halide::select(p == zero, zero, p * ((log_p - log_q) - loss));
}

}  // namespace

DistillAlgorithm distill(const DistillInputs &in, const DistillOptions &options) {
    DistillAlgorithm a;
    const Halide::Type ct = compute_type(options.dtype);
    const Halide::Type f64 = Halide::Float(64);
    const RowReader reader{in, options.dtype, ct};
    const auto &row = a.row;
    const auto &lane = a.lane;
    const Expr on = in.row_on(row) != Halide::cast(Halide::UInt(8), 0);

    // Row statistics: computed (Forward, Fused) or forward's (Backward).
    Expr max[2], log_sum[2];
    if (options.pass == DistillPass::Backward) {
        for (int o : {kStudent, kTeacher}) {
            max[o] = Halide::cast(ct, in.stats(o == kStudent ? kStudentMax : kTeacherMax, row));
            log_sum[o] = Halide::cast(ct, in.stats(o == kStudent ? kStudentLogSum : kTeacherLogSum, row));
        }
    } else {
        const Expr blocks = (in.vocab + kDistillBlock - 1) / kDistillBlock;
        a.block_steps = RDom(0, kDistillBlock / kDistillLanes, "block_steps");
        const Expr start = a.block * kDistillBlock + a.block_steps * kDistillLanes;

        a.block_max_lanes = Func("block_max_lanes");
        a.block_max_lanes(lane, a.block, row) = Tuple(minus_inf(ct), minus_inf(ct));
        std::vector<Expr> lane_max;
        for (int o : {kStudent, kTeacher}) {
            lane_max.push_back(
                Halide::max(a.block_max_lanes(lane, a.block, row)[o],
                            reader.step(
                                start, lane, row, minus_inf(ct),
                                [&](const Expr &j, const Expr &r) { return reader.scaled(Operand(o), j, r); }, true)));
        }
        a.block_max_lanes(lane, a.block, row) = Tuple(lane_max);

        const RDom lanes(0, kDistillLanes, "lanes");
        a.block_max = Func("block_max");
        a.block_max(a.block, row) = Tuple(minus_inf(ct), minus_inf(ct));
        a.block_max(a.block, row) =
            Tuple(Halide::max(a.block_max(a.block, row)[0], a.block_max_lanes(lanes, a.block, row)[0]),
                  Halide::max(a.block_max(a.block, row)[1], a.block_max_lanes(lanes, a.block, row)[1]));

        // exp(x - the block's maximum), in float64 sums. A block of -inf
        // subtracts 0 instead (its exps are 0, not NaN).
        a.block_sum_lanes = Func("block_sum_lanes");
        a.block_sum_lanes(lane, a.block, row) = Tuple(constant(f64, 0.0), constant(f64, 0.0));
        std::vector<Expr> lane_sum;
        for (int o : {kStudent, kTeacher}) {
            const Expr m = a.block_max(a.block, row)[o];
            const Expr shift = Halide::select(m == minus_inf(ct), constant(ct, 0.0), m);
            lane_sum.push_back(a.block_sum_lanes(lane, a.block, row)[o] +
                               reader.step(start, lane, row, constant(f64, 0.0), [&](const Expr &j, const Expr &r) {
                                   return Halide::cast(f64, exp(reader.scaled(Operand(o), j, r) - shift, options.math));
                               }));
        }
        a.block_sum_lanes(lane, a.block, row) = Tuple(lane_sum);

        a.block_sum = Func("block_sum");
        a.block_sum(a.block, row) = Tuple(constant(f64, 0.0), constant(f64, 0.0));
        a.block_sum(a.block, row) = Tuple(a.block_sum(a.block, row)[0] + a.block_sum_lanes(lanes, a.block, row)[0],
                                          a.block_sum(a.block, row)[1] + a.block_sum_lanes(lanes, a.block, row)[1]);

        // Both per block in one place, so that a schedule can compute a
        // block's sums right after its maximum, while the block is in cache.
        a.block_stats = Func("block_stats");
        a.block_stats(a.block, row) = Tuple(a.block_max(a.block, row)[0], a.block_max(a.block, row)[1],
                                            a.block_sum(a.block, row)[0], a.block_sum(a.block, row)[1]);

        // The row: the blocks' maxima, and their sums rescaled to it. A block
        // of -inf adds 0 * exp(-inf - max) = 0; a row of -inf, whose maximum
        // is -inf, adds 0 * exp(NaN): NaN, as log_softmax gives.
        const RDom each_block(0, blocks, "each_block");
        a.row_max = Func("row_max");
        a.row_max(row) = Tuple(minus_inf(ct), minus_inf(ct));
        a.row_max(row) = Tuple(Halide::max(a.row_max(row)[0], a.block_stats(each_block, row)[0]),
                               Halide::max(a.row_max(row)[1], a.block_stats(each_block, row)[1]));
        Func row_sum("row_sum");
        row_sum(row) = Tuple(constant(f64, 0.0), constant(f64, 0.0));
        std::vector<Expr> sums;
        for (int o : {kStudent, kTeacher}) {
            const Expr rescale =
                exp(Halide::cast(f64, a.block_stats(each_block, row)[o]) - Halide::cast(f64, a.row_max(row)[o]),
                    options.math);
            sums.push_back(row_sum(row)[o] + a.block_stats(each_block, row)[2 + o] * rescale);
        }
        row_sum(row) = Tuple(sums);
        a.row_log_sum = Func("row_log_sum");
        a.row_log_sum(row) = Tuple(Halide::cast(ct, log(row_sum(row)[0], options.math)),
                                   Halide::cast(ct, log(row_sum(row)[1], options.math)));
        for (int o : {kStudent, kTeacher}) {
            max[o] = a.row_max(row)[o];
            log_sum[o] = a.row_log_sum(row)[o];
        }
    }

    auto log_p = [&](const Expr &j, const Expr &r) {
        return log_probability(reader.scaled(kTeacher, j, r), max[kTeacher], log_sum[kTeacher]);
    };
    auto log_q = [&](const Expr &j, const Expr &r) {
        return log_probability(reader.scaled(kStudent, j, r), max[kStudent], log_sum[kStudent]);
    };

    Expr loss;
    if (options.pass == DistillPass::Backward) {
        loss = Halide::cast(ct, in.stats(kRowLoss, row));
    } else {
        // The row's loss: p (log p - log q), or q (log q - log p), 0 where the
        // weight is 0 (whatever the other log is).
        const Expr steps = (in.vocab + kDistillLanes - 1) / kDistillLanes;
        a.row_steps = RDom(0, steps, "row_steps");
        a.loss_lanes = Func("loss_lanes");
        a.loss_lanes(lane, row) = constant(f64, 0.0);
        a.loss_lanes(lane, row) +=
            reader.step(a.row_steps * kDistillLanes, lane, row, constant(f64, 0.0), [&](const Expr &j, const Expr &r) {
                const Expr lp = log_p(j, r), lq = log_q(j, r);
                const Expr weight_log = options.reverse ? lq : lp;
                const Expr other_log = options.reverse ? lp : lq;
                const Expr w = exp(weight_log, options.math);
                const Expr term =
                    Halide::select(w == constant(ct, 0.0), constant(ct, 0.0), w * (weight_log - other_log));
                return Halide::cast(f64, term);
            });
        const RDom lanes(0, kDistillLanes, "loss_lane");
        Func lane_total("loss_total");
        lane_total(row) = constant(f64, 0.0);
        lane_total(row) += a.loss_lanes(lanes, row);
        a.row_loss = Func("row_loss");
        a.row_loss(row) = Halide::select(on, lane_total(row), constant(f64, 0.0));
        loss = Halide::cast(ct, a.row_loss(row));

        a.stats = Func("stats");
        a.stats(a.k, row) =
            Halide::select(a.k == kRowLoss, a.row_loss(row), a.k == kStudentMax, Halide::cast(f64, max[kStudent]),
                           a.k == kStudentLogSum, Halide::cast(f64, log_sum[kStudent]), a.k == kTeacherMax,
                           Halide::cast(f64, max[kTeacher]), Halide::cast(f64, log_sum[kTeacher]));
    }

    if (options.pass == DistillPass::Forward) return a;
    const Expr scale =
        options.pass == DistillPass::Fused ? Halide::cast(ct, in.grad_scale) : Halide::cast(ct, in.row_scale(row));
    auto gradient_func = [&](Operand operand, const char *name) {
        Func f(name);
        const Expr g = gradient(operand, options.reverse, log_p(a.j, row), log_q(a.j, row), loss, options.math);
        f(a.j, row) = narrow(Halide::select(on, g * scale, constant(ct, 0.0)), options.dtype);
        return f;
    };
    const bool student = options.pass == DistillPass::Fused || options.grad_student;
    const bool teacher = options.pass == DistillPass::Backward && options.grad_teacher;
    if (student) a.grad_student = gradient_func(kStudent, "grad_student");
    if (teacher) a.grad_teacher = gradient_func(kTeacher, "grad_teacher");
    return a;
}

}  // namespace kldiv::dsl
