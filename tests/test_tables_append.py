"""Append commits and ``spark_read`` of the table stores (``clusterlake.io.tables``), on real Spark.

Every test stages tiny DataFrames with a real store (``DeltaRsStore``, ``SparkDeltaStore`` or
``ParquetStore``: formats ``delta-rs``, ``spark`` and ``parquet`` here), commits
them with ``publish_run`` (or ``commit`` + ``finish``, one Spark write less) and reads the tables
back independently (``deltalake`` / pyarrow). Failures are injected by monkeypatching one store
method, as in test_atomic_writes.py.
"""

from __future__ import annotations

import glob
import json
import os

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from deltalake import DeltaTable

from clusterlake.config import OutputSection
from clusterlake.io import tables
from clusterlake.io.tables import ParquetStore, make_store, publish_run, recover_interrupted
from tests.conftest import DELTA_WRITERS, require_writer, store_class

D1, D2, D3 = "2026-11-20", "2026-11-21", "2026-11-22"
FORMATS = [*DELTA_WRITERS, "parquet"]  # a Delta table by each writer, or plain parquet
STORE_CLASS = {**{w: store_class(w) for w in DELTA_WRITERS}, "parquet": ParquetStore}


# ----------------------------------------------------------------------------------------------
# helpers


def _store(spark, out, fmt, run_date, run_id):
    if fmt == "parquet":
        cfg = OutputSection(path=out, format="parquet")
    else:
        cfg = OutputSection(path=out, format="delta", delta_writer=require_writer(spark, fmt))
    store = make_store(spark, cfg, run_date, run_id)
    assert isinstance(store, STORE_CLASS[fmt])
    return store


def _df(spark, run_id, ids, extra=False):
    if extra:
        return spark.createDataFrame([(i, run_id, f"v{i}", float(i)) for i in ids], "id long, run_id string, v string, x double")
    return spark.createDataFrame([(i, run_id, f"v{i}") for i in ids], "id long, run_id string, v string")


def _publish(spark, out, fmt, run_date, run_id, ids, append=False, extra=False, files=2, runs=True):
    """One run writing table ``scores`` (and its ``runs`` row) through publish_run; with
    ``runs=False`` only ``scores``, committed like publish_run does (one Spark write less)."""
    store = _store(spark, out, fmt, run_date, run_id)
    st = store.stage("scores", _df(spark, run_id, ids, extra), files=files, append=append)
    if not runs:
        version = store.commit(st)
        store.finish()
        return store, {"scores": version}
    runs_df = spark.createDataFrame([(run_id,)], "run_id string")
    versions = publish_run(store, [st], lambda v: store.stage("runs", runs_df, files=1, append=append))
    return store, versions


def _rows(out, fmt, name="scores") -> list[tuple]:
    """The table's content as sorted (run_date, run_id, id) tuples, read without clusterlake."""
    path = os.path.join(out, name)
    if fmt != "parquet":
        t = DeltaTable(path).to_pyarrow_table()
    else:
        t = ds.dataset(path, format="parquet", partitioning="hive").to_table()
    dates = [str(d) for d in t.column("run_date").to_pylist()]
    ids = t.column("id").to_pylist() if "id" in t.column_names else [None] * t.num_rows
    return sorted(zip(dates, t.column("run_id").to_pylist(), ids))


def _expect(run_date, run_id, ids) -> list[tuple]:
    return [(run_date, run_id, i) for i in ids]


def _files(out, fmt, name="scores") -> set[str]:
    """Data files readers see, relative to the table root (Delta: referenced by the log)."""
    root = os.path.join(out, name)
    if fmt != "parquet":
        uris = DeltaTable(root).file_uris()
        return {os.path.relpath(u[len("file://"):] if u.startswith("file://") else u, root) for u in uris}
    return {os.path.relpath(f, root) for f in ds.dataset(root, format="parquet", partitioning="hive").files}


