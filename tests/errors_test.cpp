// Invalid calls: each returns a nonzero status (or throws kldiv::Error), says
// what is wrong through kldiv_last_error, and writes no output byte.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <initializer_list>
#include <thread>

#include "kldiv/kldiv.hpp"
#include "test_support.h"

using namespace kldiv_test;

namespace {

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return (char)std::tolower(c); });
    return s;
}

// True if `message` contains, for every group, at least one of its words
// (case-insensitive).
::testing::AssertionResult Mentions(const std::string &message,
                                    std::initializer_list<std::initializer_list<const char *>> groups) {
    std::string m = lower(message);
    for (const auto &group : groups) {
        bool any = false;
        std::string words;
        for (const char *w : group) {
            any |= m.find(lower(w)) != std::string::npos;
            words += std::string(words.empty() ? "" : " or ") + "'" + w + "'";
        }
        if (!any) return ::testing::AssertionFailure() << "message \"" << message << "\" lacks " << words;
    }
    return ::testing::AssertionSuccess();
}

// Float32 operands with some data, and outputs full of a sentinel.
struct Fixture {
    HostTensor input, target, out, grad_output, grad_input, grad_target;
    std::vector<unsigned char> out_before, gi_before, gt_before;

    explicit Fixture(Shape in_shape = {3, 4}, Shape tg_shape = {3, 4}, Shape out_shape = {3, 4},
                     kldiv_dtype dt = KLDIV_FLOAT32) {
        std::vector<double> xs, ts;
        for (int64_t i = 0; i < numel(in_shape); ++i) xs.push_back(-0.5 - 0.125 * (double)(i % 7));
        for (int64_t i = 0; i < numel(tg_shape); ++i) ts.push_back(0.0625 * (double)(1 + i % 5));
        input = HostTensor::from_values(dt, in_shape, xs);
        target = HostTensor::from_values(dt, tg_shape, ts);
        out = HostTensor(dt, out_shape);
        out.fill_bytes(0x5A);
        grad_output = HostTensor::from_values(dt, out_shape, std::vector<double>(numel(out_shape), 0.5));
        grad_input = HostTensor(dt, in_shape);
        grad_input.fill_bytes(0x5B);
        grad_target = HostTensor(dt, tg_shape);
        grad_target.fill_bytes(0x5C);
        out_before = out.bytes;
        gi_before = grad_input.bytes;
        gt_before = grad_target.bytes;
    }

    ::testing::AssertionResult Unchanged() const {
        if (out.bytes != out_before) return ::testing::AssertionFailure() << "out was written";
        if (grad_input.bytes != gi_before) return ::testing::AssertionFailure() << "grad_input was written";
        if (grad_target.bytes != gt_before) return ::testing::AssertionFailure() << "grad_target was written";
        return ::testing::AssertionSuccess();
    }
};

int forward(const kldiv_tensor *in, const kldiv_tensor *tg, const kldiv_tensor *out) {
    return kldiv_forward(in, tg, KLDIV_REDUCTION_NONE, 0, out);
}

// ---------------------------------------------------------------------------
// Sanity: the fixture itself is valid, so the errors below come from the one
// thing each test breaks.
TEST(Errors, FixtureIsValid) {
    Fixture f;
    kldiv_tensor in = f.input.view(), tg = f.target.view(), out = f.out.view();
    ASSERT_EQ(kldiv_forward(&in, &tg, KLDIV_REDUCTION_NONE, 0, &out), 0) << kldiv_last_error();
    EXPECT_NE(f.out.bytes, f.out_before);
    kldiv_tensor go = f.grad_output.view(), gi = f.grad_input.view(), gt = f.grad_target.view();
    ASSERT_EQ(kldiv_backward(&go, &in, &tg, KLDIV_REDUCTION_NONE, 0, &gi, &gt), 0) << kldiv_last_error();
}

