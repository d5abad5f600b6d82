// What CUDA calls rest on that needs no GPU: the CUDA kernels' names and
// calling convention (distillation's too: each spec's kernel and its CUDA
// twin are in the library under the names the runtime looks up), and the
// cutting of a call into pieces whose grid dimensions CUDA can launch.
#include <gtest/gtest.h>

#include <algorithm>

#include "aot_registry.h"
#include "kldiv/codegen/kernel_spec.h"
#include "layout.h"

namespace {

using kldiv::codegen::Argument;
using kldiv::codegen::KernelSpec;
using kldiv::codegen::Pass;
namespace runtime = kldiv::runtime;

std::vector<std::string> names(const KernelSpec &spec) {
    std::vector<std::string> out;
    for (const Argument &a : kldiv::codegen::arguments(spec)) out.push_back(a.name);
    return out;
}

TEST(CudaSpec, ReductionsFinishOnTheDeviceAndReadTheUpstreamGradientThere) {
    KernelSpec sum{Pass::Forward, kldiv::DType::BFloat16, true, true, false, false, true};
    EXPECT_EQ(sum.name(), "kldiv_cuda_fwd_sum_bf16_logt");
    EXPECT_EQ(sum.tuning_name(), "kldiv_fwd_sum_bf16_logt");
    EXPECT_EQ(names(sum), (std::vector<std::string>{"divisor", "input", "target", "out"}));
    std::vector<int> dims;
    for (const Argument &a : kldiv::codegen::arguments(sum)) dims.push_back(a.dimensions);
    EXPECT_EQ(dims, (std::vector<int>{0, 4, 4, 1}));
    sum.cuda = false;
    EXPECT_EQ(names(sum), (std::vector<std::string>{"input", "target", "total"}));

    const KernelSpec backward{Pass::Backward, kldiv::DType::Float32, false, true, true, true, true};
    EXPECT_EQ(names(backward),
              (std::vector<std::string>{"grad_output", "divisor", "input", "target", "grad_input", "grad_target"}));
    const KernelSpec fused{Pass::Fused, kldiv::DType::Float64, false, true, true, false, true};
    EXPECT_EQ(names(fused), (std::vector<std::string>{"divisor", "input", "target", "out", "grad_input"}));
    // Elementwise passes keep the CPU convention.
    const KernelSpec none{Pass::Fused, kldiv::DType::Float16, false, false, true, false, true};
    EXPECT_EQ(names(none), (std::vector<std::string>{"input", "target", "loss", "grad_input"}));
    // Every spec has a CUDA twin of its own name, and that twin an aligned
    // one, which tunes as the same spec.
    const auto cpu = kldiv::codegen::aot_specs(false), cuda = kldiv::codegen::aot_specs(true);
    ASSERT_EQ(2 * cpu.size(), cuda.size());
    for (size_t i = 0; i < cpu.size(); i++) {
        // The library holds each under its spec's name (runtime/CMakeLists.txt names them).
        EXPECT_NE(runtime::aot_entry(cpu[i]), nullptr) << cpu[i].name();
        EXPECT_NE(runtime::aot_entry(cuda[2 * i]), nullptr) << cuda[2 * i].name();
        EXPECT_NE(runtime::aot_entry(cuda[2 * i + 1]), nullptr) << cuda[2 * i + 1].name();
        EXPECT_EQ("kldiv_cuda_" + cpu[i].name().substr(6), cuda[2 * i].name());
        EXPECT_EQ(cuda[2 * i].name() + "_aligned", cuda[2 * i + 1].name());
        EXPECT_EQ(cuda[2 * i + 1].tuning_name(), cpu[i].name());
        EXPECT_EQ(names(cuda[2 * i + 1]), names(cuda[2 * i]));
    }
}

TEST(CudaSpec, EveryDistillationKernelAndItsCudaTwinAreInTheLibrary) {
    const auto specs = kldiv::codegen::distill_aot_specs();
    EXPECT_EQ(specs.size(), 40u);
    for (kldiv::codegen::DistillSpec spec : specs) {
        EXPECT_NE(runtime::aot_entry(spec.name()), nullptr) << spec.name();
        spec.cuda = true;
        EXPECT_EQ(spec.name().rfind("kldiv_cuda_distill_", 0), 0u) << spec.name();
        EXPECT_NE(runtime::aot_entry(spec.name()), nullptr) << spec.name();
    }
}

// Pieces of `shape` (row-major, contiguous but for the given strides) under
// CUDA's limits, as the dispatcher cuts them.
std::vector<runtime::Piece> pieces(const std::vector<int64_t> &shape, const std::vector<int64_t> &strides,
                                   size_t outer_from) {
    runtime::PieceLimits limits;
    limits.max_outer_extent = 65535;
    limits.outer_from = outer_from;
    std::vector<runtime::Piece> out;
    runtime::for_each_piece(shape, {strides, strides}, 0, [&](const runtime::Piece &p) { out.push_back(p); }, limits);
    return out;
}

TEST(CudaSpec, PiecesKeepGridDimensionsWithinCudasLimits) {
    // Rows that do not coalesce (a padded row stride): 100000 rows.
    const std::vector<int64_t> shape = {100000, 40}, strides = {64, 1};
    // Elementwise: dimension 1 (rows) is grid y, at most 65535.
    const auto elementwise = pieces(shape, strides, 1);
    ASSERT_EQ(elementwise.size(), 2u);
    int64_t rows = 0;
    for (const auto &p : elementwise) {
        EXPECT_EQ(p.extent[0], 40);
        EXPECT_LE(p.extent[1], 65535);
        rows += p.extent[1];
    }
    EXPECT_EQ(rows, 100000);
    // A reduction folds rows into grid x: one piece.
    EXPECT_EQ(pieces(shape, strides, 2).size(), 1u);
    // Contiguous tensors coalesce into one dimension either way.
    EXPECT_EQ(pieces({100000, 40}, {40, 1}, 1).size(), 1u);
    // Without limits the default cuts nothing here.
    std::vector<runtime::Piece> host;
    runtime::for_each_piece(shape, {strides, strides}, 0, [&](const runtime::Piece &p) { host.push_back(p); });
    EXPECT_EQ(host.size(), 1u);
}

TEST(CudaSpec, AlignedKernelsServeOneContiguousRunAtASixteenByteBoundary) {
    alignas(16) static uint16_t a[64], b[64];
    runtime::Piece piece;
    piece.extent[0] = 40;
    piece.extent[1] = piece.extent[2] = piece.extent[3] = 1;
    piece.stride = {{1, 40, 40, 40}, {1, 40, 40, 40}};
    const int align = kldiv::codegen::kAlignedBytes;
    ASSERT_EQ(align, 16);  // what the kernels' 16-byte loads need
    EXPECT_TRUE(runtime::aligned_run(piece, {a, b}, align));
    EXPECT_TRUE(runtime::aligned_run(piece, {a + 8, b + 16}, align));  // 16 and 32 bytes in
    EXPECT_FALSE(runtime::aligned_run(piece, {a + 4, b}, align));      // 8 bytes in
    EXPECT_FALSE(runtime::aligned_run(piece, {a, b + 1}, align));      // 2 bytes in
    runtime::Piece strided = piece;
    strided.stride[1][0] = 2;
    EXPECT_FALSE(runtime::aligned_run(strided, {a, b}, align));
    runtime::Piece broadcast = piece;
    broadcast.stride[0][0] = 0;
    EXPECT_FALSE(runtime::aligned_run(broadcast, {a, b}, align));
    runtime::Piece rows = piece;
    rows.extent[1] = 2;
    EXPECT_FALSE(runtime::aligned_run(rows, {a, b}, align));
    // A contiguous [rows, vocab] tensor coalesces into such a run.
    const auto contiguous = pieces({512, 32000}, {32000, 1}, 2);
    ASSERT_EQ(contiguous.size(), 1u);
    EXPECT_TRUE(runtime::aligned_run(contiguous[0], {a, b}, align));
}

}  // namespace
