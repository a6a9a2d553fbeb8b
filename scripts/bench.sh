#!/usr/bin/env bash
# The benchmark from a fresh clone: set up (idempotent), then the bench (`python -m fitbit_stream.bench`,
# every flag of `fitbit-stream bench` and the load phases' own) with its own Kafka broker, SQLite source
# and tables under data/bench/. Figures go to bench/results/. With no argument it runs every phase
# (several hours: see bench/README.md); any argument is passed on, e.g.
# `scripts/bench.sh --phases steady --rate 2000` or `scripts/bench.sh --phases sustained`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PYTHONUNBUFFERED=1
exec .venv/bin/python -m fitbit_stream.bench --config conf/local.yaml "$@"
