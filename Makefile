# igrt developer entry points. `make setup` is idempotent: it (re)creates .venv
# only when pyproject.toml (or the C ray caster) changed since the last install,
# and re-runs npm only when the browser console's package-lock.json changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODE ?= dicom

.PHONY: setup system-packages demo test campaign bench bench-long lint clean fuzz

# The browser console's JavaScript dependency (the MQTT client, served by
# igrt-console from node_modules; no CDN): npm ci writes node_modules/.package-lock.json,
# so it runs again only when package-lock.json is newer. --ignore-scripts: no
# package's install script runs on this machine.
CONSOLE_WEB := daemon/console_web
NODE_STAMP := $(CONSOLE_WEB)/node_modules/.package-lock.json

setup: $(STAMP) system-packages $(NODE_STAMP)

# npm comes from system-packages (order-only: a phony target must not make it stale).
$(NODE_STAMP): $(CONSOLE_WEB)/package-lock.json $(CONSOLE_WEB)/package.json | system-packages
	cd $(CONSOLE_WEB) && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

# Mosquitto (the broker the console API and its tests use) comes from Debian;
# installed only when missing, so repeated runs change nothing.
system-packages:
	@command -v mosquitto >/dev/null 2>&1 || command -v /usr/sbin/mosquitto >/dev/null 2>&1 || \
	  { echo "installing mosquitto"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients; }
	@# dcmtk: third-party DICOM network clients (echoscu, storescu, findscu) the
	@# storage service's tests send with (tests/dicom/).
	@command -v storescu >/dev/null 2>&1 || \
	  { echo "installing dcmtk"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk; }
	@# Orthanc: a real PACS for the DICOM tests and the simulated clinic (sim/pacs.py
	@# starts its own instance on free loopback ports; a system one is left alone).
	@{ command -v Orthanc >/dev/null 2>&1 || test -x /usr/sbin/Orthanc; } || \
	  { echo "installing orthanc"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends orthanc; }
	@# Third-party DICOM checkers (dciodvfy, plastimatch): tests use them where present.
	@{ command -v dciodvfy >/dev/null 2>&1 && command -v plastimatch >/dev/null 2>&1; } || \
	  { echo "installing dicom3tools and plastimatch"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools plastimatch || \
	    echo "warning: dicom3tools/plastimatch not installed; their checks will be skipped"; }
	@# npm: installs the browser console's MQTT client (daemon/console_web/package-lock.json).
	@command -v npm >/dev/null 2>&1 || \
	  { echo "installing nodejs and npm"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	@# Chromium and its driver: the browser tests (tests/browser/) drive Debian's
	@# /usr/bin/chromium through Playwright; `playwright install` (a browser download)
	@# is never run.
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || \
	  { echo "installing chromium"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

# imaging/_raycast.c is compiled by the install (setup.py): a change to it re-installs.
$(STAMP): pyproject.toml setup.py imaging/_raycast.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: setup
	$(PY) -m sim.demo --mode $(MODE) --out out/demo

# lint (ruff + mypy) first: a finding fails `make test` like a failing test.
test: setup lint
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

# Long fuzzing run (docs/fuzzing.md): hypothesis with the "fuzz" profile, then
# atheris per target for FUZZ_SECONDS each when installed (pip install -e '.[fuzz]').
# Failing inputs are written to tests/fuzz/corpus/<target>/ and replayed by `make test`.
FUZZ_SECONDS ?= 60
fuzz: setup
	@$(PY) -c 'import atheris' 2>/dev/null || $(PY) -m pip install --quiet 'atheris>=2.3' || \
	  echo "warning: atheris does not install here; hypothesis fuzzing only"
	IGRT_FUZZ_PROFILE=fuzz IGRT_FUZZ_SAVE_CORPUS=1 $(PY) -m pytest -p no:cacheprovider \
	  --timeout=0 tests/fuzz; \
	  rc=$$?; $(PY) tests/fuzz/atheris/run_all.py --seconds $(FUZZ_SECONDS) || rc=1; exit $$rc

# The fault campaign at 10,000 scenarios (`make test` runs 1,000), IGRT_CAMPAIGN_ROOMS rooms side by side.
campaign: setup
	IGRT_CAMPAIGN_SCENARIOS=$${IGRT_CAMPAIGN_SCENARIOS:-10000} IGRT_CAMPAIGN_ROOMS=$${IGRT_CAMPAIGN_ROOMS:-2} \
	  $(PY) -m pytest -p no:cacheprovider -s tests/campaign/test_fault_campaign.py

# `make bench` (~4 min) takes short runs: a figure from fewer than 1,000 samples is
# reported as p90/max, never p99 (bench/stats.py). `make bench-long` (~2 h: the
# monitor runs 80 min of real-time frames, the STOP and confirm paths 1,000
# moves each) gives every p99 its 1,000 samples; BENCH_LONG_OUT says where it writes.
BENCH_LONG_OUT ?= bench/results-long.json
bench: setup
	$(PY) -m bench.run --out bench/results.json

bench-long: setup
	$(PY) -m bench.run --long --out $(BENCH_LONG_OUT)

lint: setup
	$(VENV)/bin/ruff check daemon drivers safety sim imaging tests bench
	$(VENV)/bin/mypy
	$(PY) -m daemon.command_docs --check

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache
