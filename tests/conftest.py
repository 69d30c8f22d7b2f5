"""Shared fixtures: one local SparkSession for the whole test run, small generated tables.

Spark tests are marked ``spark`` here, automatically: every test that uses the ``spark`` fixture
or another of :data:`SPARK_FIXTURES` (directly or through other fixtures) and every test of a
module in :data:`SPARK_MODULES` (those start Spark another way: spark-submit in a subprocess).
``make test-fast`` (``-m "not spark and not cluster"``) is then JVM-free, and it stays so: in a
run that deselects spark tests, the ``spark`` fixture fails, and ``SPARK_HOME`` points at a trap
whose ``spark-submit``/``spark-class`` refuse to start a JVM and record the attempt, which fails
the test that made it (in-process or in a subprocess that inherits the environment). A test that
starts Spark without being marked therefore fails the fast run instead of slowing it silently.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
try:
    import clusterlake  # noqa: F401
except ImportError:  # running without `pip install -e .`
    sys.path.insert(0, str(ROOT / "lib"))


#: Fixtures that start Spark: every test using one (directly or through other fixtures) is marked
#: ``spark``. ``stderr_child`` (test_cli.py) runs the CLI, and its own JVM, in a child process.
SPARK_FIXTURES = frozenset({"spark", "stderr_child"})
#: Test modules whose every test starts Spark without a fixture (spark-submit in a subprocess).
SPARK_MODULES = frozenset({"test_spark_submit.py"})
# The JVM trap below keeps both lists honest: a test they miss fails `make test-fast`.

_JVM_ATTEMPTS_BEFORE = pytest.StashKey[int]()
_JVM_TRAP = """#!/bin/sh
echo "$0 $*" >> "{log}"
echo "clusterlake tests: this test starts Spark (a JVM) in a run that deselects spark tests;" \\
     "use the spark fixture or list it in SPARK_FIXTURES/SPARK_MODULES in tests/conftest.py" >&2
exit 97
"""


def _deselects_spark(config) -> bool:
    """True when the ``-m`` expression excludes spark tests (``make test-fast``)."""
    return re.search(r"\bnot\s+spark\b", config.option.markexpr or "") is not None


def pytest_configure(config):
    """In a run without spark tests, point ``SPARK_HOME`` at the JVM trap (see the module doc)."""
    if not _deselects_spark(config):
        return
    home = Path(tempfile.mkdtemp(prefix="clusterlake-no-jvm-"))
    (home / "bin").mkdir()
    log = home / "launched"
    log.touch()
    for script in ("spark-submit", "spark-class"):
        path = home / "bin" / script
        path.write_text(_JVM_TRAP.format(log=log))
        path.chmod(0o755)
    config._clusterlake_jvm_log = log
    config._clusterlake_spark_home = os.environ.get("SPARK_HOME")
    os.environ["SPARK_HOME"] = str(home)


def pytest_unconfigure(config):
    """Remove the JVM trap and restore ``SPARK_HOME``."""
    log = getattr(config, "_clusterlake_jvm_log", None)
    if log is None:
        return
    previous = config._clusterlake_spark_home
    if previous is None:
        os.environ.pop("SPARK_HOME", None)
    else:
        os.environ["SPARK_HOME"] = previous
    shutil.rmtree(log.parent, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)  # before the mark plugin deselects by marker
def pytest_collection_modifyitems(config, items):
    """Mark ``spark`` every test that needs the JVM (see the module doc)."""
    unknown = SPARK_MODULES - {p.name for p in Path(__file__).parent.glob("test_*.py")}
    if unknown:
        raise pytest.UsageError(f"tests/conftest.py SPARK_MODULES names missing files: {sorted(unknown)}")
    for item in items:
        if SPARK_FIXTURES.intersection(item.fixturenames) or item.path.name in SPARK_MODULES:
            item.add_marker(pytest.mark.spark)


@pytest.hookimpl(tryfirst=True)  # before any fixture is set up, module- and session-scoped ones too
def pytest_runtest_setup(item):
    """Remember how many JVM starts the trap had refused before this test (see the module doc)."""
    log = getattr(item.config, "_clusterlake_jvm_log", None)
    if log is not None:
        item.stash[_JVM_ATTEMPTS_BEFORE] = log.stat().st_size


@pytest.fixture(autouse=True)
def _no_jvm_in_fast_runs(request):
    """Fails a test that tried to start a JVM (itself or through its fixtures) in a run that
    deselects spark tests, even if it caught the error the trap caused."""
    yield
    log = getattr(request.config, "_clusterlake_jvm_log", None)
    before = request.node.stash.get(_JVM_ATTEMPTS_BEFORE, 0)
    if log is not None and log.stat().st_size > before:
        attempts = log.read_text()[before:].strip()
        pytest.fail(f"{request.node.nodeid} started Spark in a run without spark tests ({attempts}): "
                    "use the spark fixture or list it in SPARK_FIXTURES/SPARK_MODULES in tests/conftest.py",
                    pytrace=False)


def load_script(name: str):
    """Import a file from scripts/ (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def spark(request):
    """local[2], few shuffle partitions, UI off, Arrow on, no task retries. Never stopped by tests."""
    if _deselects_spark(request.config):  # e.g. requested through request.getfixturevalue("spark")
        pytest.fail("the spark fixture was requested in a run that deselects spark tests", pytrace=False)
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master("local[2]")
        .appName("clusterlake-tests")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.task.maxFailures", "1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "2g")
    )
    from clusterlake.session import delta_jars_conf

    for k, v in delta_jars_conf({}).items():  # Delta's Spark writer and reader, as local jobs have them
        builder = builder.config(k, v)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session


