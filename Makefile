# Two commands do everything on a fresh machine with Python 3.11 and make:
#   make run    create .venv, install, start the gateway on the embedded default (demo model, 127.0.0.1:50051)
#   make test   create .venv if needed, install, then lint, type-check, contract checks and the whole suite

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The published contract that protos/ must stay compatible with (a copy is kept in tests/contract/).
CONTRACT_BASELINE ?= $(firstword $(wildcard ../shared/contract) tests/contract)
PYTEST_ARGS ?=

.PHONY: install run test lint typecheck contract proto proto-check pytest bench certs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: install
	$(BIN)/python -m server $(ARGS)

test: install lint typecheck contract proto-check pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# buf lint for style; buf breaking (wire + JSON) against the published baseline.
contract: install
	cd protos && ../$(BIN)/buf lint
	cd protos && ../$(BIN)/buf breaking . --against $(abspath $(CONTRACT_BASELINE)) \
		--config '{"version":"v2","breaking":{"use":["WIRE_JSON"]}}'

proto: install
	$(BIN)/python tools/genproto.py

# Fails when generated/ is not what `make proto` produces from protos/ (also a pytest test).
proto-check: install
	$(BIN)/python tools/genproto.py --check

pytest: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

# Development TLS material for the README's TLS examples: dev/tls/{ca.crt,server.crt,server.key}.
certs: install
	$(BIN)/python -m tools.devcerts dev/tls
