# clusterlake: `make run` runs the job on the embedded sample, `make test` runs the tests.
# Both set up .venv/ on first use (Python 3.10+ and Java 17 must be on the machine).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= conf/local.yaml
DATA   := data/sample/customers.parquet

.DEFAULT_GOAL := help
.PHONY: help setup data run test clean

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv/ and install clusterlake (editable) with pinned dependencies

$(DATA): | $(STAMP)
	$(BIN)/python scripts/make_sample_data.py --out $(DATA)

data: $(DATA)  ## generate the embedded sample table (200,000 customers) if missing

run: $(STAMP) $(DATA)  ## run the nightly job locally with conf/local.yaml (CONFIG=... to change)
	$(BIN)/clusterlake run --config $(CONFIG)

test: $(STAMP)  ## run the whole test suite (local Spark)
	$(BIN)/pytest -q

clean:  ## remove outputs and generated data (keeps .venv)
	rm -rf out data spark-warehouse
