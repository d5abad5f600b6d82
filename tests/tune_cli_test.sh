#!/usr/bin/env bash
# `kldiv tune` end to end: a short seeded tuning run writes a valid record to
# the database; `kldiv run` and `kldiv aot` then use it (and say so); a corrupt
# line is skipped with a warning; --prune keeps one record per class; usage
# errors exit 2.
#   tune_cli_test.sh KLDIV_TOOL WORK_DIR
set -euo pipefail
tool=$1 work=$2
rm -rf "$work"
mkdir -p "$work"
export KLDIV_CACHE_DIR=$work/cache
unset KLDIV_TUNING_DB KLDIV_SPECIALIZE
db=$work/db.jsonl
fail() { echo "FAIL: $*" >&2; exit 1; }
expect_in() {  # expect_in FILE TEXT
    grep -qF -- "$2" "$1" || { cat "$1" >&2; fail "'$2' not in $1"; }
}

# Usage errors: exit status 2, nothing written.
for args in "" "--spec fwd:f32:sum --budget 5x" "--spec fwd:f32:sum --strategy annealing" \
            "--spec fwd:f32:sum --baselines Nobody2030" "--spec fwd:f99:sum" \
            "--spec fwd:f32:sum --size 0" "--spec fwd:f32:sum --target arm-64-linux" \
            "--spec fwd:f32:sum --target x86-32-linux" "--spec fwd:f32:sum --target host-opencl" \
            "--spec distill:fwd:f32 --size 4096" "--spec distill:fwd:f32 --size 4x16" \
            "--spec distill:fwd:f32 --size 65536x65536" "--spec distill:fused:bf16 --target host-cuda" \
            "--spec distill:fused:f32 --baselines Li2018" \
            "--spec fwd:f32:sum --target host-cuda --baselines Li2018"; do
    set +e
    # shellcheck disable=SC2086
    "$tool" tune $args --db "$db" > "$work/usage.out" 2>&1
    status=$?
    set -e
    [ "$status" = 2 ] || { cat "$work/usage.out" >&2; fail "'kldiv tune $args' exited $status, not 2"; }
    [ ! -e "$db" ] || fail "'kldiv tune $args' wrote the database"
done
expect_in "$work/usage.out" "CPU targets only"  # the last one: no autoscheduler baselines on a GPU

# A GPU target tunes on GPU 0; without one (or without the driver) it fails
# with the reason and writes nothing.
set +e
"$tool" tune --spec fwd:bf16:sum --target host-cuda --budget 2s --db "$db" > "$work/gpu.out" 2>&1
status=$?
set -e
if [ "$status" = 1 ]; then
    expect_in "$work/gpu.out" "no GPU to tune"
    [ ! -e "$db" ] || fail "a GPU tune without a GPU wrote the database"
    echo "GPU tuning: [SKIP] $(grep 'no GPU' "$work/gpu.out")"
else
    [ "$status" = 0 ] || { cat "$work/gpu.out" >&2; fail "kldiv tune on the GPU exited $status"; }
    expect_in "$work/gpu.out" "kldiv_fwd_sum_bf16"
    grep -q '"target":"[^"]*cuda' "$db" || fail "the GPU record has no CUDA target"
    rm -f "$db"
fi

plot=()
if command -v gnuplot > /dev/null; then plot=(--plot "$work/candidates.png"); fi
"$tool" tune --spec fwd:f32:sum --size 2^16 --budget 4s --seed 3 --baselines Mullapudi2016,Li2018 \
    --db "$db" --json "$work/tune.json" "${plot[@]}" > "$work/tune.out" 2> "$work/tune.err" \
    || { cat "$work/tune.out" "$work/tune.err" >&2; fail "kldiv tune failed"; }
cat "$work/tune.out"
grep -qE "^tuned |^no candidate beat the default" "$work/tune.out" || fail "neither a tuned row nor the default's verdict"
for row in "default " "Mullapudi2016 " "Li2018 " "successive halving, seed 3" "recorded in $db"; do
    expect_in "$work/tune.out" "$row"
done
expect_in "$work/tune.err" "kldiv tune:"  # progress lines (not a terminal here)
[ "$(wc -l < "$db")" = 1 ] || fail "expected one record in $db"
for field in '"format":"kldiv-tuning-1"' '"spec":"kldiv_fwd_sum_f32"' '"bucket":16' '"elements":65536' \
             '"schedule":"cpu:vf=' '"ceiling_read_gbps":' '"default_gbps":' '"date":"20'; do
    expect_in "$db" "$field"
done
# The record names the CPU: its model name, and on x86 its family and model.
model=$(grep -m1 '^model name' /proc/cpuinfo | sed 's/^[^:]*: //' || true)
family=$(grep -m1 '^cpu family' /proc/cpuinfo | sed 's/^[^:]*: //' || true)
number=$(grep -m1 -P '^model\t' /proc/cpuinfo | sed 's/^[^:]*: //' || true)
if [ -n "$model" ] && [ -n "$family" ] && [ -n "$number" ]; then
    expect_in "$db" "\"cpu\":\"$model (family $family, model $number)"
