# Two commands do everything on a fresh machine with Python 3.11 and make:
#   make run    create .venv, install the gateway (runtime packages only), start it on the embedded default
#               (demo model, 127.0.0.1:50051)
#   make test   create .venv if needed, install the gateway and the development tools, and the Debian packages
#               the tests start (nginx, redis-server), then lint, type-check, contract checks and the whole suite
# Each install has its own stamp and runs again only when pyproject.toml changes.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev
# The published contract that protos/ must stay compatible with (a copy is kept in tests/contract/).
CONTRACT_BASELINE ?= $(firstword $(wildcard ../shared/contract) tests/contract)
PYTEST_ARGS ?=
# Debian packages the suite starts: nginx with its stream module (the load-balancer tests,
# tests/integration/test_load_balancer.py) and redis-server (limits shared between instances).
SYSTEM_PACKAGES ?= nginx libnginx-mod-stream redis-server
APT_GET ?= apt-get
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: install install-runtime system-deps run test lint typecheck contract proto proto-check pytest bench bench-peers certs clean

# The development tools (pytest, ruff, mypy, buf, grpcurl, ...) on top of the gateway.
install: $(DEV_STAMP)

# The gateway alone: what `make run` needs.
install-runtime: $(RUNTIME_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# The dev install includes the runtime one, so it stamps both.
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(RUNTIME_STAMP)

# Installs only what is missing (dpkg knows), so it costs nothing once they are there.
system-deps:
	@missing="$$(for p in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -qx 'install ok installed' || echo $$p; done)"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) $(APT_GET) update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq --no-install-recommends \
			-o DPkg::Lock::Timeout=300 $$missing; \
	fi

run: install-runtime
	$(BIN)/python -m server $(ARGS)

test: install system-deps lint typecheck contract proto-check pytest

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

pytest: install system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The bench's own extras (py-spy for the profile, matplotlib for the chart), then the
# side-by-side run. LiteLLM joins it when `make bench-peers` has installed it (bench/.venv-litellm).
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): pyproject.toml | $(DEV_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

bench: install $(BENCH_STAMP)
	$(BIN)/python -m bench $(ARGS)
	$(BIN)/python -m bench.fairness $(FAIRNESS_ARGS)

# The LiteLLM proxy, the peer `make bench` compares with, in a virtual environment of its own (its
# dependencies must not meet the gateway's). Current versions need LITELLM_MASTER_KEY; the bench sets one.
PEERS_VENV := bench/.venv-litellm
LITELLM_SPEC ?= litellm[proxy]
bench-peers: $(PEERS_VENV)/.installed
$(PEERS_VENV)/.installed:
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet '$(LITELLM_SPEC)'
	touch $@

clean:
	rm -rf $(VENV) $(PEERS_VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

# Development TLS material for the README's TLS examples: dev/tls/{ca.crt,server.crt,server.key}.
certs: install
	$(BIN)/python -m tools.devcerts dev/tls
