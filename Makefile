# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.jax_cache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS ?= 0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES ?= 0
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: setup test lint demo demo-data browser clean bench bench-quick

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# Test-only dependencies (PyTorch CPU, for the converter parity tests).
$(TEST_STAMP): $(STAMP) requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	touch $(TEST_STAMP)

setup: $(STAMP)

# Two worker processes (pytest-xdist), each test file on one of them; TEST_WORKERS=0 runs
# everything in this process.
TEST_WORKERS ?= 2
test: $(TEST_STAMP) browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

# The browser tests drive Debian's Chromium with Playwright (Playwright's own browser download
# needs the network): apt-get as root when it is missing, otherwise the command to run is
# printed and those tests are skipped. CHROMIUM=PATH names another executable.
browser:
	@[ -n "$$CHROMIUM" ] || command -v chromium >/dev/null 2>&1 || \
	  command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo 'Installing Debian package chromium (for the browser tests)...'; \
	    apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo 'The browser tests need Chromium (skipped without it): sudo apt-get install chromium'; \
	  fi; }

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Fashion-MNIST from Debian's dataset-fashion-mnist package (real data, installed once):
# apt-get as root, otherwise the one command to run is printed. DATA_ROOT=DIR (a directory
# with the four idx files) skips the package.
DATA_ROOT ?=
demo-data: setup
ifeq ($(DATA_ROOT),)
	@$(PY) -m tldmi_jax.data.fashion_mnist_mi --check 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo 'Installing Debian package dataset-fashion-mnist (the demo data)...'; \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  else \
	    echo 'The demo needs Fashion-MNIST. Run:  sudo apt-get install dataset-fashion-mnist'; \
	    echo 'or point the demo at the four idx files:  make demo DATA_ROOT=DIR'; \
	    exit 1; \
	  fi; }
else
	@$(PY) -m tldmi_jax.data.fashion_mnist_mi --check $(DATA_ROOT)
endif

# The whole TL-DMI pipeline on Fashion-MNIST (about 5.5 minutes on 2 CPU cores); rerunning
# resumes. Writes workdirs/demo/report.md and report.html.
demo: demo-data
	$(PY) launch/demo.py --config=configs/demo.py --workdir=workdirs/demo \
	  $(if $(DATA_ROOT),--config.data.root=$(DATA_ROOT))

# The benchmark table (bench/run_all.py): each row times this library against a PyTorch
# reference; prints the table and writes bench/RESULTS.md (32 minutes on 2 CPU cores). Needs
# torch (the test requirements). bench-quick: reduced sizes, under 5 minutes on 2 CPU cores
# (not run by CI), written to bench/RESULTS-quick.md.
bench: $(TEST_STAMP)
	PYTHONPATH=. $(PY) bench/run_all.py

bench-quick: $(TEST_STAMP)
	PYTHONPATH=. $(PY) bench/run_all.py --quick

clean:
	rm -rf workdirs .jax_cache .pytest_cache
