# clinfl developer entry points. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.clinfl-installed

.PHONY: demo test test-fast test-slow lint typecheck bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## The default federation: digits composites, 5 sites, FedNCAlign-ML, on the CPU.
demo: $(STAMP)
	$(BIN)/clinfl simulate --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check clinfl site_agent coordinator tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

## Lint, strict type check, then the test suite (slow end-to-end tests included).
test: lint typecheck
	$(BIN)/python -m pytest -q

## Everything but the tests marked slow.
test-fast: lint typecheck
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

## The benchmarks (write benchmarks/results/*.json and regenerate docs/benchmarks.md).
bench: $(STAMP)
	$(BIN)/python benchmarks/secagg.py --quick
	$(BIN)/python benchmarks/privacy.py --quick
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/accuracy.py

clean:
	rm -rf $(VENV) runs .mypy_cache .ruff_cache .pytest_cache
