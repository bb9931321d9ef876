# plantprint — every target sets up what it needs on a fresh machine.
#   make demo   the simulated plant end to end
#   make test   lint, type checks and the whole suite against real local services
#   make test-fast  the tests that need no service and no simulated plant (seconds)
#   make bench  the benchmark table (bench-out/bench.json)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.plantprint-installed

.PHONY: venv demo test test-fast bench lint services-up services-down clean

$(STAMP): pyproject.toml deploy/setup-system.sh
	bash deploy/setup-system.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy edge ingest compute simulators deploy bench

test: lint
	$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	exit $$rc

# Tests marked services or slow (tests/conftest.py marks them by fixture) are left out;
# property tests run at most 20 examples each (the fast hypothesis profile, same file).
# Bytecode and pytest's rewritten test modules are cached under .pytest_cache/, even
# when PYTHONDONTWRITEBYTECODE is set: compiling them anew is a third of the run.
FAST_ENV := env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=$(CURDIR)/.pytest_cache/pycache
test-fast: $(STAMP)
	$(FAST_ENV) $(PY) -m pytest -q -m "not services and not slow" --hypothesis-profile=fast; \
	rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-fast: pytest collected no tests" >&2; fi; \
	exit $$rc

bench: $(STAMP)
	$(PY) -m bench

demo: $(STAMP)
	$(PY) -m deploy.demo

services-up: $(STAMP)
	$(PY) -m deploy.devstack up

services-down:
	@if [ -x $(PY) ]; then $(PY) -m deploy.devstack down; else echo "no .venv: nothing was started"; fi

clean: services-down
	rm -rf .state bench-out .pytest_cache .mypy_cache .ruff_cache
