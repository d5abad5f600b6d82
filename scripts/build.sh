#!/usr/bin/env bash
# Configures and builds kldiv in build/ (Release, Ninja), then installs the
# kldiv Python package into .venv and .venv-torch1.13 (scripts/python_env.sh;
# scripts/setup.sh makes them). Extra arguments go to cmake.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" > build-configure.log 2>&1 || { cat build-configure.log; exit 1; }
cmake --build build -j "$(nproc)"
bash scripts/python_env.sh