TEST(Errors, NullTensorPointers) {
    Fixture f;
    kldiv_tensor in = f.input.view(), tg = f.target.view(), out = f.out.view();
    struct Case {
        const kldiv_tensor *in, *tg, *out;
        const char *name;
    } cases[] = {{nullptr, &tg, &out, "input"}, {&in, nullptr, &out, "target"}, {&in, &tg, nullptr, "out"}};
    for (const Case &c : cases) {
        SCOPED_TRACE(c.name);
        EXPECT_EQ(kldiv_forward(c.in, c.tg, KLDIV_REDUCTION_NONE, 0, c.out), KLDIV_ERROR_INVALID_ARGUMENT);
        EXPECT_TRUE(Mentions(kldiv_last_error(), {{"null"}, {c.name}}));
        EXPECT_TRUE(f.Unchanged());
    }
    kldiv_tensor go = f.grad_output.view(), gi = f.grad_input.view(), gt = f.grad_target.view();
    EXPECT_EQ(kldiv_backward(nullptr, &in, &tg, KLDIV_REDUCTION_NONE, 0, &gi, &gt), KLDIV_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"null"}, {"grad_output", "grad output"}}));
    EXPECT_EQ(kldiv_backward(&go, nullptr, &tg, KLDIV_REDUCTION_NONE, 0, &gi, &gt), KLDIV_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"null"}, {"input"}}));
    EXPECT_EQ(kldiv_forward_backward(&in, nullptr, KLDIV_REDUCTION_NONE, 0, &out, &gi), KLDIV_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"null"}, {"target"}}));
    EXPECT_TRUE(f.Unchanged());
}

TEST(Errors, NullDataAndSizes) {
    Fixture f;
    kldiv_tensor in = f.input.view(), tg = f.target.view(), out = f.out.view();
    kldiv_tensor bad = in;
    bad.data = nullptr;
    EXPECT_EQ(forward(&bad, &tg, &out), KLDIV_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"null"}, {"data"}}));
    EXPECT_TRUE(f.Unchanged());

    kldiv_tensor bad_out = out;
    bad_out.data = nullptr;
    EXPECT_EQ(forward(&in, &tg, &bad_out), KLDIV_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"null"}, {"data"}}));

    bad = tg;
    bad.sizes = nullptr;
    EXPECT_EQ(forward(&in, &bad, &out), KLDIV_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"null"}, {"size"}}));
    EXPECT_TRUE(f.Unchanged());
}

TEST(Errors, NegativeRank) {
    Fixture f;
    kldiv_tensor in = f.input.view(), tg = f.target.view(), out = f.out.view();
    kldiv_tensor bad = in;
    bad.rank = -1;
    EXPECT_EQ(forward(&bad, &tg, &out), KLDIV_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"rank"}}));
    EXPECT_TRUE(f.Unchanged());
}

TEST(Errors, NegativeStride) {
    Fixture f;
    kldiv_tensor in = f.input.view(), tg = f.target.view(), out = f.out.view();
    // A valid-looking reversed view of the rows: data at the last row, stride -4.
    int64_t strides[2] = {-4, 1};
    kldiv_tensor bad = in;
    bad.data = f.input.bytes.data() + 8 * 4;
    bad.strides = strides;
    EXPECT_EQ(forward(&bad, &tg, &out), KLDIV_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"stride"}, {"negative", "< 0", "-4"}}));
    EXPECT_TRUE(f.Unchanged());

    kldiv_tensor bad_out = out;
    bad_out.data = f.out.bytes.data() + 8 * 4;
    bad_out.strides = strides;
    EXPECT_EQ(forward(&in, &tg, &bad_out), KLDIV_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"stride"}}));
    EXPECT_TRUE(f.Unchanged());
}

