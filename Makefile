# The two commands a newcomer runs: `make serve` and `make test` (see README.md).
# Everything installs from requirements.lock (every package, transitive ones included, with hashes);
# `make lock` refreshes it from pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
LOCK := requirements.lock
SERVE_LOCK := requirements-serve.lock
STAMP := $(VENV)/.installed-stamp
# uv itself is pinned by the lock: the bootstrap installs the very version the lock names
UV_PIN := $(shell grep -m1 -oE '^uv==[^ ]+' $(LOCK))
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes --quiet

.PHONY: install sync system-test system-serve check-lock lock test quick lint typecheck unit bench serve bundle clean docker-test

# A venv holding exactly the lock: `uv pip sync` installs what it names and removes anything else;
# the project itself goes in editable, without resolving anything.
$(STAMP): $(LOCK) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(PY) -m pip install -q --disable-pip-version-check '$(UV_PIN)'
	$(UV) pip sync -q --python $(PY) --require-hashes $(LOCK)
	$(UV) pip install -q --python $(PY) --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Put the venv back on the lock after a hand-made change (check-lock names what drifted).
sync:
	rm -f $(STAMP)
	$(MAKE) install

# Debian packages: installed when run as root; otherwise stops at once and prints the apt-get line.
system-test:
	PYTHON=$(PYTHON) bash scripts/system_packages.sh test

system-serve:
	PYTHON=$(PYTHON) bash scripts/system_packages.sh serve

check-lock: install
	$(PY) scripts/check_lock.py $(LOCK)

# Refresh the locks from pyproject.toml, keeping current pins where they still fit (UPGRADE=1: newest).
# requirements-serve.lock (the image's) holds the same pins without the dev, training and bundle-building tools.
lock: install
	$(UV) pip compile pyproject.toml --extra dev --extra train --extra bundle $(LOCK_FLAGS) $(if $(UPGRADE),--upgrade) -o $(LOCK)
	$(UV) pip compile pyproject.toml $(LOCK_FLAGS) --constraint $(LOCK) -o $(SERVE_LOCK)

lint: install
	$(PY) -m ruff check router_core service bench tests scripts

typecheck: install
	$(PY) -m mypy

unit: install
	$(PY) -m pytest -q

test: system-test check-lock lint typecheck unit

# the image and the compose stack built and run for real (root: installs Docker; 6.5 min cold, 12 GB of disk)
docker-test: system-test install
	bash scripts/docker_test.sh

# the inner loop: the suite without the tests marked slow
quick: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) -m bench.bench_kernels
	$(PY) -m bench.bench_forward

HOST ?= 127.0.0.1
PORT ?= 8000
# glibc keeps freed blocks up to 32 MB in the heap instead of unmapping them: every layer's output is then
# not page-faulted in afresh, 6-11% off a CPU forward pass (docs/benchmarks.md); the Dockerfile sets the same
MALLOC_TUNABLES ?= glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824
serve: system-serve install
	GLIBC_TUNABLES=$(MALLOC_TUNABLES) $(VENV)/bin/s3router serve --host $(HOST) --port $(PORT)

bundle: system-test install
	bash scripts/build_bundle.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
