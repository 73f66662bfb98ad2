# The two commands of the README: `make train` (the offline default experiment) and `make test`.
# Each creates .venv when missing, installs the project once (again only when pyproject.toml
# changes), fetches the Fashion-MNIST files it needs, then runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= dev,optuna,slurm,export
ARGS   ?=
PYTEST_ARGS ?=
# Two pytest processes keep both cores of a small machine busy (most tests run one single-threaded
# process at a time); each needs up to ~7 GB of memory. PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2

.PHONY: install data-deps train test lint format clean-logs

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -e ".[$(EXTRAS)]"
	@# pip byte-compiles on one core (a minute of the install here); compileall uses every core. As under
	@# pip, a module written for another Python (torch ships a 3.12 one) fails to compile and is skipped.
	@$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	@touch $(STAMP)

install: $(STAMP)

data-deps:
	@bash scripts/get_fashion_mnist.sh

train: install data-deps
	$(BIN)/python scripts/train.py $(ARGS)

test: install data-deps
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean-logs:
	rm -rf logs
