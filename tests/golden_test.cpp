// Every case of the PyTorch golden file (shared/golden/torch_kldiv_cases.json)
// through the C ABI: forward, backward (both gradients, and each alone) and the
// fused forward+backward, compared as SPEC.md "Checking against the golden
// file" says: NaN / inf / signed-zero pattern exact, finite values within a
// dtype tolerance of PyTorch's value or of a float64 reference of SPEC.md's
// formulas, scaled by the magnitude of the terms behind each value.
#include <gtest/gtest.h>

#include <array>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>

#include "test_support.h"
#ifdef KLDIV_GOLDEN_ON_CUDA
#include "cuda_golden_shim.h"  // every call on device copies (golden_test_cuda)
#endif

using namespace kldiv_test;

namespace {

constexpr size_t kExpectedCases = 1152;

struct GoldenCase {
    int id = 0;
    std::string dtype_text, kind, reduction_text;
    kldiv_dtype dtype = KLDIV_FLOAT32;
    Problem problem;
    Shape output_shape;
    std::vector<double> output, grad_output, grad_input, grad_target;
};

double parse_float(const std::string &text) {
    const char *begin = text.c_str();
    char *end = nullptr;
    double v = std::strtod(begin, &end);
    if (end == begin || *end != '\0') throw std::runtime_error("bad float '" + text + "'");
    return v;
}

std::vector<double> parse_floats(const nlohmann::json &j) {
    std::vector<double> v;
    for (const auto &e : j) v.push_back(parse_float(e.get<std::string>()));
    return v;
}

struct Golden {
    std::vector<GoldenCase> cases;
    std::string error;  // why loading failed
};

const Golden &golden() {
    static const Golden g = [] {
        Golden out;
        try {
            // $KLDIV_GOLDEN_FILE, for a binary run away from its build tree.
            const char *env = std::getenv("KLDIV_GOLDEN_FILE");
            const std::string path = env && *env ? env : KLDIV_GOLDEN_FILE;
            std::ifstream in(path);
            if (!in) throw std::runtime_error("cannot open " + path);
            nlohmann::json doc = nlohmann::json::parse(in);
            const std::map<std::string, kldiv_dtype> dtypes = {{"float32", KLDIV_FLOAT32},
                                                               {"float64", KLDIV_FLOAT64},
                                                               {"float16", KLDIV_FLOAT16},
                                                               {"bfloat16", KLDIV_BFLOAT16}};
            const std::map<std::string, kldiv_reduction> reductions = {
                {"none", KLDIV_REDUCTION_NONE},
                {"sum", KLDIV_REDUCTION_SUM},
                {"mean", KLDIV_REDUCTION_MEAN},
                {"batchmean", KLDIV_REDUCTION_BATCHMEAN}};
            for (const auto &j : doc.at("cases")) {
                GoldenCase c;
                c.id = j.at("id").get<int>();
                c.dtype_text = j.at("dtype").get<std::string>();
                c.dtype = dtypes.at(c.dtype_text);
                c.kind = j.at("kind").get<std::string>();
                c.reduction_text = j.at("reduction").get<std::string>();
                c.problem.reduction = reductions.at(c.reduction_text);
                c.problem.log_target = j.at("log_target").get<bool>();
                c.problem.input_shape = j.at("input_shape").get<Shape>();
                c.problem.target_shape = j.at("target_shape").get<Shape>();
                c.problem.input = parse_floats(j.at("input"));
                c.problem.target = parse_floats(j.at("target"));
                c.output_shape = j.at("output_shape").get<Shape>();
                c.output = parse_floats(j.at("output"));
                c.grad_output = parse_floats(j.at("grad_output"));
                c.grad_input = parse_floats(j.at("grad_input"));
                c.grad_target = parse_floats(j.at("grad_target"));
                out.cases.push_back(std::move(c));
            }
        } catch (const std::exception &e) {
            out.cases.clear();
            out.error = e.what();
        }
        return out;
    }();
    return g;
}

std::vector<int> case_indices() {
    std::vector<int> v(golden().cases.size());
    for (size_t i = 0; i < v.size(); ++i) v[i] = (int)i;
    return v;
}

std::string shape_token(const Shape &s) {
    if (s.empty()) return "s";
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) out += (i ? "x" : "") + std::to_string(s[i]);
    return out;
}

