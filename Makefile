# Two entry points for a fresh machine (as root): `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
SYSTEM_PACKAGES := etcd-server etcd-client docker.io bird iptables ipset busybox-static debootstrap iproute2 procps kmod psmisc util-linux

.PHONY: all deps system-deps venv test unit-test st-test demo images binary bench clean

all: test

# Debian packages the tests and the demo run for real (etcd, dockerd, BIRD, iptables, ipset).
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

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
	$(PY) -m pytest tests/st -q -rs

test: deps
	$(PY) -m pytest tests/unit tests/st -q -rs

# calico/node and calico/node-libnetwork, built with no registry (debootstrap base, cached).
images: deps
	$(PY) images/build.py

# The seed's two-host libnetwork demonstration on namespace hosts.  KEEP=1 leaves it up.
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
