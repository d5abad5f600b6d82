#!/usr/bin/env bash
# Runs tests of the kldiv Python package (python/tests/...) with the .venv that
# scripts/python_env.sh made: python_test.sh python/tests/test_api.py [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    echo "no .venv at $(pwd): scripts/build.sh makes it (or run scripts/python_env.sh)" >&2
    exit 1
fi
exec .venv/bin/python -m pytest -q -rs -p no:cacheprovider "$@"