DELTA_WRITERS = ("delta-rs", "spark")
"""``output.delta_writer`` values every table test runs with (issue 20): delta-rs committing the
files Spark wrote, and Spark's own Delta writer (Delta's jars in .venv/jars, ``make setup``)."""


def store_class(writer: str):
    """The TableStore class of an ``output.delta_writer``."""
    from clusterlake.io.tables import DeltaRsStore, SparkDeltaStore

    return {"delta-rs": DeltaRsStore, "spark": SparkDeltaStore}[writer]


def require_writer(spark, writer: str) -> str:
    """``writer``, or a skip naming the fix when it is Spark's and the session has no Delta jars."""
    from clusterlake.session import delta_spark_available

    if writer == "spark" and not delta_spark_available(spark):
        pytest.skip("Delta's Spark jars are not on the session's classpath: run `make setup` (fetches them "
                    "into .venv/jars with mvn)")
    return writer


@pytest.fixture(scope="session")
def sample_module():
    return load_script("make_sample_data")


@pytest.fixture(scope="session")
def small_table(tmp_path_factory, sample_module):
    """6,000 generated customers as a parquet directory (2 files); returns its path."""
    path = tmp_path_factory.mktemp("data") / "customers.parquet"
    sample_module.write(sample_module.generate(6000, seed=11), str(path), n_files=2)
    return str(path)


def job_config(input_path: str, output_path: str, **over):
    """A small job config as a dict (dotted keys in ``over`` override, e.g. {"kmeans.k": 5})."""
    from clusterlake.config import load_config

    data = {
        "job": {"name": "test-job", "run_date": "2026-11-20"},
        "input": {"path": input_path, "id_column": "customer_id", "label_column": "true_segment"},
        "kmeans": {"k": 7, "seed": 3, "max_iter": 30},
        "quality": {"sample_size": 2000},
        # delta-rs unless a test asks for a writer: the table tests run with both (DELTA_WRITERS),
        # and every other test gets the same, faster commit whatever jars the machine has
        "output": {"path": output_path, "delta_writer": "delta-rs"},
    }
    return load_config(data=data, overrides=[f"{k}={v}" for k, v in over.items()])