def _disk_files(out, name="scores") -> set[str]:
    root = os.path.join(out, name)
    # Spark's _SUCCESS / .crc files are not data (readers skip names starting with _ or .)
    return {os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "**"), recursive=True)
            if os.path.isfile(p) and "_delta_log" not in p and not os.path.basename(p).startswith(("_", "."))}


def _journals(out):
    return glob.glob(os.path.join(out, "_clusterlake", "pending", "*.json"))


def _collect(df) -> list[tuple]:
    return sorted((str(r["run_date"]), r["run_id"], r["id"]) for r in df.collect())


# ----------------------------------------------------------------------------------------------
# append commits, and spark_read of the result


@pytest.mark.parametrize("fmt", FORMATS)
def test_append_adds_rows_replace_still_replaces_and_spark_read_sees_the_committed_rows(spark, tmp_path, fmt):
    out = str(tmp_path / "out")
    _publish(spark, out, fmt, D1, "r1", range(5))
    files_r1 = _files(out, fmt)
    assert _rows(out, fmt) == _expect(D1, "r1", range(5))

    # an append on the same date, bringing a new column x
    _, versions = _publish(spark, out, fmt, D1, "r2", [10, 11], append=True, extra=True)
    assert _rows(out, fmt) == _expect(D1, "r1", range(5)) + _expect(D1, "r2", [10, 11])
    assert _rows(out, fmt, "runs") == [(D1, "r1", None), (D1, "r2", None)]
    files_r2 = _files(out, fmt)
    assert files_r1 < files_r2  # nothing removed, only added
    assert all(f.startswith(f"run_date={D1}/") for f in files_r2)
    if fmt != "parquet":
        dt_ = DeltaTable(os.path.join(out, "scores"))
        hist = dt_.history(1)[0]
        assert hist["operationParameters"]["mode"] == "Append" and tables.commit_run_id(hist) == "r2"
        assert versions["scores"] == hist["version"]
        if fmt == "delta-rs":  # its files stay in <date>/<run id>/, where Spark staged them
            assert {f.split("/")[1] for f in files_r2} == {"r1", "r2"}
        t = dt_.to_pyarrow_table()  # delta-rs alone would have kept the old schema, hiding x
        assert sorted(zip(t.column("id").to_pylist(), t.column("x").to_pylist())) == [
            (0, None), (1, None), (2, None), (3, None), (4, None), (10, 10.0), (11, 11.0)]
    else:
        assert _disk_files(out) == files_r2  # staging cleaned up, nothing else on disk

    # an append on a new date creates that partition; a replace of that date removes its rows
    _publish(spark, out, fmt, D2, "r3", [20, 21], append=True, extra=True, runs=False)
    assert _rows(out, fmt) == (_expect(D1, "r1", range(5)) + _expect(D1, "r2", [10, 11])
                               + _expect(D2, "r3", [20, 21]))
    assert os.path.isdir(os.path.join(out, "scores", f"run_date={D2}"))
    reader = _store(spark, out, fmt, D3, "r9")
    r3_before = reader.spark_read("scores", ["r3"])
    _publish(spark, out, fmt, D2, "r4", [30], extra=True, runs=False)
    assert _rows(out, fmt) == (_expect(D1, "r1", range(5)) + _expect(D1, "r2", [10, 11])
                               + _expect(D2, "r4", [30]))
    assert {f for f in _files(out, fmt) if f.startswith(f"run_date={D1}/")} == files_r2
    if fmt == "parquet":
        assert _disk_files(out) == _files(out, fmt)
        assert not glob.glob(os.path.join(out, "*", "_staging", "*")) and not glob.glob(os.path.join(out, "*", "_trash", "*"))
    else:  # a DataFrame keeps the file list of the moment spark_read was called
        assert _collect(r3_before) == _expect(D2, "r3", [20, 21])
    assert _journals(out) == []

    # staged, never committed
    on_disk = _disk_files(out)
    _store(spark, out, fmt, D1, "r5").stage("scores", _df(spark, "r5", [40], extra=True), files=1, append=True)
    if fmt == "delta-rs":  # r3's files are still on disk, only no longer in the table; so are r5's
        assert glob.glob(os.path.join(out, "scores", f"run_date={D2}", "r3", "part-*.parquet"))
        assert glob.glob(os.path.join(out, "scores", f"run_date={D1}", "r5", "part-*.parquet"))
    elif fmt == "spark":  # staging is lazy: nothing of r5 was written
        assert _disk_files(out) == on_disk
    else:
        assert glob.glob(os.path.join(out, "scores", "_staging", "r5", "*", "part-*.parquet"))

    cols = ["id", "run_id", "v", "x", "run_date"]
    df = reader.spark_read("scores", ["r1", "r2"])
    assert df.columns == cols and dict(df.dtypes)["run_date"] == "date"
    assert _collect(df) == _expect(D1, "r1", range(5)) + _expect(D1, "r2", [10, 11])
    assert sorted((r["id"], r["x"]) for r in df.where("id < 2 or id > 9").collect()) == [
        (0, None), (1, None), (10, 10.0), (11, 11.0)]  # older files lack x: nulls
    assert _collect(reader.spark_read("scores", "r4")) == _expect(D2, "r4", [30])
    assert reader.spark_read("scores", ["r3", "r5"]).count() == 0  # replaced / staged only
    assert reader.spark_read("scores", []).count() == 0

    # run_dates: only those partitions' files are read
    d1 = reader.spark_read("scores", ["r1", "r2", "r4"], run_dates=[D1, "2030-01-01"])
    assert _collect(d1) == _expect(D1, "r1", range(5)) + _expect(D1, "r2", [10, 11])
    assert d1.inputFiles() and all(f"run_date={D1}/" in f for f in d1.inputFiles())
    d2 = reader.spark_read("scores", ["r1", "r4"], run_dates=[D2])
    assert _collect(d2) == _expect(D2, "r4", [30])
    assert d2.inputFiles() and all(f"run_date={D2}/" in f for f in d2.inputFiles())
    none = reader.spark_read("scores", ["r1"], run_dates=[D3])
    assert none.columns == cols and none.count() == 0

    # columns, e.g. for a join with tonight's rows on the id
    prev = reader.spark_read("scores", ["r1", "r2"], columns=["id", "run_id"])
    assert prev.columns == ["id", "run_id"]
    tonight = spark.createDataFrame([(1,), (11,), (99,)], "id long")
    assert sorted(tuple(r) for r in tonight.join(prev, "id").collect()) == [(1, "r1"), (11, "r2")]
    with pytest.raises(tables.OutputError, match="no column"):
        reader.spark_read("scores", ["r1"], columns=["nope"])

    assert reader.spark_read("missing", ["r1"]) is None


