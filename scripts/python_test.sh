#!/usr/bin/env bash
# Runs tests of the kldiv Python package (python/tests/...) under torch 2.x
# (.venv) or, with --torch 1.13, Debian's torch 1.13 (.venv-torch1.13), as
# scripts/python_setup.sh and scripts/python_env.sh made them:
#   python_test.sh [--torch 1.13] python/tests/test_api.py [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
if [ "${1:-}" = "--torch" ]; then
    [ "${2:-}" = "1.13" ] || { echo "python_test.sh: --torch takes 1.13 (the default is .venv's torch 2.x)" >&2; exit 2; }
    venv=.venv-torch1.13
    shift 2
fi
if [ ! -x "$venv/bin/python" ]; then
    echo "no $venv at $(pwd): scripts/setup.sh and scripts/build.sh make it" >&2
    exit 1
fi
exec "$venv/bin/python" -m pytest -q -rs -p no:cacheprovider "$@"
