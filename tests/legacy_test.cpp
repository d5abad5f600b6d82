// Reduction names, PyTorch's legacy size_average / reduce arguments, the
// KLDivLoss module, and the warnings (SPEC.md "Reductions" and "Legacy").
#include <gtest/gtest.h>

#include <mutex>
#include <optional>

#include "kldiv/kldiv.h"
#include "kldiv/kldiv.hpp"
#include "test_support.h"

using namespace kldiv_test;

namespace {

const std::string kMeanWarning =
    "reduction: 'mean' divides the total loss by both the batch size and the support size."
    "'batchmean' divides only by the batch size, and aligns with the KL div math definition."
    "'mean' will be changed to behave the same as 'batchmean' in the next major release.";

std::string legacy_warning(const std::string &mapped) {
    return "size_average and reduce args will be deprecated, please use reduction='" + mapped + "' instead.";
}

// Collects warnings delivered through either handler.
struct Collector {
    std::mutex mutex;
    std::vector<std::string> messages;
    void add(const std::string &m) {
        std::lock_guard<std::mutex> lock(mutex);
        messages.push_back(m);
    }
    std::vector<std::string> take() {
        std::lock_guard<std::mutex> lock(mutex);
        return std::exchange(messages, {});
    }
};

void c_handler(const char *message, void *user_data) {
    static_cast<Collector *>(user_data)->add(message ? message : "<null>");
}

class Legacy : public ::testing::Test {
protected:
    void SetUp() override {
        kldiv::set_warning_handler([this](const std::string &m) { warnings_.add(m); });
    }
    void TearDown() override {
        kldiv::set_warning_handler(nullptr);
        kldiv_set_warning_handler(nullptr, nullptr);
    }
    std::vector<std::string> warnings() { return warnings_.take(); }
    Collector warnings_;
};

// input (4, 3) of log-probabilities and target (4, 3); float64 so that results
// compare tightly with the reference.
struct Data {
    HostTensor input, target;
    std::vector<double> xs, ts;
    Data(Shape in_shape = {4, 3}, Shape tg_shape = {4, 3}) {
        for (int64_t i = 0; i < numel(in_shape); ++i) xs.push_back(-0.25 - 0.375 * (double)(i % 5));
        for (int64_t i = 0; i < numel(tg_shape); ++i) ts.push_back(0.05 + 0.1 * (double)(i % 7));
        input = HostTensor::from_values(KLDIV_FLOAT64, in_shape, xs);
        target = HostTensor::from_values(KLDIV_FLOAT64, tg_shape, ts);
    }
    kldiv::Tensor in() { return kldiv::Tensor{input.bytes.data(), kldiv::DType::Float64, input.sizes, input.strides}; }
    kldiv::Tensor tg() { return kldiv::Tensor{target.bytes.data(), kldiv::DType::Float64, target.sizes, target.strides}; }
    Reference ref(kldiv_reduction r) {
        Problem p{input.sizes, target.sizes, xs, ts, false, r};
        // Upstream gradient 1: one value per loss element for NONE, else one.
        Shape shape;
        broadcast_shapes(input.sizes, target.sizes, &shape);
        return reference(p, std::vector<double>(r == KLDIV_REDUCTION_NONE ? numel(shape) : 1, 1.0));
    }
};

double scalar_result(HostTensor &out) { return out.at(0); }

// ---------------------------------------------------------------------------

TEST_F(Legacy, ParseReduction) {
    EXPECT_EQ(kldiv::parse_reduction("none"), kldiv::Reduction::None);
    EXPECT_EQ(kldiv::parse_reduction("mean"), kldiv::Reduction::Mean);
    EXPECT_EQ(kldiv::parse_reduction("sum"), kldiv::Reduction::Sum);
    EXPECT_EQ(kldiv::parse_reduction("batchmean"), kldiv::Reduction::BatchMean);
    for (kldiv::Reduction r : {kldiv::Reduction::None, kldiv::Reduction::Mean, kldiv::Reduction::Sum,
                               kldiv::Reduction::BatchMean})
        EXPECT_EQ(kldiv::parse_reduction(kldiv::reduction_name(r)), r);
    EXPECT_STREQ(kldiv::reduction_name(kldiv::Reduction::BatchMean), "batchmean");
}

TEST_F(Legacy, ParseReductionRejectsUnknownNames) {
    for (const char *name : {"foo", "Mean", "SUM", "", "elementwise_mean", "batch_mean"}) {
        SCOPED_TRACE(name);
        try {
            kldiv::parse_reduction(name);
            ADD_FAILURE() << "no exception for '" << name << "'";
        } catch (const std::exception &e) {
            EXPECT_NE(std::string(e.what()).find(std::string(name) + " is not a valid value for reduction"),
                      std::string::npos)
                << e.what();
        }
    }
}

TEST_F(Legacy, UnknownReductionThroughFunctionalForm) {
    Data d;
    HostTensor out(KLDIV_FLOAT64, {});
    out.fill_bytes(0x11);
    std::vector<unsigned char> before = out.bytes;
    kldiv::Tensor o{out.bytes.data(), kldiv::DType::Float64, {}, {}};
    kldiv::FunctionalOptions options;
    options.reduction = "foo";
    try {
        kldiv::kl_div(d.in(), d.tg(), o, options);
        ADD_FAILURE() << "no exception";
    } catch (const std::exception &e) {
        EXPECT_NE(std::string(e.what()).find("foo is not a valid value for reduction"), std::string::npos) << e.what();
    }
    EXPECT_EQ(out.bytes, before);
}

// The mapping table: either legacy argument unset counts as true.
struct MapCase {
    std::optional<bool> size_average, reduce;
    kldiv::Reduction mapped;
    const char *mapped_name;
};

class LegacyMapping : public Legacy, public ::testing::WithParamInterface<MapCase> {};

TEST_P(LegacyMapping, ResolveFunctional) {
    const MapCase &c = GetParam();
    for (const char *reduction : {"mean", "sum", "none", "batchmean"}) {
        SCOPED_TRACE(std::string("reduction=") + reduction);
        kldiv::FunctionalOptions options;
        options.size_average = c.size_average;
        options.reduce = c.reduce;
        options.reduction = reduction;
        kldiv::ResolvedReduction r = kldiv::resolve_functional(options);
        EXPECT_EQ(r.reduction, c.mapped);
        // The functional quirk: a 'batchmean' string still divides the mapped result.
        EXPECT_EQ(r.divide_by_batch, std::string(reduction) == "batchmean");
        std::vector<std::string> w = warnings();
        ASSERT_EQ(w.size(), 1u) << "expected exactly the deprecation warning";
        EXPECT_EQ(w[0], legacy_warning(c.mapped_name));
    }
}

INSTANTIATE_TEST_SUITE_P(
    Table, LegacyMapping,
    ::testing::Values(MapCase{true, std::nullopt, kldiv::Reduction::Mean, "mean"},
                      MapCase{false, std::nullopt, kldiv::Reduction::Sum, "sum"},
                      MapCase{std::nullopt, true, kldiv::Reduction::Mean, "mean"},
                      MapCase{std::nullopt, false, kldiv::Reduction::None, "none"},
                      MapCase{true, true, kldiv::Reduction::Mean, "mean"},
                      MapCase{true, false, kldiv::Reduction::None, "none"},
                      MapCase{false, true, kldiv::Reduction::Sum, "sum"},
                      MapCase{false, false, kldiv::Reduction::None, "none"}),
    [](const ::testing::TestParamInfo<MapCase> &info) {
        auto s = [](const std::optional<bool> &v) { return v ? (*v ? std::string("T") : std::string("F")) : "unset"; };
        return "size_average_" + s(info.param.size_average) + "_reduce_" + s(info.param.reduce);
    });

TEST_F(Legacy, ResolveWithoutLegacyArguments) {
    struct Case {
        const char *name;
        kldiv::Reduction reduction;
        bool divide;
    } cases[] = {{"none", kldiv::Reduction::None, false},
                 {"sum", kldiv::Reduction::Sum, false},
                 {"mean", kldiv::Reduction::Mean, false},
                 {"batchmean", kldiv::Reduction::Sum, true}};
    for (const Case &c : cases) {
        SCOPED_TRACE(c.name);
        kldiv::FunctionalOptions options;
        options.reduction = c.name;
        kldiv::ResolvedReduction r = kldiv::resolve_functional(options);
        // batchmean is the sum divided by input.size(0) (Sum + divide), or a
        // BatchMean kernel reduction with no extra division.
        if (c.divide)
            EXPECT_TRUE((r.reduction == kldiv::Reduction::Sum && r.divide_by_batch) ||
                        (r.reduction == kldiv::Reduction::BatchMean && !r.divide_by_batch));
        else {
            EXPECT_EQ(r.reduction, c.reduction);
            EXPECT_FALSE(r.divide_by_batch);
        }
        for (const std::string &w : warnings()) EXPECT_EQ(w.find("deprecated"), std::string::npos) << w;
    }
    kldiv::FunctionalOptions bad;
    bad.reduction = "foo";
    EXPECT_THROW(kldiv::resolve_functional(bad), std::exception);
}

// ---------------------------------------------------------------------------
// Functional results, including the batchmean quirk.

TEST_F(Legacy, FunctionalLegacySumWithBatchmeanDividesBySize0) {
    Data d({4, 3}, {4, 3});
    HostTensor out(KLDIV_FLOAT64, {});
    kldiv::Tensor o{out.bytes.data(), kldiv::DType::Float64, {}, {}};
    kldiv::FunctionalOptions options;
    options.size_average = false;  // -> sum
    options.reduction = "batchmean";
    kldiv::kl_div(d.in(), d.tg(), o, options);
    RefValue sum = d.ref(KLDIV_REDUCTION_SUM).loss[0];
    EXPECT_NEAR(scalar_result(out), sum.value / 4, 1e-12 * sum.scale);
    std::vector<std::string> w = warnings();
    ASSERT_EQ(w.size(), 1u);
    EXPECT_EQ(w[0], legacy_warning("sum"));

    // size_average=true -> mean, then divided by size(0) again.
    options.size_average = true;
    kldiv::kl_div(d.in(), d.tg(), o, options);
    RefValue mean = d.ref(KLDIV_REDUCTION_MEAN).loss[0];
    EXPECT_NEAR(scalar_result(out), mean.value / 4, 1e-12 * mean.scale);
}

TEST_F(Legacy, FunctionalLegacyNoneWithBatchmeanDividesEachElement) {
    Data d({4, 3}, {4, 3});
    HostTensor out(KLDIV_FLOAT64, {4, 3});
    kldiv::Tensor o{out.bytes.data(), kldiv::DType::Float64, {4, 3}, {3, 1}};
    kldiv::FunctionalOptions options;
    options.reduce = false;  // -> none
    options.reduction = "batchmean";
    kldiv::kl_div(d.in(), d.tg(), o, options);
    Reference r = d.ref(KLDIV_REDUCTION_NONE);
    for (int i = 0; i < 12; ++i) EXPECT_NEAR(out.at(i), r.loss[i].value / 4, 1e-12 * r.loss[i].scale) << i;
    std::vector<std::string> w = warnings();
    ASSERT_EQ(w.size(), 1u);
    EXPECT_EQ(w[0], legacy_warning("none"));
}

TEST_F(Legacy, FunctionalBatchmeanUsesInputSize0EvenWhenBroadcastIsLarger) {
    // input (3, 1, 4) broadcast against target (3, 5, 4): divisor 3, numel 60.
    Data d({3, 1, 4}, {3, 5, 4});
    HostTensor out(KLDIV_FLOAT64, {});
    kldiv::Tensor o{out.bytes.data(), kldiv::DType::Float64, {}, {}};
    kldiv::FunctionalOptions options;
    options.reduction = "batchmean";
    kldiv::kl_div(d.in(), d.tg(), o, options);
    RefValue sum = d.ref(KLDIV_REDUCTION_SUM).loss[0];
    EXPECT_NEAR(scalar_result(out), sum.value / 3, 1e-12 * sum.scale);
    EXPECT_TRUE(warnings().empty());

    // Input broadcast the other way: input (4,) against target (6, 4) -> divisor 4.
    Data e({4}, {6, 4});
    kldiv::kl_div(e.in(), e.tg(), o, options);
    RefValue sum_e = e.ref(KLDIV_REDUCTION_SUM).loss[0];
    EXPECT_NEAR(scalar_result(out), sum_e.value / 4, 1e-12 * sum_e.scale);
}

TEST_F(Legacy, FunctionalBatchmeanZeroDimInputIsNotDivided) {
    Data d({}, {});
    HostTensor out(KLDIV_FLOAT64, {});
    kldiv::Tensor o{out.bytes.data(), kldiv::DType::Float64, {}, {}};
    kldiv::FunctionalOptions options;
    options.reduction = "batchmean";
    kldiv::kl_div(d.in(), d.tg(), o, options);
    RefValue l = ref_loss(d.xs[0], d.ts[0], false);
    EXPECT_NEAR(scalar_result(out), l.value, 1e-12 * l.scale);
    // Legacy + batchmean on a 0-dim input: no division either.
    options.size_average = false;
    kldiv::kl_div(d.in(), d.tg(), o, options);
    EXPECT_NEAR(scalar_result(out), l.value, 1e-12 * l.scale);
}

TEST_F(Legacy, FunctionalMeanWarnsOnEveryCall) {
    Data d;
    HostTensor out(KLDIV_FLOAT64, {});
    kldiv::Tensor o{out.bytes.data(), kldiv::DType::Float64, {}, {}};
    kldiv::FunctionalOptions options;  // reduction "mean" by default
    for (int call = 0; call < 3; ++call) {
        kldiv::kl_div(d.in(), d.tg(), o, options);
        std::vector<std::string> w = warnings();
        ASSERT_EQ(w.size(), 1u) << "call " << call;
        EXPECT_EQ(w[0], kMeanWarning);
    }
    RefValue mean = d.ref(KLDIV_REDUCTION_MEAN).loss[0];
    EXPECT_NEAR(scalar_result(out), mean.value, 1e-12 * mean.scale);

    // The plain C++ entry point with Reduction::Mean warns as well.
    kldiv::kl_div(d.in(), d.tg(), o, kldiv::Reduction::Mean);
    std::vector<std::string> w = warnings();
    ASSERT_EQ(w.size(), 1u);
    EXPECT_EQ(w[0], kMeanWarning);

    // Other reductions do not warn.
    for (kldiv::Reduction r : {kldiv::Reduction::Sum, kldiv::Reduction::BatchMean}) {
        kldiv::kl_div(d.in(), d.tg(), o, r);
        EXPECT_TRUE(warnings().empty()) << kldiv::reduction_name(r);
    }
    HostTensor out_none(KLDIV_FLOAT64, {4, 3});
    kldiv::Tensor on{out_none.bytes.data(), kldiv::DType::Float64, {4, 3}, {3, 1}};
    kldiv::kl_div(d.in(), d.tg(), on, kldiv::Reduction::None);
    EXPECT_TRUE(warnings().empty());
}

// F.kl_div(x, t, size_average=True) in PyTorch warns only the deprecation: the
// 'mean' warning belongs to the reduction='mean' string path.
TEST_F(Legacy, FunctionalLegacyMappedToMeanWarnsOnlyTheDeprecation) {
    Data d;
    HostTensor out(KLDIV_FLOAT64, {});
    kldiv::Tensor o{out.bytes.data(), kldiv::DType::Float64, {}, {}};
    kldiv::FunctionalOptions options;
    options.size_average = true;
    kldiv::kl_div(d.in(), d.tg(), o, options);
    std::vector<std::string> w = warnings();
    ASSERT_EQ(w.size(), 1u) << (w.size() > 1 ? w[1] : "");
    EXPECT_EQ(w[0], legacy_warning("mean"));
    RefValue mean = d.ref(KLDIV_REDUCTION_MEAN).loss[0];
    EXPECT_NEAR(scalar_result(out), mean.value, 1e-12 * mean.scale);
}

// ---------------------------------------------------------------------------
// KLDivLoss: mapping once, at construction; batchmean lost.

TEST_F(Legacy, ModuleMapsAtConstructionAndLosesBatchmean) {
    Data d;
    HostTensor out(KLDIV_FLOAT64, {});
    kldiv::Tensor o{out.bytes.data(), kldiv::DType::Float64, {}, {}};

    kldiv::KLDivLoss loss(/*size_average=*/false, std::nullopt, "batchmean");
    std::vector<std::string> w = warnings();
    ASSERT_EQ(w.size(), 1u);
    EXPECT_EQ(w[0], legacy_warning("sum"));
    EXPECT_EQ(loss.reduction(), "sum");
    for (int call = 0; call < 2; ++call) {
        loss.forward(d.in(), d.tg(), o);
        RefValue sum = d.ref(KLDIV_REDUCTION_SUM).loss[0];
        EXPECT_NEAR(scalar_result(out), sum.value, 1e-12 * sum.scale) << "batchmean must be lost";
        EXPECT_TRUE(warnings().empty()) << "the module warns the deprecation once, at construction";
    }
}

TEST_F(Legacy, ModuleWithoutLegacyKeepsBatchmean) {
    Data d;
    HostTensor out(KLDIV_FLOAT64, {});
    kldiv::Tensor o{out.bytes.data(), kldiv::DType::Float64, {}, {}};
    kldiv::KLDivLoss loss(std::nullopt, std::nullopt, "batchmean");
    EXPECT_EQ(loss.reduction(), "batchmean");
    loss.forward(d.in(), d.tg(), o);
    RefValue sum = d.ref(KLDIV_REDUCTION_SUM).loss[0];
    EXPECT_NEAR(scalar_result(out), sum.value / 4, 1e-12 * sum.scale);
    EXPECT_TRUE(warnings().empty());
}

TEST_F(Legacy, ModuleMappedToMeanWarnsMeanOnEveryForward) {
    Data d;
    HostTensor out(KLDIV_FLOAT64, {});
    kldiv::Tensor o{out.bytes.data(), kldiv::DType::Float64, {}, {}};
    kldiv::KLDivLoss loss(std::nullopt, /*reduce=*/true);
    std::vector<std::string> w = warnings();
    ASSERT_EQ(w.size(), 1u);
    EXPECT_EQ(w[0], legacy_warning("mean"));
    EXPECT_EQ(loss.reduction(), "mean");
    for (int call = 0; call < 3; ++call) {
        loss.forward(d.in(), d.tg(), o);
        w = warnings();
        ASSERT_EQ(w.size(), 1u) << "call " << call;
        EXPECT_EQ(w[0], kMeanWarning);
    }
    RefValue mean = d.ref(KLDIV_REDUCTION_MEAN).loss[0];
    EXPECT_NEAR(scalar_result(out), mean.value, 1e-12 * mean.scale);
}

TEST_F(Legacy, ModuleReduceFalseGivesNone) {
    Data d;
    HostTensor out(KLDIV_FLOAT64, {4, 3});
    kldiv::Tensor o{out.bytes.data(), kldiv::DType::Float64, {4, 3}, {3, 1}};
    kldiv::KLDivLoss loss(true, false, "batchmean", false);
    EXPECT_EQ(loss.reduction(), "none");
    std::vector<std::string> w = warnings();
    ASSERT_EQ(w.size(), 1u);
    EXPECT_EQ(w[0], legacy_warning("none"));
    loss.forward(d.in(), d.tg(), o);
    Reference r = d.ref(KLDIV_REDUCTION_NONE);
    for (int i = 0; i < 12; ++i) EXPECT_NEAR(out.at(i), r.loss[i].value, 1e-12 * r.loss[i].scale) << i;
}

// ---------------------------------------------------------------------------
// Warning delivery.

TEST_F(Legacy, CHandlerReceivesMeanWarningWithUserData) {
    kldiv::set_warning_handler(nullptr);
    Collector c;
    kldiv_set_warning_handler(c_handler, &c);
    Data d;
    HostTensor out(KLDIV_FLOAT64, {});
    kldiv_tensor in = d.input.view(), tg = d.target.view(), o = out.view();
    ASSERT_EQ(kldiv_forward(&in, &tg, KLDIV_REDUCTION_MEAN, 0, &o), 0) << kldiv_last_error();
    ASSERT_EQ(kldiv_forward(&in, &tg, KLDIV_REDUCTION_MEAN, 1, &o), 0) << kldiv_last_error();
    ASSERT_EQ(kldiv_forward(&in, &tg, KLDIV_REDUCTION_SUM, 0, &o), 0) << kldiv_last_error();
    ASSERT_EQ(kldiv_forward(&in, &tg, KLDIV_REDUCTION_BATCHMEAN, 0, &o), 0) << kldiv_last_error();
    std::vector<std::string> w = c.take();
    ASSERT_EQ(w.size(), 2u);
    EXPECT_EQ(w[0], kMeanWarning);
    EXPECT_EQ(w[1], kMeanWarning);
    EXPECT_TRUE(warnings().empty()) << "the C++ handler was cleared";

    // The C handler also receives the legacy warning of the C++ API.
    kldiv::FunctionalOptions options;
    options.reduce = false;
    kldiv::resolve_functional(options);
    w = c.take();
    ASSERT_EQ(w.size(), 1u);
    EXPECT_EQ(w[0], legacy_warning("none"));

    // NULL restores the default: nothing delivered.
    kldiv_set_warning_handler(nullptr, nullptr);
    ASSERT_EQ(kldiv_forward(&in, &tg, KLDIV_REDUCTION_MEAN, 0, &o), 0);
    EXPECT_TRUE(c.take().empty());
}

TEST_F(Legacy, DefaultIsSilentAndWritesNothingToStderr) {
    kldiv::set_warning_handler(nullptr);
    kldiv_set_warning_handler(nullptr, nullptr);
    Data d;
    HostTensor out(KLDIV_FLOAT64, {});
    kldiv_tensor in = d.input.view(), tg = d.target.view(), o = out.view();
    kldiv::Tensor co{out.bytes.data(), kldiv::DType::Float64, {}, {}};
    ::testing::internal::CaptureStderr();
    int rc = kldiv_forward(&in, &tg, KLDIV_REDUCTION_MEAN, 0, &o);
    kldiv::FunctionalOptions options;
    options.size_average = false;
    kldiv::kl_div(d.in(), d.tg(), co, options);
    kldiv::KLDivLoss loss(std::nullopt, false);
    kldiv::KLDivLoss mean_loss;
    mean_loss.forward(d.in(), d.tg(), co);
    std::string err = ::testing::internal::GetCapturedStderr();
    EXPECT_EQ(rc, 0);
    EXPECT_EQ(err, "") << "warnings must not reach stderr by default";
    EXPECT_TRUE(warnings().empty());
}

TEST_F(Legacy, CppHandlerReplacesAndClears) {
    Data d;
    HostTensor out(KLDIV_FLOAT64, {});
    kldiv::Tensor o{out.bytes.data(), kldiv::DType::Float64, {}, {}};
    Collector second;
    kldiv::set_warning_handler([&second](const std::string &m) { second.add(m); });
    kldiv::kl_div(d.in(), d.tg(), o, kldiv::Reduction::Mean);
    EXPECT_TRUE(warnings().empty()) << "the replaced handler still receives";
    std::vector<std::string> w = second.take();
    ASSERT_EQ(w.size(), 1u);
    EXPECT_EQ(w[0], kMeanWarning);
    kldiv::set_warning_handler(nullptr);
    kldiv::kl_div(d.in(), d.tg(), o, kldiv::Reduction::Mean);
    EXPECT_TRUE(second.take().empty());
}

}  // namespace
