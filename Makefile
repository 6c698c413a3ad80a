# igrt developer entry points. `make setup` is idempotent: it (re)creates .venv
# only when pyproject.toml changed since the last install.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODE ?= 3d

.PHONY: setup system-packages demo test bench lint clean

setup: $(STAMP) system-packages

# Mosquitto (the broker the console API and its tests use) comes from Debian;
# installed only when missing, so repeated runs change nothing.
system-packages:
	@command -v mosquitto >/dev/null 2>&1 || command -v /usr/sbin/mosquitto >/dev/null 2>&1 || \
	  { echo "installing mosquitto"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients; }
	@# Third-party DICOM checkers (dciodvfy, plastimatch): tests use them where present.
	@{ command -v dciodvfy >/dev/null 2>&1 && command -v plastimatch >/dev/null 2>&1; } || \
	  { echo "installing dicom3tools and plastimatch"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools plastimatch || \
	    echo "warning: dicom3tools/plastimatch not installed; their checks will be skipped"; }

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: setup
	$(PY) -m sim.demo --mode $(MODE) --out out/demo

test: setup
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

bench: setup
	$(PY) -m bench.run --out bench/results.json

lint: setup
	$(VENV)/bin/ruff check daemon drivers safety sim imaging tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache
