#!/usr/bin/env bash
# The golden file and the distillation suite through arm64 kernels: builds
# tests/arm64 with the aarch64 cross compiler and runs its golden_test and
# distill_test under qemu-aarch64.
#   arm64_golden_test.sh KLDIV_TOOL SOURCE_DIR WORK_DIR GOLDEN_FILE
set -euo pipefail
tool=$(realpath "$1") source=$(realpath "$2") work=$3 golden=$(realpath "$4")
for needed in aarch64-linux-gnu-g++ qemu-aarch64; do
    if ! command -v "$needed" > /dev/null; then
        echo "[SKIP] $needed is not installed (scripts/setup.sh installs it)"
        exit 77
    fi
done
launcher=()
command -v ccache > /dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
cmake -S "$source/tests/arm64" -B "$work" -G Ninja -DKLDIV_TOOL="$tool" -DKLDIV_GOLDEN_FILE="$golden" \
    -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
    -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ "${launcher[@]}" > /dev/null
start=$(date +%s%N)
cmake --build "$work" > "$work/build.log" || { tail -40 "$work/build.log"; exit 1; }
echo "arm64 build (120 kernels generated): $(( ($(date +%s%N) - start) / 1000000 )) ms"
file "$work/golden_test" 2> /dev/null || true
qemu-aarch64 -L /usr/aarch64-linux-gnu "$work/golden_test" --gtest_brief=1
qemu-aarch64 -L /usr/aarch64-linux-gnu "$work/distill_test" --gtest_brief=1
