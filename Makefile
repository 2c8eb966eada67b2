# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo kafka-demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Stamp files re-run pip only when pyproject.toml changes.
$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[demo]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/headrace demo $(DEMO_ARGS)

# The Kafka path end to end with a local Kafka-protocol broker (no Kafka install needed).
kafka-demo: $(VENV)/.dev-installed
	$(BIN)/python examples/kafka_demo.py

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench.engine_overhead
	$(BIN)/python -m bench.kafka_throughput
	$(BIN)/python -m bench.overload
	$(BIN)/python -m bench.model_swap
	$(BIN)/python -m bench.windows

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache
