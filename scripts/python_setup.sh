#!/usr/bin/env bash
# Makes the two Python environments the kldiv package is built, tested and
# benchmarked in, from Debian's Python (/usr/bin/python3, whatever `python3`
# comes first on the PATH):
#   .venv             torch 2.x and the test tools from PyPI, pinned in
#                     python/requirements.txt (about 5 GB: torch brings NVIDIA's
#                     CUDA libraries, which it loads even on a machine without GPU)
#   .venv-torch1.13   Debian's python3-torch 1.13, pytest and hypothesis (the
#                     system site-packages), the oldest torch tested
# Idempotent: an environment made from the current requirements is kept.
# scripts/python_env.sh then installs the package into both (offline).
set -euo pipefail
cd "$(dirname "$0")/.."
python=/usr/bin/python3
requirements=python/requirements.txt

if ! cmp -s "$requirements" .venv/kldiv-requirements.txt 2>/dev/null; then
    echo "Making .venv with $(grep -m1 '^torch==' "$requirements") from PyPI"
    rm -rf .venv
    "$python" -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" .venv/kldiv-requirements.txt
fi

if ! .venv-torch1.13/bin/python -c 'import torch, pytest, hypothesis' 2>/dev/null; then
    rm -rf .venv-torch1.13
    "$python" -m venv --system-site-packages .venv-torch1.13
fi
