# One target per job; CI calls exactly these. `make serve` and `make test` set everything up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install serve test lint typecheck pytest train evalset evaluate lock clean

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

test: lint typecheck pytest  ## every check CI runs

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/hadolint Dockerfile

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

train: $(STAMP)  ## rebuild model/ and data/ reproducibly
	$(BIN)/digitserve train

evalset: $(STAMP)  ## render the evaluation set into evalset/ (git-ignored)
	$(BIN)/digitserve make-evalset evalset $(ARGS)

evaluate: $(STAMP)  ## plain pipeline vs digitserve on evalset/, report in evalset/report.md
	$(BIN)/digitserve evaluate evalset --plain
	$(BIN)/digitserve evaluate evalset --report evalset/report.md

lock:  ## re-resolve requirements/*.txt from pyproject.toml in clean environments
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet . && { echo "# Runtime lock: exact versions for 'pip install .' (make lock rewrites it)."; .lock-venv/bin/pip freeze --exclude digitserve; } > requirements/runtime.txt
	.lock-venv/bin/pip install --quiet '.[dev]' && { echo "# Development lock: runtime plus test and lint tools (make lock rewrites it)."; .lock-venv/bin/pip freeze --exclude digitserve; } > requirements/dev.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .coverage* .pytest_cache .mypy_cache .ruff_cache artifacts
