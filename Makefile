# The two commands a new user needs: `make demo` and `make test`.
#
# Both install exactly what the lock files in requirements/ name (versions and sha256
# hashes, no resolving of our own), then Headrace itself in editable mode. `make lock`
# re-resolves them after pyproject.toml changed; `make lock-upgrade` moves every pin to the
# newest release the ranges allow. DEVELOPERS.md says how and why.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEV_LOCK := requirements/dev.txt
DEMO_LOCK := requirements/demo.txt
# Hash-checked, and --no-deps: nothing but the lock is installed. Headrace itself is built
# with the locked setuptools (--no-build-isolation) rather than whatever is newest.
INSTALL_LOCK := -m pip install -q --require-hashes --no-deps -r
INSTALL_SELF := -m pip install -q --no-deps --no-build-isolation -e .
PIP_COMPILE = $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --all-build-deps \
	--strip-extras --no-emit-index-url --no-emit-find-links $(LOCK_ARGS)

.PHONY: demo kafka-demo test lint bench lock lock-upgrade clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamp files re-run pip only when a lock (or the package's metadata) changes.
$(VENV)/.demo-installed: $(DEMO_LOCK) pyproject.toml | $(BIN)/python
	$(BIN)/python $(INSTALL_LOCK) $(DEMO_LOCK)
	$(BIN)/python $(INSTALL_SELF)
	$(BIN)/python -m pip check -q
	touch $@

$(VENV)/.dev-installed: $(DEV_LOCK) pyproject.toml | $(BIN)/python
	$(BIN)/python $(INSTALL_LOCK) $(DEV_LOCK)
	$(BIN)/python $(INSTALL_SELF)
	$(BIN)/python -m pip check -q
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/headrace demo $(DEMO_ARGS)

# The Kafka path end to end with a local Kafka-protocol broker (no Kafka install needed).
kafka-demo: $(VENV)/.dev-installed
	$(BIN)/python examples/kafka_demo.py

# Three test processes (pytest-xdist), work-stealing so a long fault test does not leave
# the others idle: most of the suite's time is brokers, databases and workers waiting
# (the CPU was 40% busy with two), and on the 2-core machine one process took 13-14
# minutes, two 8:06-8:40 and three 6:24 (2026-12-07, the same commit, the slowest test
# 5% slower). Every test has its own broker, schema and ports, so they do not meet.
# TEST_PROCESSES=0 runs them in this process (for a debugger).
TEST_PROCESSES ?= 3
test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist worksteal --durations=15 $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench.engine_overhead
	$(BIN)/python -m bench.kafka_throughput
	$(BIN)/python -m bench.kafka_columns
	$(BIN)/python -m bench.kafka_model_calls
	$(BIN)/python -m bench.model_processes
	$(BIN)/python -m bench.files_columns
	$(BIN)/python -m bench.kafka_postgres
	$(BIN)/python -m bench.crash_cost
	$(BIN)/python -m bench.broker_cost
	$(BIN)/python -m bench.broker_requests
	$(BIN)/python -m bench.paced_latency --max-wait-ms 10 50
	$(BIN)/python -m bench.idle_cost
	$(BIN)/python -m bench.mqtt_throughput --setting runtime:commit_interval_ms=0 --setting runtime:commit_interval_ms=1000
	$(BIN)/python -m bench.overload
	$(BIN)/python -m bench.model_swap
	$(BIN)/python -m bench.windows
	$(BIN)/python -m bench.static_membership
	$(BIN)/python -m bench.micro_batcher

# Re-resolve the locks from pyproject.toml, keeping every pin that still fits; the locked
# pip-tools does it, so the project itself need not install first. The demo lock is
# constrained by the dev lock: the two never disagree on a version. pip-compile writes the
# project into the dev lock (its dev extra names headrace[...]); that entry is removed,
# since Headrace is installed from the checkout.
lock: | $(BIN)/python
	$(BIN)/python $(INSTALL_LOCK) $(DEV_LOCK)
	$(PIP_COMPILE) --extra dev -o $(DEV_LOCK) pyproject.toml
	$(BIN)/python -c 'import re, sys; p = sys.argv[1]; s = open(p).read(); open(p, "w").write(re.sub(r"# WARNING: pip install will require.*\n(#.*\n)*headrace @ .*\n(    #.*\n)*", "", s))' $(DEV_LOCK)
	$(PIP_COMPILE) --extra demo -c $(DEV_LOCK) -o $(DEMO_LOCK) pyproject.toml

lock-upgrade:
	$(MAKE) lock LOCK_ARGS=--upgrade

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache
