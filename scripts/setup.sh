#!/usr/bin/env bash
# Installs the Debian 12 packages kldiv needs to build, test and benchmark
# (the aarch64 cross compiler and qemu-user run the arm64 kernels' tests;
# gnuplot draws `kldiv tune --plot`).
# Idempotent: does nothing when everything is already installed.
set -euo pipefail

packages=(
    cmake ninja-build g++ ccache
    libhalide14-0-dev llvm-14-dev
    libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev
    libtorch-dev
    g++-aarch64-linux-gnu qemu-user
    gnuplot-nox
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

echo "Installing: ${missing[*]}"
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
$sudo_cmd apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
