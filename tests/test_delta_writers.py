"""Both Delta writers on one output, and the readers downstream jobs use (issue 20).

Three nights into one output directory: D1 committed by delta-rs, D2 by Spark's Delta writer, D1
again by delta-rs (replacing the first night's D1 rows). Each writer must continue the other's
tables, and every table must read back the same through Spark's Delta reader (at the versions the
``runs`` table names: time travel), delta-rs, Polars and DuckDB.
"""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from clusterlake.io import tables
from clusterlake.pipeline import run_job
from tests.conftest import job_config, require_writer

D1, D2 = "2026-11-20", "2026-11-21"
TABLES = ("centroids", "assignments", "metrics", "profiles", "lineage", "runs")
NIGHTS = ((D1, "delta-rs"), (D2, "spark"), (D1, "delta-rs"))


def _sorted(t: pa.Table) -> pa.Table:
    keys = [(f.name, "ascending") for f in t.schema if not pa.types.is_nested(f.type)]
    return t.sort_by(keys).combine_chunks()


def _plain(t: pa.Table, columns=None) -> pa.Table:
    """Comparable: the flat columns (maps and arrays differ in how readers type them), run_date
    as text, sorted."""
    cols = [f.name for f in t.schema if not pa.types.is_nested(f.type) and (columns is None or f.name in columns)]
    t = t.select(cols)
    if "run_date" in cols:
        t = t.set_column(cols.index("run_date"), "run_date", pc.cast(t.column("run_date"), pa.string()))
    return _sorted(t)


@pytest.fixture(scope="module")
def nights(spark, small_table, tmp_path_factory):
    require_writer(spark, "spark")
    out = str(tmp_path_factory.mktemp("writers") / "out")
    ids = []
    for run_date, writer in NIGHTS:
        cfg = job_config(small_table, out, **{"kmeans.k": 5, "kmeans.max_iter": 10, "job.run_date": run_date,
                                              "output.delta_writer": writer, "report.enabled": False,
                                              "density.enabled": False, "hierarchical.enabled": False})
        ids.append(run_job(cfg, spark=spark).run_id)
    return out, ids


def test_each_writer_continues_the_other_ones_tables(nights):
    out, (r1, r2, r3) = nights
    asg = DeltaTable(os.path.join(out, "assignments")).to_pyarrow_table()
    by_date = {str(d): set(pc.unique(asg.filter(pc.equal(pc.cast(asg.column("run_date"), pa.string()), d))
                                     .column("run_id")).to_pylist()) for d in (D1, D2)}
    assert by_date == {D1: {r3}, D2: {r2}}  # r1's D1 rows replaced by r3's, r2's D2 rows kept
    runs = DeltaTable(os.path.join(out, "runs")).to_pyarrow_table().to_pylist()
    assert sorted((r["run_id"], r["table_writer"]) for r in runs) == sorted([(r2, "spark-delta"), (r3, "delta-rs")])
    for name in TABLES:
        hist = sorted(DeltaTable(os.path.join(out, name)).history(), key=lambda h: h["version"])
        assert [tables.commit_run_id(h) for h in hist] == [r1, r2, r3], name  # one commit per table per run
        engines = [h.get("engineInfo", "") for h in hist]
        assert "delta-rs" in engines[0] and "Spark" in engines[1] and "delta-rs" in engines[2], (name, engines)


def test_spark_reads_every_table_at_the_versions_the_runs_table_names(spark, nights):
    """What a downstream Spark job does: find a run in ``runs``, read each table at the version
    the row names (``versionAsOf``), keep the run's date."""
    from pyspark.sql import functions as F

    out, (_, r2, r3) = nights
    runs = spark.read.format("delta").load(os.path.join(out, "runs")).collect()
    assert sorted(r["run_id"] for r in runs) == sorted([r2, r3])
    for row in runs:
        for name, version in row["table_versions"].items():
            path = os.path.join(out, name)
            got = (spark.read.format("delta").option("versionAsOf", version).load(path)
                   .where(F.col("run_date") == F.lit(row["run_date"])))
            want = DeltaTable(path, version=version).to_pyarrow_table()
            want = want.filter(pc.equal(pc.cast(want.column("run_date"), pa.string()), str(row["run_date"])))
            assert set(r["run_id"] for r in got.select("run_id").distinct().collect()) == {row["run_id"]}, name
            got_t = got.toArrow()
            assert _plain(got_t).to_pylist() == _plain(want, got_t.column_names).to_pylist(), (name, version)


def test_describe_history_shows_the_run_of_every_commit(spark, nights):
    out, ids = nights
    for name in TABLES:
        rows = spark.sql(f"DESCRIBE HISTORY delta.`{os.path.join(out, name)}`").orderBy("version").collect()
        assert [json.loads(r["userMetadata"])[tables.RUN_ID_KEY] for r in rows] == ids, name


def test_polars_and_duckdb_read_the_same_rows(nights):
    import duckdb
    import polars as pl

    out, _ = nights
    for name in TABLES:
        path = os.path.join(out, name)
        want = _plain(DeltaTable(path).to_pyarrow_table())
        by_polars = _plain(pl.read_delta(path).to_arrow(), want.column_names)
        dataset = DeltaTable(path).to_pyarrow_dataset()  # DuckDB scans the Delta snapshot's files
        by_duckdb = _plain(duckdb.connect().sql("select * from dataset").to_arrow_table(), want.column_names)
        for got, who in ((by_polars, "polars"), (by_duckdb, "duckdb")):
            assert got.num_rows == want.num_rows, (name, who)
            for c in want.column_names:
                assert got.column(c).to_pylist() == want.column(c).to_pylist(), (name, who, c)
