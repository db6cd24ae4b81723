# Parley's front door. `make run` brings the platform up on this machine; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PACKAGES := -e libs/contracts -e libs/common -e libs/devstack \
	-e services/gateway -e services/session -e services/cache -e services/worker
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install run test test-unit lint fmt proto k8s-check bench clean

help:
	@echo "make install    install Python packages, MongoDB, Kafka, Qdrant and helm into the project"
	@echo "make run        run the whole platform on this machine (Ctrl-C stops it)"
	@echo "make test       run every test (unit, integration, end-to-end, charts)"
	@echo "make lint       ruff, mypy --strict and the generated-code check"
	@echo "make fmt        format and fix what ruff can"
	@echo "make proto      regenerate libs/contracts from proto/"
	@echo "make k8s-check  lint, render and validate the Helm chart"
	@echo "make bench      run the benchmarks and print their tables"

$(STAMP): requirements-dev.txt libs/*/pyproject.toml services/*/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first: anything that pulls torch later must find it satisfied.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet $(PACKAGES) -r requirements-dev.txt
	$(PY) -m parley_devstack install
	bash scripts/install-helm.sh >/dev/null
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m parley_devstack.platform

test: install
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests ran"; fi; exit $$rc

test-unit: install
	$(PY) -m pytest -m "not e2e and not integration" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy libs/common/src libs/devstack/src services/gateway/src services/session/src services/cache/src services/worker/src
	$(PY) -m pytest -q tests/test_contracts.py

fmt: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

proto: install
	PATH=$(VENV)/bin:$$PATH $(PY) scripts/gen_proto.py

k8s-check: install
	$(PY) -m pytest -q tests/k8s

bench: install
	$(PY) -m bench.cache_eval

clean:
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache
