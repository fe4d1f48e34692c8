# pithnode — developer entry points. `make run` and `make test` work as the first command on a
# fresh machine: both call `install`, which is idempotent (a stamp file tracks the lock).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.9.30
STAMP := $(VENV)/.installed
DATA_DIR ?= .pithnode-demo
PYTEST_ARGS ?=

.PHONY: install test lint run devnet bench fuzz soak clean os-deps browser-deps interop-js

# Bytecode is compiled here, so that no process compiles it again when it starts (a node
# imports about 0.9 s of source otherwise; PYTHONDONTWRITEBYTECODE stops Python from caching).
install: $(STAMP)
	@$(BIN)/python -m compileall -q -j 0 protocol storage node >/dev/null

# OS build dependencies: py-libp2p's fastecdsa compiles against GMP.
os-deps:
	@if ! dpkg -s libgmp-dev >/dev/null 2>&1 || ! command -v gcc >/dev/null 2>&1; then \
		echo "installing OS build dependencies (libgmp-dev, build-essential)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgmp-dev build-essential >/dev/null; \
	fi

$(STAMP): requirements.lock pyproject.toml
	@$(MAKE) --no-print-directory os-deps
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	@$(BIN)/uv pip sync -q --compile-bytecode --python $(BIN)/python requirements.lock
	@$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	@touch $(STAMP)
	@echo "installed into $(VENV)"

# Regenerate the lock after changing dependencies in pyproject.toml.
lock: $(BIN)/python
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

# Headless Chromium for the browser tests of the web pages (Debian's package).
browser-deps:
	@if ! command -v chromium >/dev/null 2>&1; then \
		echo "installing chromium (browser tests)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

lint: install
	$(BIN)/ruff check $(wildcard protocol storage node tests bench)
	$(BIN)/python .ci/mypy_tree.py

test: install browser-deps lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# A node with the real golden record and a demo corpus, until Ctrl-C (HTTP on 127.0.0.1:8080).
# Options go in RUN_ARGS, e.g.  make run RUN_ARGS='--http-port 8081 --records 500'
run: install
	$(BIN)/python -m pithnode.node.demo --data-dir $(DATA_DIR) $(RUN_ARGS)

# Three peered nodes on 127.0.0.1 (configs/devnet; DEVNET ONLY: public test keys), until
# Ctrl-C. DEVNET_ARGS e.g. '--check' (exit once converged), '--fresh', '--records 100'.
devnet: install
	$(BIN)/python -m pithnode.node.devnet $(DEVNET_ARGS)

bench: install
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

fuzz: install
	$(BIN)/python -m pytest tests/fuzz --hypothesis-profile=long $(PYTEST_ARGS)

soak: install
	$(BIN)/python bench/soak.py

# js-libp2p interoperability (also part of `make test`; needs node >= 20 and npm).
interop-js: install
	cd tests/interop/js && npm ci --no-audit --no-fund
	$(BIN)/python -m pytest tests/test_interop_js.py -v

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache tests/interop/js/node_modules