// Shapes a caller in another language could pass by mistake or malice: each is
// refused with a clear error before any memory is read through it (the data
// pointers here point at a few real bytes, or nowhere), and nothing is written.
TEST(Errors, HostileShapes) {
    Fixture f;
    const int64_t big = int64_t(1) << 32, max = INT64_MAX;
    std::vector<int64_t> ones(KLDIV_MAX_RANK + 1, 1), two = {2, 2};
    struct Case {
        const char *what;
        int32_t rank;
        std::vector<int64_t> sizes, strides;
        uintptr_t data;  // 0: the fixture's buffer
        kldiv_dtype dtype;
        std::initializer_list<const char *> words;
    } cases[] = {
        {"rank over the limit", KLDIV_MAX_RANK + 1, ones, ones, 0, KLDIV_FLOAT32, {"rank"}},
        // The arrays hold 2 values: a library that believed the rank would read past them.
        {"rank INT32_MAX", INT32_MAX, two, two, 0, KLDIV_FLOAT32, {"rank"}},
        {"element count overflows int64", 2, {big, big}, {big, 1}, 0, KLDIV_FLOAT32, {"too many", "elements"}},
        {"size times stride overflows", 2, {2, 2}, {max, 1}, 0, KLDIV_FLOAT32, {"address space"}},
        {"offsets add past int64", 3, {2, 2, 2}, {max / 2, max / 2, 2}, 0, KLDIV_FLOAT32, {"address space"}},
        {"bytes overflow int64", 1, {int64_t(1) << 61}, {1}, 0, KLDIV_FLOAT64, {"address space"}},
        {"end wraps the address space", 1, {1024}, {1}, UINTPTR_MAX - 64, KLDIV_FLOAT32, {"address space"}},
        {"negative size", 2, {-1, 4}, {4, 1}, 0, KLDIV_FLOAT32, {"negative", "size"}},
        {"negative stride", 2, {3, 4}, {-4, 1}, 0, KLDIV_FLOAT32, {"negative", "stride"}},
    };
    for (const Case &c : cases) {
        SCOPED_TRACE(c.what);
        kldiv_tensor hostile = {c.data ? (void *)c.data : f.input.bytes.data(), c.dtype, c.rank, c.sizes.data(),
                                c.strides.data(), KLDIV_DEVICE_CPU};
        kldiv_tensor in = f.input.view(), tg = f.target.view(), out = f.out.view();
        kldiv_tensor go = f.grad_output.view(), gi = f.grad_input.view(), gt = f.grad_target.view();
        const kldiv_tensor *slots[][3] = {{&hostile, &tg, &out}, {&in, &hostile, &out}, {&in, &tg, &hostile}};
        for (const auto &slot : slots) {
            EXPECT_EQ(forward(slot[0], slot[1], slot[2]), KLDIV_ERROR_INVALID_ARGUMENT);
            EXPECT_TRUE(Mentions(kldiv_last_error(), {c.words}));
            EXPECT_EQ(kldiv_forward_backward(slot[0], slot[1], KLDIV_REDUCTION_NONE, 0, slot[2], &gi),
                      KLDIV_ERROR_INVALID_ARGUMENT);
        }
        EXPECT_EQ(kldiv_backward(&hostile, &in, &tg, KLDIV_REDUCTION_NONE, 0, &gi, &gt), KLDIV_ERROR_INVALID_ARGUMENT);
        EXPECT_EQ(kldiv_backward(&go, &in, &tg, KLDIV_REDUCTION_NONE, 0, &gi, &hostile), KLDIV_ERROR_INVALID_ARGUMENT);
        EXPECT_TRUE(Mentions(kldiv_last_error(), {c.words}));
        EXPECT_TRUE(f.Unchanged());
    }
}

TEST(Errors, NegativeSize) {
    Fixture f;
    kldiv_tensor in = f.input.view(), tg = f.target.view(), out = f.out.view();
    int64_t sizes[2] = {3, -4};
    kldiv_tensor bad = tg;
    bad.sizes = sizes;
    EXPECT_EQ(forward(&in, &bad, &out), KLDIV_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"size"}}));
    EXPECT_TRUE(f.Unchanged());
}

// PyTorch's text; kl_div forms `target * input` (or `target - input`), so
// tensor a is the target and tensor b the input, and the dimension counts from
// the left of the broadcast result, the rightmost mismatch reported first.
struct ShapeCase {
    Shape input, target;
    std::string message;
};

void PrintTo(const ShapeCase &c, std::ostream *os) {
    *os << "input " << shape_string(c.input) << " target " << shape_string(c.target);
}

class IncompatibleShapes : public ::testing::TestWithParam<ShapeCase> {};

