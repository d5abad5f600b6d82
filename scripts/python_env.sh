#!/usr/bin/env bash
# Installs the kldiv Python package (python/), with the library scripts/build.sh
# built and its C extension, into the environments scripts/python_setup.sh
# made: .venv (torch 2.x) and .venv-torch1.13 (Debian's torch 1.13). Offline:
# setuptools and wheel are already in each environment.
set -euo pipefail
cd "$(dirname "$0")/.."
for venv in .venv .venv-torch1.13; do
    if [ ! -x "$venv/bin/python" ]; then
        echo "no $venv: scripts/setup.sh makes it (scripts/python_setup.sh)" >&2
        exit 1
    fi
    "$venv/bin/python" -m pip install --quiet --no-build-isolation --no-deps --no-index --force-reinstall \
        --disable-pip-version-check ./python
    rm -rf python/build python/*.egg-info
done
