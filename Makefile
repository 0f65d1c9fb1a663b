# The front door: make install | test | lint | bench
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test lint bench acceptance clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'

run: install
	$(BIN)/flowd worker --pod-id a

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check flowd tests
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install
	$(BIN)/flowd bench --standard

acceptance: install
	../shared/acceptance/run.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