TEST_P(IncompatibleShapes, PyTorchMessage) {
    const ShapeCase &c = GetParam();
    for (int log_target : {0, 1}) {
        for (kldiv_reduction r : {KLDIV_REDUCTION_NONE, KLDIV_REDUCTION_SUM}) {
            SCOPED_TRACE("log_target " + std::to_string(log_target) + " reduction " + std::to_string(r));
            Fixture f(c.input, c.target, r == KLDIV_REDUCTION_NONE ? c.input : Shape{});
            kldiv_tensor in = f.input.view(), tg = f.target.view(), out = f.out.view();
            EXPECT_EQ(kldiv_forward(&in, &tg, r, log_target, &out), KLDIV_ERROR_SHAPE);
            EXPECT_NE(std::string(kldiv_last_error()).find(c.message), std::string::npos)
                << "got:      " << kldiv_last_error() << "\nexpected: " << c.message;
            EXPECT_TRUE(f.Unchanged());

            kldiv_tensor go = f.grad_output.view(), gi = f.grad_input.view(), gt = f.grad_target.view();
            EXPECT_EQ(kldiv_backward(&go, &in, &tg, r, log_target, &gi, &gt), KLDIV_ERROR_SHAPE);
            EXPECT_NE(std::string(kldiv_last_error()).find(c.message), std::string::npos)
                << "got:      " << kldiv_last_error() << "\nexpected: " << c.message;
            EXPECT_EQ(kldiv_forward_backward(&in, &tg, r, log_target, &out, &gi), KLDIV_ERROR_SHAPE);
            EXPECT_NE(std::string(kldiv_last_error()).find(c.message), std::string::npos)
                << "got:      " << kldiv_last_error() << "\nexpected: " << c.message;
            EXPECT_TRUE(f.Unchanged());
        }
    }
}

INSTANTIATE_TEST_SUITE_P(
    Errors, IncompatibleShapes,
    ::testing::Values(
        ShapeCase{{3}, {4}, "The size of tensor a (4) must match the size of tensor b (3) at non-singleton dimension 0"},
        ShapeCase{{7, 2, 3}, {4, 3}, "The size of tensor a (4) must match the size of tensor b (2) at non-singleton dimension 1"},
        ShapeCase{{2, 3, 4}, {3, 5}, "The size of tensor a (5) must match the size of tensor b (4) at non-singleton dimension 2"},
        ShapeCase{{2, 3}, {4, 5}, "The size of tensor a (5) must match the size of tensor b (3) at non-singleton dimension 1"},
        ShapeCase{{5, 1, 6}, {2, 3, 1}, "The size of tensor a (2) must match the size of tensor b (5) at non-singleton dimension 0"}),
    [](const ::testing::TestParamInfo<ShapeCase> &info) { return "case" + std::to_string(info.index); });

TEST(Errors, OutputWrongShape) {
    struct Case {
        Shape out;
        kldiv_reduction reduction;
    } cases[] = {{{4, 3}, KLDIV_REDUCTION_NONE},
                 {{3, 4, 1}, KLDIV_REDUCTION_NONE},
                 {{12}, KLDIV_REDUCTION_NONE},
                 {{}, KLDIV_REDUCTION_NONE},
                 {{1}, KLDIV_REDUCTION_SUM},
                 {{3, 4}, KLDIV_REDUCTION_MEAN},
                 {{1}, KLDIV_REDUCTION_BATCHMEAN}};
    for (const Case &c : cases) {
        SCOPED_TRACE(shape_string(c.out) + " reduction " + std::to_string(c.reduction));
        Fixture f({3, 4}, {3, 4}, c.out);
        kldiv_tensor in = f.input.view(), tg = f.target.view(), out = f.out.view();
        EXPECT_EQ(kldiv_forward(&in, &tg, c.reduction, 0, &out), KLDIV_ERROR_SHAPE);
        EXPECT_TRUE(Mentions(kldiv_last_error(), {{"shape", "size", "rank"}}));
        EXPECT_TRUE(f.Unchanged());
    }
}

TEST(Errors, GradientWrongShape) {
    Fixture f({3, 4}, {3, 4}, {3, 4});
    kldiv_tensor in = f.input.view(), tg = f.target.view(), go = f.grad_output.view(), gt = f.grad_target.view();
    HostTensor gi_bad(KLDIV_FLOAT32, {4, 3});
    gi_bad.fill_bytes(0x77);
    std::vector<unsigned char> before = gi_bad.bytes;
    kldiv_tensor gi = gi_bad.view();
    EXPECT_EQ(kldiv_backward(&go, &in, &tg, KLDIV_REDUCTION_NONE, 0, &gi, &gt), KLDIV_ERROR_SHAPE);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"shape", "size"}}));
    EXPECT_EQ(gi_bad.bytes, before);
    EXPECT_TRUE(f.Unchanged());

    // grad_output must be rank 0 for a reduced loss and the broadcast shape for none.
    gi = f.grad_input.view();
    EXPECT_EQ(kldiv_backward(&go, &in, &tg, KLDIV_REDUCTION_SUM, 0, &gi, &gt), KLDIV_ERROR_SHAPE);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"shape", "size", "rank"}}));
    HostTensor scalar = HostTensor::from_values(KLDIV_FLOAT32, {}, {1.0});
    kldiv_tensor go_scalar = scalar.view();
    EXPECT_EQ(kldiv_backward(&go_scalar, &in, &tg, KLDIV_REDUCTION_NONE, 0, &gi, &gt), KLDIV_ERROR_SHAPE);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"shape", "size", "rank"}}));
    EXPECT_TRUE(f.Unchanged());
}

