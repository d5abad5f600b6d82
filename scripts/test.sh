#!/usr/bin/env bash
# Installs what kldiv needs, builds it and its fuzzers, and runs every test
# (the fuzzers' smoke run among them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
bash scripts/fuzz.sh --build-only
ctest --test-dir build --output-on-failure -j "$(nproc)"
