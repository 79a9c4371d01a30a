# Two entry points for a fresh machine (as root): `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: all deps system-deps venv test unit-test st-test demo images plugin binary bench clean

all: test

# Debian packages the tests and the demo run for real (etcd, dockerd, BIRD, iptables, ipset),
# chosen from what this distribution's archive offers (tools/system-deps says why).
system-deps:
	@bash tools/system-deps

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

deps: system-deps venv

unit-test: deps
	$(PY) -m pytest tests/unit -q

st-test: deps
	$(PY) -m pytest tests/st -q -rfEs --durations=15

# Both tiers at once, as two pytest runs (tools/run-tests says why that is safe).
test: deps
	PY=$(PY) bash tools/run-tests

# calico/node and calico/node-libnetwork, built with no registry (debootstrap base, cached).
images: deps
	$(PY) images/build.py

# The driver as a Docker managed plugin: build/plugin (config.json + rootfs), no registry.
plugin: deps
	$(PY) images/plugin.py

# The seed's two-host libnetwork demonstration on namespace hosts.  KEEP=1 leaves it up;
# MANAGED=1 runs it with the driver as the Docker managed plugin (calico:latest).
demo: deps
	$(PY) -m tests.st.demo

# PyInstaller only: installing '.[binary]' would replace the venv's editable calicoctl.
binary: deps
	$(PIP) install -q 'pyinstaller>=6'
	$(VENV)/bin/pyinstaller --noconfirm --clean calicoctl.spec

bench: deps
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build dist *.egg-info

# Order independence: every unit module alone (its own tests in a shuffled order), then the whole
# unit suite shuffled (tests/shuffle.py prints its seed; SEED=<n> replays an order).  ST=1 also
# runs every system module alone, shuffled within (minutes each, under the testbed lock).
# Runs everything and lists what failed.
.PHONY: test-isolation
ISOLATION_SEED := $(if $(SEED),--shuffle-seed=$(SEED))
test-isolation: deps
	@failed=""; \
	for m in tests/unit/test_*.py $(if $(ST),tests/st/test_*.py); do \
		echo "== $$m alone"; \
		$(PY) -m pytest "$$m" -q -rs -p no:cacheprovider -p tests.shuffle $(ISOLATION_SEED) \
			|| failed="$$failed $$m"; \
	done; \
	echo "== tests/unit shuffled"; \
	$(PY) -m pytest tests/unit -q -rs -p no:cacheprovider -p tests.shuffle $(ISOLATION_SEED) \
		|| failed="$$failed tests/unit(shuffled)"; \
	if [ -n "$$failed" ]; then echo "test-isolation failed:$$failed"; exit 1; fi; \
	echo "test-isolation: every module passed alone and the unit suite passed shuffled"
