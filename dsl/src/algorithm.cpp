#include "kldiv/dsl/algorithm.h"

#include <algorithm>
#include <limits>

#include "kldiv/dsl/math.h"

namespace kldiv::dsl {

using Halide::Expr;
using Halide::Func;
using Halide::RDom;
using Halide::Var;

namespace {

Expr zero_of(Halide::Type t) { return Halide::cast(t, Expr(0.0)); }

Expr nan_of(Halide::Type t) {
    return Halide::cast(t, Expr(std::numeric_limits<double>::quiet_NaN()));
}

// a * b rounded on its own. CUDA code generation (Halide 14's PTX target
// machine allows FP-op fusion) would otherwise fold a product that feeds an
// add into one fused multiply-add, where PyTorch rounds both. LLVM's
// arithmetic fence keeps the product whole.
Expr mul(const Expr &a, const Expr &b, const LossOptions &options) {
    if (!options.cuda) return a * b;
    const bool f64 = a.type().bits() == 64;
    return Halide::Internal::Call::make(a.type(), f64 ? "llvm.arithmetic.fence.f64" : "llvm.arithmetic.fence.f32",
                                        {a * b}, Halide::Internal::Call::PureExtern);
}

// xlogy(a, b) as torch defines it: NaN if b is NaN, else 0 if a == 0, else a * log(b).
Expr xlogy(const Expr &a, const Expr &b, const LossOptions &options) {
    const Expr log_b = options.log_table.defined() ? dsl::table_log(b, options.log_table)
                       : options.cuda              ? dsl::device_log(b)
                                                   : dsl::log(b, options.math);
    Expr value = Halide::select(a == zero_of(a.type()), zero_of(a.type()), mul(a, log_b, options));
    return Halide::select(Halide::is_nan(b), nan_of(b.type()), value);
}

// IEEE negation (flips the sign bit): Halide's unary minus is 0 - a, which
// turns -(+0) into +0 where PyTorch gives -0.
Expr negate(const Expr &a) {
    const Halide::Type bits = Halide::UInt(a.type().bits());
    const Expr sign = Halide::cast(bits, Expr(int64_t(1))) << (a.type().bits() - 1);
    return Halide::reinterpret(a.type(), Halide::reinterpret(bits, a) ^ sign);
}

// Balanced tree of `leaves` (left to right).
Expr tree_sum(std::vector<Expr> leaves) {
    while (leaves.size() > 1) {
        std::vector<Expr> next;
        for (size_t j = 0; j + 1 < leaves.size(); j += 2) next.push_back(leaves[j] + leaves[j + 1]);
        if (leaves.size() % 2) next.push_back(leaves.back());
        leaves.swap(next);
    }
    return leaves[0];
}

// The balanced tree of f(0..width-1, rest...) (tree_sum's pairs), as its root
// at lane 0. When width is a power of two the tree is built as Funcs, one per
// level, which `levels` receives (a schedule may compute each level in
// parallel); otherwise as one expression.
Expr lane_tree_sum(const Func &f, int width, const Var &lane, const std::vector<Var> &rest, const std::string &name,
                   std::vector<Func> &levels) {
    std::vector<Expr> args_rest(rest.begin(), rest.end());
    auto at = [&](const Func &g, const Expr &i) {
        std::vector<Expr> args = {i};
        args.insert(args.end(), args_rest.begin(), args_rest.end());
        return g(args);
    };
    if (width < 2 || (width & (width - 1)) != 0) {
        std::vector<Expr> leaves;
        for (int l = 0; l < width; l++) leaves.push_back(at(f, l));
        return tree_sum(leaves);
    }
    std::vector<Var> vars = {lane};
    vars.insert(vars.end(), rest.begin(), rest.end());
    Func previous = f;
    for (int w = width / 2, k = 0; w >= 1; w /= 2, k++) {
        Func level(name + "_" + std::to_string(k));
        level(vars) = at(previous, 2 * lane) + at(previous, 2 * lane + 1);
        levels.push_back(level);
        previous = level;
    }
    return at(previous, 0);
}

// CUDA kernels that take a log in float32 get a table for it (bfloat16's
// exact), which `a` names for the schedule.
LossOptions with_log_table(LossOptions options, Algorithm &a, bool takes_log) {
    if (options.cuda && takes_log && compute_type(options.dtype).bits() == 32) {
        options.log_table = make_log_table(options.dtype);
        a.log_table = options.log_table;
    }
    return options;
}

Algorithm named_dims(const Inputs &in) {
    Algorithm a;
    a.extent = in.extent;
    a.dims = {Var("i0"), Var("i1"), Var("i2"), Var("i3")};
    a.lane = Var("lane");
    a.chunk = Var("chunk");
    return a;
}

// CUDA: the chunk sums are added on the device, in a fixed order: lane l of
// `total_lanes` adds (in float64) chunks l, l + L, l + 2L, ... of the chunks
// in index order (chunk fastest, then i1, i2, i3); the lanes are added as a
// balanced tree; `out` stores that total divided by `divisor`.
void define_device_total(Algorithm &a, const Inputs &in, const Expr &chunks, DType dtype) {
    const auto &[i0, i1, i2, i3] = a.dims;
    const int lanes = in.total_lanes;
    const Expr count = chunks * in.extent[1] * in.extent[2] * in.extent[3];
    a.total_lane = Var("total_lane");
    a.total_step = RDom(0, (count + lanes - 1) / lanes, "total_step");
    const Expr c = a.total_step * lanes + a.total_lane;
    // Padding lanes past the last chunk read the last chunk and contribute
    // zero. The clamps only tell bounds inference what the index math keeps.
    const Expr valid = Halide::likely(c < count);
    const Expr k = Halide::min(c, count - 1);
    const Expr row = k / chunks;
    const Expr value = a.chunk_sum(Halide::clamp(k % chunks, 0, chunks - 1),
                                   Halide::clamp(row % in.extent[1], 0, in.extent[1] - 1),
                                   Halide::clamp((row / in.extent[1]) % in.extent[2], 0, in.extent[2] - 1),
                                   Halide::clamp(row / (in.extent[1] * in.extent[2]), 0, in.extent[3] - 1));
    a.lane_total = Func("lane_total");
    a.lane_total(a.total_lane) = Halide::cast(Halide::Float(64), Expr(0.0));
    a.lane_total(a.total_lane) += Halide::select(valid, value, Expr(0.0));

    const Expr total = lane_tree_sum(a.lane_total, lanes, a.total_lane, {}, "total_tree", a.total_tree);
    a.out = Func("out");
    a.out(i0) = narrow(Halide::cast(compute_type(dtype), total / in.divisor), dtype);
}

// Defines lane_sum, chunk_sum and total over the summation tree.
void define_sum(Algorithm &a, const Inputs &in, const SumTree &tree, DType dtype) {
    const Halide::Type type = compute_type(dtype);
    const Halide::Type f64 = Halide::Float(64);
    const auto &[i0, i1, i2, i3] = a.dims;
    a.tree = tree;
    const Expr n0 = in.extent[0];
    const int block_length = kSumBlockSteps * tree.lanes;
    // A short dimension 0 gets short chunks, so little work is spent on padding.
    const Expr blocks = (Halide::min(tree.chunk, n0) + block_length - 1) / block_length;
    const Expr chunk_length = blocks * block_length;
    a.chunk_length = chunk_length;
    const Expr chunks = (n0 + chunk_length - 1) / chunk_length;

    // A block's steps are added as a tree in the compute type, then to the
    // lane's float64 sum: one loop over blocks, with no float32 accumulator
    // carried from one iteration to the next.
    a.blocks = RDom(0, blocks, "blocks");
    const Expr block_start = a.chunk * chunk_length + a.blocks * block_length;
    std::vector<Expr> dense, guarded;
    for (int s = 0; s < kSumBlockSteps; s++) {
        const Expr element = block_start + s * tree.lanes + a.lane;
        // Padding past the end reads the last element and contributes zero.
        const Expr value = a.pointwise(Halide::min(Halide::likely(element), n0 - 1), i1, i2, i3);
        dense.push_back(value);
        guarded.push_back(Halide::select(element < n0, value, zero_of(type)));
    }
    // The test is made for the whole block first (one scalar condition), and
    // the likely branch is tagged as such (Halide's loop partitioning reads
    // the tag on a select's value, not on its condition), so that the steady
    // state has no test; only a block that crosses the end tests each lane.
    //
    // Where dimension 0 is known to be a whole number of chunks, no block
    // crosses the end: the dense tree alone, the same sums in less code (a
    // fused float32 sum fixed to 64x32000 compiled in 223 ms instead of
    // 231-236 ms, with 8 ms less lowering).
    bool whole_chunks = false;
    if (in.fixed_extent0) {
        const int64_t n = *in.fixed_extent0;
        const int64_t fixed_blocks = (std::min<int64_t>(tree.chunk, n) + block_length - 1) / block_length;
        whole_chunks = n > 0 && n % (fixed_blocks * block_length) == 0;
    }
    const Expr block = whole_chunks ? tree_sum(dense)
                                    : Halide::select(block_start + block_length <= n0,
                                                     Halide::likely(tree_sum(dense)), tree_sum(guarded));
    a.lane_sum = Func("lane_sum");
    a.lane_sum(a.lane, a.chunk, i1, i2, i3) = zero_of(f64);
    a.lane_sum(a.lane, a.chunk, i1, i2, i3) += Halide::cast(f64, block);

    // The lanes are added as a balanced tree.
    a.chunk_sum = Func("chunk_sum");
    a.chunk_sum(a.chunk, i1, i2, i3) =
        lane_tree_sum(a.lane_sum, tree.lanes, a.lane, {a.chunk, i1, i2, i3}, "lane_tree", a.lane_tree);
    if (in.divisor.defined()) return define_device_total(a, in, chunks, dtype);

    RDom all(0, chunks, 0, in.extent[1], 0, in.extent[2], 0, in.extent[3], "all");
    a.total = Func("total");
    a.total() = zero_of(f64);
    a.total() += a.chunk_sum(all.x, all.y, all.z, all.w);
}

// xlogy(t, t) but for the sign of zero: t * log_of_positive(t) is already
// right for t > 0 and t = +inf (+inf times a finite positive value) and NaN
// for NaN, so only t < 0 needs a select. At t == +-0 it is a zero whose sign
// a sum does not see (sums start from +0); see exact_zero_sign.
Expr xlogx_any_zero_sign(const Expr &t, const LossOptions &options) {
    Expr log_t;
    if (options.log_table.defined()) {
        // table_log_of_positive is finite at zero, and at +inf (times +inf: +inf).
        log_t = dsl::table_log_of_positive(t, options.log_table);
    } else if (options.cuda) {
        // device_log(0) is -inf: log 1 instead gives the zero.
        log_t = dsl::device_log(Halide::select(t == zero_of(t.type()), Halide::cast(t.type(), 1), t));
    } else {
        log_t = dsl::log_of_positive(t, options.math);
    }
    return Halide::select(t < zero_of(t.type()), nan_of(t.type()), mul(t, log_t, options));
}

// The loss per element as PyTorch stores it: adding +0 turns the -0 that
// xlogx_any_zero_sign may give at t == +-0 into PyTorch's +0 and changes no
// other value. (exp(t) * (t - x) needs nothing: its -0 is PyTorch's too.)
Expr exact_zero_sign(const Expr &loss, const LossOptions &options) {
    return options.log_target ? loss : loss + zero_of(loss.type());
}

// exp(t) of the target, t its widened value: from the table or computed.
Expr exp_of_target(const Expr &t_stored, const Expr &t, const LossOptions &options) {
    return options.lookup ? lookup16(Lookup::Exp, t_stored, options.dtype) : dsl::exp(t, options.math);
}

}  // namespace

Expr pointwise_loss(const Expr &x_stored, const Expr &t_stored, const LossOptions &options) {
    Expr x = widen(x_stored, options.dtype, options.cuda);
    Expr t = widen(t_stored, options.dtype, options.cuda);
    if (options.log_target) return mul(exp_of_target(t_stored, t, options), t - x, options);
    const Expr xlogx = options.lookup ? lookup16(Lookup::XLogX, t_stored, options.dtype)
                                      : xlogx_any_zero_sign(t, options);
    return xlogx - mul(t, x, options);
}

Expr grad_input_expr(const Expr &g, const Expr &, const Expr &t_stored, const LossOptions &options) {
    Expr t = widen(t_stored, options.dtype, options.cuda);
    if (options.log_target) return negate(g * exp_of_target(t_stored, t, options));
    return negate(g) * t;
}

Expr grad_target_expr(const Expr &g, const Expr &x_stored, const Expr &t_stored,
                      const LossOptions &options) {
    Expr x = widen(x_stored, options.dtype, options.cuda);
    Expr t = widen(t_stored, options.dtype, options.cuda);
    if (options.log_target) {
        Expr e = exp_of_target(t_stored, t, options);
        return mul(mul(g, t - x, options), e, options) + mul(g, e, options);
    }
    // d xlogy(t, t) = xlogy(g, t) (0 where t == 0) + g * t / t; d(-t x) = -g x.
    Expr from_log = Halide::select(t == zero_of(t.type()), zero_of(t.type()), xlogy(g, t, options));
    return (from_log + (g * t) / t) + mul(negate(g), x, options);
}

Algorithm forward(const Inputs &in, const LossOptions &loss_options, bool reduce, const SumTree &tree) {
    Algorithm a = named_dims(in);
    const LossOptions options = with_log_table(loss_options, a, !loss_options.log_target && !loss_options.lookup);
    const auto &[i0, i1, i2, i3] = a.dims;
    a.pointwise = Func("pointwise");
    a.pointwise(i0, i1, i2, i3) =
        pointwise_loss(in.input(i0, i1, i2, i3), in.target(i0, i1, i2, i3), options);
    if (reduce) {
        define_sum(a, in, tree, options.dtype);
    } else {
        a.loss = Func("loss");
        a.loss(i0, i1, i2, i3) = narrow(exact_zero_sign(a.pointwise(i0, i1, i2, i3), options), options.dtype);
    }
    return a;
}

Algorithm backward(const Inputs &in, const LossOptions &loss_options, bool want_grad_input,
                   bool want_grad_target, bool scalar_grad) {
    Algorithm a = named_dims(in);
    const LossOptions options = with_log_table(loss_options, a, want_grad_target && !loss_options.log_target);
    const auto &[i0, i1, i2, i3] = a.dims;
    Expr x = in.input(i0, i1, i2, i3);
    Expr t = in.target(i0, i1, i2, i3);
    Expr g = scalar_grad ? in.grad_scale : widen(in.grad_output(i0, i1, i2, i3), options.dtype, options.cuda);
    if (want_grad_input) {
        a.grad_input = Func("grad_input");
        a.grad_input(i0, i1, i2, i3) = narrow(grad_input_expr(g, x, t, options), options.dtype);
    }
    if (want_grad_target) {
        a.grad_target = Func("grad_target");
        a.grad_target(i0, i1, i2, i3) = narrow(grad_target_expr(g, x, t, options), options.dtype);
    }
    return a;
}

Algorithm fused(const Inputs &in, const LossOptions &options, bool reduce, const SumTree &tree) {
    Algorithm a = forward(in, options, reduce, tree);  // (grad_input takes no log)
    const auto &[i0, i1, i2, i3] = a.dims;
    const Halide::Type type = compute_type(options.dtype);
    Expr g = reduce ? in.grad_scale : Halide::cast(type, Expr(1.0));
    a.grad_input = Func("grad_input");
    a.grad_input(i0, i1, i2, i3) =
        narrow(grad_input_expr(g, in.input(i0, i1, i2, i3), in.target(i0, i1, i2, i3), options),
               options.dtype);
    return a;
}

}  // namespace kldiv::dsl
