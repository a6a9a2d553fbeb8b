#!/usr/bin/env bash
# The whole test suite: unit tests, then e2e tests against the real local platform.
# Assumes scripts/setup.sh --with-postgres ran (the Makefile's `test` target does that).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
.venv/bin/python -m pytest tests --durations=25 "$@"
