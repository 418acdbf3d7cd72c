# One target per job; CI calls exactly these. `make serve` and `make test` set everything up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# One .venv, two levels: the runtime lock and digitserve (all `make serve` needs), then the
# development lock on top (tests, lint, types, benchmark, docs). Each level has its own stamp, so
# serve-then-test and test-then-serve both work without a second environment.
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed
ARGS ?=

.PHONY: install install-dev sysdeps serve check test lint typecheck pytest docs docs-serve bench \
	train evalset evaluate protos lock clean

$(RUNTIME): pyproject.toml requirements/runtime.txt
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "digitserve needs Python 3.11 or newer")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/runtime.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

$(DEV): $(RUNTIME) requirements/dev.txt
	$(BIN)/python -m pip install --quiet -r requirements/dev.txt
	touch $@

install: $(RUNTIME)  ## .venv with the runtime lock and digitserve, nothing else
install-dev: $(DEV)  ## add the development lock to .venv

serve: $(RUNTIME)  ## run the service with the bundled models (extra flags: make serve ARGS="--port 9000")
	$(BIN)/digitserve serve $(ARGS)

# Debian packages the tests drive (command:package): Chromium for the web page (Playwright cannot
# download its own browser here), wrk for the benchmark smoke run, unshare and ip for the Ray test.
SYSTEM_COMMANDS := chromium:chromium chromedriver:chromium-driver wrk:wrk ip:iproute2 unshare:util-linux
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

sysdeps:  ## install the Debian packages the tests need, if any is missing
	@missing=""; for pair in $(SYSTEM_COMMANDS); do \
	  command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

test: sysdeps lint typecheck pytest docs  ## every check CI runs

# The edit loop, in well under a minute: lint, types, and the tests that need no server process,
# browser, Ray, fuzzing or training (make test runs them all, with coverage).
UNIT_TESTS := -m "not integration and not ray" --no-cov \
	--ignore=tests/test_openapi_fuzz.py --ignore=tests/test_training.py --ignore=tests/test_integrity.py \
	--ignore=tests/test_browser.py --ignore=tests/test_soak.py --ignore=tests/test_ray_app.py \
	--ignore=tests/test_tritonclient.py --ignore=tests/test_bench.py --ignore=tests/test_integration.py

check: $(DEV) lint typecheck  ## lint, types and the unit tests
	$(BIN)/pytest -q $(UNIT_TESTS)

lint: $(DEV)
	$(BIN)/ruff check src tests bench docs/hooks.py
	$(BIN)/ruff format --check src tests bench docs/hooks.py
	$(BIN)/hadolint Dockerfile deploy/ray/Dockerfile

typecheck: $(DEV)
	$(BIN)/mypy

pytest: $(DEV)
	$(BIN)/pytest

# Material for MkDocs prints an end-of-life notice (May 2027; Zensical is its successor) on every
# build: known, and not a fault of the site.
docs: $(DEV)  ## the documentation site, built strictly into site/
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(DEV)  ## browse the documentation at http://127.0.0.1:8001 while editing it
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve $(ARGS)

bench: $(DEV)  ## the full benchmark (minutes; needs wrk): writes bench/results/latest.{json,md}
	$(BIN)/python -m bench.run $(ARGS)

train: $(RUNTIME)  ## rebuild the bundled digits model and data/ reproducibly
	$(BIN)/digitserve train --force

evalset: $(RUNTIME)  ## render the evaluation set into evalset/ (git-ignored)
	$(BIN)/digitserve make-evalset evalset $(ARGS)

evaluate: $(RUNTIME)  ## plain pipeline vs digitserve on evalset/, report in evalset/report.md
	$(BIN)/digitserve evaluate evalset --plain
	$(BIN)/digitserve evaluate evalset --report evalset/report.md

protos: $(DEV)  ## regenerate src/digitserve/protos/*_pb2* from grpc_predict_v2.proto (commit them)
	$(BIN)/python -m digitserve.protos.generate

lock:  ## re-resolve requirements/*.txt from pyproject.toml in clean environments
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet . && { echo "# Runtime lock: exact versions for 'pip install .' (make lock rewrites it)."; .lock-venv/bin/pip freeze --exclude digitserve; } > requirements/runtime.txt
	.lock-venv/bin/pip install --quiet '.[dev]' && { echo "# Development lock: runtime plus test and lint tools (make lock rewrites it)."; .lock-venv/bin/pip freeze --exclude digitserve; } > requirements/dev.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .coverage* .pytest_cache .mypy_cache .ruff_cache artifacts site
