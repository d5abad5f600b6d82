#!/usr/bin/env bash
# `kldiv aot` for targets other than the host: every one of the 80 specs for
# CUDA (sm_80 PTX; the kernels run on a GPU only, so this checks that code is
# generated: one PTX entry point or more per kernel), and the consumer's
# kernels for x86-64-linux-avx2, linked and run here.
#   aot_targets_test.sh KLDIV_TOOL CONSUMER_SOURCE WORK_DIR
set -euo pipefail
tool=$1 consumer=$2 work=$3
rm -rf "$work"
mkdir -p "$work"

all=()
for d in f32 f64 f16 bf16; do
    for lt in "" ":logt"; do
        for s in fwd:$d:none fwd:$d:sum fused:$d:none fused:$d:sum bwd_input:$d:none bwd_target:$d:none \
                 bwd:$d:none bwd_input:$d:sum bwd_target:$d:sum bwd:$d:sum; do
            all+=(--spec "$s$lt")
        done
    done
done
cuda=host-cuda-cuda_capability_80
start=$(date +%s%N)
"$tool" aot "${all[@]}" --target "$cuda" --output "$work"
echo "generated 80 CUDA kernels in $(( ($(date +%s%N) - start) / 1000000 )) ms"
library=$work/$cuda/libkldiv_kernels.a
targets=$(strings "$library" | grep -c '^\.target sm_80' || true)
entries=$(strings "$library" | grep -c '\.entry ' || true)
echo "PTX: $targets modules for sm_80, $entries kernel entry points"
if [ "$targets" -lt 80 ] || [ "$entries" -lt 80 ]; then
    echo "FAIL: expected PTX for sm_80 in every one of the 80 kernels" >&2
    exit 1
fi
for name in kldiv_fwd_sum_bf16_logt kldiv_fused_sum_f32 kldiv_bwd_input_target_tensor_f16; do
    grep -q "int $name(" "$work/$cuda/include/${name}_halide.h" || { echo "FAIL: no $name in its header" >&2; exit 1; }
done

specs=()
for d in f32 f64 f16 bf16; do
    specs+=(--spec "fwd:$d:none" --spec "fwd:$d:sum" --spec "fwd:$d:sum:logt" --spec "fused:$d:none"
            --spec "fused:$d:batchmean" --spec "bwd:$d:none" --spec "bwd_input:$d:sum")
done
"$tool" aot "${specs[@]}" --target x86-64-linux-avx2 --output "$work"
out=$work/x86-64-linux-avx2
${CC:-cc} -std=c11 -O2 -Wall -Werror -I "$out/include" "$consumer" "$out/libkldiv_kernels.a" \
    "$out/libkldiv_kernels_runtime.a" -lm -lpthread -ldl -o "$work/consumer_avx2"
"$work/consumer_avx2"
