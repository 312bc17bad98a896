# Two commands set everything up on a fresh machine:
#   make demo   the whole default pipeline (dvc repro) on the embedded synthetic data set
#   make test   the test suite
#   make study  the multi-seed ablation (12 trainings, about 45 minutes on 2 cores)
# Both create the virtual environment .venv first when it is missing or out of date.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# pytest-xdist worker processes (one per core here); 0 runs every test in one process
TEST_WORKERS ?= 2

# Tools inside the venv (pep, dvc, snakemake, mlflow) must be found by the stages they run.
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1
export MPLBACKEND := Agg

.PHONY: demo study test venv lock clean-venv

demo: $(STAMP)
	dvc repro

# The multi-seed ablation behind the README's headline table: the same pipeline with three
# seeds per variant, run as a DVC experiment (`dvc exp show` lists it; the workspace keeps its
# results). Seeds already trained (the demo's seed 0) are not trained again.
STUDY_SEEDS ?= [0,1,2]
study: $(STAMP)
	dvc exp run -S 'train.seeds=$(STUDY_SEEDS)'

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

venv: $(STAMP)

$(STAMP): requirements.txt requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info; sys.exit(0 if v[:2] == (3, 11) else "Python 3.11 is required (found %d.%d at $(PYTHON)); set PYTHON=/path/to/python3.11" % v[:2])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile -r requirements.txt -c requirements.lock
	@# pip byte-compiles one file at a time (half the install); compileall on every core, the
	@# same files: templates that are no Python fail to compile here as they do quietly in pip
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# After editing requirements.txt: rebuild the venv from it, then pin what it resolved to.
lock:
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	{ echo "# Every package of a working environment, for 'pip install -c requirements.lock'."; \
	  echo "# Regenerate with 'make lock' after changing requirements.txt."; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e'; } > requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
