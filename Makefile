# make run: set everything up and start SPEED.  make test: set everything up and run the tests.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
CONFIG ?= app.yaml

.PHONY: run test setup system test-system bench clean

run: setup system
	$(PY) main.py --config $(CONFIG)

# Tests run in TEST_WORKERS processes (they mostly wait on Docker and git), a file to a worker,
# the slowest files first (tests/conftest.py: SLOWEST_FIRST); those marked serial
# restart the Docker engine everyone shares (or flood it), so they run afterwards, alone. pytest's exit code 5
# says only that PYTEST_ARGS selected none of one kind.
TEST_WORKERS ?= 3

test: setup system test-system
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not serial" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(PY) -m pytest -m serial $(PYTEST_ARGS) || [ $$? -eq 5 ]

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# git and a Docker engine are what SPEED itself needs, and Caddy as the proxy in front of services
# (its admin API at SPEED_PROXY_ADMIN, default http://localhost:2019, as app.yaml's proxy.admin).
system:
	scripts/ensure-packages.sh git:git dockerd:docker.io caddy:caddy
	scripts/ensure-docker.sh
	scripts/ensure-caddy.sh

# The tests also need busybox-static (their base image), git's smart HTTP backend, and Debian's
# chromium for the dashboard's browser tests (Playwright drives it; it never downloads a browser),
# and caddy: the proxy's tests start a private Caddy of their own (never the one on port 2019).
test-system:
	scripts/ensure-packages.sh busybox:busybox-static chromium:chromium caddy:caddy
	test -x /usr/lib/git-core/git-http-backend

# BENCH_ARGS: e.g. --only deploys,requests (the parts: deploys, requests, services, replicas).
bench: setup system test-system
	scripts/ensure-wrk.sh
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .speed .pytest_cache
