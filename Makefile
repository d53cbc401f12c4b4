# ism — every target that needs Python builds .venv first (once; reused after).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A matched torch/torchvision pair; override on a cluster: make install TORCH="torch==X torchvision==Y"
TORCH ?= torch==2.14.1 torchvision==0.29.1
PROFILE ?= embedded
NAME ?= components
ARGS ?=
PYTEST_ARGS ?=
# make test runs two test files at once: most of its wall waits on started services (Ray, MLflow, PostgreSQL), so
# a second file overlaps those waits (docs/results.md#wall-time-of-the-commands); files stay whole, so a module's
# fixtures are built once. More workers start more Ray clusters at once: raise it only on a larger machine.
TEST_JOBS ?= 2
# components first: the headline comparison gets the budget before the other specs
SPECS := ablations/components.yaml $(filter-out ablations/components.yaml,$(sort $(wildcard ablations/*.yaml)))
# One wall-time budget for the whole main job (forms: 60m, 1.5h, 40 trials, 3 cpu-h): seeds are added adaptively
# where a comparison is undecided, specs in SPECS order; a finished trial (any spec's) is free. BUDGET= runs every seed.
BUDGET ?= 60m

.DEFAULT_GOAL := help
.PHONY: help install test test-fast bench ablation-all ablation report study ui train clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-14s %s\n", $$1, $$2}'
	@echo "  variables: PROFILE=$(PROFILE) NAME=$(NAME) TORCH=\"$(TORCH)\" ARGS=..."

$(VENV)/.installed: pyproject.toml requirements/lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -c requirements/lock.txt -e '.[dev,inception,dashboard]'
	touch $@

install: $(VENV)/.installed ## create .venv with the pinned stack (once)

test: $(VENV)/.installed ## the whole test suite, slow end-to-end tests included (CI runs this), two files at a time
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile $(PYTEST_ARGS)

test-fast: $(VENV)/.installed ## the unit tier: no PostgreSQL, Ray or Chromium (tiers: pyproject.toml markers), on every core
	$(BIN)/python -m pytest -q -m unit -n auto $(PYTEST_ARGS)

bench: $(VENV)/.installed ## benchmarks -> benchmarks/out/*.json and *.md
	$(BIN)/python -m benchmarks.run $(ARGS)

ablation-all: $(VENV)/.installed ## every spec in ablations/ on PROFILE (default embedded) under one BUDGET, then the reports
	@status=0; $(BIN)/ism ablate $(SPECS) --profile $(PROFILE) $(if $(BUDGET),--budget "$(BUDGET)") $(ARGS) || status=$$?; \
	[ $$status -eq 130 ] && exit 130; status=$$(( status != 0 )); \
	for spec in $(SPECS); do $(BIN)/ism report $$spec --profile $(PROFILE) || status=1; done; exit $$status

ablation: $(VENV)/.installed ## one spec: make ablation NAME=components [PROFILE=...]
	@status=0; $(BIN)/ism ablate ablations/$(NAME).yaml --profile $(PROFILE) $(ARGS) || status=$$?; \
	[ $$status -eq 130 ] && exit 130; status=$$(( status != 0 )); \
	$(BIN)/ism report ablations/$(NAME).yaml --profile $(PROFILE) || status=1; exit $$status

report: $(VENV)/.installed ## report of one spec: make report NAME=components
	$(BIN)/ism report ablations/$(NAME).yaml --profile $(PROFILE) $(ARGS)

study: $(VENV)/.installed ## an Optuna study: make study NAME=wavelet
	$(BIN)/ism study studies/$(NAME).yaml --profile $(PROFILE) $(ARGS)

ui: $(VENV)/.installed ## MLflow UI on 127.0.0.1 over the project's store
	$(BIN)/ism ui $(ARGS)

train: $(VENV)/.installed ## one training run: make train ARGS="--preset mnist-cpu guidance.mode=intrinsic"
	$(BIN)/ism train $(ARGS)

clean: ## remove runs and caches (keeps .venv, reports/ and the MLflow store mlruns/)
	rm -rf runs .ism .pytest_cache
	@echo "kept .venv, reports/ and mlruns/ (the MLflow store: every sweep's runs); rm -rf mlruns drops it"
