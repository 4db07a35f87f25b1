# The README's commands:
#   make run    set up .venv if needed, then run the workflow on config/config.yaml
#   make test   set up .venv if needed, then run the test suite
# and, after a run was killed (its Snakemake lock stays behind):
#   make resume unlock, then run again; jobs that were cut off rerun (--rerun-incomplete),
#               a CALM step continues from its last mask checkpoint
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

run: $(STAMP)
	$(VENV)/bin/snakemake --cores 2 --rerun-incomplete

resume: $(STAMP)
	$(VENV)/bin/snakemake --unlock
	$(VENV)/bin/snakemake --cores 2 --rerun-incomplete

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python -m benchmarks all

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint

clean:
	rm -rf results logs benchmarks/rules benchmarks/results .snakemake
