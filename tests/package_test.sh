#!/usr/bin/env bash
# The installed package end to end: `cmake --install` the build, configure
# examples/aot_consumer against it with find_package(kldiv), let
# kldiv_add_kernels generate its kernels at build time, and run the program,
# which links those kernels alone. On this machine ldd must show no Halide,
# LLVM or libkldiv; for arm64 the project is cross-built and run under qemu.
#   package_test.sh BUILD_DIR SOURCE_DIR WORK_DIR host|arm64
set -euo pipefail
build=$1 source=$2 work=$3 variant=$4

configure=()
run=()
case $variant in
host) ;;
arm64)
    for needed in aarch64-linux-gnu-gcc qemu-aarch64; do
        if ! command -v "$needed" > /dev/null; then
            echo "[SKIP] $needed is not installed (scripts/setup.sh installs it)"
            exit 77
        fi
    done
    configure=(-DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64
               -DKLDIV_KERNEL_TARGET=arm-64-linux)
    run=(qemu-aarch64 -L /usr/aarch64-linux-gnu)
    ;;
*) echo "unknown variant '$variant'" >&2; exit 2 ;;
esac

rm -rf "$work"
cmake --install "$build" --prefix "$work/prefix" > /dev/null
kldiv=$work/prefix/bin/kldiv

cmake -S "$source/examples/aot_consumer" -B "$work/consumer" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$work/prefix" "${configure[@]}" > /dev/null
start=$(date +%s%N)
cmake --build "$work/consumer" > "$work/build.log" || { cat "$work/build.log"; exit 1; }
echo "consumer build ($variant), kernel generation included: $(( ($(date +%s%N) - start) / 1000000 )) ms"
"${run[@]}" "$work/consumer/aot_consumer"

if [ "$variant" = host ]; then
    libraries=$(ldd "$work/consumer/aot_consumer")
    echo "$libraries"
    if grep -Eiq 'halide|llvm|kldiv' <<< "$libraries"; then
        echo "FAIL: the AOT consumer depends on Halide, LLVM or libkldiv at run time" >&2
        exit 1
    fi
    # `kldiv aot` refuses bad specs and targets with a usage error, and writes nothing.
    expect_usage_error() {
        local status=0
        "$kldiv" aot "$@" --output "$work/refused" 2> "$work/error.txt" || status=$?
        if [ "$status" -ne 2 ] || [ -e "$work/refused" ]; then
            echo "FAIL: kldiv aot $* exited $status" >&2
            exit 1
        fi
        echo "refused: $(head -1 "$work/error.txt")"
    }
    expect_usage_error --spec fwd:f33:sum
    expect_usage_error --spec fwd:f32:average
    expect_usage_error --spec back:f32:sum
    expect_usage_error --spec fwd:f32:sum:logt:0x4
    expect_usage_error --spec fwd:f32:sum:1x2x3x4x5
    expect_usage_error --spec fwd:f32:sum --spec fwd:f32:mean
    expect_usage_error --spec fwd:f32:sum --target no-such-target
    expect_usage_error --spec fwd:f32:sum --target host-cudda
    expect_usage_error --spec fwd:f32:sum --target host --target arm-64-linux-bogus
    expect_usage_error --spec distill:bwd_both:f32
    expect_usage_error --spec distill:fwd:f8
    expect_usage_error --spec distill:fwd:f32:sum
    expect_usage_error --spec distill:fused:f32:reverse:64x32000
    expect_usage_error --spec distill:fused:f32 --spec distill:fused:f32
fi