def test_parquet_append_prefixes_a_colliding_file_name(spark, tmp_path):
    out = str(tmp_path / "out")
    _publish(spark, out, "parquet", D1, "r1", range(3), files=1, runs=False)
    part = os.path.join(out, "scores", f"run_date={D1}")
    (existing,) = [f for f in os.listdir(part) if f.startswith("part-")]

    store = _store(spark, out, "parquet", D1, "r2")
    st = store.stage("scores", _df(spark, "r2", [7, 8]), files=1, append=True)
    (rel, *rest), = st.files  # give the staged file the name of the committed one
    src = os.path.join(out, "scores", rel)
    new_rel = os.path.join(os.path.dirname(rel), existing)
    os.rename(src, os.path.join(out, "scores", new_rel))
    st.files = [(new_rel, *rest)]
    store.commit(st)
    store.finish()
    assert sorted(f for f in os.listdir(part) if not f.startswith(("_", "."))) == sorted([existing, f"r2-{existing}"])
    assert _rows(out, "parquet") == _expect(D1, "r1", range(3)) + _expect(D1, "r2", [7, 8])


# ----------------------------------------------------------------------------------------------
# failures while publishing an append


@pytest.mark.parametrize("fmt", FORMATS)
def test_failed_publish_removes_the_appended_rows(spark, tmp_path, monkeypatch, fmt):
    out = str(tmp_path / "out")
    _publish(spark, out, fmt, D1, "r1", range(4))
    before = {n: (_rows(out, fmt, n), _files(out, fmt, n)) for n in ("scores", "runs")}
    disk_before = _disk_files(out)
    versions_before = {n: DeltaTable(os.path.join(out, n)).version() for n in ("scores", "runs")} if fmt != "parquet" else {}
    cls = STORE_CLASS[fmt]
    real_commit = cls.commit
    seen = {}

    def commit(self, st):
        if st.name == "runs":
            seen["mid"] = _rows(out, fmt)  # the append really was committed
            raise RuntimeError("injected: runs commit failed")
        return real_commit(self, st)

    monkeypatch.setattr(cls, "commit", commit)
    # D1: appended to an existing partition (with a new column); D2: a partition the append creates
    for run_id, run_date in (("r2", D1), ("r3", D2)):
        with pytest.raises(RuntimeError, match="injected"):
            _publish(spark, out, fmt, run_date, run_id, [50, 51, 52], append=True, extra=True)
        assert seen.pop("mid") == before["scores"][0] + _expect(run_date, run_id, [50, 51, 52])

        for n in ("scores", "runs"):
            assert _rows(out, fmt, n) == before[n][0], n
            assert _files(out, fmt, n) == before[n][1], n
        assert _disk_files(out) == disk_before  # staged, moved and appended files all deleted
        assert not os.path.exists(os.path.join(out, "scores", f"run_date={D2}"))
        assert _journals(out) == []
        if fmt != "parquet":
            dt_ = DeltaTable(os.path.join(out, "scores"))
            assert dt_.history(1)[0]["operation"] == "RESTORE"
            assert "x" not in pa.schema(dt_.schema().to_arrow()).names  # the added column is undone too
            assert DeltaTable(os.path.join(out, "runs")).version() == versions_before["runs"]
        else:
            assert not glob.glob(os.path.join(out, "*", "_staging", "*"))


