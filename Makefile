# Everyday commands. `make demo` and `make test` work on a fresh Debian machine: they
# install the system packages (as root), the package and its dependencies, then run.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: setup install install-test install-dev dev-tools build demo test test-fast bench \
	format lint clean sanitize

setup:                       ## system packages: BLIS (OpenMP build), pkg-config, Open MPI
	./scripts/setup-system.sh

install: setup               ## the package (editable) and its runtime dependencies
	$(PIP) install -q -e ".[demo]"

install-test: setup          ## plus the test-only dependencies (torch==2.13.0, mpi4py etc.)
	$(PIP) install -q -e ".[test,demo,mpi]"
	$(PIP) install -q --no-deps torchxrayvision   # only for its real Indiana reports

build:                       ## rebuild the C extension in place after editing csrc/
	$(PYTHON) setup.py build_ext --inplace -q

demo: install                ## the main job on the built-in data (writes convirt-demo/)
	$(PYTHON) -m convirt.cli demo convirt-demo

test: install-test           ## the whole test suite, slow tests included
	$(PYTHON) -m pytest -q

test-fast:                   ## without reinstalling, and without the tests marked slow
	$(PYTHON) -m pytest -q -x -m "not slow"

bench: install-test          ## every benchmark table beside PyTorch and the FMA peak
	for b in benchmarks/bench_*.py; do $(PYTHON) $$b || exit 1; done

# AddressSanitizer + UBSan: the extension is built into $(SANITIZE_DIR) (the in-place
# build that `make test` uses is left alone) and the C-facing tests run on it, the
# interpreter preloading libasan. SANITIZE_TESTS (and SANITIZE_SELECT, a -k expression)
# choose the tests; the default subset takes about 5 minutes on 2 cores. Tests that
# time calls or measure memory skip themselves when CONVIRT_SANITIZE=1.
SANITIZE_DIR ?= build/sanitize
SANITIZE_TESTS ?= tests/test_hostile_core.py tests/test_fuzz_arrays.py tests/test_core.py \
	tests/test_loss.py tests/test_optim.py tests/test_augment.py tests/test_classify.py
SANITIZE_SELECT ?= not repeated_calls_leak_nothing and not fma_peak_is_measured
SANITIZE_CFLAGS = -fsanitize=address,undefined -fno-sanitize-recover=undefined \
	-fno-omit-frame-pointer -fno-wrapv -g -O1 -Wno-format-truncation
SANITIZE_ENV = LD_PRELOAD=$$(gcc -print-file-name=libasan.so) CONVIRT_SANITIZE=1 \
	ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:halt_on_error=1 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	PYTHONPATH=$(CURDIR)/$(SANITIZE_DIR)/lib

sanitize:                    ## ASan + UBSan build in build/sanitize, C-facing tests on it
	rm -rf $(SANITIZE_DIR)/lib
	CONVIRT_CFLAGS="$(SANITIZE_CFLAGS)" LDFLAGS="-fsanitize=address,undefined" \
		$(PYTHON) setup.py -q build_ext --force \
		--build-lib $(SANITIZE_DIR)/lib --build-temp $(SANITIZE_DIR)/temp
	cd convirt && find . -name '*.py' -exec cp --parents {} $(CURDIR)/$(SANITIZE_DIR)/lib/convirt/ \;
	# from the build directory, so that this tree's convirt/ is not on the path
	cd $(SANITIZE_DIR) && $(SANITIZE_ENV) $(PYTHON) -m pytest -q -p no:cacheprovider \
		-W ignore::DeprecationWarning -k "$(SANITIZE_SELECT)" \
		$(addprefix $(CURDIR)/,$(SANITIZE_TESTS))
	# and the convolutions' Winograd path (winograd.c), forward and both gradients
	cd $(SANITIZE_DIR) && $(SANITIZE_ENV) $(PYTHON) -m pytest -q -p no:cacheprovider \
		-W ignore::DeprecationWarning -k winograd \
		$(CURDIR)/tests/test_image_layers.py $(CURDIR)/tests/test_resnet.py

# The formatters are pinned in pyproject.toml's dev extra (another version formats
# differently): format and lint refuse to run others. `make install-dev` installs them.
# Both are taken from $(PYTHON)'s environment (clang-format from the PyPI package's own
# binary, else the one on PATH), as `make install-dev` puts them there.
RUFF ?= $(PYTHON) -m ruff
CLANG_FORMAT ?= $(shell $(PYTHON) -c "from clang_format import get_executable as g; \
	print(g('clang-format'))" 2>/dev/null || echo clang-format)
RUFF_VERSION = $(shell sed -n 's/.*"ruff==\([^"]*\)".*/\1/p' pyproject.toml)
CLANG_FORMAT_VERSION = $(shell sed -n 's/.*"clang-format==\([^"]*\)".*/\1/p' pyproject.toml)
C_SOURCES = $(shell find csrc -name '*.[ch]' | sort)

install-dev:                 ## the pinned ruff and clang-format (pyproject.toml's dev extra)
	$(PIP) install -q "ruff==$(RUFF_VERSION)" "clang-format==$(CLANG_FORMAT_VERSION)"

dev-tools:
	@v=$$($(RUFF) --version 2>/dev/null); [ "$$v" = "ruff $(RUFF_VERSION)" ] || { echo \
		"need ruff $(RUFF_VERSION), found: $${v:-none}; run make install-dev" >&2; exit 1; }
	@v=$$($(CLANG_FORMAT) --version 2>/dev/null); case "$$v" in \
		*"clang-format version $(CLANG_FORMAT_VERSION)"|*"version $(CLANG_FORMAT_VERSION) "*) ;; \
		*) echo "need clang-format $(CLANG_FORMAT_VERSION), found: $${v:-none};" \
			"run make install-dev" >&2; exit 1;; esac

# ruff check --fix before ruff format (its import sorting may want formatting); what it
# cannot fix is listed, and make lint keeps failing on it until fixed by hand.
format: dev-tools            ## clang-format for C, ruff for Python, in place
	$(CLANG_FORMAT) -i $(C_SOURCES)
	$(RUFF) check --fix --exit-zero .
	$(RUFF) format .

# All three run, so that one CI log shows everything to fix; then it fails if any did.
lint: dev-tools              ## what CI checks: ruff check, ruff format, clang-format (read only)
	@status=0; \
	echo "$(RUFF) check ."; $(RUFF) check . || status=1; \
	echo "$(RUFF) format --check ."; $(RUFF) format --check . || status=1; \
	echo "$(CLANG_FORMAT) --dry-run -Werror csrc/**/*.[ch]"; \
	$(CLANG_FORMAT) --dry-run -Werror $(C_SOURCES) || status=1; \
	exit $$status

clean:
	rm -rf build dist *.egg-info convirt/_core*.so
