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
cpu=EPYC-Milan  # an AMD Zen 3, until the Sandy Bridge part
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

# cpu_checks NAME LEVEL AOT_TARGET JIT_TARGET SCHEDULE SCHEDULE_WHAT JIT_TESTS:
# on the emulated $cpu (NAME in the report), `kldiv run` picks the AOT kernels
# of LEVEL (AOT_TARGET) as the best the CPU has; the golden file passes there;
# the JIT tests JIT_TESTS (a gtest filter) pass; and `kldiv run` compiles a
# specialised kernel for JIT_TARGET with a schedule line matching SCHEDULE
# (SCHEDULE_WHAT says what that line shows).
cpu_checks() {
    local name=$1 level=$2 aot_target=$3 jit_target=$4 schedule=$5 schedule_what=$6 jit_tests=$7
    step "$name: kldiv run on the AOT kernels picks $level, the CPU's best level"
    run_kldiv "$work/run_aot_$cpu.txt" --aot
    expect "$work/run_aot_$cpu.txt" "^cpu level +$level \\(AOT kernels $aot_target; the best this CPU has\\)" \
        "the AOT dispatch did not pick $level on $name on its own"

    step "$name: the golden file at the CPU's level"
    emulated "$build/tests/golden_test" --gtest_brief=1

    step "$name: the JIT: $jit_tests"
    emulated "$build/tests/jit_test" --gtest_brief=1 --gtest_filter="$jit_tests"

    step "$name: kldiv run with a specialised JIT kernel: its target and schedule"
    run_kldiv "$work/run_jit_$cpu.txt"
    expect "$work/run_jit_$cpu.txt" "^jit +$jit_target," "the JIT's host target on $name"
    expect "$work/run_jit_$cpu.txt" "$schedule" "$schedule_what"
}

# The JIT tests each CPU runs: host target, refused targets, kernels matching
# the AOT ones bit for bit.
jit_tests='Jit.BadTargetsAreErrorsNotCrashes:Jit.CpuTargetCapsTheHostLevel:Jit.SpecialisedKernelsMatchAotBitForBit'

cpu_checks "Zen 3" avx2 x86-64-linux-avx2-fma-f16c x86-64-linux-avx-avx2-f16c-fma-sse41 \
    '^schedule +tuned \(shipped database, .*; record for ' "a shipped AVX2 record" \
    "$jit_tests:Jit.TunedSummationOrderIsTheSameOnEveryCallOfAShape"

step "Zen 3: a level above the CPU's is skipped, not run"
KLDIV_CPU_TARGET=avx512 emulated "$build/tests/golden_test" > "$work/golden_avx512.txt" 2>&1
grep -m1 '\[SKIP\]' "$work/golden_avx512.txt" || true
expect "$work/golden_avx512.txt" '\[SKIP\]' "golden_test with KLDIV_CPU_TARGET=avx512 did not skip"

step "Zen 3: float32 sums of adversarial data at 2^24: within the pairwise bound, the same bits at 1, 2 and 3 threads"
emulated "$build/tests/accuracy_test" --gtest_brief=1 \
    --gtest_filter='*SumError*/constant:*SumError*/constant_log_target:*SumError*/ascending:*SumError*/random'

step "Zen 3: the distillation kernels at the CPU's level"
emulated "$build/tests/distill_test" --gtest_brief=1

# AVX without AVX2: the AOT kernels' best level is SSE4.1, while the JIT
# compiles for the CPU's AVX, with no tuning record (none is for such a CPU);
# its kernels give the SSE4.1 AOT kernels' bits.
cpu=SandyBridge
rm -rf "$KLDIV_CACHE_DIR"
cpu_checks "Sandy Bridge" sse41 x86-64-linux-sse41 x86-64-linux-avx-sse41 \
    '^schedule +default$' "no tuning record for an AVX CPU" "$jit_tests"
echo
echo "emulated Zen 3 and Sandy Bridge: every check passed"
