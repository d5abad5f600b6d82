#!/usr/bin/env bash
# Builds kldiv and its tests with sanitizers in build-MODE/ and runs the test
# suite there:
#   scripts/sanitize.sh address [ctest args]   AddressSanitizer + UndefinedBehaviorSanitizer
#   scripts/sanitize.sh thread  [ctest args]   ThreadSanitizer: the threads, JIT, disk-cache, C ABI error
#                                              and cache-CLI tests, and the Python package's thread test
# Suppressions (fuzz/sanitizer/*.supp) each name the third-party code they
# silence and why. Tests that cannot run under a sanitizer are left out below,
# each with its reason.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
case "$mode" in
    address|thread) shift ;;
    *) echo "usage: scripts/sanitize.sh address|thread [ctest args]" >&2; exit 2 ;;
esac
build=build-$mode
supp=$(pwd)/fuzz/sanitizer

# The code generators run under the sanitizer too while they build the kernels;
# Halide and LLVM keep their global state until exit, which is no leak of kldiv's.
export ASAN_OPTIONS=detect_leaks=0
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKLDIV_SANITIZE="$mode" \
    > "$build-configure.log" 2>&1 || { cat "$build-configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)"

# Left out everywhere: the Python tests (the interpreter is not built with the
# sanitizer runtime, which must be loaded first), the fuzz smoke run (its own
# sanitized build), and the tests that build or run other programs (the
# installed-package consumers, arm64 and x86 CPUs without AVX-512 under
# qemu, `kldiv aot` targets, the tuner's command line), which measure or
# emulate rather than exercise kldiv's memory and threads.
exclude='^python_|^fuzz_smoke$|^package_consumer_|^golden_test_arm64$|^emulated_x86_cpus$|^aot_targets$|^tune_cli$'
if [ "$mode" = address ]; then
    export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=0
    export LSAN_OPTIONS=suppressions=$supp/lsan.supp:print_suppressions=0
    export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:suppressions=$supp/ubsan.supp
    ctest --test-dir "$build" --output-on-failure -j "$(nproc)" -E "$exclude" "$@"
else
    export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:suppressions=$supp/tsan.supp
    ctest --test-dir "$build" --output-on-failure -j "$(nproc)" -E "$exclude" \
        -R '^Threads\.|^Jit\.|^disk_cache\.|^Errors\.|^CppErrors\.|^cli_cache\.|^golden_test_default$|^threads_test_specialised$' "$@"
    # The Python package's 8-thread test on this build's library, with the
    # TSan runtime loaded first into the interpreter (report_signal_unsafe:
    # CPython's own signal handling is not kldiv's). Debian's torch 1.13, as
    # the suppressions were written for it.
    if [ -x .venv-torch1.13/bin/python ]; then
        TSAN_OPTIONS=$TSAN_OPTIONS:report_signal_unsafe=0 LD_PRELOAD=$(gcc -print-file-name=libtsan.so.2) \
            KLDIV_LIBRARY="$(pwd)/$build/runtime/libkldiv.so" \
            .venv-torch1.13/bin/python -m pytest -q -p no:cacheprovider python/tests/test_api.py -k eight_threads
    fi
fi
