#!/usr/bin/env bash
# `kldiv aot` for targets other than the host: every one of the 80 specs for
# CUDA (sm_80 PTX; the kernels run on a GPU only, so this checks that code is
# generated: one PTX entry point or more per kernel), and the consumer's
# kernels for x86-64-linux-avx2, linked and run here. Also the PTX bar of the
# CUDA streaming kernels (scripts/ptx_stats.py).
#   aot_targets_test.sh KLDIV_TOOL CONSUMER_SOURCE WORK_DIR PTX_STATS
set -euo pipefail
tool=$1 consumer=$2 work=$3 ptx_stats=$4
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
"$tool" aot "${all[@]}" --target "$cuda" --output "$work" --tuning-db off | tee "$work/cuda.out"
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

# The 40 distillation kernels for CUDA: PTX for every one (5 to 9 launches
# each), none spilling to local memory.
distill=()
for d in f32 f64 f16 bf16; do
    for r in "" ":reverse"; do
        for p in fwd fused bwd bwd_student bwd_teacher; do distill+=(--spec "distill:$p:$d$r"); done
    done
done
"$tool" aot "${distill[@]}" --target "$cuda" --output "$work/distill-cuda" --tuning-db off > /dev/null
mkdir -p "$work/distill-cuda/objects"
(cd "$work/distill-cuda/objects" && ar x "../$cuda/libkldiv_kernels.a")
count=0
for object in "$work"/distill-cuda/objects/kldiv_distill_*.o; do
    entries=$(strings "$object" | grep -c '\.entry ' || true)
    spills=$(strings "$object" | grep -cE '(ld|st)\.local' || true)
    if [ "$entries" -lt 1 ] || [ "$spills" -ne 0 ]; then
        echo "FAIL: $(basename "$object"): $entries PTX entries, $spills local-memory accesses" >&2
        exit 1
    fi
    count=$((count + 1))
done
[ "$count" -eq 40 ] || { echo "FAIL: $count distillation objects for CUDA, expected 40" >&2; exit 1; }
echo "PTX: 40 distillation kernels for sm_80, no local memory"

# GPU schedule parameters from a tuning record for the exact CUDA target: four
# elements per thread give each thread four loads of each operand.
full=$(sed -n 's/^kldiv aot: [^ ]* (\(.*\)): .*/\1/p' "$work/cuda.out")
[ -n "$full" ] || { echo "FAIL: kldiv aot did not print the full target string" >&2; exit 1; }
printf '{"format":"kldiv-tuning-1","target":"%s","spec":"kldiv_fwd_none_f32","bucket":22,"elements":4194304,"schedule":"gpu:tpb=128,ept=4","seconds":0.001,"noise":0,"gbps":1,"default_gbps":1,"ceiling_read_gbps":1,"ceiling_copy_gbps":1,"date":"2026-11-25T00:00:00Z","version":"test"}\n' \
    "$full" > "$work/gpu_tuning.jsonl"
"$tool" aot --spec fwd:f32:none --target "$cuda" --output "$work/gpu-tuned" --tuning-db "$work/gpu_tuning.jsonl" \
    | grep -q "tuned schedule from" || { echo "FAIL: the CUDA record was not used" >&2; exit 1; }
loads() { strings "$1" | grep -c 'ld\.global\.nc\.f32' || true; }
tuned_loads=$(loads "$work/gpu-tuned/$cuda/libkldiv_kernels.a")
echo "fwd none f32 on CUDA, 4 elements per thread: $tuned_loads global loads"
[ "$tuned_loads" -ge 8 ] || { echo "FAIL: expected 4 loads of each operand per thread" >&2; exit 1; }

# Lean CUDA streaming kernels: the aligned forward sums (the kernels contiguous
# tensors get) within the PTX instruction budget per element (bfloat16 25;
# float32, and float16, which takes float32's log, 30), every global load at
# least 8 bytes. The general kernels load element by element, so the same
# check fails on them.
"$tool" aot --spec fwd:bf16:sum:aligned --spec fwd:f32:sum:aligned --spec fwd:f16:sum:aligned \
    --spec fwd:bf16:sum --target "$cuda" --output "$work/ptx" --tuning-db off > /dev/null
ptx_lib=$work/ptx/$cuda/libkldiv_kernels.a
python3 "$ptx_stats" --opcodes --object kldiv_fwd_sum_bf16_aligned --max-instr 25 --min-load-bytes 8 "$ptx_lib"
python3 "$ptx_stats" --object kldiv_fwd_sum_f16_aligned --max-instr 30 --min-load-bytes 8 "$ptx_lib"
python3 "$ptx_stats" --opcodes --object kldiv_fwd_sum_f32_aligned --max-instr 30 --min-load-bytes 8 "$ptx_lib"
if python3 "$ptx_stats" --object kldiv_fwd_sum_bf16.o --min-load-bytes 8 "$ptx_lib" > /dev/null; then
    echo "FAIL: the general bf16 kernel passed the 8-byte load check, which it cannot" >&2
    exit 1
fi

specs=()
for d in f32 f64 f16 bf16; do
    specs+=(--spec "fwd:$d:none" --spec "fwd:$d:sum" --spec "fwd:$d:sum:logt" --spec "fused:$d:none"
            --spec "fused:$d:batchmean" --spec "bwd:$d:none" --spec "bwd_input:$d:sum")
done
# Distillation kernels too (tests/arm64 runs them; here their library and headers).
specs+=(--spec distill:fused:f32 --spec distill:bwd:bf16:reverse --spec distill:fwd:f16)
"$tool" aot "${specs[@]}" --target x86-64-linux-avx2 --output "$work"
out=$work/x86-64-linux-avx2
nm "$out/libkldiv_kernels.a" > "$work/symbols.txt"
for name in kldiv_distill_fused_kl_f32 kldiv_distill_bwd_st_rkl_bf16 kldiv_distill_fwd_kl_f16; do
    grep -q "int $name(" "$out/include/${name}_halide.h" || { echo "FAIL: no $name in its header" >&2; exit 1; }
    grep -q "Distillation from logits" "$out/include/$name.h" || { echo "FAIL: $name.h is undocumented" >&2; exit 1; }
    grep -q " T $name\$" "$work/symbols.txt" || { echo "FAIL: no $name in the library" >&2; exit 1; }
done
${CC:-cc} -std=c11 -O2 -Wall -Werror -I "$out/include" "$consumer" "$out/libkldiv_kernels.a" \
    "$out/libkldiv_kernels_runtime.a" -lm -lpthread -ldl -o "$work/consumer_avx2"
"$work/consumer_avx2"