std::string case_name(const GoldenCase &c) {
    char id[16];
    std::snprintf(id, sizeof id, "c%04d", c.id);
    return std::string(id) + "_" + c.dtype_text + "_" + shape_token(c.problem.input_shape) + "_by_" +
           shape_token(c.problem.target_shape) + "_" + c.kind + (c.problem.log_target ? "_logt_" : "_") +
           c.reduction_text;
}

// Tallies for the summary printed at the end.
struct Tally {
    std::mutex mutex;
    std::map<std::string, std::array<int, 2>> per_dtype;  // {passed, failed}
    std::map<std::string, int> failed_parts;
    std::vector<int> failed_ids;
};
Tally &tally() {
    static Tally t;
    return t;
}

class SummaryPrinter : public ::testing::Environment {
public:
    void TearDown() override {
        Tally &t = tally();
        int passed = 0, failed = 0;
        for (auto &[dtype, counts] : t.per_dtype) {
            passed += counts[0];
            failed += counts[1];
        }
        std::printf("\n[golden] %d/%d cases passed, %d failed\n", passed, passed + failed, failed);
#ifdef KLDIV_GOLDEN_ON_CUDA
        std::printf("[golden] on CUDA: %d calls, %d refused by design (gradient of a broadcast operand) and run "
                    "on the host\n",
                    kldiv_test::calls_on_cuda().load(), kldiv_test::refused_on_cuda().load());
#endif
        for (auto &[dtype, counts] : t.per_dtype)
            std::printf("[golden]   %-9s %4d passed %4d failed\n", dtype.c_str(), counts[0], counts[1]);
        for (auto &[part, n] : t.failed_parts)
            std::printf("[golden]   failing part %-28s in %d cases\n", part.c_str(), n);
        if (!t.failed_ids.empty()) {
            std::printf("[golden]   failed ids:");
            for (size_t i = 0; i < t.failed_ids.size() && i < 200; ++i) std::printf(" %d", t.failed_ids[i]);
            std::printf(t.failed_ids.size() > 200 ? " ...\n" : "\n");
        }
    }
};
const auto *const kSummary = ::testing::AddGlobalTestEnvironment(new SummaryPrinter);

// Compares one result array; returns the number of mismatching elements and
// appends the first few to *report.
int compare_array(const std::string &what, const std::vector<double> &got,
                  const std::vector<double> *expected, const std::vector<RefValue> &ref,
                  kldiv_dtype dtype, Tolerance tol, std::string *report) {
    if (got.size() != ref.size() || (expected && expected->size() != ref.size())) {
        *report += what + ": element count mismatch\n";
        return 1;
    }
    int bad = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        double exp = expected ? (*expected)[i] : round_to_dtype(ref[i].value, dtype);
        std::string why = check_value(got[i], exp, ref[i], tol);
        if (why.empty()) continue;
        if (++bad <= 6) {
            std::ostringstream line;
            line << "  " << what << "[" << i << "]: got " << describe(got[i]) << ", "
                 << (expected ? "torch " : "expected ") << describe(exp) << ", float64 ref "
                 << describe(ref[i].value) << " (scale " << ref[i].scale << "): " << why << "\n";
            *report += line.str();
        }
    }
    if (bad > 6) *report += "  " + what + ": ... " + std::to_string(bad) + " mismatches in all\n";
    return bad;
}

class GoldenTest : public ::testing::TestWithParam<int> {
protected:
    const GoldenCase &c() const { return golden().cases.at(GetParam()); }

