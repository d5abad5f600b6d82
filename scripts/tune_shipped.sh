#!/usr/bin/env bash
# Tunes the kernels whose records ship in schedules/tuned.jsonl on this
# machine (float32 and bfloat16, forward sum and the fused pass, 2^20 and 2^24
# elements), one minute each, appending to that database; keeps the best
# record per class. Results (tables and JSON) go to OUT_DIR. LEVELS names the
# x86 feature levels to tune for (KLDIV_CPU_TARGET; default: the CPU's best).
# A record applies to every CPU whose target is compatible with its own.
#   [LEVELS="avx2 avx512"] scripts/tune_shipped.sh [OUT_DIR] [BUDGET]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/tune-shipped}
budget=${2:-60s}
mkdir -p "$out"
for level in ${LEVELS:-${KLDIV_CPU_TARGET:-best}}; do
    for spec in fwd:f32:sum fwd:bf16:sum fused:f32:sum fused:bf16:sum; do
        for size in 20 24; do
            name=${spec//:/_}_2e${size}_$level
            KLDIV_CPU_TARGET=${level#best} ./build/tools/kldiv tune --spec "$spec" --size "2^$size" --budget "$budget" --seed 1 \
                --db schedules/tuned.jsonl --json "$out/$name.json" --plot "$out/$name.png" \
                > "$out/$name.txt" 2> "$out/$name.log"
            cat "$out/$name.txt"
        done
    done
done
./build/tools/kldiv tune --prune --db schedules/tuned.jsonl
