# make run: set everything up and start SPEED.  make test: set everything up and run the tests.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
CONFIG ?= app.yaml

.PHONY: run test setup system test-system bench clean

run: setup system
	$(PY) main.py --config $(CONFIG)

test: setup system test-system
	$(PY) -m pytest $(PYTEST_ARGS)

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# git and a Docker engine are what SPEED itself needs.
system:
	scripts/ensure-packages.sh git:git dockerd:docker.io
	scripts/ensure-docker.sh

# The tests also need busybox-static (their base image), git's smart HTTP backend, and Debian's
# chromium for the dashboard's browser tests (Playwright drives it; it never downloads a browser).
test-system:
	scripts/ensure-packages.sh busybox:busybox-static chromium:chromium
	test -x /usr/lib/git-core/git-http-backend

bench: setup system test-system
	$(PY) -m bench

clean:
	rm -rf $(VENV) .speed .pytest_cache
