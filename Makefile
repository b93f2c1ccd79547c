# Lungwatch: the two commands a new machine needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# uv lives in its own small venv: `uv sync` makes .venv exactly what uv.lock says.
TOOLS := .tools
UV := $(TOOLS)/bin/uv
UV_VERSION := 0.13.8
STAMP := $(VENV)/.installed
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never
# Compiled once at install: with PYTHONDONTWRITEBYTECODE set (as on these machines) Python
# would otherwise compile MLflow, scikit-learn and pandas from source at every process start
# (measured: most of a 15 s model-server start).
export UV_COMPILE_BYTECODE := 1

export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: run test lint unit integration model lock system-packages clean load venv stack stack-down bench bench-quick deploy-schemas

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# The dev venv holds every dependency group (gateway, model, loadgen, dev), exactly as
# uv.lock pins them; it is synced again whenever the lock or pyproject.toml changes.
$(STAMP): uv.lock pyproject.toml Makefile | $(UV)
	$(UV) sync --locked --all-groups --python $(PYTHON) --quiet
	touch $(STAMP)

venv: $(STAMP)

# Regenerate the lock after editing the dependency groups in pyproject.toml.
lock: | $(UV)
	$(UV) lock --python $(PYTHON)

# Trains and registers the model only when the local registry has no version yet.
model: $(STAMP)
	$(PY) -m model.train --if-missing

run: $(STAMP)
	$(PY) -m model.train --if-missing
	$(PY) scripts/run_local.py

# Traffic against `make run`'s gateway, e.g. make load ARGS="--rate 50 --duration 60s".
load: $(STAMP)
	$(PY) -m loadgen $(or $(ARGS),--rate 10 --duration 60s)

# Lungwatch against bare MLflow and BentoML 1.4.40 (issues 7 and 11), not part of `make test`:
# ~50 min on 2 cores (issue 23 added shadow, canary and the hot swap); results/bench/results.{md,json} and results-p99.png. BentoML runs in the
# bench's own venv (results/tmp/bench-venvs/, pinned from uv.lock), built once on first use.
bench: $(STAMP)
	$(PY) -m bench

# One short round (~9 min with both trainings) proving every system starts and every load runs; results/bench/quick.*
bench-quick: $(STAMP)
	$(PY) -m bench --quick

# The full stack in containers (needs Docker + Compose v2): build, wait until healthy, print URLs.
stack:
	scripts/stack.sh up

stack-down:
	scripts/stack.sh down

# What tests need from Debian, installed when missing: Prometheus (and promtool, Alertmanager),
# haproxy and redis-server (tests/integration/test_replicas.py). Tests that need them never
# skip in CI.
SYSTEM_BINARIES := prometheus promtool haproxy redis-server
system-packages:
	@missing=""; for b in $(SYSTEM_BINARIES); do command -v $$b >/dev/null || missing="$$missing $$b"; done; \
	command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null || missing="$$missing alertmanager"; \
	[ -z "$$missing" ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing with apt-get:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      prometheus prometheus-alertmanager haproxy redis-server >/dev/null; \
	  else echo "missing:$$missing (apt-get install -y prometheus prometheus-alertmanager haproxy redis-server)"; exit 1; fi; }

# The validators of deploy/'s custom resources (KEDA, Prometheus Operator), exactly as
# deploy/schemas/package-lock.json pins them (tests/config/test_deploy_crds.py).
DEPLOY_SCHEMAS := deploy/schemas/node_modules/.package-lock.json
$(DEPLOY_SCHEMAS): deploy/schemas/package-lock.json
	npm ci --prefix deploy/schemas --ignore-scripts --no-audit --no-fund --silent

deploy-schemas: $(DEPLOY_SCHEMAS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: $(STAMP) system-packages deploy-schemas lint
	$(PY) -m pytest

unit: $(STAMP) deploy-schemas
	$(PY) -m pytest tests/unit tests/config

integration: $(STAMP) system-packages
	$(PY) -m pytest tests/integration

clean:
	rm -rf $(VENV) $(TOOLS) deploy/schemas/node_modules mlruns.db mlartifacts .pytest_cache .mypy_cache .ruff_cache
