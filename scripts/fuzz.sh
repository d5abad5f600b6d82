#!/usr/bin/env bash
# Builds the libFuzzer harnesses (fuzz/) with clang-14, AddressSanitizer and
# UndefinedBehaviorSanitizer in build-fuzz/, then runs each for SECONDS on a
# copy of its seed corpus (fuzz/corpus/NAME). Prints executions, executions
# per second and coverage for each; exits nonzero on any crash or sanitizer
# report (the input that caused it is kept in build-fuzz/artifacts/).
#   scripts/fuzz.sh SECONDS          e.g. scripts/fuzz.sh 600
#   scripts/fuzz.sh --build-only
set -euo pipefail
cd "$(dirname "$0")/.."
build=build-fuzz
fuzzers=(fuzz_c_abi fuzz_disk_cache fuzz_tuning_db fuzz_text)

if [ $# -ne 1 ]; then
    echo "usage: scripts/fuzz.sh SECONDS | --build-only" >&2
    exit 2
fi

# Kernels for one x86 level and no CUDA: the harnesses test kldiv's own code;
# the kernels themselves are tested by the golden and accuracy tests.
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
    -DKLDIV_FUZZ=ON -DKLDIV_BUILD_TESTS=OFF -DKLDIV_BUILD_BENCHMARKS=OFF -DKLDIV_WITH_TORCH=OFF \
    -DKLDIV_CUDA=OFF -DKLDIV_AOT_TARGETS=x86-64-linux-sse41 > "$build-configure.log" 2>&1 \
    || { cat "$build-configure.log"; exit 1; }
cmake --build "$build" --target "${fuzzers[@]}"
[ "$1" = "--build-only" ] && exit 0

seconds=$1
failed=0
mkdir -p "$build/artifacts"
printf '%-16s %12s %10s %8s %8s  %s\n' fuzzer executions "exec/s" cov features result
for name in "${fuzzers[@]}"; do
    corpus="$build/corpus/$name"
    rm -rf "$corpus"
    mkdir -p "$corpus"
    cp fuzz/corpus/"$name"/* "$corpus"/
    log="$build/$name.log"
    result=ok
    # Leak checks stay on; halt_on_error makes every sanitizer report fatal.
    ASAN_OPTIONS=halt_on_error=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        "$build/fuzz/$name" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="$build/artifacts/$name-" "$corpus" > "$log" 2>&1 || { result="FAILED (see $log)"; failed=1; }
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    printf '%-16s %12s %10s %8s %8s  %s\n' "$name" "${runs:--}" "${rate:--}" "${cov:--}" "${ft:--}" "$result"
    [ "$result" = ok ] || grep -m5 -E 'ERROR|runtime error|SUMMARY|deadly signal' "$log" || true
done
exit $failed
