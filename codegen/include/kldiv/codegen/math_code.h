// The LLVM bitcode that CPU kernels link and call by name (dsl/math.h): fused
// multiply-adds for the polynomials of log and exp, and the tables of the
// 16-bit lookups. Halide 14 offers no FMA under strict_float and scalarises
// gathers; a function in linked bitcode does both, and LLVM inlines it.
#pragma once

#include <Halide.h>

#include <vector>

#include "kldiv/codegen/kernel_spec.h"
#include "kldiv/dsl/math.h"

namespace kldiv::codegen {

// The polynomials' multiply-adds on `target`: fused where the CPU has FMA
// (x86 with the fma feature or AVX-512, 64-bit ARM); never on GPU targets,
// whose back end forms its own.
dsl::MathOptions math_options(const Halide::Target &target);

// Whether a CPU kernel of `spec` reads xlogy(t, t) and exp(t) from tables:
// 16-bit dtypes, on every CPU target.
bool uses_lookup(const KernelSpec &spec, const Halide::Target &target);

// The bitcode that a kernel of `spec` calls on `target`, to append to its
// Halide::Module or to a Generator's externs: none on GPU targets. With
// Tables::Process its tables are declared, to be defined by the loader under
// lookup_table_symbol().
std::vector<Halide::ExternalCode> math_code(const KernelSpec &spec, const Halide::Target &target,
                                            Tables tables = Tables::Embedded);

// The fused multiply-adds alone (math_options(target).fma), for pipelines
// that take no table: none where the target has no FMA.
std::vector<Halide::ExternalCode> fma_code(const Halide::Target &target);

// The table behind dsl::lookup16: entry b is the function of the 16-bit value
// with bits b, the exact value rounded once to float32.
const std::vector<float> &lookup_table(dsl::Lookup lookup, DType dtype);

// The symbol of that table in kernels' objects, e.g. "kldiv_xlogx_bf16_table".
std::string lookup_table_symbol(dsl::Lookup lookup, DType dtype);

// Every (lookup, dtype) that has a table.
const std::vector<std::pair<dsl::Lookup, DType>> &all_lookup_tables();

}  // namespace kldiv::codegen
