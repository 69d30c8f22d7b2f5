# clusterlake: `make run` runs the job on the embedded sample, `make test` runs the tests.
# Both set up .venv/ on first use (Python 3.10+ and Java 17 must be on the machine).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= conf/local.yaml
DATA   := data/sample/customers.parquet
DOCS   := data/sample/documents.parquet

.DEFAULT_GOAL := help
DIST   := dist
ENV_ARCHIVE := $(DIST)/clusterlake-env.tar.gz

.PHONY: help setup data run test test-fast test-cluster dist clean

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

JARS   := $(VENV)/jars

# Delta Lake's Spark jars (jars/pom.xml) are copied into .venv/jars/ by Maven, once; Maven caches
# the downloads in ~/.m2/repository. Local sessions load them from there (clusterlake.session).
$(STAMP): pyproject.toml constraints.txt jars/pom.xml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,dist]'
	@command -v mvn >/dev/null 2>&1 || { echo "make: mvn (Apache Maven) is needed to fetch Delta Lake's Spark" \
	    "jars (jars/pom.xml) from Maven Central: install it (apt-get install maven), then run make setup" >&2; exit 1; }
	@echo "Fetching Delta Lake's Spark jars (jars/pom.xml) into $(JARS)/ with mvn..."
	@rm -rf $(JARS).tmp
	@mvn -q -B -f jars/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
	    -DoutputDirectory="$(abspath $(JARS)).tmp" || { echo "make: mvn could not fetch the jars of" \
	    "jars/pom.xml (see its messages above: is Maven Central reachable?); retry with: make setup" >&2; exit 1; }
	@rm -rf $(JARS) && mv $(JARS).tmp $(JARS) && ls $(JARS)
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv/ and install clusterlake (editable) with pinned dependencies

$(DATA): | $(STAMP)
	$(BIN)/python scripts/make_sample_data.py --out $(DATA)

$(DOCS): | $(STAMP)
	$(BIN)/python scripts/gen_sets.py --rows 200000 --strings --out $(DOCS)

data: $(DATA) $(DOCS)  ## generate the embedded sample tables (200,000 customers; 200,000 documents for conf/grouping.yaml) if missing

run: $(STAMP) $(DATA) $(DOCS)  ## run the nightly job locally with conf/local.yaml (CONFIG=... to change)
	$(BIN)/clusterlake run --config $(CONFIG)

test: $(STAMP)  ## run the whole test suite (local Spark)
	$(BIN)/pytest -q

# Spark tests are marked automatically (tests/conftest.py); this run fails a test that starts a JVM.
test-fast: $(STAMP)  ## run the tests that need no JVM (no Spark): about 500, in a minute or so
	$(BIN)/pytest -q -m "not spark and not cluster"

# The executors need numpy, pyarrow, scikit-learn... which cannot travel with --py-files: the wheel
# and its pinned dependencies go into a fresh venv (dist/venv, also the client-mode driver's
# Python), packed with venv-pack for `spark-submit --archives dist/clusterlake-env.tar.gz#environment`.
# pyspark's jars stay out of the archive: the executors' JVM has its own. Delta's Spark jars go to
# dist/jars, which scripts/submit.sh passes to --jars (the driver's and the executors' classpath).
dist: $(STAMP)  ## build dist/*.whl and the packed virtualenv dist/clusterlake-env.tar.gz for spark-submit
	rm -rf $(DIST)
	$(BIN)/pip wheel --quiet --no-deps -w $(DIST) .
	$(PYTHON) -m venv $(DIST)/venv
	$(DIST)/venv/bin/pip install --quiet --upgrade pip
	$(DIST)/venv/bin/pip install --quiet -c constraints.txt $(DIST)/clusterlake-*.whl
	$(BIN)/venv-pack --prefix $(DIST)/venv --output $(ENV_ARCHIVE) --force --quiet \
	    --exclude 'lib/python*/site-packages/pyspark/jars/*'
	cp -r $(JARS) $(DIST)/jars  # Delta's Spark jars: scripts/submit.sh ships them with --jars
	@ls -lh $(DIST)/*.whl $(ENV_ARCHIVE)

test-cluster: dist $(DATA)  ## start a 2-worker Spark standalone cluster, submit the job to it, kill a worker and the driver
	$(BIN)/pytest -q -m cluster tests/cluster

clean:  ## remove outputs, generated data and dist/ (keeps .venv)
	rm -rf out data spark-warehouse $(DIST)
