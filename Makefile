# Two commands on a fresh machine: `make run` and `make test`. Both create .venv from the
# pinned requirements.lock when it is missing or stale, and never reinstall otherwise.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Self-hosted scripts and styles for Data Docs and DVC plots (tasks/web_assets.py); without
# the npm registry the reports keep their CDN links and the next setup tries again.
WEB_ASSETS := .web-assets/.complete

# The default corpus is downloaded and hash-checked; without network it comes from a local
# mirror folder, ../shared/data when there is one.
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)),)
export TINYGPT_DATA_MIRROR ?= $(SHARED_DATA)
endif

export PYTHONHASHSEED := 0
# Embedded Prefect, MLflow, DVC and Great Expectations: project-local state, quiet offline.
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 60
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export GX_ANALYTICS_ENABLED ?= false
export DVC_NO_ANALYTICS ?= 1
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION ?= false
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR ?= false
export MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT ?= true
export DO_NOT_TRACK ?= 1
export PREFECT_LOGGING_EXTRA_LOGGERS ?= tinygpt
export PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW ?= ignore

.PHONY: setup run test test-fast lint clean mlflow-ui bench stack-up stack-down stack-status

setup: $(STAMP) $(WEB_ASSETS)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(WEB_ASSETS): tasks/web_assets.py $(STAMP)
	$(BIN)/python -m tasks.web_assets

# Arguments for `tinygpt retrain`: make run ARGS="--set train.max_steps=200 --recipe NAME"
run: setup
	$(BIN)/tinygpt retrain $(ARGS)

# Benchmarks against peers (several minutes each; quality includes a 15-minute run).
bench: setup
	$(BIN)/python bench/tokenizer.py --big-mb 100
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/ddp.py
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/retrain_overhead.py
	$(BIN)/python bench/scale.py --encode-speedup
	$(BIN)/python bench/quality.py
	$(BIN)/python bench/recipes.py
	test -f mlflow/mlflow.db || $(MAKE) run   # serve_load needs a champion to serve
	$(BIN)/python bench/serve_load.py

mlflow-ui: setup
	$(BIN)/tinygpt ui mlflow

# Debian's Chromium for the browser test (Playwright drives it; it never downloads a browser).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# The team stack (`tinygpt stack up`) runs Debian's PostgreSQL 15; install it when missing.
INITDB := /usr/lib/postgresql/15/bin/initdb
$(INITDB):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql

stack-up: setup $(INITDB)
	$(BIN)/tinygpt stack up

stack-down: setup
	$(BIN)/tinygpt stack down

stack-status: setup
	$(BIN)/tinygpt stack status

lint: setup
	$(BIN)/ruff check .

# Two pytest-xdist workers: most tests wait on servers and child processes, so two share two
# cores well. Each test module is one unit of work, tests/stack one, queued longest folder
# first (tests/conftest.py).
XDIST := -n 2 --no-loadscope-reorder

test: lint $(CHROMIUM) $(INITDB)
	$(BIN)/python -m pytest $(XDIST)

# The inner loop: no servers, no whole flows, no scale measurements (about 2 minutes).
test-fast: lint
	$(BIN)/python -m pytest $(XDIST) -m "not slow"

clean:
	rm -rf runs .pytest_cache
