"""Shared fixtures: one local SparkSession for the whole test run, small generated tables."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
try:
    import clusterlake  # noqa: F401
except ImportError:  # running without `pip install -e .`
    sys.path.insert(0, str(ROOT / "lib"))


def load_script(name: str):
    """Import a file from scripts/ (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def spark():
    """local[2], few shuffle partitions, UI off, Arrow on, no task retries. Never stopped by tests."""
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    session = (
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
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session


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
        "output": {"path": output_path},
    }
    return load_config(data=data, overrides=[f"{k}={v}" for k, v in over.items()])
