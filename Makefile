# One command installs everything and runs every check: `make test`.
PYTHON ?= python3
# The CPU build of torch is pinned first so that pip never resolves a CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: install test lint typecheck unit bench

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check $(TORCH_PIN)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[dev]"

lint:
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m ruff check .

typecheck:
	$(PYTHON) -m mypy

unit:
	$(PYTHON) -m pytest -q

test: install lint typecheck unit

bench:
	$(PYTHON) -m benchmarks.encoder_overhead
