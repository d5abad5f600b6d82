#!/usr/bin/env bash
# Installs the Debian 12 packages kldiv needs to build, test and benchmark
# (the aarch64 cross compiler and qemu-user run the arm64 kernels' tests, and
# qemu-user the x86 tests on an emulated CPU without AVX-512;
# gnuplot draws `kldiv tune --plot`; Debian's Python with its headers builds
# the kldiv Python package's extension, and with python3-torch 1.13 tests it on
# the oldest torch; clang-14 and libFuzzer build the fuzzers), then the Python
# environments with the pinned torch 2.x from PyPI (scripts/python_setup.sh).
# Idempotent: installs only what is missing.
set -euo pipefail

packages=(
    cmake ninja-build g++ ccache
    libhalide14-0-dev llvm-14-dev
    libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev
    libtorch-dev
    g++-aarch64-linux-gnu qemu-user
    gnuplot-nox
    python3 python3-dev python3-venv python3-pip python3-setuptools python3-wheel
    python3-torch python3-pytest python3-hypothesis
    clang-14 libfuzzer-14-dev libclang-rt-14-dev
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "Installing: ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
bash "$(dirname "$0")/python_setup.sh"
