#!/usr/bin/env bash
# Installs what kldiv needs, builds it, and runs the main job: a kernel on
# generated data (64 x 32000 bfloat16, batchmean), checked against a float64
# reference and timed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
build/tools/kldiv run --shape 64x32000 --dtype bf16 --reduction batchmean
