# The two commands a newcomer runs: `make serve` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test lint typecheck unit bench serve bundle clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(PY) -m ruff check router_core service bench tests

typecheck: install
	$(PY) -m mypy

unit: install
	$(PY) -m pytest -q

test: lint typecheck unit

bench: install
	$(PY) -m bench.bench_kernels
	$(PY) -m bench.bench_forward

HOST ?= 127.0.0.1
PORT ?= 8000
serve: install
	$(VENV)/bin/s3router serve --host $(HOST) --port $(PORT)

bundle: install
	bash scripts/build_bundle.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
