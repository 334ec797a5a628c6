# One place for tooling. `make install` is idempotent: a stamp file records what was installed,
# so a second run does nothing unless pyproject.toml or constraints.txt changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test accuracy check lint types cfn-lint demo bench bench-scaling slow clean layer deploy destroy

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt --config-settings editable_mode=compat -e '.[dev]'
	touch $(STAMP)

test: install cfn-lint
	$(BIN)/python -m pytest -m "not slow and not accuracy" $(PYTEST_ARGS)

# The default network on the real cat data, through the embedded stack: at least 80% test
# accuracy and the reference's costs (about 3 minutes here). CI runs it after `make test`.
accuracy: install
	$(BIN)/python -m pytest -m accuracy $(PYTEST_ARGS)

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

# Issue 9: every plan against the reference on a fresh embedded stack (a few minutes); the JSON
# and the markdown table land in bench/results/. `make bench-scaling` is the slower sweep over
# layer-1 width and examples, with the plot bench/results/scaling.png.
BENCH_ARGS ?=

bench: install
	$(BIN)/itsacat bench --out bench/results $(BENCH_ARGS)

bench-scaling: install
	$(BIN)/itsacat bench --scaling --epochs 40 --out bench/results $(BENCH_ARGS)

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

# Load on the prediction API: 50 concurrent clients, 2,000 requests against `itsacat serve`
# on loopback (its own embedded stack, stopped afterwards), then the same with 10 hostile
# clients beside them; fails on any 5xx of an ordinary request. Writes bench/results/api-load.json.
.PHONY: bench-api
bench-api: install
	$(BIN)/python bench/api_load.py --clients 50 --requests 2000 --hostile-clients 10 --out bench/results
