"""Delta input, read by Spark's Delta reader (the session has Delta's jars) and by delta-rs (the
path for sessions without them): partitioned, with a replaced partition, pinned to a version."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable, write_deltalake

from clusterlake.errors import InputDataError
from clusterlake.io.delta import read_delta
from clusterlake.pipeline import run_job
from tests.conftest import job_config, require_writer

READERS = ("spark", "delta-rs")


@pytest.fixture(params=READERS)
def reader(request, spark, monkeypatch):
    """Which path read_delta takes: Spark's Delta reader, or delta-rs' file list read by Spark."""
    if request.param == "spark":
        require_writer(spark, "spark")
    else:
        monkeypatch.setattr("clusterlake.session.delta_spark_available", lambda _spark: False)
    return request.param


def _blobs(n_per, seed, id_offset):
    rng = np.random.default_rng(seed)
    centers = np.array([[0, 0, 0], [8, 8, 0], [0, 8, 8]], float)
    lab = np.repeat(np.arange(3), n_per)
    X = centers[lab] + rng.normal(scale=0.6, size=(len(lab), 3))
    return pd.DataFrame({"customer_id": np.arange(len(lab), dtype=np.int64) + id_offset,
                         "x": X[:, 0], "y": X[:, 1], "z": X[:, 2], "seg": lab.astype(np.int32),
                         "region": np.where(lab % 2 == 0, "north", "south")})


def test_partitioned_delta_input_reads_the_current_snapshot(spark, tmp_path, reader):
    path = str(tmp_path / "features")
    write_deltalake(path, _blobs(50, 0, 0), partition_by=["region"])
    write_deltalake(path, _blobs(40, 1, 10_000), partition_by=["region"], mode="overwrite")  # v1 replaces v0
    df = read_delta(spark, path)
    expected = DeltaTable(path).to_pandas()
    got = df.toPandas()
    assert len(got) == len(expected) == 120
    assert set(got["customer_id"]) == set(expected["customer_id"])
    assert set(got["region"]) == {"north", "south"}
    merged = got.merge(expected, on="customer_id", suffixes=("", "_ref"))
    assert (merged["region"] == merged["region_ref"]).all()
    np.testing.assert_allclose(merged["x"], merged["x_ref"])

    out = str(tmp_path / "out")
    cfg = job_config(path, out, **{"input.format": "delta", "input.label_column": "seg", "kmeans.k": 3,
                                   "quality.sample_size": 100})
    res = run_job(cfg, spark=spark)
    assert res.rows_used == 120 and res.feature_columns == ["x", "y", "z"]  # 'region' is a string
    assert res.metrics["ari"] == pytest.approx(1.0)


def test_missing_delta_table_is_a_clear_error(spark, tmp_path, reader):
    with pytest.raises(InputDataError, match="not a readable Delta table"):
        read_delta(spark, str(tmp_path / "nope"))


def test_a_pinned_version_reads_that_snapshot_and_runs_records_it(spark, tmp_path, reader):
    path = str(tmp_path / "features")
    write_deltalake(path, _blobs(50, 0, 0))  # version 0: 150 rows
    write_deltalake(path, _blobs(40, 1, 10_000), mode="overwrite")  # version 1: 120 other rows
    assert sorted(read_delta(spark, path, version=0).toPandas()["customer_id"]) == list(range(150))

    out = str(tmp_path / "out")
    over = {"input.format": "delta", "input.label_column": "seg", "kmeans.k": 3, "quality.sample_size": 100,
            "report.enabled": False, "density.enabled": False, "hierarchical.enabled": False}
    pinned = run_job(job_config(path, out, **{**over, "input.version": 0}), spark=spark)
    latest = run_job(job_config(path, out, **{**over, "job.run_date": "2026-11-21"}), spark=spark)
    assert (pinned.rows_used, latest.rows_used) == (150, 120)
    runs = {r["run_id"]: r for r in DeltaTable(f"{out}/runs").to_pyarrow_table().to_pylist()}
    assert runs[pinned.run_id]["input_version"] == 0 and runs[latest.run_id]["input_version"] == 1
    asg = DeltaTable(f"{out}/assignments").to_pandas()
    assert set(asg[asg["run_id"] == pinned.run_id]["customer_id"]) == set(range(150))


def test_a_version_on_parquet_input_is_refused(tmp_path):
    from clusterlake.config import ConfigError

    with pytest.raises(ConfigError, match=r"version=3 pins a Delta table's snapshot, but format is 'parquet'"):
        job_config(str(tmp_path / "in"), str(tmp_path / "out"), **{"input.version": 3})
