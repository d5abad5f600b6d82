#!/usr/bin/env bash
# Packs what kldiv's GPU tests and benchmarks need into one xz archive, for a
# machine with an NVIDIA GPU that has neither this build tree nor Debian's
# Halide and LLVM: the test and benchmark binaries, libkldiv (JIT) and
# libkldiv_aot, every shared library they load beyond the C library, the
# golden file, the Python package (with its built extension) and its tests,
# the benchmark scripts, and scripts/gpu_run.sh as run.sh.
#
#   scripts/gpu_bundle.sh [OUT]        default: build/gpu-bundle.tar.xz
#
# Environment: BUILD (default build), GOLDEN (default ../shared/golden/
# torch_kldiv_cases.json), LIGER_SRC: a Liger-Kernel checkout's src/ to
# benchmark against (not shipped with kldiv; default .liger/src when there).
#
# On the GPU machine:  tar xJf gpu-bundle.tar.xz && bash kldiv-gpu/run.sh OUT
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$root/build}
out=${1:-$build/gpu-bundle.tar.xz}
golden=${GOLDEN:-$root/../shared/golden/torch_kldiv_cases.json}
liger=${LIGER_SRC:-$root/.liger/src}

bins=("$build/tests/cuda_test" "$build/tests/cuda_test_jit" "$build/tests/golden_test_cuda"
      "$build/tests/jit_cuda_test" "$build/tests/cuda_spec_test" "$build/bench/kldiv_cuda_latency"
      "$build/tools/kldiv")
libs=("$build/runtime/libkldiv.so" "$build/runtime/libkldiv_aot.so")
for f in "${bins[@]}" "${libs[@]}" "$golden"; do
    [ -f "$f" ] || { echo "gpu_bundle: missing $f (build with scripts/build.sh first)" >&2; exit 1; }
done

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
stage=$scratch/kldiv-gpu
mkdir -p "$stage/bin" "$stage/lib" "$stage/lib/cxx" "$stage/golden" "$stage/bench"
cp "${bins[@]}" "$stage/bin/"
cp "${libs[@]}" "$stage/lib/"
# Every library the binaries load, but the C library and its loader (the
# binaries need glibc 2.34 or later). libstdc++ and libgcc_s go apart, in
# lib/cxx: run.sh uses them only where the machine's are older, since
# PyTorch's Python loads the machine's own.
while read -r lib; do
    case "$(basename "$lib")" in
        libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*) ;;
        libstdc++.so.*|libgcc_s.so.*) cp -L "$lib" "$stage/lib/cxx/" ;;
        libkldiv*) ;;
        *) cp -L "$lib" "$stage/lib/" ;;
    esac
done < <(for f in "${bins[@]}" "${libs[@]}"; do ldd "$f" | awk '/=> \//{print $3}'; done | sort -u)
cp "$golden" "$stage/golden/"
cp "$root/bench/cuda_bench.py" "$root/bench/torch_train_bench.py" "$root/bench/bench_common.py" "$root/bench/distill_bench.py" "$stage/bench/"
mkdir -p "$stage/python"
cp -r "$root/python/kldiv" "$root/python/tests" "$stage/python/"
find "$stage/python" -name __pycache__ -prune -exec rm -rf {} +
# The package's C extension as scripts/build.sh built it into .venv (CPython's
# stable ABI: it loads in any CPython 3.10 or later).
extension=$(ls "$root"/.venv/lib/python3*/site-packages/kldiv/_ext*.so 2>/dev/null | head -n 1)
[ -n "$extension" ] || { echo "gpu_bundle: no kldiv/_ext*.so in .venv (build with scripts/build.sh first)" >&2; exit 1; }
cp "$extension" "$stage/python/kldiv/"
if [ -d "$liger/liger_kernel" ]; then
    mkdir -p "$stage/liger"
    cp -r "$liger/liger_kernel" "$stage/liger/"
    echo "gpu_bundle: Liger-Kernel from $liger"
else
    echo "gpu_bundle: no Liger-Kernel (set LIGER_SRC to a checkout's src/); the benchmark leaves its columns empty"
fi
cp "$root/scripts/gpu_run.sh" "$stage/run.sh"
git -C "$root" rev-parse --short HEAD > "$stage/REVISION" 2>/dev/null || echo unknown > "$stage/REVISION"

mkdir -p "$(dirname "$out")"
tar -C "$scratch" -cf - kldiv-gpu | xz -T0 -6 > "$out"
echo "gpu_bundle: $out ($(du -h "$out" | cut -f1); $(du -sh "$stage" | cut -f1) unpacked)"
