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

.PHONY: setup test lint demo demo-data clean

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

test: $(TEST_STAMP)
	$(PY) -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Fashion-MNIST from Debian's dataset-fashion-mnist package (real data, installed once).
demo-data: setup
	@$(PY) -m tldmi_jax.data.fashion_mnist_mi --check 2>/dev/null || { \
	  echo 'Installing Debian package dataset-fashion-mnist (the demo data)...'; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; }

demo: demo-data
	$(PY) launch/train.py --config=configs/fashion_mnist.py --workdir=workdirs/demo

clean:
	rm -rf workdirs .jax_cache .pytest_cache
