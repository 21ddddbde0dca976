# fleetpin: every target installs what it needs (venv, npm packages) by itself, idempotently.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP_STAMP := $(VENV)/.fleetpin-installed
NPM_STAMP := node_modules/.fleetpin-installed

.PHONY: setup demo test test-cpython test-micropython test-micropython-unix test-wheel check-device bench clean

setup: $(PIP_STAMP) $(NPM_STAMP)

$(PIP_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: setup
	$(VENV)/bin/fleetpin demo --out demo-out

# The device-core suite on CPython and on the MicroPython VM, the host tests, and the
# device code's type check and cross-compilation.
test: setup check-device test-micropython test-micropython-unix test-wheel test-cpython

test-cpython: setup
	$(PY) -m pytest

test-micropython: setup
	$(PY) tools/run_device_tests_vm.py

test-micropython-unix: setup
	$(PY) tools/run_device_tests_unix.py

# The package is the product: the wheel, installed in a throwaway venv, runs what users run.
test-wheel: setup
	$(PY) tools/smoke_wheel.py

check-device: setup
	$(PY) tools/check_device.py

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) node_modules build .pytest_cache .mypy_cache
