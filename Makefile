# The README's two commands: `make demo` (set up, run the main job end to end on local defaults)
# and `make test` (set up, run the whole test suite). Everything else is a building block.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test check unit integration e2e lint wheel bench platform-up platform-down clean

setup:
	./scripts/setup.sh

demo: setup
	$(BIN)/fitbit-stream demo --config conf/local.yaml

test:
	./scripts/setup.sh --with-postgres
	./scripts/test.sh

# The tiers (tests/conftest.py files each test by where it lives and what it needs):
#   check        no Spark: config, CLI, packaging, the reference oracle           (about a minute)
#   unit         check + Spark on literal rows, one shared session                (a few minutes)
#   integration  whole-pipeline runs on local Delta tables
#   e2e          the real Kafka broker, PostgreSQL and Chromium; ground truth, faults
# `make test` runs all four.
check: setup
	$(BIN)/pytest tests/unit -m check -q

unit: setup
	$(BIN)/pytest tests/unit -q

integration: setup
	$(BIN)/pytest tests/integration -q

e2e:
	./scripts/setup.sh --with-postgres
	$(BIN)/pytest tests/e2e -q

lint: setup
	$(BIN)/ruff check src tests entrypoints
	$(BIN)/mypy

bench:
	./scripts/bench.sh $(BENCH_ARGS)

wheel: setup
	$(BIN)/python -m build --wheel --outdir dist .

platform-up: setup
	$(BIN)/fitbit-stream platform start --config conf/local.yaml

platform-down:
	$(BIN)/fitbit-stream platform stop --config conf/local.yaml

clean: platform-down
	rm -rf data build dist .pytest_cache
