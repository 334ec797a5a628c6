# One place for tooling. `make install` installs what a developer needs: the project with its
# `dev` extra, which pulls the `stack` (CLI, embedded stack, API) and `reports` extras, at the
# versions of constraints.txt. It is idempotent: a stamp file records what was installed, so a
# second run does nothing unless pyproject.toml or constraints.txt changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-unit long accuracy check lint types cfn-lint demo bench bench-scaling slow clean layer deploy destroy

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt --config-settings editable_mode=compat -e '.[dev]'
	touch $(STAMP)

test: install cfn-lint browser
	$(BIN)/python -m pytest -m "not slow and not accuracy and not long" $(PYTEST_ARGS)

# The unit tier only (tests/unit: no network, no moto, no servers, no subprocesses), for the
# edit loop: well under 30 s.
test-unit: install
	$(BIN)/python -m pytest -q -m "not slow and not accuracy and not long" tests/unit $(PYTEST_ARGS)

# A whole run under every kind of fault at once, on a stack of its own with AWS's clocks at
# 1/12 (about 2 minutes here): equal to the reference. CI runs it after `make test`.
long: install
	$(BIN)/python -m pytest -m long $(PYTEST_ARGS)

# tests/browser drive Debian's headless Chromium through its chromedriver (/usr/bin): installed
# here with apt-get when either is absent (CI runs as root on a clean machine); no apt-get fails.
.PHONY: browser
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
	  echo "make browser: chromium and chromedriver are missing and apt-get is not available;" \
	    "install Chromium and its chromedriver (Debian: chromium, chromium-driver)" >&2; exit 1; \
	fi; \
	echo "make browser: installing Debian's chromium and chromium-driver"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  --no-install-recommends chromium chromium-driver \
	  || { echo "make browser: apt-get could not install chromium and chromium-driver" >&2; exit 1; }

# The default network on the real cat data, through the embedded stack: at least 80% test
# accuracy and the reference's costs (about 3 minutes here). CI runs it after `make test`.
accuracy: install
	$(BIN)/python -m pytest -m accuracy $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: install
	$(BIN)/mypy trainer_lambdas state itsacat embedded chalice_app

check: lint types cfn-lint test

# The template (and the tests' fixture template) must lint clean: `make test` runs this too.
cfn-lint: install
	$(BIN)/cfn-lint templates/*.yaml tests/embedded/fixture_template.yaml

# DATASET=path trains on that file, DATASET_URL=url downloads the cat data from there (when
# it is not cached under $ITSACAT_HOME); IMAGES=dir asks the APIs about those pictures
# (default: a few of the test set); DEMO_ARGS passes more options (e.g. --exit).
demo: install
	$(BIN)/itsacat demo $(if $(DATASET),--dataset $(DATASET)) \
	  $(if $(DATASET_URL),--dataset-url $(DATASET_URL)) $(if $(IMAGES),--images $(IMAGES)) \
	  $(DEMO_ARGS)

# notebooks/itsacat.ipynb in JupyterLab, installed into the venv on first use (only here:
# `make test` runs the notebook headless with nbclient). Its kernel is the venv's Python
# (JUPYTER_PATH puts the venv's kernel first); as root, JupyterLab needs --allow-root.
# ITSACAT_TARGET=aws for a deployed stack; NOTEBOOK_ARGS go to `jupyter lab` (e.g.
# --no-browser --port 8888).
.PHONY: notebook
NOTEBOOK_ARGS ?=
notebook: install
	test -x $(BIN)/jupyter-lab || $(BIN)/python -m pip install --quiet \
	  --disable-pip-version-check -c constraints.txt jupyterlab
	JUPYTER_PATH=$(CURDIR)/$(VENV)/share/jupyter $(BIN)/jupyter lab \
	  $(if $(filter 0,$(shell id -u)),--allow-root) $(NOTEBOOK_ARGS) notebooks/itsacat.ipynb

# Every plan against the reference on a fresh embedded stack (a few minutes); the JSON
# and the markdown table land in bench/results/. `make bench-scaling` is the slower sweep over
# layer-1 width and examples, with the plot bench/results/scaling.png.
BENCH_ARGS ?=
# The benchmarks train on DATASET=path, else the cat data `itsacat dataset fetch` cached.
DATASET_ARG = $(if $(DATASET),--dataset $(DATASET))

bench: install
	$(BIN)/itsacat bench $(DATASET_ARG) --out bench/results $(BENCH_ARGS)

# The default network on the cat data with gd, gd+L2 (two λ), momentum and Adam, on a fresh
# embedded stack (about 10 minutes): bench/results/optimizers.md and .json.
.PHONY: bench-optimizers
bench-optimizers: install
	$(BIN)/python -m itsacat.bench.optimizers $(DATASET_ARG) --out bench/results $(BENCH_ARGS)

bench-scaling: install
	$(BIN)/itsacat bench --scaling --epochs 40 $(DATASET_ARG) --out bench/results $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# The Lambda layer for the Lambda platform (pip download of wheels, from PyPI).
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
	$(BIN)/python -m itsacat.bench.api_load --clients 50 --requests 2000 --hostile-clients 10 --out bench/results