TEST(Errors, OutputWrongDtype) {
    Fixture f;
    HostTensor out64(KLDIV_FLOAT64, {3, 4});
    out64.fill_bytes(0x33);
    std::vector<unsigned char> before = out64.bytes;
    kldiv_tensor in = f.input.view(), tg = f.target.view(), out = out64.view();
    EXPECT_EQ(kldiv_forward(&in, &tg, KLDIV_REDUCTION_NONE, 0, &out), KLDIV_ERROR_DTYPE);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"dtype", "type"}}));
    EXPECT_EQ(out64.bytes, before);

    HostTensor out16(KLDIV_FLOAT16, {});
    out16.fill_bytes(0x33);
    before = out16.bytes;
    out = out16.view();
    EXPECT_EQ(kldiv_forward(&in, &tg, KLDIV_REDUCTION_SUM, 0, &out), KLDIV_ERROR_DTYPE);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"dtype", "type"}}));
    EXPECT_EQ(out16.bytes, before);

    // Gradient of the wrong dtype.
    HostTensor gi64(KLDIV_FLOAT64, {3, 4});
    gi64.fill_bytes(0x44);
    before = gi64.bytes;
    kldiv_tensor go = f.grad_output.view(), gi = gi64.view();
    EXPECT_EQ(kldiv_backward(&go, &in, &tg, KLDIV_REDUCTION_NONE, 0, &gi, nullptr), KLDIV_ERROR_DTYPE);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"dtype", "type"}}));
    EXPECT_EQ(gi64.bytes, before);
    EXPECT_TRUE(f.Unchanged());
}

// Input and target of different dtypes: float32 + float64. SPEC.md gives the
// promoted dtype (float64) as PyTorch does; kldiv.h lists "mismatched dtypes"
// under KLDIV_ERROR_DTYPE. Either a correct promoted result or a clean DTYPE
// error is accepted; an out of the unpromoted dtype must always be refused.
TEST(Errors, InputTargetDtypeMismatch) {
    Fixture f;
    std::vector<double> ts = f.target.values();
    HostTensor tg64 = HostTensor::from_values(KLDIV_FLOAT64, {3, 4}, ts);
    kldiv_tensor in = f.input.view(), tg = tg64.view(), out = f.out.view();

    EXPECT_EQ(kldiv_forward(&in, &tg, KLDIV_REDUCTION_NONE, 0, &out), KLDIV_ERROR_DTYPE);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"dtype", "type"}}));
    EXPECT_TRUE(f.Unchanged());

    HostTensor out64(KLDIV_FLOAT64, {3, 4});
    out64.fill_bytes(0x33);
    std::vector<unsigned char> before = out64.bytes;
    kldiv_tensor o64 = out64.view();
    int rc = kldiv_forward(&in, &tg, KLDIV_REDUCTION_NONE, 0, &o64);
    if (rc != 0) {
        EXPECT_EQ(rc, KLDIV_ERROR_DTYPE);
        EXPECT_TRUE(Mentions(kldiv_last_error(), {{"dtype", "type"}}));
        EXPECT_EQ(out64.bytes, before);
    } else {
        std::vector<double> xs = f.input.values();
        for (size_t i = 0; i < xs.size(); ++i) {
            double expected = ref_loss(xs[i], ts[i], false).value;
            EXPECT_NEAR(out64.at(i), expected, 1e-12 * ref_loss(xs[i], ts[i], false).scale) << i;
        }
    }
}

TEST(Errors, UnknownDtype) {
    Fixture f;
    kldiv_tensor in = f.input.view(), tg = f.target.view(), out = f.out.view();
    kldiv_tensor bad = in;
    bad.dtype = (kldiv_dtype)42;
    EXPECT_EQ(forward(&bad, &tg, &out), KLDIV_ERROR_DTYPE);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"dtype", "type"}}));
    EXPECT_TRUE(f.Unchanged());

    kldiv_tensor bad_out = out;
    bad_out.dtype = (kldiv_dtype)-3;
    EXPECT_EQ(forward(&in, &tg, &bad_out), KLDIV_ERROR_DTYPE);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"dtype", "type"}}));
    EXPECT_TRUE(f.Unchanged());
}

