# The two commands a newcomer runs: `make serve` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test lint typecheck unit bench serve clean

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

serve: install
	@echo "s3router: the HTTP service is not built yet (issue 3); the engine is usable in-process:" >&2
	@echo "  $(PY) -c 'import router_core; help(router_core.Router)'" >&2
	@exit 2

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
