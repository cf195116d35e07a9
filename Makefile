# d4-bridge: `make demo` runs the whole chain on this machine, `make test` runs the tests.
# Both set up what they need: a virtualenv in .venv with the package, and the system
# programs (redis-server; tcprewrite and tcpdump for the tests and benchmarks).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_ARGS ?=

.PHONY: demo test bench setup system-deps clean

demo: setup
	$(VENV)/bin/d4-bridge demo $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider --durations=10

bench: setup
	$(PY) bench/run_all.py

KERNELS := bridge/sanitize/_kernels.sha256 bridge/backscatter/_kernels.sha256 bridge/_recordloops.sha256

setup: $(STAMP) $(KERNELS) system-deps

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
		{ echo "d4-bridge needs Python 3.11 or newer ($(PYTHON) is older); set PYTHON=python3.11" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || \
		{ echo "cannot create a virtualenv: install the venv module (Debian: apt-get install python3-venv)" >&2; exit 1; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

# The packet loops compiled ahead of time (bridge/compiled.py), so no hop imports numba: ~100 MB
# less memory per process and no JIT load at start. Optional: without a C compiler everything
# still runs through the JIT.
$(KERNELS) &: $(STAMP) bridge/compiled.py bridge/aot.py bridge/recordloops.py bridge/sanitize/walk.py \
		bridge/sanitize/remap.py bridge/sanitize/layout.py bridge/backscatter/loops.py bridge/backscatter/classes.py
	@$(PY) -m bridge.aot >/dev/null 2>&1 || \
		echo "note: packet loops not prebuilt (needs gcc and Python headers); using the JIT" >&2

system-deps:
	@deploy/install-system-deps.sh redis-server:redis-server tcprewrite:tcpreplay tcpdump:tcpdump

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache bench/results