TEST(Errors, UnknownReductionEnum) {
    Fixture f;
    kldiv_tensor in = f.input.view(), tg = f.target.view(), out = f.out.view();
    EXPECT_NE(kldiv_forward(&in, &tg, (kldiv_reduction)9, 0, &out), 0);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"reduction"}}));
    EXPECT_TRUE(f.Unchanged());
}

// This build has no CUDA kernels (and the host has no GPU): a CUDA tensor is a
// device error, not a crash and not a host read of a device pointer.
TEST(Errors, CudaTensorOnCpuBuild) {
    Fixture f;
    kldiv_tensor in = f.input.view(), tg = f.target.view(), out = f.out.view();
    kldiv_tensor in_cuda = in, tg_cuda = tg, out_cuda = out;
    in_cuda.device = tg_cuda.device = out_cuda.device = KLDIV_DEVICE_CUDA;
    EXPECT_EQ(forward(&in_cuda, &tg_cuda, &out_cuda), KLDIV_ERROR_DEVICE);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"cuda", "device", "gpu"}}));
    EXPECT_TRUE(f.Unchanged());
    // Mixed devices.
    EXPECT_EQ(forward(&in, &tg_cuda, &out), KLDIV_ERROR_DEVICE);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"cuda", "device"}}));
    EXPECT_TRUE(f.Unchanged());
    // Unknown device value.
    kldiv_tensor weird = in;
    weird.device = (kldiv_device)7;
    EXPECT_NE(forward(&weird, &tg, &out), 0);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"device"}}));
    EXPECT_TRUE(f.Unchanged());
}

TEST(Errors, OutputOverlapsInput) {
    // One buffer holding input (12 floats) and out starting 1 element before
    // its end: a partial overlap.
    std::vector<float> storage(32, 0.0f);
    for (int i = 0; i < 12; ++i) storage[i] = -1.0f - 0.1f * (float)i;
    HostTensor target = HostTensor::from_values(KLDIV_FLOAT32, {12}, std::vector<double>(12, 0.25));
    Shape shape{12}, strides{1};
    kldiv_tensor in{storage.data(), KLDIV_FLOAT32, 1, shape.data(), strides.data(), KLDIV_DEVICE_CPU};
    kldiv_tensor out = in;
    out.data = storage.data() + 11;
    kldiv_tensor tg = target.view();
    std::vector<float> before = storage;
    EXPECT_EQ(kldiv_forward(&in, &tg, KLDIV_REDUCTION_NONE, 0, &out), KLDIV_ERROR_ALIAS);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"overlap", "alias"}}));
    EXPECT_EQ(storage, before);

    // Output partially overlapping the target.
    out.data = target.bytes.data() + 4 * 5;
    std::vector<unsigned char> target_before = target.bytes;
    EXPECT_EQ(kldiv_forward(&in, &tg, KLDIV_REDUCTION_NONE, 0, &out), KLDIV_ERROR_ALIAS);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"overlap", "alias"}}));
    EXPECT_EQ(target.bytes, target_before);

    // A reduced output placed inside the input.
    kldiv_tensor scalar_out{storage.data() + 3, KLDIV_FLOAT32, 0, nullptr, nullptr, KLDIV_DEVICE_CPU};
    EXPECT_EQ(kldiv_forward(&in, &tg, KLDIV_REDUCTION_SUM, 0, &scalar_out), KLDIV_ERROR_ALIAS);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"overlap", "alias"}}));
    EXPECT_EQ(storage, before);
}

// Full overlap (out is exactly the input, same strides): PyTorch allows such
// in-place elementwise writes; either a clean ALIAS error or the correct
// in-place result is accepted, never a half-written mix.
TEST(Errors, OutputIsExactlyTheInput) {
    std::vector<float> storage(12);
    for (int i = 0; i < 12; ++i) storage[i] = -1.0f - 0.1f * (float)i;
    const std::vector<float> before = storage;
    HostTensor target = HostTensor::from_values(KLDIV_FLOAT32, {12}, std::vector<double>(12, 0.25));
    Shape shape{12}, strides{1};
    kldiv_tensor in{storage.data(), KLDIV_FLOAT32, 1, shape.data(), strides.data(), KLDIV_DEVICE_CPU};
    kldiv_tensor tg = target.view();
    int rc = kldiv_forward(&in, &tg, KLDIV_REDUCTION_NONE, 0, &in);
    if (rc != 0) {
        EXPECT_EQ(rc, KLDIV_ERROR_ALIAS);
        EXPECT_EQ(storage, before);
    } else {
        for (int i = 0; i < 12; ++i) {
            RefValue r = ref_loss(before[i], 0.25, false);
            EXPECT_NEAR(storage[i], r.value, 3e-6 * r.scale) << i;
        }
    }
}

