# All set-up happens here, so a fresh clone needs only `make test` or `make demo`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.panther-installed
PLUGIN_DIRS := $(wildcard plugins/*/)

.PHONY: setup native test lint demo bench clean

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
test: setup lint
	PANTHER_REQUIRE_NATIVE=1 MPLBACKEND=Agg $(PY) -m pytest -q -p no:cacheprovider

demo: setup
	MPLBACKEND=Agg $(VENV)/bin/panther-tune demo --output panther-demo-output

bench: setup
	$(PY) benchmarks/bench_layers.py
	$(PY) benchmarks/bench_native.py
	$(PY) benchmarks/bench_sketch_accuracy.py
	$(PY) benchmarks/bench_tuner.py
	$(PY) benchmarks/bench_outcome.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
