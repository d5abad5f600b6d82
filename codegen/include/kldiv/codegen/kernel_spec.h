// The identity of a kernel, and its calling convention. No Halide here: the
// runtime uses it to find and call kernels.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "kldiv/dsl/distill_layout.h"
#include "kldiv/dsl/dtype.h"

namespace kldiv::codegen {

enum class Pass { Forward, Backward, Fused };

// The alignment, in bytes, that an `aligned` kernel's buffers start at.
// 16, not 8: Halide's PTX back end loads four 32-bit values whose index is a
// multiple of 4 as one 16-byte load (ld.global.v4.f32), which needs that much.
constexpr int kAlignedBytes = 16;

struct KernelSpec {
    Pass pass = Pass::Forward;
    DType dtype = DType::Float32;
    bool log_target = false;
    // Forward and fused: the float64 sum instead of the per-element loss.
    // Backward: a scalar upstream gradient instead of a per-element one.
    bool reduce = false;
    // Backward only: which gradients the kernel writes.
    bool grad_input = true;
    bool grad_target = false;
    // A CUDA kernel: its data lives in device memory, so a reduction finishes
    // on the device (it writes the reduced loss itself, divided by `divisor`)
    // and a scalar upstream gradient is read from device memory.
    bool cuda = false;
    // CUDA only: the kernel for the common case, where every 4-d buffer is
    // one contiguous run of elements (dimensions 1 to 3 of extent 1, every
    // min 0, unit stride) starting at a multiple of kAlignedBytes (16). Each
    // thread then loads 8 or 16 bytes at a time. It sums in the same order as
    // the general kernel, so the two give the same bits; the runtime picks it
    // per call.
    bool aligned = false;

    // Name of the generated function, e.g. kldiv_fwd_sum_f32_logt,
    // kldiv_bwd_input_target_scalar_bf16, kldiv_cuda_fwd_sum_f32,
    // kldiv_cuda_fwd_sum_bf16_aligned.
    std::string name() const;
    // The spec class of tuning records: name() without "cuda_" (a record's
    // target already says where it runs).
    std::string tuning_name() const;
    bool operator==(const KernelSpec &other) const { return name() == other.name(); }
};

// One argument of a kernel, in calling order (inputs first, then outputs).
// Buffers are 4-d (kRank) in the storage type, except `total`, a 0-d float64
// buffer; `grad_scale` is a scalar in the compute type. CUDA kernels differ
// where a value would cross between host and device: a reduction writes `out`
// (1-d, one element, storage type: the sum divided by the float64 scalar
// `divisor`) instead of `total`, and a scalar upstream gradient comes as the
// 1-d one-element buffer `grad_output` with `divisor` instead of `grad_scale`
// (fused passes scale their gradient by 1 / `divisor`).
struct Argument {
    enum Kind { Buffer, Scalar } kind;
    std::string name;
    bool is_output;
    // 4: a view of the call's 4-d shape (strides per call); 1: one element
    // (a CUDA `out` or scalar `grad_output`); 0: a scalar or `total`.
    int dimensions;
};

// Made once per spec and kept for the process (the runtime reads them on
// every call). Thread-safe.
const std::vector<Argument> &arguments(const KernelSpec &spec);

// A number for each spec: distinct specs get distinct numbers, each below
// kSpecIndices (for distillation specs, kDistillSpecIndices).
inline constexpr uint32_t kSpecIndices = 1u << 11;
uint32_t index_of(const KernelSpec &spec);

// The 4 extents of a kernel call and the strides of each buffer argument
// (arguments(spec) order, `total` excluded). A kernel compiled for a fixed
// shape accepts exactly that shape, every min 0.
struct FixedShape {
    std::array<int32_t, 4> extent{};
    std::vector<std::array<int32_t, 4>> strides;
};

// What a shape-generic kernel knows of dimension 0's stride. `Any`: nothing,
// so it carries a unit-stride fast path beside the general loop nest (the AOT
// kernels). The JIT compiles the case a call needs instead: `Unit` (every
// buffer has unit stride there) or `Strided` (some buffer has not), each one
// loop nest, which halves a compile.
enum class InnerStride { Any, Unit, Strided };

// Where a CPU kernel of a 16-bit dtype finds its lookup tables (256 KiB
// each): in its own object (`Embedded`: AOT kernels, which run anywhere), or
// as symbols of the process that loads it (`Process`: JIT kernels, whose
// loader defines them once; a smaller and faster compile).
enum class Tables { Embedded, Process };

// Every spec the AOT library is built with (each dtype, log_target, pass
// variant), for the CPU or for CUDA (each with its `aligned` twin after it).
std::vector<KernelSpec> aot_specs(bool cuda = false);

// A distillation kernel (dsl/distill.h): logits as 2-d (vocab, rows) views,
// CPU targets.
struct DistillSpec {
    dsl::DistillPass pass = dsl::DistillPass::Forward;
    DType dtype = DType::Float32;
    bool reverse = false;        // reverse KL
    bool grad_student = true;    // Backward: which gradients it writes
    bool grad_teacher = false;
    bool cuda = false;           // the CUDA kernel: every buffer in device memory

    // e.g. kldiv_distill_fwd_kl_f32, kldiv_distill_fused_rkl_bf16,
    // kldiv_distill_bwd_st_kl_f16 (bwd_s, bwd_t, bwd_st: the student's, the
    // teacher's, both gradients), kldiv_cuda_distill_fwd_kl_f32.
    std::string name() const;
    // The name tuning records use: the CPU kernel's (records say the target).
    std::string tuning_name() const;
};

// A distillation kernel's arguments: `student` and `teacher` (2-d, storage
// type), `row_on` (1-d uint8), the float64 scalar `inv_temperature`; Fused
// adds the float64 scalar `grad_scale`, Backward the float64 `stats` (2-d,
// kDistillStats x rows) and `row_scale` (1-d); outputs `stats_out` (Forward,
// Fused), `grad_student` (Fused; Backward when asked), `grad_teacher`.
const std::vector<Argument> &arguments(const DistillSpec &spec);  // as the loss's: made once

inline constexpr uint32_t kDistillSpecIndices = 1u << 9;
uint32_t index_of(const DistillSpec &spec);

// Every distillation spec the AOT library is built with: 4 dtypes x forward
// and reverse KL x forward, fused and the three backward variants (each with
// its CUDA twin where the library has CUDA kernels).
std::vector<DistillSpec> distill_aot_specs();

}  // namespace kldiv::codegen