@pytest.mark.parametrize("fmt", DELTA_WRITERS)
def test_interrupted_delta_append_is_recovered(spark, tmp_path, fmt):
    # recovery reads journals named after real run ids (run.scaffold.new_run_id's shape)
    R1, R2, R3 = (f"20300101-20300101T00000{i}-0000000{i}" for i in (1, 2, 3))
    out = str(tmp_path / "out")
    _publish(spark, out, fmt, D1, R1, range(3), runs=False)
    before = (_rows(out, fmt), _files(out, fmt))
    store = _store(spark, out, fmt, D1, R2)
    st = store.stage("scores", _df(spark, R2, [9]), files=1, append=True)
    pre = {n: store.current_version(n) for n in ("scores", "runs")}
    tables.journal_location(store).write_bytes(json.dumps(
        {"run_id": R2, "run_date": D1, "store": store.kind, "pre_versions": pre}).encode())
    store.commit(st)  # ... and the driver dies
    assert _rows(out, fmt) == before[0] + _expect(D1, R2, [9])

    assert recover_interrupted(_store(spark, out, fmt, D1, R3)) == [R2]
    assert (_rows(out, fmt), _files(out, fmt)) == before
    assert _disk_files(out) == before[1]  # the dead run's files are gone from disk too
    assert not os.path.exists(os.path.join(out, "scores", f"run_date={D1}", R2))
    assert _journals(out) == []


def test_spark_read_path_conversion():
    sp = tables._spark_path
    assert sp("/data/out/t/run_date=x/a.parquet", "file:///data/out/t/", "/data/out/t") == "/data/out/t/run_date=x/a.parquet"
    assert sp("file:///data/out/t/run_date=x/a.parquet", "file:///data/out/t", "/data/out/t") == "/data/out/t/run_date=x/a.parquet"
    assert sp("s3://b/out/t/run_date=x/a.parquet", "s3://b/out/t/", "s3a://b/out/t") == "s3a://b/out/t/run_date=x/a.parquet"
    assert sp("file:///elsewhere/a.parquet", "file:///data/out/t", "/data/out/t") == "/elsewhere/a.parquet"
