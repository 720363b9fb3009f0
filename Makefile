# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning pools starve each other.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install lint test test-fast demo bench clean system-deps

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: this version is a local CPU wheel here; an unpinned torch pulls a CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Debian packages some tests use (Pushgateway, promtool, Chromium for the report screenshot).
system-deps:
	@if ! command -v prometheus-pushgateway >/dev/null || ! command -v promtool >/dev/null || ! command -v chromium >/dev/null || ! command -v kubectl >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus-pushgateway prometheus chromium kubectl; \
	  else echo "system-deps: run as root or install prometheus-pushgateway prometheus chromium kubectl"; fi; \
	fi

lint: install
	$(VENV)/bin/ruff check components pipelines tests
	$(VENV)/bin/ruff format --check components pipelines tests
	$(VENV)/bin/mypy

# One OpenMP thread per test process: the suite starts subprocesses (accelerate ranks, kfp.local tasks,
# servers) and on 2 cores competing OpenMP thread pools spin-wait for each other (measured: up to 10x slower).
test: install system-deps lint
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VENV)/bin/pytest -q -m "not gpu" --timeout=900

test-fast: install
	$(VENV)/bin/pytest -q -m "not gpu and not slow and not distributed" --timeout=300

demo: install
	$(VENV)/bin/dkto demo

bench: install
	$(PY) tests/benchmarks/bench_train.py
	$(PY) tests/benchmarks/bench_ingest.py
	$(PY) tests/benchmarks/bench_eval.py
	$(PY) tests/benchmarks/bench_alignment.py

clean:
	rm -rf outputs .pytest_cache .ruff_cache .mypy_cache