    void note_failure(const std::string &part, const std::string &report) {
        failed_parts_.push_back(part);
        ADD_FAILURE() << "case " << c().id << " (" << case_name(c()) << ") " << part << ":\n"
                      << report;
    }

    std::vector<std::string> failed_parts_;
};

// A buffer of `shape` and `dtype` with a sentinel in every byte, so that an
// element the library fails to write cannot pass.
HostTensor sentinel(kldiv_dtype dtype, const Shape &shape) {
    HostTensor t(dtype, shape);
    t.fill_bytes(0xA5);
    return t;
}

TEST(GoldenFile, Loads) {
    ASSERT_TRUE(golden().error.empty()) << golden().error;
    ASSERT_EQ(golden().cases.size(), kExpectedCases);
    // 16-bit values must be exactly representable (the file's promise, and
    // this test's conversions rely on it).
    for (const GoldenCase &c : golden().cases) {
        bool exact = true;
        HostTensor::from_values(c.dtype, c.problem.input_shape, c.problem.input, &exact);
        HostTensor::from_values(c.dtype, c.problem.target_shape, c.problem.target, &exact);
        ASSERT_TRUE(exact) << "case " << c.id << " has a value not representable in " << c.dtype_text;
        ASSERT_EQ((int64_t)c.problem.input.size(), numel(c.problem.input_shape)) << c.id;
        ASSERT_EQ((int64_t)c.problem.target.size(), numel(c.problem.target_shape)) << c.id;
    }
}

// The comparison itself must accept SPEC.md's float64 stand-in (formulas in
// float64, rounded once to the dtype) on every case, and reject results that
// are off: this guards the oracle, not the library.
TEST(GoldenFile, ReferenceStandInPassesAndPerturbedFails) {
    ASSERT_EQ(golden().cases.size(), kExpectedCases);
    int rejected_perturbations = 0, perturbable = 0;
    for (const GoldenCase &c : golden().cases) {
        Reference r = reference(c.problem, c.grad_output);
        Tolerance tol = golden_tolerance(c.dtype);
        auto rounded = [&](const std::vector<RefValue> &v) {
            std::vector<double> out;
            for (const RefValue &e : v) out.push_back(round_to_dtype(e.value, c.dtype));
            return out;
        };
        std::string report;
        int bad = compare_array("output", rounded(r.loss), &c.output, r.loss, c.dtype, tol, &report) +
                  compare_array("grad_input", rounded(r.grad_input), &c.grad_input, r.grad_input, c.dtype,
                                tol, &report) +
                  compare_array("grad_target", rounded(r.grad_target), &c.grad_target, r.grad_target,
                                c.dtype, tol, &report);
        EXPECT_EQ(bad, 0) << "reference stand-in rejected on case " << c.id << "\n" << report;
        // Perturb the first finite nonzero loss value by 10x its tolerance.
        for (size_t i = 0; i < r.loss.size(); ++i) {
            double v = round_to_dtype(r.loss[i].value, c.dtype);
            if (!std::isfinite(v) || v == 0) continue;
            ++perturbable;
            double off = 10 * (tol.rel * r.loss[i].scale + tol.abs) + std::fabs(v) * 0.1;
            if (!check_value(v + off, c.output[i], r.loss[i], tol).empty()) ++rejected_perturbations;
            break;
        }
    }
    EXPECT_GT(perturbable, 500);
    EXPECT_EQ(rejected_perturbations, perturbable);
}

