# The README's commands:
#   make run    set up .venv if needed, then run the workflow on config/config.yaml
#               (CONFIG=my.yaml: on my.yaml, laid over config/config.yaml; it is checked first)
#   make test   set up .venv if needed, then run the test suite
# and, after a run was killed (its Snakemake lock stays behind):
#   make resume unlock, then rerun the command of the last run started in this folder (the
#               workflow records it in .snakemake/last_run), or the run on CONFIG=my.yaml;
#               jobs that were cut off rerun (--rerun-incomplete), a CALM step continues
#               from its last mask checkpoint
#   make bench  the performance benchmarks (benchmarks/README.md), summary in benchmarks/results/
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run resume test setup lint clean bench

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt
	$(VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

CONFIG ?=
RUN_ARGS = --cores 2 $(if $(CONFIG),--configfile $(CONFIG))
LAST_RUN := .snakemake/last_run
RESUME_ARGS = $(if $(CONFIG),$(RUN_ARGS),$(if $(wildcard $(LAST_RUN)),$(shell cat $(LAST_RUN)),$(RUN_ARGS)))

# Snakemake reads a --configfile before the workflow starts and reports a YAML error in it
# with neither file nor line: check it first, as the workflow will see it.
run: $(STAMP)
	$(if $(CONFIG),$(VENV)/bin/python -m calm validate --config config/config.yaml $(CONFIG))
	$(VENV)/bin/snakemake $(RUN_ARGS) --rerun-incomplete

resume: $(STAMP)
	$(VENV)/bin/snakemake --unlock $(RESUME_ARGS)
	$(VENV)/bin/snakemake $(RESUME_ARGS) --rerun-incomplete

# Two workers: the suite's end-to-end runs use two cores each, and its many short tests fill the
# gaps (tests/conftest.py sends each shared run's tests to one worker).
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2

bench: $(STAMP)
	$(VENV)/bin/python -m benchmarks all

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint

clean:
	rm -rf results logs benchmarks/rules benchmarks/results .snakemake
