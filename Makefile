# ragr — `make help` lists the targets.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
export HF_HUB_DISABLE_TELEMETRY = 1
export TOKENIZERS_PARALLELISM = false

.PHONY: help install install-test demo test test-all bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python  ## create .venv and install ragr (keeps a torch you already have)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e ".[dev]"
	@$(BIN)/ragr --help > /dev/null && echo "ragr installed in $(VENV)"

install-test: install  ## install + the test extras: DeepSpeed without CUDA ops (its ZeRO-2/3 CPU tests run)
	@$(BIN)/python -c "import deepspeed" 2>/dev/null || DS_BUILD_OPS=0 $(BIN)/python -m pip install -q -e ".[deepspeed]"

demo: install  ## fine-tune the bundled MiniLM on the bundled demo data; prints dev metrics before/after
	$(BIN)/ragr train

test: install-test  ## run the default test suite (not slow)
	$(BIN)/python -m pytest -q

test-all: install-test  ## run every test, slow ones too
	$(BIN)/python -m pytest -q -m ""

bench: install  ## run the benchmarks (see docs/BENCHMARKS.md)
	$(BIN)/python benchmarks/run.py

clean:  ## remove the venv and run outputs
	rm -rf $(VENV) runs build dist src/*.egg-info