fi
expect_in "$work/tune.json" '"results"'
expect_in "$work/tune.json" '"candidates"'
if [ ${#plot[@]} -gt 0 ]; then
    [ "$(head -c 4 "$work/candidates.png" | tail -c 3)" = PNG ] || fail "no PNG written"
fi

# A distillation kernel: rows x vocabulary, every candidate checked against
# the library's bits; the record's elements are the vocabulary (the runtime's
# lookup; tests/distill_jit_test.cpp shows the JIT using such records).
distill_db=$work/distill.jsonl
"$tool" tune --spec distill:bwd:f32 --size 16x2048 --budget 2s --db "$distill_db" > "$work/distill.out" 2>&1 \
    || { cat "$work/distill.out" >&2; fail "kldiv tune of a distillation kernel failed"; }
for row in "kldiv_distill_bwd_st_kl_f32, 16x2048" "default " "recorded in $distill_db"; do
    expect_in "$work/distill.out" "$row"
done
if grep -q "failed to compile or check), " "$work/distill.out" && ! grep -q "(0 failed" "$work/distill.out"; then
    cat "$work/distill.out" >&2
    fail "a distillation candidate failed (their parameters must never change a result)"
fi
for field in '"spec":"kldiv_distill_bwd_st_kl_f32"' '"elements":2048' '"bucket":11' ';distill:gvf='; do
    expect_in "$distill_db" "$field"
done
KLDIV_TUNING_DB=$distill_db "$tool" aot --spec distill:bwd:f32 --output "$work/aot-distill" > "$work/aot-distill.out"
expect_in "$work/aot-distill.out" "tuned schedule from $distill_db (vocabulary 2^11"

# The JIT takes the record for this exact target and size...
run=(run --pass fwd --dtype f32 --reduction sum --shape 65536 --specialize always --repeat 3 --no-ceiling)
KLDIV_TUNING_DB=$db "$tool" "${run[@]}" > "$work/run.out" 2> "$work/run.err"
cat "$work/run.out"
expect_in "$work/run.out" "schedule        tuned ($db, 2^16 elements"
expect_in "$work/run.out" "result          PASS"
# ... and the nearest bucket for another size; not with the database off.
KLDIV_TUNING_DB=$db "$tool" run --pass fwd --dtype f32 --reduction sum --shape 3x100000 --specialize always --no-ceiling \
    --repeat 3 > "$work/run2.out"
expect_in "$work/run2.out" "schedule        tuned ($db, 2^16 elements"
# (The database shipped with kldiv may still have this machine.)
KLDIV_TUNING_DB=off "$tool" "${run[@]}" > "$work/run3.out"
expect_in "$work/run3.out" "schedule        "
if grep -q "schedule .*$db" "$work/run3.out"; then fail "KLDIV_TUNING_DB=off still read $db"; fi

# A corrupt line and a foreign one are skipped with a warning; the record still applies.
echo '{"format":"kldiv-tuning-1","target": tru' >> "$db"
echo '{"format":"someone-else","x":1}' >> "$db"
KLDIV_TUNING_DB=$db "$tool" "${run[@]}" > "$work/run4.out" 2> "$work/run4.err"
expect_in "$work/run4.err" "tuning database $db:2: not a JSON object; line skipped"
expect_in "$work/run4.err" "tuning database $db:3: not a kldiv-tuning-1 record; line skipped"
expect_in "$work/run4.out" "schedule        tuned ("

# `kldiv aot` takes it too.
KLDIV_TUNING_DB=$db "$tool" aot --spec fwd:f32:sum:65536 --output "$work/aot" > "$work/aot.out" 2> "$work/aot.err"
expect_in "$work/aot.out" "tuned schedule from $db (2^16 elements; record for its exact target)"
"$tool" aot --spec fwd:f32:sum:65536 --output "$work/aot-off" --tuning-db off > "$work/aot-off.out" 2>&1
if grep -qF "tuned schedule from $db" "$work/aot-off.out"; then fail "--tuning-db off still used $db"; fi
# Its 'host' is capped by KLDIV_CPU_TARGET as the JIT's is, so that a record
# tuned under the cap applies to the kernels it builds.
if [ "$(uname -m)" = x86_64 ]; then
    KLDIV_CPU_TARGET=sse41 "$tool" aot --spec fwd:f32:sum --output "$work/aot-sse41" --tuning-db off \
        > "$work/aot-sse41.out"
    expect_in "$work/aot-sse41.out" "host (x86-64-linux-sse41)"
    KLDIV_CPU_TARGET=avx3 "$tool" aot --spec fwd:f32:sum --output "$work/aot-avx3" --list 2> "$work/aot-avx3.err"
    expect_in "$work/aot-avx3.err" "KLDIV_CPU_TARGET: 'avx3' is not sse41, avx2 or avx512; using the CPU's best level"
fi

# Prune: one record per class, malformed lines dropped.
head -n 1 "$db" >> "$db"
"$tool" tune --prune --db "$db" > "$work/prune.out" 2> "$work/prune.err"
expect_in "$work/prune.out" "kept 1 record(s), removed 1, dropped 2 malformed line(s)"
[ "$(wc -l < "$db")" = 1 ] || fail "prune left $(wc -l < "$db") lines"
echo "PASS"
