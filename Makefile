# Two entry points for a fresh Debian bookworm machine: `make demo` and `make test`.
# Each installs what it needs (Debian packages when missing, the venv, the cffi build) and is safe to rerun.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Debian's own python3 with system site-packages: python3-gi (umockdev's bindings) comes from Debian.
SYSTEM_PYTHON := /usr/bin/python3
APT_PACKAGES := python3 python3-venv python3-dev python3-gi gcc pkg-config libffi-dev linux-libc-dev \
	libsystemd-dev umockdev gir1.2-umockdev-1.0 xenstore-utils ovmf libxenmisc4.17 systemd
STAMP := $(VENV)/.installed
PY_SOURCES := sevd sim tests bench cffi_build.py

.PHONY: all deps venv demo test lint bench clean

all: test

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml setup.py cffi_build.py sim/pyproject.toml
	$(MAKE) deps
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,systemd]' -e ./sim
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sevd-sim demo

test: $(STAMP)
	$(VENV)/bin/ruff check $(PY_SOURCES)
	$(VENV)/bin/ruff format --check $(PY_SOURCES)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info sevd/_psp*.so sevd/_psp.c

# Apply, build and boot the Xen SEV patches under QEMU, and compile the Dom0 kernel patch (~7 min on 2 cores;
# see xen-patches/README.md). Installs its own Debian packages; caches in .cache/.
.PHONY: xen-check system-test
xen-check:
	bash xen-patches/check.sh

# The whole system on that Xen under QEMU: sevd in Dom0 with the real xenstored, stock xl and the
# patched hypervisor; xl-sev launches SEV guests (~10 min; see docs/operations.md).
system-test: $(STAMP)
	bash xen-patches/system-test.sh

# Debian packages (see docs/install.md): sevd and sevd-ccp-dkms into dist/deb (~10 s), the patched Xen into
# dist/deb/xen (Debian's own rules; slow, see docs/install.md), and the install proof in fresh Debian 12 and
# 13 roots (~30 s with the roots cached, about a minute more to make them).  Not part of `make test`.
.PHONY: deb deb-xen deb-check
deb:
	bash debian/build.sh dist/deb

deb-xen:
	bash debian/xen/build.sh dist/deb/xen

deb-check: deb
	bash debian/tests/install-check.sh dist/deb bookworm trixie
