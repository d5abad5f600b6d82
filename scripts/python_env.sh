#!/usr/bin/env bash
# Makes the virtual environment .venv at the checkout's root and installs the
# kldiv Python package (python/) into it, with the library scripts/build.sh built.
# .venv is made from Debian's Python, /usr/bin/python3, whatever `python3` is
# first on the PATH: that is the Python that sees Debian's python3-torch.
set -euo pipefail
cd "$(dirname "$0")/.."
python=/usr/bin/python3
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
    rm -rf .venv
    "$python" -m venv --system-site-packages .venv
fi
# Offline: setuptools and wheel are Debian's, seen through the system site-packages.
.venv/bin/python -m pip install --quiet --no-build-isolation --no-deps --no-index --force-reinstall \
    --disable-pip-version-check ./python
rm -rf python/build python/*.egg-info
