# Two commands on a fresh machine: `make demo` and `make test`. Each installs uv with pip
# when it is missing, then `uv sync --locked`, then runs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The shared datasets beside the checkout, when they are there; an exported
# BESPOKE_DATASETS_DIR wins.
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)),)
export BESPOKE_DATASETS_DIR ?= $(SHARED_DATA)
endif

# Inside `uv run` (the tests call make), $UV is the running uv binary.
UV ?= $(shell command -v uv 2>/dev/null || echo python3 -m uv)
PYTEST_WORKERS ?= 2

.PHONY: help setup demo test lint format bench serve bento

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

setup:  ## install uv if missing, then the locked environment into .venv
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 \
		|| python3 -m pip install --quiet --user uv \
		|| python3 -m pip install --quiet --user --break-system-packages uv \
		|| python3 -m pip install --quiet uv
# --compile-bytecode: every service worker, notebook kernel and CLI call imports MLflow,
# scikit-learn and LightGBM; with PYTHONDONTWRITEBYTECODE set (as on our CI machines)
# they were compiled from source each time, which tripled a service's start time.
	@$(UV) sync --locked --quiet --compile-bytecode $(SYNC_EXTRAS)

demo: setup  ## ingest, validate, report, tune, train, register: end to end on the defaults
	@$(UV) run --locked bespoke demo

serve: setup  ## the personalization service on :3000 (needs a @champion: run make demo first)
	@OTEL_SDK_DISABLED=$${OTEL_SDK_DISABLED:-true} $(UV) run --locked bentoml serve bespoke.serving.service:Personalization --port $${PORT:-3000}

# The Bento is built from a staged context (see bentofile.yaml): src/ as bespoke/, the
# requirements exported from uv.lock, and the @champion models exported from the registry
# into BentoML's model store and listed under the bentofile's models. BentoML
# pip-installs uv when none is on PATH, so the uv running this (uv run exports it as
# $UV) is put there: nothing is downloaded.
bento: setup  ## build the service's Bento offline (bentofile.yaml), into the BentoML store
	@ctx=$$(mktemp -d) && trap 'rm -rf "$$ctx"' EXIT \
		&& cp bentofile.yaml "$$ctx/" && cp -R src "$$ctx/bespoke" \
		&& $(UV) export --frozen --no-dev --no-hashes --no-emit-project --no-header --no-annotate --quiet \
			--output-file "$$ctx/requirements.lock.txt" \
		&& $(UV) run --locked bespoke models export-bento --dataset $${BESPOKE_SERVING_DATASET:-ml-100k} \
			--bentofile "$$ctx/bentofile.yaml" \
		&& cd "$$ctx" && $(UV) run --project "$(CURDIR)" --locked \
			sh -c 'PATH="$$(dirname "$$UV"):$$PATH" exec bentoml build .'

# System packages a test needs (a headless Chromium) are installed by the project's own
# script where the machine allows it (root with apt-get); elsewhere those tests skip,
# printing why.
# The tests also cover the scale-out engines (Spark, PostgreSQL drivers): their extras.
test: SYNC_EXTRAS = --all-extras
test: setup  ## run the tests (code, data, browser, notebooks)
	@scripts/test-system-packages
# --dist loadgroup: the tests marked xdist_group("spark") run on one worker, one JVM.
	@$(UV) run --locked pytest -n $(PYTEST_WORKERS) --dist loadgroup --nbmake tests notebooks

lint: setup  ## ruff lint and format check
	@$(UV) run --locked ruff check .
	@$(UV) run --locked ruff format --check .

format: setup  ## apply ruff's fixes and formatting
	@$(UV) run --locked ruff check --fix .
	@$(UV) run --locked ruff format .

bench: SYNC_EXTRAS = --all-extras
bench: setup  ## run the benchmarks; JSON results and tables under bench/results/
	@mkdir -p bench/results
	@$(UV) run --locked python bench/ingest.py --out bench/results/ingest.json
	@$(UV) run --locked python bench/recsys.py --datasets ml-100k,ml-1m --protocol ms-stratified --out bench/results/recsys.json
	@$(UV) run --locked python bench/ranking.py --datasets ml-100k,ml-1m --out bench/results/ranking.json
	@$(UV) run --locked python bench/refit.py --datasets ml-100k --out bench/results/refit.json
	@$(UV) run --locked python bench/serving.py --out bench/results/serving.json
	@$(UV) run --locked python bench/drift.py --out bench/results/drift.json
	@$(UV) run --locked python bench/identity.py --out bench/results/identity.json
	@$(UV) run --locked python bench/segments.py --out bench/results/segments.json
	@$(UV) run --locked python bench/online_store.py --out bench/results/online_store.json
	@$(UV) run --locked python bench/experiments.py --out bench/results/experiments.json
	@$(UV) run --locked python bench/privacy.py --out bench/results/privacy.json
	@scripts/test-system-packages
	@$(UV) run --locked python bench/channels.py --out bench/results/channels.json
	@$(UV) run --locked python bench/scale.py --out bench/results/scale.json
