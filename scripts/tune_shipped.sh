#!/usr/bin/env bash
# Tunes the kernels whose records ship in schedules/tuned.jsonl on this
# machine, one minute each, appending to that database; keeps the best record
# per class. The loss (KINDS has "loss"): float32 and bfloat16, forward sum
# and the fused pass, 2^20 and 2^24 elements. Distillation (KINDS has
# "distill"): float32 and bfloat16, forward and fused, 256 rows of 32000
# logits. Results (tables and JSON) go to OUT_DIR. LEVELS names the x86
# feature levels to tune for (KLDIV_CPU_TARGET; default: the CPU's best). A
# record applies to every CPU whose target is compatible with its own.
#   [LEVELS="avx2 avx512"] [KINDS="loss distill"] scripts/tune_shipped.sh [OUT_DIR] [BUDGET]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/tune-shipped}
budget=${2:-60s}
mkdir -p "$out"
kinds=" ${KINDS:-loss distill} "
tune() {  # tune LEVEL NAME SPEC SIZE
    KLDIV_CPU_TARGET=${1#best} ./build/tools/kldiv tune --spec "$3" --size "$4" --budget "$budget" --seed 1 \
        --db schedules/tuned.jsonl --json "$out/$2.json" --plot "$out/$2.png" > "$out/$2.txt" 2> "$out/$2.log"
    cat "$out/$2.txt"
}
for level in ${LEVELS:-${KLDIV_CPU_TARGET:-best}}; do
    if [[ $kinds == *" loss "* ]]; then
        for spec in fwd:f32:sum fwd:bf16:sum fused:f32:sum fused:bf16:sum; do
            for size in 20 24; do tune "$level" "${spec//:/_}_2e${size}_$level" "$spec" "2^$size"; done
        done
    fi
    if [[ $kinds == *" distill "* ]]; then
        for spec in distill:fwd:f32 distill:fwd:bf16 distill:fused:f32 distill:fused:bf16; do
            tune "$level" "${spec//:/_}_256x32000_$level" "$spec" 256x32000
        done
    fi
done
./build/tools/kldiv tune --prune --db schedules/tuned.jsonl
