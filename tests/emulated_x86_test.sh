#!/usr/bin/env bash
# The library on x86-64 CPUs without AVX-512, whatever machine runs the
# tests, emulated by qemu-x86_64: an AMD Zen 3 (qemu's EPYC-Milan: AVX2, FMA
# and F16C), then an Intel Sandy Bridge (AVX without AVX2 or FMA). There the
# CPU's own detection picks the AOT kernels' level and the JIT's host target,
# as on such a machine; KLDIV_CPU_TARGET, which the other suites use to run
# each level, only caps the level of the CPU under them. Emulation is slow,
# so this runs the checks a machine without AVX-512 once failed, at sizes up
# to 2^24:
#   emulated_x86_test.sh BUILD_DIR WORK_DIR GOLDEN_FILE
set -euo pipefail
build=$(realpath "$1") work=$2 golden=$(realpath "$3")
if [ "$(uname -m)" != x86_64 ]; then
    echo "[SKIP] not an x86-64 machine"
    exit 77
fi
if ! command -v qemu-x86_64 > /dev/null; then
    echo "[SKIP] qemu-x86_64 is not installed (scripts/setup.sh installs qemu-user)"
    exit 77
fi
cpu=EPYC-Milan  # until the Sandy Bridge part
rm -rf "$work"
mkdir -p "$work"
unset KLDIV_CPU_TARGET KLDIV_JIT KLDIV_TUNING_DB
export KLDIV_CACHE_DIR="$work/kernel-cache" KLDIV_SPECIALIZE=never KLDIV_GOLDEN_FILE="$golden"

# qemu's warnings about Zen 3 features it does not emulate (none is used
# here) are dropped; the exit status is the program's.
emulated() {
    { qemu-x86_64 -cpu "$cpu" "$@" 2>&1 1>&3 3>&- | { grep -v "TCG doesn't support requested feature" || true; } >&2; } 3>&1
}
step() { printf '\n== %s\n' "$*"; }
# expect FILE REGEX WHAT: FILE has a line matching REGEX, else fail with WHAT.
expect() {
    grep -E -q -- "$2" "$1" && return 0
    cat "$1"
    echo "FAILED: $3 (no line matching '$2' above)"
    exit 1
}
# run_kldiv OUT [OPTION...]: `kldiv run` of a 4x4096 float32 sum on the
# emulated CPU, its report in OUT (and shown); the result must be PASS.
run_kldiv() {
    local out=$1
    shift
    emulated "$build/tools/kldiv" run "$@" --shape 4x4096 --reduction sum --repeat 2 > "$out" 2>&1
    cat "$out"
    expect "$out" '^result +PASS' "kldiv run $*: the kernel's result"
}

step "kldiv run on the AOT kernels: the CPU's best level is AVX2"
run_kldiv "$work/run_aot.txt" --aot
expect "$work/run_aot.txt" '^cpu level +avx2 \(AOT kernels x86-64-linux-avx2-fma-f16c; the best this CPU has\)' \
    "the AOT dispatch did not pick AVX2 on its own"

step "the golden file at the CPU's level"
emulated "$build/tests/golden_test" --gtest_brief=1

step "a level above the CPU's is skipped, not run"
KLDIV_CPU_TARGET=avx512 emulated "$build/tests/golden_test" > "$work/golden_avx512.txt" 2>&1
grep -m1 '\[SKIP\]' "$work/golden_avx512.txt" || true
expect "$work/golden_avx512.txt" '\[SKIP\]' "golden_test with KLDIV_CPU_TARGET=avx512 did not skip"

step "float32 sums of adversarial data at 2^24: within the pairwise bound, the same bits at 1, 2 and 3 threads"
emulated "$build/tests/accuracy_test" --gtest_brief=1 \
    --gtest_filter='*SumError*/constant:*SumError*/constant_log_target:*SumError*/ascending:*SumError*/random'

step "the distillation kernels at the CPU's level"
emulated "$build/tests/distill_test" --gtest_brief=1

step "the JIT: host target, refused targets, kernels matching the AOT ones bit for bit"
emulated "$build/tests/jit_test" --gtest_brief=1 \
    --gtest_filter='Jit.BadTargetsAreErrorsNotCrashes:Jit.CpuTargetCapsTheHostLevel:Jit.SpecialisedKernelsMatchAotBitForBit:Jit.TunedSummationOrderIsTheSameOnEveryCallOfAShape'

step "kldiv run with a specialised JIT kernel: its target, and the shipped record for this CPU"
run_kldiv "$work/run_jit.txt"
expect "$work/run_jit.txt" '^jit +x86-64-linux-avx-avx2-f16c-fma-sse41,' "the JIT's host target"
expect "$work/run_jit.txt" '^schedule +tuned \(shipped database, .*; record for ' "a shipped AVX2 record"

# AVX without AVX2: the AOT kernels' best level is SSE4.1, while the JIT
# compiles for the CPU's AVX, with no tuning record (none is for such a CPU).
cpu=SandyBridge
rm -rf "$KLDIV_CACHE_DIR"
step "Sandy Bridge: kldiv run on the AOT kernels picks SSE4.1"
run_kldiv "$work/run_aot_avx.txt" --aot
expect "$work/run_aot_avx.txt" '^cpu level +sse41 \(AOT kernels x86-64-linux-sse41; the best this CPU has\)' \
    "the AOT dispatch did not pick SSE4.1 on an AVX CPU"

step "Sandy Bridge: the golden file"
emulated "$build/tests/golden_test" --gtest_brief=1

step "Sandy Bridge: JIT kernels for AVX give the SSE4.1 AOT kernels' bits"
emulated "$build/tests/jit_test" --gtest_brief=1 \
    --gtest_filter='Jit.BadTargetsAreErrorsNotCrashes:Jit.CpuTargetCapsTheHostLevel:Jit.SpecialisedKernelsMatchAotBitForBit'

step "Sandy Bridge: kldiv run with a specialised JIT kernel"
run_kldiv "$work/run_jit_avx.txt"
expect "$work/run_jit_avx.txt" '^jit +x86-64-linux-avx-sse41,' "the JIT's host target on an AVX CPU"
expect "$work/run_jit_avx.txt" '^schedule +default$' "no tuning record for an AVX CPU"
echo
echo "emulated Zen 3 and Sandy Bridge: every check passed"
