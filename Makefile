# One place for tooling. `make install` is idempotent: a stamp file records what was installed,
# so a second run does nothing unless pyproject.toml or constraints.txt changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test check lint types cfn-lint demo bench slow clean layer deploy destroy

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt --config-settings editable_mode=compat -e '.[dev]'
	touch $(STAMP)

test: install cfn-lint
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: install
	$(BIN)/mypy trainer_lambdas state itsacat embedded

check: lint types cfn-lint test

# The template (and the tests' fixture template) must lint clean: `make test` runs this too.
cfn-lint: install
	$(BIN)/cfn-lint templates/*.yaml tests/embedded/fixture_template.yaml

# DATASET=path trains on that file; DEMO_ARGS passes more options (e.g. --exit).
demo: install
	$(BIN)/itsacat demo $(if $(DATASET),--dataset $(DATASET)) $(DEMO_ARGS)

bench: install
	@echo "make bench: not built yet (issue 9: itsacat bench)" >&2; exit 1

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# Issue 7: the Lambda layer for the Lambda platform (pip download of wheels, from PyPI).
# ARCH=arm64 for Graviton. `make deploy`/`make destroy` ask their questions; pass flags with
# DEPLOY_ARGS="--region eu-west-1 --stack-name itsacat --yes" for non-interactive use.
ARCH ?= x86_64
DEPLOY_ARGS ?=

layer: install
	$(BIN)/python -m itsacat.deploy.layer --arch $(ARCH)

deploy: install
	$(BIN)/itsacat deploy $(DEPLOY_ARGS)

destroy: install
	$(BIN)/itsacat destroy $(DEPLOY_ARGS)