TEST_P(GoldenTest, Case) {
    if (std::string why = cpu_level_unavailable(); !why.empty()) GTEST_SKIP() << why;
#ifdef KLDIV_GOLDEN_ON_CUDA
    if (!Cudart::get().unavailable().empty()) GTEST_SKIP() << Cudart::get().unavailable();
#endif
    const GoldenCase &gc = c();
    const Problem &p = gc.problem;
    const kldiv_dtype dt = gc.dtype;
    const Tolerance tol = golden_tolerance(dt);
    const bool reduced = p.reduction != KLDIV_REDUCTION_NONE;

    HostTensor input = HostTensor::from_values(dt, p.input_shape, p.input);
    HostTensor target = HostTensor::from_values(dt, p.target_shape, p.target);
    const Shape out_shape = reduced ? Shape{} : gc.output_shape;
    HostTensor grad_output = HostTensor::from_values(dt, out_shape, gc.grad_output);
    const kldiv_tensor in_view = input.view(), tg_view = target.view(), go_view = grad_output.view();

    Reference ref = reference(p, gc.grad_output);
    if (!reduced) ASSERT_EQ(ref.shape, gc.output_shape) << "broadcast shape disagrees with the file";

    // Forward.
    {
        HostTensor out = sentinel(dt, out_shape);
        kldiv_tensor out_view = out.view();
        int rc = kldiv_forward(&in_view, &tg_view, p.reduction, p.log_target, &out_view);
        std::string report;
        if (rc != 0)
            note_failure("kldiv_forward", "returned " + std::to_string(rc) + ": " + kldiv_last_error());
        else if (compare_array("output", out.values(), &gc.output, ref.loss, dt, tol, &report))
            note_failure("kldiv_forward", report);
    }

    // Backward, both gradients.
    {
        HostTensor gi = sentinel(dt, p.input_shape), gt = sentinel(dt, p.target_shape);
        kldiv_tensor gi_view = gi.view(), gt_view = gt.view();
        int rc = kldiv_backward(&go_view, &in_view, &tg_view, p.reduction, p.log_target, &gi_view, &gt_view);
        std::string report;
        if (rc != 0) {
            note_failure("kldiv_backward", "returned " + std::to_string(rc) + ": " + kldiv_last_error());
        } else {
            if (compare_array("grad_input", gi.values(), &gc.grad_input, ref.grad_input, dt, tol, &report))
                note_failure("kldiv_backward grad_input", report);
            report.clear();
            if (compare_array("grad_target", gt.values(), &gc.grad_target, ref.grad_target, dt, tol, &report))
                note_failure("kldiv_backward grad_target", report);
        }
    }

    // Backward, each gradient alone.
    {
        HostTensor gi = sentinel(dt, p.input_shape);
        kldiv_tensor gi_view = gi.view();
        int rc = kldiv_backward(&go_view, &in_view, &tg_view, p.reduction, p.log_target, &gi_view, nullptr);
        std::string report;
        if (rc != 0)
            note_failure("kldiv_backward input only", "returned " + std::to_string(rc) + ": " + kldiv_last_error());
        else if (compare_array("grad_input", gi.values(), &gc.grad_input, ref.grad_input, dt, tol, &report))
            note_failure("kldiv_backward input only", report);
    }
    {
        HostTensor gt = sentinel(dt, p.target_shape);
        kldiv_tensor gt_view = gt.view();
        int rc = kldiv_backward(&go_view, &in_view, &tg_view, p.reduction, p.log_target, nullptr, &gt_view);
        std::string report;
        if (rc != 0)
            note_failure("kldiv_backward target only", "returned " + std::to_string(rc) + ": " + kldiv_last_error());
        else if (compare_array("grad_target", gt.values(), &gc.grad_target, ref.grad_target, dt, tol, &report))
            note_failure("kldiv_backward target only", report);
    }

    // Fused forward + backward: the loss is the golden output; grad_input is
    // the gradient for upstream 1, checked against kldiv_backward with ones and
    // against the float64 reference for upstream 1.
    {
        std::vector<double> ones(reduced ? 1 : (size_t)numel(out_shape), 1.0);
        HostTensor ones_tensor = HostTensor::from_values(dt, out_shape, ones);
        kldiv_tensor ones_view = ones_tensor.view();
        Reference ref1 = reference(p, ones);

        HostTensor out = sentinel(dt, out_shape), gi = sentinel(dt, p.input_shape);
        kldiv_tensor out_view = out.view(), gi_view = gi.view();
        int rc = kldiv_forward_backward(&in_view, &tg_view, p.reduction, p.log_target, &out_view, &gi_view);
        std::string report;
        if (rc != 0) {
            note_failure("kldiv_forward_backward", "returned " + std::to_string(rc) + ": " + kldiv_last_error());
        } else {
            if (compare_array("output", out.values(), &gc.output, ref.loss, dt, tol, &report))
                note_failure("kldiv_forward_backward loss", report);
            report.clear();
            if (compare_array("grad_input", gi.values(), nullptr, ref1.grad_input, dt, tol, &report))
                note_failure("kldiv_forward_backward grad_input vs reference", report);

            HostTensor gi_ones = sentinel(dt, p.input_shape);
            kldiv_tensor gi_ones_view = gi_ones.view();
            rc = kldiv_backward(&ones_view, &in_view, &tg_view, p.reduction, p.log_target, &gi_ones_view, nullptr);
            if (rc != 0) {
                note_failure("kldiv_backward with ones", "returned " + std::to_string(rc) + ": " + kldiv_last_error());
            } else {
                // Bitwise equal, or the same value within tolerance.
                std::vector<double> a = gi.values(), b = gi_ones.values();
                report.clear();
                int bad = 0;
                for (size_t i = 0; i < a.size(); ++i) {
                    bool same_bits = std::memcmp(gi.bytes.data() + i * dtype_bytes(dt),
                                                 gi_ones.bytes.data() + i * dtype_bytes(dt), dtype_bytes(dt)) == 0;
                    if (same_bits || check_value(a[i], b[i], ref1.grad_input[i], tol).empty()) continue;
                    if (++bad <= 6)
                        report += "  grad_input[" + std::to_string(i) + "]: fused " + describe(a[i]) +
                                  ", backward(ones) " + describe(b[i]) + "\n";
                }
                if (bad) note_failure("kldiv_forward_backward grad_input vs kldiv_backward(ones)", report);
            }
        }
    }

    Tally &t = tally();
    std::lock_guard<std::mutex> lock(t.mutex);
    t.per_dtype[gc.dtype_text][failed_parts_.empty() ? 0 : 1]++;
    for (const std::string &part : failed_parts_) t.failed_parts[part]++;
    if (!failed_parts_.empty()) t.failed_ids.push_back(gc.id);
}

