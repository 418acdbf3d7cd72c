# One target per job; CI calls exactly these. `make serve` and `make test` set everything up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install sysdeps serve test lint typecheck pytest bench train evalset evaluate protos lock clean

$(STAMP): pyproject.toml requirements/dev.txt
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "digitserve needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

install: $(STAMP)  ## create .venv with the pinned dependencies

serve: $(STAMP)  ## run the service with the bundled model (extra flags: make serve ARGS="--port 9000")
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

test: sysdeps lint typecheck pytest  ## every check CI runs

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/hadolint Dockerfile deploy/ray/Dockerfile

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)  ## the full benchmark (minutes; needs wrk): writes bench/results/latest.{json,md}
	$(BIN)/python -m bench.run $(ARGS)

train: $(STAMP)  ## rebuild model/ and data/ reproducibly
	$(BIN)/digitserve train

evalset: $(STAMP)  ## render the evaluation set into evalset/ (git-ignored)
	$(BIN)/digitserve make-evalset evalset $(ARGS)

evaluate: $(STAMP)  ## plain pipeline vs digitserve on evalset/, report in evalset/report.md
	$(BIN)/digitserve evaluate evalset --plain
	$(BIN)/digitserve evaluate evalset --report evalset/report.md

protos: $(STAMP)  ## regenerate src/digitserve/protos/*_pb2* from grpc_predict_v2.proto (commit them)
	$(BIN)/python -m digitserve.protos.generate

lock:  ## re-resolve requirements/*.txt from pyproject.toml in clean environments
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet . && { echo "# Runtime lock: exact versions for 'pip install .' (make lock rewrites it)."; .lock-venv/bin/pip freeze --exclude digitserve; } > requirements/runtime.txt
	.lock-venv/bin/pip install --quiet '.[dev]' && { echo "# Development lock: runtime plus test and lint tools (make lock rewrites it)."; .lock-venv/bin/pip freeze --exclude digitserve; } > requirements/dev.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .coverage* .pytest_cache .mypy_cache .ruff_cache artifacts
