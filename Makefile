# All set-up happens here, so a fresh clone needs only `make test` or `make demo`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.panther-installed
PLUGIN_DIRS := $(wildcard plugins/*/)

.PHONY: setup native test test-min-torch lint demo bench clean postgres

setup: $(STAMP) native

# torch is pinned and installed first: a bare `torch` requirement would pull the multi-GB CUDA build.
$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	for p in $(PLUGIN_DIRS); do $(PY) -m pip install -q -e $$p || exit 1; done
	touch $@

# Builds (or finds in its cache) the C++ extension ahead of time.
native: $(STAMP)
	$(PY) -m panther.native build

lint: $(STAMP)
	$(PY) -m ruff check panther tests benchmarks plugins

# PANTHER_REQUIRE_NATIVE makes the suite fail if the extension silently did not load.
# Services too: a throw-away PostgreSQL on loopback for the distributed tests (installed from
# Debian's packages when missing; an already exported PANTHER_TEST_POSTGRES_URL is used as is).
test: setup lint
	PANTHER_TEST_POSTGRES_URL="$${PANTHER_TEST_POSTGRES_URL:-$$(bash .ci/postgres.sh)}" \
	PANTHER_REQUIRE_NATIVE=1 MPLBACKEND=Agg $(PY) -m pytest -q -p no:cacheprovider

# tests/test_native.py and the op fuzzing against the oldest torch pyproject accepts (torch>=2.11),
# in a venv of its own, built once. PyPI's torch 2.11 for Linux is a CUDA build: its nvidia-*
# wheels (~3.5 GB, ~40 s to install here) are needed only so that `import torch` finds its
# libraries; the tests run on the CPU and build the extension against 2.11's headers.
MIN_TORCH ?= 2.11.0
MIN_VENV ?= .venv-min-torch
MIN_STAMP := $(MIN_VENV)/.panther-torch-$(MIN_TORCH)

$(MIN_STAMP):
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install -q --upgrade pip
	$(MIN_VENV)/bin/python -m pip install -q torch==$(MIN_TORCH) numpy ninja "pytest>=8" "hypothesis>=6"
	touch $@

test-min-torch: $(MIN_STAMP)
	PANTHER_REQUIRE_NATIVE=1 PYTHONPATH=$(CURDIR) $(MIN_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_native.py tests/test_op_fuzz.py

demo: setup
	MPLBACKEND=Agg $(VENV)/bin/panther-tune demo --output panther-demo-output

bench: setup
	$(PY) benchmarks/bench_layers.py
	$(PY) benchmarks/bench_native.py
	$(PY) benchmarks/bench_sketch_accuracy.py
	$(PY) benchmarks/bench_tuner.py
	$(PY) benchmarks/bench_attention_accuracy.py
	$(PY) benchmarks/bench_outcome.py
	$(PY) benchmarks/bench_parallel.py

# A throw-away PostgreSQL server on loopback for the distributed tests and benchmark; prints
# its URL: export PANTHER_TEST_POSTGRES_URL=$$(make -s postgres)
postgres:
	@bash .ci/postgres.sh

clean:
	rm -rf $(VENV) $(MIN_VENV) build *.egg-info .pytest_cache .hypothesis
