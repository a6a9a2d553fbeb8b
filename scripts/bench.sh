#!/usr/bin/env bash
# The benchmark from a fresh clone: set up (idempotent), then `fitbit-stream bench` with its own
# Kafka broker, SQLite source and tables under data/bench/. Figures go to bench/results/.
# Any argument is passed on, e.g. `scripts/bench.sh --scale 0.05 --steady-seconds 30`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PYTHONUNBUFFERED=1
exec .venv/bin/fitbit-stream bench --config conf/local.yaml "$@"
