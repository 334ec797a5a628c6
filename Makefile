# One place for tooling. `make install` is idempotent: a stamp file records what was installed,
# so a second run does nothing unless pyproject.toml or constraints.txt changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test check lint types demo bench slow clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: install
	$(BIN)/mypy trainer_lambdas state itsacat

check: lint types test

demo: install
	@echo "make demo: not built yet (issue 6: itsacat demo)" >&2; exit 1

bench: install
	@echo "make bench: not built yet (issue 9: itsacat bench)" >&2; exit 1

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)
