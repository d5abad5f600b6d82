#!/usr/bin/env bash
# `kldiv aot` end to end: generate kernels for every dtype and pass, link the
# examples/aot_consumer program against them alone, run it, and check with
# ldd that it needs neither Halide, LLVM nor libkldiv. Then the same for
# arm64: cross-compiled and run under qemu-aarch64.
#   aot_consumer_test.sh KLDIV_TOOL CONSUMER_SOURCE WORK_DIR [host|arm64]
set -euo pipefail
tool=$1 source=$2 work=$3 which=${4:-host}

specs=()
for d in f32 f64 f16 bf16; do
    specs+=(--spec "fwd:$d:none" --spec "fwd:$d:sum" --spec "fwd:$d:sum:logt" --spec "fused:$d:none"
            --spec "fused:$d:batchmean" --spec "bwd:$d:none" --spec "bwd_input:$d:sum")
done

case $which in
host)
    target=host cc=${CC:-cc} run=()
    ;;
arm64)
    target=arm-64-linux cc=aarch64-linux-gnu-gcc run=(qemu-aarch64 -L /usr/aarch64-linux-gnu)
    for needed in "$cc" qemu-aarch64; do
        if ! command -v "$needed" > /dev/null; then
            echo "[SKIP] $needed is not installed (scripts/setup.sh installs it)"
            exit 77
        fi
    done
    ;;
*) echo "unknown variant '$which'" >&2; exit 2 ;;
esac

rm -rf "$work"
mkdir -p "$work"
start=$(date +%s%N)
"$tool" aot "${specs[@]}" --target "$target" --output "$work"
echo "generated $(( ${#specs[@]} / 2 )) kernels for $target in $(( ($(date +%s%N) - start) / 1000000 )) ms"

out=$work/$target
"$cc" -std=c11 -O2 -Wall -Werror -I "$out/include" "$source" "$out/libkldiv_kernels.a" \
    "$out/libkldiv_kernels_runtime.a" -lm -lpthread -ldl -o "$work/consumer"
"${run[@]}" "$work/consumer"

if [ "$which" = host ]; then
    libraries=$(ldd "$work/consumer")
    echo "$libraries"
    if grep -Eiq 'halide|llvm|kldiv' <<< "$libraries"; then
        echo "FAIL: the AOT consumer depends on Halide, LLVM or libkldiv at run time" >&2
        exit 1
    fi
fi
