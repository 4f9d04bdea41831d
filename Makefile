# opd — set-up, tests and the toy reproduction. `make help` lists the targets.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: help install test test-slow test-gpu lint

help:  ## list targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch pulls several GB of CUDA packages
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)  ## make .venv: torch 2.13.0 (CPU), then opd with [dev]

test: $(STAMP)  ## the default suite (CPU, no network, < 10 min)
	$(BIN)/pytest -q

test-slow: $(STAMP)  ## slow tests: the full toy build and long smokes
	$(BIN)/pytest -q -m slow

test-gpu: $(STAMP)  ## GPU tests (vLLM); skipped without a CUDA GPU
	$(BIN)/pytest -q -m gpu

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check opd_cli tests analysis
