// Differential tests against libtorch (Debian's libtorch-dev 1.13, whose
// kl_div is the same composite of elementwise ops as PyTorch 2.x): random
// float32 / float64 data in contiguous, transposed, sliced, narrowed, permuted,
// expanded and broadcast layouts, every reduction, log_target both ways,
// forward, backward (autograd) and the fused pass. The library gets the torch
// tensors' own data pointers, sizes and strides.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <sstream>

#include "kldiv/kldiv.hpp"

namespace {

enum class Layout {
    Contiguous,       // x (M, N), t (M, N), t with exact zeros
    TransposedInput,  // x = (N, M).t(), t contiguous
    TransposedBoth,   // both transposed
    Sliced,           // x = (M, 2N)[:, ::2], t = (2M, N)[::2, :]
    Narrowed,         // x = (M, N+7).narrow(1, 3, N), t = (M+2, N).narrow(0, 1, M)
    Permuted,         // 3-D, x = (K, M, J).permute(1, 2, 0)
    Expanded,         // t = (N,).expand(M, N): stride 0, same shape as x
    BroadcastRow,     // x (M, N), t (N,)
    BroadcastMiddle,  // x (M, 1, K), t (M, J, K)
    BroadcastInput,   // x (N,), t (M, N): batchmean divides by N
    EmptyRows,        // (0, N)
    EmptyColumns,     // (3, 0): batchmean gives 0
    EmptyBroadcast,   // x (3, 1), t (3, 0)
    Large2D,          // (1000, 1000)
    Large1D,          // (1000000,)
    Rank8,            // 8-d, permuted and sliced so no dimensions coalesce; t broadcast in 3 dims
};

const char *layout_name(Layout l) {
    switch (l) {
    case Layout::Contiguous: return "Contiguous";
    case Layout::TransposedInput: return "TransposedInput";
    case Layout::TransposedBoth: return "TransposedBoth";
    case Layout::Sliced: return "Sliced";
    case Layout::Narrowed: return "Narrowed";
    case Layout::Permuted: return "Permuted";
    case Layout::Rank8: return "Rank8";
    case Layout::Expanded: return "Expanded";
    case Layout::BroadcastRow: return "BroadcastRow";
    case Layout::BroadcastMiddle: return "BroadcastMiddle";
    case Layout::BroadcastInput: return "BroadcastInput";
    case Layout::EmptyRows: return "EmptyRows";
    case Layout::EmptyColumns: return "EmptyColumns";
    case Layout::EmptyBroadcast: return "EmptyBroadcast";
    case Layout::Large2D: return "Large2D";
    case Layout::Large1D: return "Large1D";
    }
    return "?";
}

constexpr int64_t M = 67, N = 129, J = 5, K = 33;

struct Params {
    Layout layout;
    torch::ScalarType dtype;
    kldiv::Reduction reduction;
    bool log_target;
};

void PrintTo(const Params &p, std::ostream *os) {
    *os << layout_name(p.layout) << (p.dtype == torch::kFloat64 ? " float64 " : " float32 ")
        << kldiv::reduction_name(p.reduction) << (p.log_target ? " log_target" : "");
}

// Log-probabilities over the last dimension, made in float64, then rounded.
torch::Tensor log_probs(torch::IntArrayRef shape, torch::ScalarType dtype) {
    torch::Tensor z = torch::randn(shape, torch::kFloat64) * 2;
    if (z.dim() > 0 && z.size(-1) > 0) z = z.log_softmax(-1);
    return z.to(dtype);
}

torch::Tensor targets(torch::IntArrayRef shape, torch::ScalarType dtype, bool log_target, bool zeros = false) {
    torch::Tensor z = torch::randn(shape, torch::kFloat64) * 2;
    if (z.dim() > 0 && z.size(-1) > 0) z = log_target ? z.log_softmax(-1) : z.softmax(-1);
    if (zeros && !log_target) z.masked_fill_(torch::rand(shape, torch::kFloat64) < 0.03, 0.0);
    return z.to(dtype);
}

struct Operands {
    torch::Tensor x, t;
};

Operands make_operands(const Params &p) {
    const auto dt = p.dtype;
    const bool lt = p.log_target;
    switch (p.layout) {
    case Layout::Contiguous: return {log_probs({M, N}, dt), targets({M, N}, dt, lt, true)};
    case Layout::TransposedInput: return {log_probs({N, M}, dt).t(), targets({M, N}, dt, lt)};
    case Layout::TransposedBoth: return {log_probs({N, M}, dt).t(), targets({N, M}, dt, lt).t()};
    case Layout::Sliced:
        return {log_probs({M, 2 * N}, dt).slice(1, 0, 2 * N, 2), targets({2 * M, N}, dt, lt).slice(0, 0, 2 * M, 2)};
    case Layout::Narrowed:
        return {log_probs({M, N + 7}, dt).narrow(1, 3, N), targets({M + 2, N}, dt, lt).narrow(0, 1, M)};
    case Layout::Permuted:
        return {log_probs({K, M, J}, dt).permute({1, 2, 0}), targets({M, J, K}, dt, lt)};
    case Layout::Expanded: return {log_probs({M, N}, dt), targets({N}, dt, lt).expand({M, N})};
    case Layout::BroadcastRow: return {log_probs({M, N}, dt), targets({N}, dt, lt)};
    case Layout::BroadcastMiddle: return {log_probs({M, 1, K}, dt), targets({M, J, K}, dt, lt)};
    case Layout::BroadcastInput: return {log_probs({N}, dt), targets({M, N}, dt, lt)};
    case Layout::EmptyRows: return {log_probs({0, N}, dt), targets({0, N}, dt, lt)};
    case Layout::EmptyColumns: return {log_probs({3, 0}, dt), targets({3, 0}, dt, lt)};
    case Layout::EmptyBroadcast: return {log_probs({3, 1}, dt), targets({3, 0}, dt, lt)};
    case Layout::Large2D: return {log_probs({1000, 1000}, dt), targets({1000, 1000}, dt, lt)};
    case Layout::Large1D: return {log_probs({1000000}, dt), targets({1000000}, dt, lt)};
    case Layout::Rank8:
        // More non-mergeable dimensions than a kernel takes (4): the runtime
        // loops over the rest, and sums the target's gradient over 3 of them.
        return {log_probs({3, 2, 5, 3, 2, 3, 4, 6}, dt).permute({7, 0, 6, 1, 5, 2, 4, 3}).slice(0, 0, 6, 2),
                targets({3, 1, 4, 1, 3, 1, 2, 3}, dt, lt)};
    }
    return {};
}

kldiv::Tensor view_of(const torch::Tensor &t) {
    kldiv::Tensor v;
    v.data = t.data_ptr();
    v.dtype = t.scalar_type() == torch::kFloat64 ? kldiv::DType::Float64 : kldiv::DType::Float32;
    v.sizes = t.sizes().vec();
    v.strides = t.strides().vec();
    return v;
}

// PyTorch's F.kl_div for our reduction enum.
torch::Tensor torch_kl_div(const torch::Tensor &x, const torch::Tensor &t, kldiv::Reduction r, bool lt) {
    switch (r) {
    case kldiv::Reduction::None: return torch::kl_div(x, t, at::Reduction::None, lt);
    case kldiv::Reduction::Sum: return torch::kl_div(x, t, at::Reduction::Sum, lt);
    case kldiv::Reduction::Mean: return torch::kl_div(x, t, at::Reduction::Mean, lt);
    case kldiv::Reduction::BatchMean: {
        torch::Tensor s = torch::kl_div(x, t, at::Reduction::Sum, lt);
        return x.dim() == 0 ? s : s / x.size(0);
    }
    }
    return {};
}

// Magnitudes of the terms behind each value (float64), for the tolerance.
struct Scales {
    torch::Tensor loss, grad_input, grad_target;
};

Scales term_scales(const torch::Tensor &x, const torch::Tensor &t, const torch::Tensor &grad_output,
                   kldiv::Reduction r, bool lt) {
    torch::NoGradGuard no_grad;
    torch::Tensor xd = x.to(torch::kFloat64), td = t.to(torch::kFloat64);
    std::vector<int64_t> shape = at::infer_size(x.sizes(), t.sizes());
    const int64_t numel = c10::multiply_integers(shape);
    double divisor = 1;
    if (r == kldiv::Reduction::Mean) divisor = (double)numel;
    if (r == kldiv::Reduction::BatchMean && x.dim() > 0) divisor = (double)x.size(0);

    torch::Tensor loss = lt ? td.exp() * (td.abs() + xd.abs()) : torch::xlogy(td, td).abs() + (td * xd).abs();
    loss = loss.expand(shape);
    Scales s;
    s.loss = r == kldiv::Reduction::None ? loss : loss.sum() / divisor;

    torch::Tensor g = r == kldiv::Reduction::None ? grad_output.to(torch::kFloat64).abs()
                                                  : grad_output.to(torch::kFloat64).abs() / divisor;
    torch::Tensor log_abs = torch::where(td > 0, td.log().abs(), torch::zeros_like(td));
    torch::Tensor gi = g * (lt ? td.exp() : td.abs());
    torch::Tensor gt = g * (lt ? td.exp() * (td.abs() + xd.abs() + 1) : log_abs + 1 + xd.abs());
    s.grad_input = gi.expand(shape).sum_to_size(x.sizes());
    s.grad_target = gt.expand(shape).sum_to_size(t.sizes());
    return s;
}

// Compares element by element; NaN / inf / signed-zero pattern exact, finite
// values within rel * scale + abs of torch's value.
::testing::AssertionResult Matches(const char *what, const torch::Tensor &got, const torch::Tensor &expected,
                                   const torch::Tensor &scale, double rel, double abs) {
    if (got.sizes() != expected.sizes())
        return ::testing::AssertionFailure() << what << ": shape " << got.sizes() << " vs " << expected.sizes();
    torch::Tensor a = got.to(torch::kFloat64).contiguous().reshape(-1);
    torch::Tensor b = expected.to(torch::kFloat64).contiguous().reshape(-1);
    torch::Tensor s = scale.to(torch::kFloat64).expand(expected.sizes()).contiguous().reshape(-1);
    const double *pa = a.data_ptr<double>(), *pb = b.data_ptr<double>(), *ps = s.data_ptr<double>();
    int64_t bad = 0;
    std::ostringstream report;
    for (int64_t i = 0; i < a.numel(); ++i) {
        const double g = pa[i], e = pb[i];
        bool ok;
        if (std::isnan(e)) ok = std::isnan(g);
        else if (std::isinf(e)) ok = g == e;
        else if (!std::isfinite(g)) ok = false;
        else if (g == 0 && e == 0) ok = std::signbit(g) == std::signbit(e);
        else ok = std::fabs(g - e) <= rel * (std::isfinite(ps[i]) ? ps[i] : 0.0) + abs;
        if (!ok && ++bad <= 5) {
            char line[200];
            std::snprintf(line, sizeof line, "\n  %s[%lld]: kldiv %.9g [%a], torch %.9g [%a], scale %.3g", what,
                          (long long)i, g, g, e, e, ps[i]);
            report << line;
        }
    }
    if (bad == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << what << ": " << bad << " of " << a.numel() << " elements differ"
                                         << report.str();
}

class TorchDiff : public ::testing::TestWithParam<Params> {};

TEST_P(TorchDiff, ForwardBackwardFused) {
    const Params p = GetParam();
    torch::manual_seed(1000 + (int)p.layout * 97 + (int)p.reduction * 7 + p.log_target * 3 +
                       (p.dtype == torch::kFloat64));
    const double rel = p.dtype == torch::kFloat64 ? 1e-12 : 1e-5;
    const double abs = p.dtype == torch::kFloat64 ? 1e-300 : 1e-37;
    Operands ops = make_operands(p);
    const std::vector<int64_t> shape = at::infer_size(ops.x.sizes(), ops.t.sizes());
    const bool reduced = p.reduction != kldiv::Reduction::None;
    auto opts = torch::TensorOptions().dtype(p.dtype);

    // Torch: forward and autograd.
    torch::Tensor xr = ops.x.detach().requires_grad_(true), tr = ops.t.detach().requires_grad_(true);
    torch::Tensor loss = torch_kl_div(xr, tr, p.reduction, p.log_target);
    torch::Tensor grad_output = reduced ? torch::full({}, 0.75, opts)
                                        : (torch::rand(shape, torch::kFloat64) * 2 - 0.5).to(p.dtype);
    loss.backward(grad_output);
    torch::Tensor torch_gi = xr.grad().defined() ? xr.grad() : torch::zeros_like(ops.x);
    torch::Tensor torch_gt = tr.grad().defined() ? tr.grad() : torch::zeros_like(ops.t);
    loss = loss.detach();
    Scales scales = term_scales(ops.x, ops.t, grad_output, p.reduction, p.log_target);

    // Forward.
    torch::Tensor out = torch::full(reduced ? std::vector<int64_t>{} : shape, -7777.0, opts);
    kldiv::kl_div(view_of(ops.x), view_of(ops.t), view_of(out), p.reduction, p.log_target);
    EXPECT_TRUE(Matches("loss", out, loss, scales.loss, rel, abs));

    // Backward, both gradients and each alone.
    torch::Tensor gi = torch::full(ops.x.sizes(), -7777.0, opts), gt = torch::full(ops.t.sizes(), -7777.0, opts);
    kldiv::Tensor gi_view = view_of(gi), gt_view = view_of(gt);
    kldiv::kl_div_backward(view_of(grad_output), view_of(ops.x), view_of(ops.t), p.reduction, p.log_target, &gi_view,
                           &gt_view);
    EXPECT_TRUE(Matches("grad_input", gi, torch_gi, scales.grad_input, rel, abs));
    EXPECT_TRUE(Matches("grad_target", gt, torch_gt, scales.grad_target, rel, abs));
    gi.fill_(-7777.0);
    kldiv::kl_div_backward(view_of(grad_output), view_of(ops.x), view_of(ops.t), p.reduction, p.log_target, &gi_view,
                           nullptr);
    EXPECT_TRUE(Matches("grad_input alone", gi, torch_gi, scales.grad_input, rel, abs));
    gt.fill_(-7777.0);
    kldiv::kl_div_backward(view_of(grad_output), view_of(ops.x), view_of(ops.t), p.reduction, p.log_target, nullptr,
                           &gt_view);
    EXPECT_TRUE(Matches("grad_target alone", gt, torch_gt, scales.grad_target, rel, abs));

    // Fused: loss and grad_input for upstream gradient 1.
    torch::Tensor x1 = ops.x.detach().requires_grad_(true);
    torch::Tensor loss1 = torch_kl_div(x1, ops.t, p.reduction, p.log_target);
    torch::Tensor ones = torch::ones_like(loss1);
    loss1.backward(ones);
    torch::Tensor torch_gi1 = x1.grad().defined() ? x1.grad() : torch::zeros_like(ops.x);
    Scales scales1 = term_scales(ops.x, ops.t, ones, p.reduction, p.log_target);
    torch::Tensor fused_out = torch::full(reduced ? std::vector<int64_t>{} : shape, -7777.0, opts);
    torch::Tensor fused_gi = torch::full(ops.x.sizes(), -7777.0, opts);
    kldiv::kl_div_forward_backward(view_of(ops.x), view_of(ops.t), view_of(fused_out), view_of(fused_gi), p.reduction,
                                   p.log_target);
    EXPECT_TRUE(Matches("fused loss", fused_out, loss1.detach(), scales1.loss, rel, abs));
    EXPECT_TRUE(Matches("fused grad_input", fused_gi, torch_gi1, scales1.grad_input, rel, abs));
}

std::vector<Params> all_params() {
    std::vector<Params> v;
    for (Layout l : {Layout::Contiguous, Layout::TransposedInput, Layout::TransposedBoth, Layout::Sliced,
                     Layout::Narrowed, Layout::Permuted, Layout::Rank8, Layout::Expanded, Layout::BroadcastRow,
                     Layout::BroadcastMiddle, Layout::BroadcastInput, Layout::EmptyRows, Layout::EmptyColumns,
                     Layout::EmptyBroadcast, Layout::Large2D, Layout::Large1D})
        for (torch::ScalarType dt : {torch::kFloat32, torch::kFloat64})
            for (kldiv::Reduction r : {kldiv::Reduction::None, kldiv::Reduction::Sum, kldiv::Reduction::Mean,
                                       kldiv::Reduction::BatchMean})
                for (bool lt : {false, true}) v.push_back({l, dt, r, lt});
    return v;
}

INSTANTIATE_TEST_SUITE_P(Layouts, TorchDiff, ::testing::ValuesIn(all_params()),
                         [](const ::testing::TestParamInfo<Params> &info) {
                             const Params &p = info.param;
                             return std::string(layout_name(p.layout)) + "_" +
                                    (p.dtype == torch::kFloat64 ? "f64" : "f32") + "_" +
                                    kldiv::reduction_name(p.reduction) + (p.log_target ? "_logt" : "");
                         });

// The incompatible-shape message must be PyTorch's own, word for word.
TEST(TorchMessages, IncompatibleShapesMatchLibtorch) {
    const std::vector<std::pair<std::vector<int64_t>, std::vector<int64_t>>> cases = {
        {{3}, {4}}, {{7, 2, 3}, {4, 3}}, {{2, 3, 4}, {3, 5}}, {{2, 3}, {4, 5}}, {{5, 1, 6}, {2, 3, 1}}};
    for (const auto &[xs, ts] : cases) {
        for (bool lt : {false, true}) {
            torch::Tensor x = torch::zeros(xs), t = torch::full(ts, 0.5);
            std::string torch_message;
            try {
                torch::kl_div(x, t, at::Reduction::Sum, lt);
            } catch (const c10::Error &e) {
                torch_message = e.what_without_backtrace();
            }
            ASSERT_FALSE(torch_message.empty());
            torch::Tensor out = torch::zeros({});
            try {
                kldiv::kl_div(view_of(x), view_of(t), view_of(out), kldiv::Reduction::Sum, lt);
                ADD_FAILURE() << "no error for " << x.sizes() << " vs " << t.sizes();
            } catch (const kldiv::Error &e) {
                EXPECT_NE(std::string(e.what()).find(torch_message), std::string::npos)
                    << "input " << x.sizes() << " target " << t.sizes() << "\n  kldiv: " << e.what()
                    << "\n  torch: " << torch_message;
            }
        }
    }
}

}  // namespace
