#include "kldiv/codegen/math_code.h"

#include <llvm/Bitcode/BitcodeWriter.h>
#include <llvm/IR/Constants.h>
#include <llvm/IR/IRBuilder.h>
#include <llvm/IR/Intrinsics.h>
#include <llvm/IR/LLVMContext.h>
#include <llvm/IR/Module.h>
#include <llvm/MC/TargetRegistry.h>
#include <llvm/Support/TargetSelect.h>
#include <llvm/Support/raw_ostream.h>
#include <llvm/Target/TargetMachine.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

namespace kldiv::codegen {

namespace {

constexpr int kLookupEntries = 1 << 16;

// The scalar form and the vector forms Halide may ask for: it splits wider
// vectors into these.
constexpr int kLanes[] = {1, 2, 4, 8, 16, 32};

float from_bits(uint32_t bits) {
    float value;
    std::memcpy(&value, &bits, 4);
    return value;
}

// As dsl::widen: exact, NaN payloads kept.
float widen16(uint16_t bits, DType dtype) {
    if (dtype == DType::BFloat16) return from_bits(uint32_t(bits) << 16);
    const uint32_t sign = uint32_t(bits & 0x8000) << 16;
    const int exponent = (bits >> 10) & 0x1f;
    const int mantissa = bits & 0x3ff;
    if (exponent == 0x1f) return from_bits(sign | 0x7f800000u | uint32_t(mantissa) << 13);
    const float magnitude = exponent == 0 ? std::ldexp((float)mantissa, -24)
                                          : std::ldexp(float(1024 + mantissa), exponent - 25);
    return sign ? -magnitude : magnitude;
}

// In long double (x87's 64-bit significand on x86), so that rounding to
// float32 is the only rounding that shows, and the table is the same on
// every x86 CPU.
float entry(dsl::Lookup lookup, float t) {
    if (std::isnan(t)) return t;
    if (lookup == dsl::Lookup::Exp) return (float)std::exp((long double)t);
    if (t < 0) return std::numeric_limits<float>::quiet_NaN();
    if (t == 0) return 0.0f;
    if (std::isinf(t)) return t;
    return (float)((long double)t * std::log((long double)t));
}

// The triple and data layout of Halide's module for `target`, so that
// linking the bitcode into it is silent.
void set_target(llvm::Module &module, const Halide::Target &target) {
    static std::once_flag once;
    std::call_once(once, [] {
        llvm::InitializeAllTargetInfos();
        llvm::InitializeAllTargets();
        llvm::InitializeAllTargetMCs();
    });
    const llvm::Triple triple = Halide::Internal::get_triple_for_target(target);
    std::string error;
    const llvm::Target *llvm_target = llvm::TargetRegistry::lookupTarget(triple.str(), error);
    if (!llvm_target) throw std::runtime_error("LLVM has no target for " + triple.str() + ": " + error);
    std::unique_ptr<llvm::TargetMachine> machine(
        llvm_target->createTargetMachine(triple.str(), "", "", llvm::TargetOptions(), llvm::None));
    module.setTargetTriple(triple.str());
    module.setDataLayout(machine->createDataLayout());
}

std::vector<uint8_t> to_bitcode(const llvm::Module &module) {
    llvm::SmallVector<char, 0> buffer;
    llvm::raw_svector_ostream stream(buffer);
    llvm::WriteBitcodeToFile(module, stream);
    return std::vector<uint8_t>(buffer.begin(), buffer.end());
}

// Each function is inlined where Halide calls it. Its definition stays in
// the object (the linker would drop a linkonce one before Halide's code
// refers to it), weak and hidden: one per program, not exported.
llvm::Function *declare_inline(llvm::Module &module, const std::string &name, llvm::Type *result,
                               llvm::ArrayRef<llvm::Type *> params) {
    auto *function = llvm::Function::Create(llvm::FunctionType::get(result, params, false),
                                            llvm::Function::WeakODRLinkage, name, module);
    function->setVisibility(llvm::GlobalValue::HiddenVisibility);
    function->addFnAttr(llvm::Attribute::AlwaysInline);
    function->addFnAttr(llvm::Attribute::NoUnwind);
    function->addFnAttr(llvm::Attribute::ReadNone);
    return function;
}

std::string vector_name(const std::string &name, int lanes) {
    return lanes == 1 ? name : name + "x" + std::to_string(lanes);
}

std::vector<uint8_t> fma_bitcode(const Halide::Target &target) {
    llvm::LLVMContext context;
    llvm::Module module("kldiv_fma", context);
    set_target(module, target);
    for (const Halide::Type type : {Halide::Float(32), Halide::Float(64)}) {
        llvm::Type *scalar = type.bits() == 64 ? llvm::Type::getDoubleTy(context) : llvm::Type::getFloatTy(context);
        for (int lanes : kLanes) {
            llvm::Type *value = lanes == 1 ? scalar : llvm::FixedVectorType::get(scalar, lanes);
            llvm::Function *function =
                declare_inline(module, vector_name(dsl::fma_name(type), lanes), value, {value, value, value});
            llvm::IRBuilder<> builder(llvm::BasicBlock::Create(context, "entry", function));
            llvm::Function *fma = llvm::Intrinsic::getDeclaration(&module, llvm::Intrinsic::fma, {value});
            builder.CreateRet(builder.CreateCall(fma, {function->getArg(0), function->getArg(1), function->getArg(2)}));
        }
    }
    return to_bitcode(module);
}

// The table as a constant, read one load per lane. (Hardware gathers were no
// faster on AVX-512 Zen 5 at 2^24 elements, LLVM 14 does not emit them for
// AVX2, and microcode mitigations make them slow on some Intel CPUs.)
std::vector<uint8_t> lookup_bitcode(const Halide::Target &target, dsl::Lookup lookup, DType dtype, Tables tables) {
    llvm::LLVMContext context;
    const std::string name = dsl::lookup_name(lookup, dtype);
    llvm::Module module(name, context);
    set_target(module, target);
    llvm::ArrayType *table_type = llvm::ArrayType::get(llvm::Type::getFloatTy(context), kLookupEntries);
    llvm::GlobalVariable *table;
    if (tables == Tables::Process) {
        table = new llvm::GlobalVariable(module, table_type, true, llvm::GlobalValue::ExternalLinkage, nullptr,
                                         lookup_table_symbol(lookup, dtype));
    } else {
        const std::vector<float> &values = lookup_table(lookup, dtype);
        table = new llvm::GlobalVariable(module, table_type, true, llvm::GlobalValue::LinkOnceODRLinkage,
                                         llvm::ConstantDataArray::get(context, llvm::ArrayRef<float>(values)),
                                         lookup_table_symbol(lookup, dtype));
        table->setAlignment(llvm::Align(64));
        table->setUnnamedAddr(llvm::GlobalValue::UnnamedAddr::Global);
        table->setVisibility(llvm::GlobalValue::HiddenVisibility);
        // One copy in a program that links many kernels.
        if (llvm::Triple(module.getTargetTriple()).isOSBinFormatELF()) {
            table->setComdat(module.getOrInsertComdat(table->getName()));
        }
    }
    llvm::Type *f32 = llvm::Type::getFloatTy(context);
    llvm::Type *i32 = llvm::Type::getInt32Ty(context);
    llvm::Type *i64 = llvm::Type::getInt64Ty(context);
    llvm::Value *zero = llvm::ConstantInt::get(i64, 0);
    auto load_entry = [&](llvm::IRBuilder<> &builder, llvm::Value *bits) {
        llvm::Value *address = builder.CreateInBoundsGEP(table_type, table, {zero, builder.CreateZExt(bits, i64)});
        return builder.CreateAlignedLoad(f32, address, llvm::Align(4));
    };
    for (int lanes : kLanes) {
        llvm::Type *result = lanes == 1 ? f32 : llvm::FixedVectorType::get(f32, lanes);
        llvm::Type *bits = lanes == 1 ? i32 : llvm::FixedVectorType::get(i32, lanes);
        llvm::Function *function = declare_inline(module, vector_name(name, lanes), result, {bits});
        llvm::IRBuilder<> builder(llvm::BasicBlock::Create(context, "entry", function));
        if (lanes == 1) {
            builder.CreateRet(load_entry(builder, function->getArg(0)));
            continue;
        }
        llvm::Value *gathered = llvm::UndefValue::get(result);
        for (int lane = 0; lane < lanes; lane++) {
            llvm::Value *entry = load_entry(builder, builder.CreateExtractElement(function->getArg(0), (uint64_t)lane));
            gathered = builder.CreateInsertElement(gathered, entry, (uint64_t)lane);
        }
        builder.CreateRet(gathered);
    }
    return to_bitcode(module);
}

// Made once per process for each triple (the functions are the same on all).
const std::vector<uint8_t> &cached_bitcode(const std::string &name, const Halide::Target &target,
                                           const std::function<std::vector<uint8_t>()> &make) {
    static std::mutex mutex;
    static std::map<std::string, std::vector<uint8_t>> cache;
    const std::string key = name + " " + Halide::Internal::get_triple_for_target(target).str();
    std::lock_guard<std::mutex> lock(mutex);
    auto it = cache.find(key);
    if (it == cache.end()) it = cache.emplace(key, make()).first;
    return it->second;
}

}  // namespace

dsl::MathOptions math_options(const Halide::Target &target) {
    dsl::MathOptions options;
    if (target.has_gpu_feature()) return options;
    using F = Halide::Target::Feature;
    // Every AVX-512 CPU has FMA, and Halide's avx512 targets emit it without
    // the fma feature in their names (x86-64-linux-avx512_skylake).
    const bool x86_fma = target.has_feature(F::FMA) || target.has_feature(F::AVX512) ||
                         target.has_feature(F::AVX512_KNL) || target.has_feature(F::AVX512_Skylake) ||
                         target.has_feature(F::AVX512_Cannonlake) || target.has_feature(F::AVX512_SapphireRapids);
    options.fma = (target.arch == Halide::Target::X86 && x86_fma) ||
                  (target.arch == Halide::Target::ARM && target.bits == 64);
    return options;
}

bool uses_lookup(const KernelSpec &spec, const Halide::Target &target) {
    return element_size(spec.dtype) == 2 && !target.has_gpu_feature();
}

const std::vector<float> &lookup_table(dsl::Lookup lookup, DType dtype) {
    static std::mutex mutex;
    static std::map<std::pair<dsl::Lookup, DType>, std::vector<float>> tables;
    std::lock_guard<std::mutex> lock(mutex);
    std::vector<float> &table = tables[{lookup, dtype}];
    if (table.empty()) {
        table.resize(kLookupEntries);
        for (int bits = 0; bits < kLookupEntries; bits++) table[bits] = entry(lookup, widen16((uint16_t)bits, dtype));
    }
    return table;
}

std::string lookup_table_symbol(dsl::Lookup lookup, DType dtype) { return dsl::lookup_name(lookup, dtype) + "_table"; }

const std::vector<std::pair<dsl::Lookup, DType>> &all_lookup_tables() {
    static const std::vector<std::pair<dsl::Lookup, DType>> all = {{dsl::Lookup::XLogX, DType::Float16},
                                                                   {dsl::Lookup::XLogX, DType::BFloat16},
                                                                   {dsl::Lookup::Exp, DType::Float16},
                                                                   {dsl::Lookup::Exp, DType::BFloat16}};
    return all;
}

std::vector<Halide::ExternalCode> fma_code(const Halide::Target &target) {
    if (target.has_gpu_feature() || !math_options(target).fma) return {};
    const auto &fma = cached_bitcode("fma", target, [&] { return fma_bitcode(target); });
    return {Halide::ExternalCode::bitcode_wrapper(target, fma, "kldiv.math.fma")};
}

std::vector<Halide::ExternalCode> math_code(const KernelSpec &spec, const Halide::Target &target, Tables tables) {
    std::vector<Halide::ExternalCode> code = fma_code(target);
    if (target.has_gpu_feature()) return code;
    // The backward pass without log_target takes no exp, and log only for
    // grad_target (computed).
    if (uses_lookup(spec, target) && (spec.log_target || spec.pass != Pass::Backward)) {
        const dsl::Lookup lookup = spec.log_target ? dsl::Lookup::Exp : dsl::Lookup::XLogX;
        const std::string name =
            dsl::lookup_name(lookup, spec.dtype) + (tables == Tables::Process ? ".process" : ".embedded");
        code.push_back(Halide::ExternalCode::bitcode_wrapper(
            target, cached_bitcode(name, target, [&] { return lookup_bitcode(target, lookup, spec.dtype, tables); }),
            "kldiv.math." + name));
    }
    return code;
}

}  // namespace kldiv::codegen
