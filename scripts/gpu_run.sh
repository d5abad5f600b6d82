#!/usr/bin/env bash
# Every GPU test and benchmark of kldiv, from a bundle that scripts/gpu_bundle.sh
# made (it ships this script as run.sh), on a machine with an NVIDIA GPU, the
# CUDA driver, and Python with PyTorch (for the Python tests and the
# benchmark; Liger-Kernel comes in the bundle when it was packed). Each step
# has its own time limit; together at most 475 s (7.9 minutes).
#
#   bash kldiv-gpu/run.sh [OUT]        default: kldiv-gpu/out
#
# OUT gets one log per step and SUMMARY (a line per step: PASS, FAIL, SKIP or
# TIMEOUT, seconds). Without a GPU every step reports its [SKIP]s and passes,
# which is how the script is checked where there is none.
# Environment: PYTHON (default python3), STEPS (names to run, default all).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/out}
python=${PYTHON:-python3}
mkdir -p "$out"
: > "$out/SUMMARY"

export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The bundle's libstdc++ only where the machine's is older than the build's.
system_cxx=$(ldconfig -p 2>/dev/null | awk '/libstdc\+\+\.so\.6 .*x86-64/{print $NF; exit}')
if [ -z "$system_cxx" ] || ! grep -qa GLIBCXX_3.4.30 "$system_cxx"; then
    export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$here/lib/cxx"
fi
export KLDIV_GOLDEN_FILE="$here/golden/torch_kldiv_cases.json" KLDIV_GOLDEN="$here/golden/torch_kldiv_cases.json"
export KLDIV_CACHE_DIR="$out/kernel-cache"
# The JIT compiles CUDA kernels only where this is set (the default is AOT).
jit_env=(KLDIV_CUDA_JIT=on)

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then return; fi
    local start=$SECONDS status verdict
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
    status=$?
    if [ $status -eq 124 ] || [ $status -eq 137 ]; then
        verdict=TIMEOUT
    elif [ $status -ne 0 ]; then
        verdict=FAIL
    elif grep -q '\[SKIP\]\|SKIPPED\|skipped' "$out/$name.log"; then
        verdict="PASS (with skips)"
    else
        verdict=PASS
    fi
    printf '%-22s %-18s %4ds\n' "$name" "$verdict" $((SECONDS - start)) | tee -a "$out/SUMMARY"
    tail -n 3 "$out/$name.log" | sed 's/^/   | /'
}

{
    echo "kldiv $(cat "$here/REVISION" 2>/dev/null) on $(hostname), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
} | tee "$out/MACHINE"

# C++ tests: specs and pieces; the AOT library's CUDA calls; the same on the
# JIT library with CUDA JIT kernels; the golden file on device copies; the
# JIT's CUDA kernels against the host.
step cuda_spec_test 20 "$here/bin/cuda_spec_test"
step cuda_test 45 "$here/bin/cuda_test"
step cuda_test_jit 60 env "${jit_env[@]}" "$here/bin/cuda_test_jit"
step golden_test_cuda 40 "$here/bin/golden_test_cuda"
step jit_cuda_test 40 env "${jit_env[@]}" "$here/bin/jit_cuda_test"
# Time per call at 2^20 elements from C++.
step cuda_latency 20 "$here/bin/kldiv_cuda_latency"
# GPU tuning: two kernels at 2^26 elements, their records in OUT/gpu_tuning.jsonl
# (no GPU: [SKIP]).
step cuda_tune 40 bash -c 'for s in fwd:bf16:sum fused:f32:none; do
        log=$("$1" tune --spec $s --target host-cuda --size 2^26 --budget 12s --db "$2" 2>&1); rc=$?
        echo "$log"
        if [ $rc -ne 0 ]; then
            echo "$log" | grep -q "no GPU to tune" && { echo "[SKIP] no GPU"; exit 0; }
            exit $rc
        fi
    done' tune "$here/bin/kldiv" "$out/gpu_tuning.jsonl"
# The Python package on CUDA tensors (distillation's CUDA kernels included)
# and under torch.compile. (pytest exits 5
# when it skipped every test: no GPU, or a torch before 2.4.)
if "$python" -c "import torch, pytest" 2> /dev/null; then
    step python_cuda 50 env PYTHONPATH="$here/python:$here/python/tests" KLDIV_LIBRARY="$here/lib/libkldiv.so" \
        bash -c '"$@"; rc=$?; [ $rc -eq 5 ] && exit 0; exit $rc' pytest \
        "$python" -m pytest -q -x -p no:cacheprovider "$here/python/tests/test_cuda.py" \
        "$here/python/tests/test_compile.py" "$here/python/tests/test_distill_cuda.py"
else
    echo "python_cuda            SKIP (no torch or pytest for $python)" | tee -a "$out/SUMMARY"
fi
# kldiv against PyTorch eager, torch.compile, Liger-Kernel and a copy.
if "$python" -c "import torch" 2> /dev/null; then
    liger=()
    [ -d "$here/liger/liger_kernel" ] && liger=(--liger "$here/liger")
    step cuda_bench 115 "$python" "$here/bench/cuda_bench.py" --lib "$here/lib/libkldiv_aot.so" "${liger[@]}" \
        --json "$out/cuda_bench.json" --compile-budget 45
else
    echo "cuda_bench             SKIP (no torch for $python)" | tee -a "$out/SUMMARY"
fi
# Distillation from logits on the GPU: kldiv's CUDA kernels against the eager
# composite and torch.compile of it, time and peak memory.
if "$python" -c "import torch" 2> /dev/null; then
    step distill_bench 45 env PYTHONPATH="$here/python:$here/bench" KLDIV_LIBRARY="$here/lib/libkldiv.so" \
        "$python" "$here/bench/distill_bench.py" --device cuda --shapes 4096x32000 --dtype bfloat16 float32 \
        --json "$out/distill_bench.json"
else
    echo "distill_bench          SKIP (no torch for $python)" | tee -a "$out/SUMMARY"
fi
echo "== summary ($out/SUMMARY)"
cat "$out/SUMMARY"
! grep -q "FAIL\|TIMEOUT" "$out/SUMMARY"