TEST(Errors, GradientsOverlap) {
    Fixture f({3, 4}, {3, 4}, {3, 4});
    kldiv_tensor in = f.input.view(), tg = f.target.view(), go = f.grad_output.view();
    // grad_input and grad_target share storage, shifted by 2 elements.
    std::vector<float> storage(32, 7.0f);
    std::vector<float> before = storage;
    Shape shape{3, 4}, strides{4, 1};
    kldiv_tensor gi{storage.data(), KLDIV_FLOAT32, 2, shape.data(), strides.data(), KLDIV_DEVICE_CPU};
    kldiv_tensor gt = gi;
    gt.data = storage.data() + 2;
    EXPECT_EQ(kldiv_backward(&go, &in, &tg, KLDIV_REDUCTION_NONE, 0, &gi, &gt), KLDIV_ERROR_ALIAS);
    EXPECT_TRUE(Mentions(kldiv_last_error(), {{"overlap", "alias"}}));
    EXPECT_EQ(storage, before);

    // grad_input overlapping grad_output.
    kldiv_tensor gi_on_go = go;
    gi_on_go.data = f.grad_output.bytes.data() + 4;
    std::vector<unsigned char> go_before = f.grad_output.bytes;
    EXPECT_EQ(kldiv_backward(&go, &in, &tg, KLDIV_REDUCTION_NONE, 0, &gi_on_go, nullptr), KLDIV_ERROR_ALIAS);
    EXPECT_EQ(f.grad_output.bytes, go_before);

    // Fused: out and grad_input overlapping.
    kldiv_tensor out = gi;
    out.data = storage.data() + 5;
    EXPECT_EQ(kldiv_forward_backward(&in, &tg, KLDIV_REDUCTION_NONE, 0, &out, &gi), KLDIV_ERROR_ALIAS);
    EXPECT_EQ(storage, before);
    EXPECT_TRUE(f.Unchanged());
}

// An output whose elements share memory (stride 0, size > 1) cannot be
// written meaningfully; PyTorch refuses such outputs too.
TEST(Errors, SelfOverlappingOutput) {
    Fixture f({3, 4}, {3, 4}, {3, 4});
    kldiv_tensor in = f.input.view(), tg = f.target.view(), out = f.out.view();
    int64_t strides[2] = {0, 1};
    out.strides = strides;
    EXPECT_NE(kldiv_forward(&in, &tg, KLDIV_REDUCTION_NONE, 0, &out), 0);
    EXPECT_STRNE(kldiv_last_error(), "");
    EXPECT_TRUE(f.Unchanged());
}

TEST(Errors, LastErrorIsThreadLocal) {
    Fixture f({3}, {4}, {3});
    kldiv_tensor in = f.input.view(), tg = f.target.view(), out = f.out.view();
    ASSERT_EQ(kldiv_forward(&in, &tg, KLDIV_REDUCTION_NONE, 0, &out), KLDIV_ERROR_SHAPE);
    const std::string main_error = kldiv_last_error();
    ASSERT_FALSE(main_error.empty());

    std::string fresh_thread_error = "unset", other_error;
    std::thread worker([&] {
        fresh_thread_error = kldiv_last_error();
        kldiv_tensor bad = in;
        bad.rank = -5;
        if (kldiv_forward(&bad, &tg, KLDIV_REDUCTION_NONE, 0, &out) != 0) other_error = kldiv_last_error();
    });
    worker.join();
    EXPECT_EQ(fresh_thread_error, "") << "a new thread sees another thread's error";
    EXPECT_FALSE(other_error.empty());
    EXPECT_NE(other_error, main_error);
    EXPECT_EQ(std::string(kldiv_last_error()), main_error) << "another thread's error replaced this one's";
}

// ---------------------------------------------------------------------------
// C++ API: kldiv::Error with the code.