// golden_test_default runs the file with the default runtime settings from
// an empty cache, as a program calling the loss on many small tensors would:
// no shape here repays a compile, so none may be compiled (KLDIV_SPECIALIZE=
// never would compile none either).
class NoCompilesExpected : public ::testing::Environment {
public:
    void TearDown() override {
        const char *expect = std::getenv("KLDIV_GOLDEN_EXPECT_NO_COMPILES");
        if (expect == nullptr || std::string(expect) != "1") return;
        kldiv_cache_stats_t stats{};
        ASSERT_EQ(kldiv_cache_stats(nullptr, &stats), 0) << kldiv_last_error();
        std::printf("[golden] default runtime: %llu AOT calls, %llu compiles\n", (unsigned long long)stats.aot_calls,
                    (unsigned long long)stats.compiles);
        EXPECT_GT(stats.aot_calls, 1000u);
        EXPECT_EQ(stats.compiles, 0u) << "the default policy compiled kernels for shapes that cannot repay them";
    }
};
const auto *const no_compiles_expected = ::testing::AddGlobalTestEnvironment(new NoCompilesExpected);

INSTANTIATE_TEST_SUITE_P(Torch, GoldenTest, ::testing::ValuesIn(case_indices()),
                         [](const ::testing::TestParamInfo<int> &info) {
                             return case_name(golden().cases.at(info.param));
                         });

}  // namespace
