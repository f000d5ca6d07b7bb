# Everyday commands. `make demo` and `make test` work on a fresh Debian machine: they
# install the system packages (as root), the package and its dependencies, then run.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: setup install install-test build demo test test-fast bench format lint clean

setup:                       ## system packages: BLIS (OpenMP build), pkg-config
	./scripts/setup-system.sh

install: setup               ## the package (editable) and its runtime dependencies
	$(PIP) install -q -e ".[demo]"

install-test: setup          ## plus the test-only dependencies (torch==2.13.0 etc.)
	$(PIP) install -q -e ".[test,demo]"
	$(PIP) install -q --no-deps torchxrayvision   # only for its real Indiana reports

build:                       ## rebuild the C extension in place after editing csrc/
	$(PYTHON) setup.py build_ext --inplace -q

demo: install                ## the main job on the built-in data (writes convirt-demo/)
	$(PYTHON) -m convirt.cli demo convirt-demo

test: install-test           ## the whole test suite
	$(PYTHON) -m pytest -q

test-fast:                   ## tests without reinstalling
	$(PYTHON) -m pytest -q -x

bench: install-test          ## every benchmark table beside PyTorch and the FMA peak
	for b in benchmarks/bench_*.py; do $(PYTHON) $$b || exit 1; done

format:                      ## clang-format for C, ruff for Python
	clang-format -i csrc/*.c csrc/*.h csrc/py/*.c csrc/py/*.h
	$(PYTHON) -m ruff format convirt tests benchmarks
	$(PYTHON) -m ruff check --fix convirt tests benchmarks

lint:
	$(PYTHON) -m ruff check convirt tests benchmarks

clean:
	rm -rf build dist *.egg-info convirt/_core*.so