kldiv::Tensor cpp_view(HostTensor &h, kldiv::DType dtype = kldiv::DType::Float32) {
    kldiv::Tensor t;
    t.data = h.bytes.data();
    t.dtype = dtype;
    t.sizes = h.sizes;
    t.strides = h.strides;
    return t;
}

template <typename F>
void ExpectError(F &&call, kldiv::ErrorCode code, const std::string &needle) {
    try {
        call();
        ADD_FAILURE() << "no exception";
    } catch (const kldiv::Error &e) {
        EXPECT_EQ((int)e.code(), (int)code) << e.what();
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
            << "what(): " << e.what() << "\nexpected to contain: " << needle;
    } catch (const std::exception &e) {
        ADD_FAILURE() << "threw something other than kldiv::Error: " << e.what();
    }
}

TEST(CppErrors, ThrowsErrorWithCode) {
    Fixture f({2, 3}, {2, 5}, {2, 3});
    kldiv::Tensor in = cpp_view(f.input), tg = cpp_view(f.target), out = cpp_view(f.out);
    ExpectError([&] { kldiv::kl_div(in, tg, out, kldiv::Reduction::None); }, kldiv::ErrorCode::Shape,
                "The size of tensor a (5) must match the size of tensor b (3) at non-singleton dimension 1");
    EXPECT_TRUE(f.Unchanged());

    Fixture g;
    kldiv::Tensor gin = cpp_view(g.input), gtg = cpp_view(g.target), gout = cpp_view(g.out);
    kldiv::Tensor null_data = gin;
    null_data.data = nullptr;
    ExpectError([&] { kldiv::kl_div(null_data, gtg, gout, kldiv::Reduction::None); },
                kldiv::ErrorCode::InvalidArgument, "");
    kldiv::Tensor bad_dtype = gin;
    bad_dtype.dtype = (kldiv::DType)42;
    ExpectError([&] { kldiv::kl_div(bad_dtype, gtg, gout, kldiv::Reduction::None); }, kldiv::ErrorCode::DType, "");
    kldiv::Tensor cuda = gin;
    cuda.device = kldiv::Device::CUDA;
    ExpectError([&] { kldiv::kl_div(cuda, gtg, gout, kldiv::Reduction::None); }, kldiv::ErrorCode::Device, "");
    kldiv::Tensor alias = gout;
    alias.data = g.input.bytes.data() + 4;
    ExpectError([&] { kldiv::kl_div(gin, gtg, alias, kldiv::Reduction::None); }, kldiv::ErrorCode::Alias, "");
    kldiv::Tensor neg = gin;
    neg.strides = {-3, 1};
    ExpectError([&] { kldiv::kl_div(neg, gtg, gout, kldiv::Reduction::None); },
                kldiv::ErrorCode::InvalidArgument, "");
    kldiv::Tensor wrong_shape = gout;
    wrong_shape.sizes = {4, 3};
    wrong_shape.strides = {3, 1};
    ExpectError([&] { kldiv::kl_div(gin, gtg, wrong_shape, kldiv::Reduction::None); }, kldiv::ErrorCode::Shape,
                "");
    kldiv::Tensor go = cpp_view(g.grad_output), gi = cpp_view(g.grad_input);
    ExpectError([&] { kldiv::kl_div_backward(go, gin, gtg, kldiv::Reduction::Sum, false, &gi, nullptr); },
                kldiv::ErrorCode::Shape, "");
    EXPECT_TRUE(g.Unchanged());
}

TEST(CppErrors, ContiguousHelper) {
    float data[6] = {};
    kldiv::Tensor t = kldiv::Tensor::contiguous(data, kldiv::DType::Float32, {2, 3});
    EXPECT_EQ(t.data, (void *)data);
    EXPECT_EQ(t.sizes, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(t.strides, (std::vector<int64_t>{3, 1}));
    EXPECT_EQ(t.numel(), 6);
    EXPECT_EQ(t.rank(), 2);
    kldiv::Tensor s = kldiv::Tensor::contiguous(data, kldiv::DType::Float64, {});
    EXPECT_EQ(s.numel(), 1);
    EXPECT_EQ(s.rank(), 0);
    kldiv::Tensor e = kldiv::Tensor::contiguous(data, kldiv::DType::Float16, {4, 0, 2});
    EXPECT_EQ(e.numel(), 0);
}

}  // namespace
