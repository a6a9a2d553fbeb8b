# The README's two commands: `make demo` (set up, run the main job end to end on local defaults)
# and `make test` (set up, run the whole test suite). Everything else is a building block.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test unit e2e lint wheel bench platform-up platform-down clean

setup:
	./scripts/setup.sh

demo: setup
	$(BIN)/fitbit-stream demo --config conf/local.yaml

test:
	./scripts/setup.sh --with-postgres
	./scripts/test.sh

unit: setup
	$(BIN)/pytest tests/unit -q

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
