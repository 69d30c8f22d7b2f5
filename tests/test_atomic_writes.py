"""Atomic publishing of a run's tables (``clusterlake.io.tables``), end to end on real Spark.

Every test runs the real job (or the real stores) against a local output directory and reads
the result back independently with ``deltalake`` / ``pyarrow``. Failures are injected by
monkeypatching one store method so that it raises at a precise point; everything before that
point (Spark writes, Delta commits) really happens.

The baseline run (k=7 on the 6,000-row ``small_table``, run_date D1) is done once per module and
writer and copied with ``shutil.copytree`` for each test that changes it. Every Delta test runs
with both writers (``output.delta_writer``: delta-rs, and Spark's Delta writer), the module's
``writer`` parameter.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import os
import shutil
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
from deltalake import DeltaTable

import clusterlake.io.model_artifact
import clusterlake.io.reader
from clusterlake.errors import OutputError
from clusterlake.io import tables
from clusterlake.io.tables import ParquetStore, publish_run, recover_interrupted
from clusterlake.pipeline import new_run_id, run_job
from tests.conftest import DELTA_WRITERS, job_config, require_writer, store_class

K = 7
N = 6000
D1, D2 = "2026-11-20", "2026-11-21"
DATA_TABLES = ("centroids", "assignments", "metrics", "profiles", "lineage")
TABLES = DATA_TABLES + ("runs",)


# ----------------------------------------------------------------------------------------------
# helpers


_WRITER = {"name": "delta-rs"}  # the module's current writer (set by the `writer` fixture)


def _cfg(small_table, out, run_date=D1, **over):
    # max_iter only shortens the fit; nothing here depends on convergence
    return job_config(small_table, out, **{"kmeans.k": K, "kmeans.max_iter": 10, "job.run_date": run_date,
                                           "output.delta_writer": _WRITER["name"], **over})


def Store():  # noqa: N802 (a class, chosen by the module's writer)
    return store_class(_WRITER["name"])


def _staged_dir(out, name, run_id, run_date=D1) -> str:
    """Where the store stages a run's files of table ``name`` (delta-rs: inside the partition,
    Spark's writer: ``_staging/<run_id>/``, copied into the table by its commit)."""
    if _WRITER["name"] == "spark":
        return os.path.join(out, name, "_staging", run_id)
    return os.path.join(out, name, f"run_date={run_date}", run_id)


def _in_run_dir(f: str, run_date: str, run_id: str) -> bool:
    """A data file of the run: delta-rs commits the files Spark wrote under
    ``run_date=<date>/<run_id>/``; Spark's writer names them ``run_date=<date>/part-*`` (the run
    is then known from the table's log and the rows' run_id)."""
    if _WRITER["name"] == "spark":
        return f.startswith(f"run_date={run_date}/part-")
    return f.startswith(f"run_date={run_date}/{run_id}/")


def _sorted(t: pa.Table) -> pa.Table:
    """Row order is not part of a table's content: sort by every non-nested column."""
    keys = [(f.name, "ascending") for f in t.schema if not pa.types.is_nested(f.type)]
    return t.sort_by(keys).combine_chunks()


def _delta(out, name, version=None) -> DeltaTable:
    return DeltaTable(os.path.join(out, name), version=version)


def _read(out, name, version=None) -> pa.Table:
    return _delta(out, name, version).to_pyarrow_table()


def _rel_files(out, name, dt: DeltaTable | None = None) -> set[str]:
    """Data files the current Delta version references, relative to the table root."""
    dt = dt or _delta(out, name)
    root = os.path.join(out, name)
    uris = [u[len("file://"):] if u.startswith("file://") else u for u in dt.file_uris()]
    return {os.path.relpath(u, root) for u in uris}


def _snapshot(out) -> dict:
    snap = {}
    for n in TABLES:
        dt = _delta(out, n)
        snap[n] = {
            "version": dt.version(),
            "data": _sorted(dt.to_pyarrow_table()),
            "files": _rel_files(out, n, dt),
            "commits": len(dt.history()),
        }
    return snap


def _assert_content_unchanged(out, before: dict) -> None:
    for n in TABLES:
        got = _sorted(_read(out, n))
        assert got.num_rows == before[n]["data"].num_rows, n
        assert got.equals(before[n]["data"]), f"content of {n} changed"
        assert _rel_files(out, n) == before[n]["files"], f"files referenced by {n} changed"


def _run_ids(t: pa.Table) -> set[str]:
    return set(t.column("run_id").to_pylist())


def _on(t: pa.Table, run_date: str) -> pa.Table:
    """The rows of one run_date (date32 in Delta, string from hive partitioning)."""
    return t.filter(pc.equal(t.column("run_date").cast(pa.string()), run_date))


def _journals(out) -> list[str]:
    return glob.glob(os.path.join(out, "_clusterlake", "pending", "*.json"))


def _latest_model_run_id(out) -> str:
    latest = os.path.join(out, "model", "latest")
    with open(os.path.join(latest, "model.json")) as f:
        meta = json.load(f)
    assert os.path.realpath(latest) == os.path.realpath(os.path.join(out, "model", meta["run_id"]))
    return meta["run_id"]


def _history(out, name) -> list[dict]:
    return sorted(_delta(out, name).history(), key=lambda h: h["version"])


def _table_versions(row: dict) -> dict:
    tv = row["table_versions"]
    return dict(tv) if not isinstance(tv, dict) else tv


def _pq(out, name) -> pa.Table:
    t = ds.dataset(os.path.join(out, name), format="parquet", partitioning="hive").to_table()
    return t.set_column(t.schema.get_field_index("run_date"), "run_date", t.column("run_date").cast(pa.string()))


def _pq_files(out, name) -> set[str]:
    return set(ds.dataset(os.path.join(out, name), format="parquet", partitioning="hive").files)


def _files_under(out, sub) -> list[str]:
    """Files left in ``<table>/<sub>/`` of any table (``_staging`` / ``_trash`` of ParquetStore)."""
    return [p for p in glob.glob(os.path.join(out, "*", sub, "**"), recursive=True) if os.path.isfile(p)]


# ----------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module", autouse=True, params=DELTA_WRITERS)
def writer(request, spark):
    _WRITER["name"] = require_writer(spark, request.param)
    yield request.param
    _WRITER["name"] = "delta-rs"


@pytest.fixture(scope="module")
def baseline(spark, small_table, tmp_path_factory, writer):
    out = str(tmp_path_factory.mktemp("baseline") / "out")
    result = run_job(_cfg(small_table, out), spark=spark)
    return {"out": out, "result": result, "run_id": result.run_id}


@pytest.fixture
def base_copy(baseline, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(baseline["out"], out, symlinks=True)  # keep model/latest a symlink
    return out


@pytest.fixture(scope="module")
def reruns(spark, small_table, baseline, tmp_path_factory, writer):
    """baseline (D1, run r1) -> D1 again (r2) -> D2 (r3), in one output directory."""
    out = str(tmp_path_factory.mktemp("reruns") / "out")
    shutil.copytree(baseline["out"], out, symlinks=True)
    r2 = run_job(_cfg(small_table, out, D1), spark=spark)
    after_r2 = {n: _sorted(_read(out, n)) for n in TABLES}
    r3 = run_job(_cfg(small_table, out, D2), spark=spark)
    return {"out": out, "r1": baseline["run_id"], "r2": r2, "r3": r3, "after_r2": after_r2}


# ----------------------------------------------------------------------------------------------
# 1. baseline


def test_baseline_run_writes_consistent_tables_and_model(baseline, small_table):
    out, run_id = baseline["out"], baseline["run_id"]

    cen = _read(out, "centroids")
    assert cen.num_rows == K
    assert sorted(cen.column("cluster_id").to_pylist()) == list(range(K))
    assert _run_ids(cen) == {run_id}

    asg = _read(out, "assignments")
    ids = asg.column("customer_id").to_pylist()
    assert asg.num_rows == N and len(set(ids)) == N
    assert set(ids) == set(ds.dataset(small_table, format="parquet").to_table().column("customer_id").to_pylist())
    assert _run_ids(asg) == {run_id}
    assert {str(d) for d in asg.column("run_date").to_pylist()} == {D1}

    met = _read(out, "metrics")
    assert met.num_rows > 0 and _run_ids(met) == {run_id}

    runs = _read(out, "runs").to_pylist()
    assert len(runs) == 1
    row = runs[0]
    assert row["run_id"] == run_id and row["status"] == "success" and str(row["run_date"]) == D1
    actual = {n: _delta(out, n).version() for n in DATA_TABLES}
    assert _table_versions(row) == actual  # the runs row names exactly the versions holding this run
    assert baseline["result"].table_versions == {**actual, "runs": _delta(out, "runs").version()}

    for n in TABLES:  # one commit per table, tagged with the run id
        (h,) = _history(out, n)
        assert tables.commit_run_id(h) == run_id
        assert _rel_files(out, n) and all(_in_run_dir(f, D1, run_id) for f in _rel_files(out, n))

    assert os.path.isfile(os.path.join(out, "model", run_id, "model.json"))
    assert os.path.islink(os.path.join(out, "model", "latest"))
    assert _latest_model_run_id(out) == run_id
    assert _journals(out) == []


# ----------------------------------------------------------------------------------------------
# 2. failure while publishing


def test_failure_while_publishing_restores_previous_run(spark, small_table, baseline, base_copy, monkeypatch):
    out, old = base_copy, baseline["run_id"]
    before = _snapshot(out)
    seen: dict = {}
    real_commit = Store().commit

    def commit(self, st):
        seen["run_id"] = self.run_id
        if st.name == "metrics":
            # centroids and assignments really are committed at this point: readers see them
            seen["mid"] = {n: (_delta(out, n).version(), _run_ids(_read(out, n))) for n in ("centroids", "assignments")}
            seen["journals"] = _journals(out)
            raise RuntimeError("injected: metrics commit failed")
        return real_commit(self, st)

    monkeypatch.setattr(Store(), "commit", commit)
    with pytest.raises(RuntimeError, match="injected"):
        run_job(_cfg(small_table, out), spark=spark)
    failed = seen["run_id"]
    assert failed != old

    # the failure really happened after two commits, with the journal in place
    for n in ("centroids", "assignments"):
        assert seen["mid"][n] == (before[n]["version"] + 1, {failed})
    assert [os.path.basename(p) for p in seen["journals"]] == [f"{failed}.json"]

    # readers see exactly the previous run again
    _assert_content_unchanged(out, before)
    assert [r["run_id"] for r in _read(out, "runs").to_pylist()] == [old]
    for n in ("centroids", "assignments"):  # committed, then restored with a new commit
        dt = _delta(out, n)
        assert dt.version() == before[n]["version"] + 2
        hist = _history(out, n)
        assert tables.commit_run_id(hist[-2]) == failed
        assert hist[-1]["operation"] == "RESTORE"
        assert _run_ids(_read(out, n)) == {old}
    for n in ("metrics", "runs"):  # never committed
        assert _delta(out, n).version() == before[n]["version"]

    # the old run's time-travel versions still read back
    tv = _table_versions(_read(out, "runs").to_pylist()[0])
    assert _run_ids(_read(out, "assignments", tv["assignments"])) == {old}

    # model pointer untouched, failed artifact and journal gone
    assert _latest_model_run_id(out) == old
    assert not os.path.exists(os.path.join(out, "model", failed))
    assert _journals(out) == []

    # nothing of the failed run referenced or left on disk
    for n in TABLES:
        assert all(_in_run_dir(f, D1, old) for f in _rel_files(out, n)), n
        assert not os.path.exists(_staged_dir(out, n, failed)), n


# ----------------------------------------------------------------------------------------------
# 3. failure while staging


def test_failure_while_staging_changes_nothing(spark, small_table, baseline, base_copy, monkeypatch):
    out, old = base_copy, baseline["run_id"]
    before = _snapshot(out)
    seen: dict = {}
    real_stage = Store().stage_files

    def stage_files(self, name, write, append=False):
        seen["run_id"] = self.run_id
        if name == "metrics":
            seen["staged_dirs"] = {
                n: os.path.isdir(_staged_dir(out, n, self.run_id)) for n in ("centroids", "assignments")
            }
            raise RuntimeError("injected: staging metrics failed")
        return real_stage(self, name, write, append)

    monkeypatch.setattr(Store(), "stage_files", stage_files)
    with pytest.raises(RuntimeError, match="injected"):
        run_job(_cfg(small_table, out), spark=spark)
    failed = seen["run_id"]
    assert seen["staged_dirs"] == {"centroids": True, "assignments": True}  # their files were really written

    for n in TABLES:
        assert _delta(out, n).version() == before[n]["version"], n
        assert len(_delta(out, n).history()) == before[n]["commits"], n
        assert not os.path.exists(_staged_dir(out, n, failed)), n
    _assert_content_unchanged(out, before)
    assert _latest_model_run_id(out) == old
    assert not os.path.exists(os.path.join(out, "model", failed))
    assert _journals(out) == []


# ----------------------------------------------------------------------------------------------
# 4. failure during the very first run


def test_failure_on_first_run_leaves_no_tables(spark, small_table, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    seen: dict = {}
    real_commit = Store().commit

    def commit(self, st):
        seen["run_id"] = self.run_id
        if st.name == "metrics":
            seen["mid"] = {n: DeltaTable.is_deltatable(os.path.join(out, n)) for n in TABLES}
            raise RuntimeError("injected: metrics commit failed")
        return real_commit(self, st)

    monkeypatch.setattr(Store(), "commit", commit)
    with pytest.raises(RuntimeError, match="injected"):
        run_job(_cfg(small_table, out), spark=spark)
    # centroids and assignments had been created as Delta tables
    assert seen["mid"] == {"centroids": True, "assignments": True, "metrics": False, "profiles": False, "lineage": False,
                           "runs": False}

    for n in TABLES:
        assert not DeltaTable.is_deltatable(os.path.join(out, n)), n
    assert glob.glob(os.path.join(out, "**", "*.parquet"), recursive=True) == []
    assert _journals(out) == []
    model = os.path.join(out, "model")
    assert not os.path.exists(model) or os.listdir(model) == []


# ----------------------------------------------------------------------------------------------
# 5. re-running a date replaces it; another date is added


def test_rerun_replaces_date_and_other_date_is_added(reruns):
    out, r1, r2, r3 = reruns["out"], reruns["r1"], reruns["r2"].run_id, reruns["r3"].run_id
    assert len({r1, r2, r3}) == 3

    # after the second D1 run: D1 holds only r2, once
    a2 = reruns["after_r2"]
    assert a2["assignments"].num_rows == N and _run_ids(a2["assignments"]) == {r2}
    assert a2["centroids"].num_rows == K and _run_ids(a2["centroids"]) == {r2}
    assert [(r["run_id"], str(r["run_date"])) for r in a2["runs"].to_pylist()] == [(r2, D1)]

    # after D2: D1 untouched, D2 added
    for n in TABLES:
        t = _sorted(_read(out, n))
        d1, d2 = _on(t, D1), _on(t, D2)
        assert d1.equals(a2[n]), f"D1 rows of {n} changed when D2 was written"
        assert _run_ids(d2) == {r3} and t.num_rows == d1.num_rows + d2.num_rows
    asg = _read(out, "assignments")
    assert asg.num_rows == 2 * N
    runs = sorted(_read(out, "runs").to_pylist(), key=lambda r: r["run_date"])
    assert [(r["run_id"], str(r["run_date"]), r["status"]) for r in runs] == [(r2, D1, "success"), (r3, D2, "success")]

    # one commit per table per run, tagged with the run ids in order
    for n in TABLES:
        hist = _history(out, n)
        assert [tables.commit_run_id(h) for h in hist] == [r1, r2, r3], n
        first = "CREATE TABLE" if _WRITER["name"] == "delta-rs" else "WRITE"  # Spark's writer: a WRITE creates it
        assert [h["operation"] for h in hist] == [first, "WRITE", "WRITE"], n
        # nothing of r1 is referenced any more
        assert all(_in_run_dir(f, D1, r2) or _in_run_dir(f, D2, r3) for f in _rel_files(out, n)), n
    assert reruns["r2"].table_versions == {n: 1 for n in TABLES}
    assert reruns["r3"].table_versions == {n: 2 for n in TABLES}
    assert _latest_model_run_id(out) == r3


# ----------------------------------------------------------------------------------------------
# 6. time travel through the runs table


def test_time_travel_reads_exactly_the_run(reruns):
    out, r1, r3 = reruns["out"], reruns["r1"], reruns["r3"].run_id

    runs = [r for r in _read(out, "runs").to_pylist() if r["status"] == "success"]
    latest = max(runs, key=lambda r: r["finished_at"])
    assert latest["run_id"] == r3
    tv = _table_versions(latest)
    for n, k_rows in (("assignments", N), ("centroids", K)):
        t = _read(out, n, version=tv[n])
        same_date = _on(t, str(latest["run_date"]))
        assert same_date.num_rows == k_rows and _run_ids(same_date) == {r3}
        assert pc.sum(pc.equal(t.column("run_id"), r3)).as_py() == k_rows
    ids = _read(out, "assignments", version=tv["assignments"]).filter(
        pc.equal(pc.field("run_id"), r3)).column("customer_id").to_pylist()
    assert len(set(ids)) == N

    # a replaced run stays readable: the runs table's own history leads to its versions
    (old_row,) = _read(out, "runs", version=0).to_pylist()
    assert old_row["run_id"] == r1
    old = _read(out, "assignments", version=_table_versions(old_row)["assignments"])
    assert old.num_rows == N and _run_ids(old) == {r1}


# ----------------------------------------------------------------------------------------------
# 7. a driver killed while publishing


def _restage_centroids(spark, store, out, from_run_id):
    """Stage the centroids of an earlier run as the store's run (real Spark write)."""
    from pyspark.sql import functions as F

    files = [os.path.join(out, "centroids", f) for f in _rel_files(out, "centroids")]  # only from_run_id's now
    df = spark.read.parquet(*files).where(F.col("run_id") == from_run_id)
    return store.stage("centroids", df.withColumn("run_id", F.lit(store.run_id)), files=1)


def _write_journal(store) -> None:
    # exactly what publish_run writes before its first commit
    pre = {n: store.current_version(n) for n in TABLES}
    tables.journal_location(store).write_bytes(json.dumps({"run_id": store.run_id, "run_date": store.run_date,
                                                   "store": store.kind, "pre_versions": pre}).encode())


def test_interrupted_publish_is_restored_at_next_start(spark, small_table, baseline, base_copy, monkeypatch):
    out, old = base_copy, baseline["run_id"]
    before = _snapshot(out)
    cfg = _cfg(small_table, out)
    store = Store()(spark, cfg.output, D1, new_run_id(D1))
    st = _restage_centroids(spark, store, out, old)
    _write_journal(store)
    store.commit(st)
    # ... and the driver dies here: journal left, centroids visibly replaced
    assert len(_journals(out)) == 1
    assert _run_ids(_read(out, "centroids")) == {store.run_id}

    class Stop(Exception):
        pass

    def read_table(*a, **kw):  # stop the next job right after its start-up recovery
        raise Stop(_snapshot(out))

    monkeypatch.setattr(clusterlake.io.reader, "read_table", read_table)
    with pytest.raises(Stop) as exc:
        run_job(cfg, spark=spark)
    at_start = exc.value.args[0]

    # restored before the new job read (let alone wrote) anything
    for n in TABLES:
        assert at_start[n]["data"].equals(before[n]["data"]), n
        assert at_start[n]["files"] == before[n]["files"], n
    _assert_content_unchanged(out, before)
    assert _history(out, "centroids")[-1]["operation"] == "RESTORE"
    for n in ("assignments", "metrics", "runs"):  # not touched by the interrupted run: not restored
        assert _delta(out, n).version() == before[n]["version"], n
    assert _journals(out) == []
    assert _latest_model_run_id(out) == old


def test_interrupted_first_run_is_removed(spark, small_table, tmp_path):
    out = str(tmp_path / "out")
    cfg = _cfg(small_table, out)
    store = Store()(spark, cfg.output, D1, new_run_id(D1))
    _write_journal(store)  # no table exists: every pre-version is None
    st = store.stage("centroids", spark.createDataFrame([(0, store.run_id)], "cluster_id int, run_id string"), files=1)
    store.commit(st)
    assert DeltaTable.is_deltatable(os.path.join(out, "centroids"))

    assert recover_interrupted(Store()(spark, cfg.output, D1, new_run_id(D1))) == [store.run_id]
    for n in TABLES:
        assert not DeltaTable.is_deltatable(os.path.join(out, n)), n
    assert _journals(out) == []


def test_commit_that_landed_but_raised_is_rolled_back(spark, small_table, baseline, base_copy, monkeypatch):
    """A commit can reach the Delta log and still raise (e.g. the table reload after it fails, or
    an object store loses the response). The table must be restored like the ones before it."""
    out, old = base_copy, baseline["run_id"]
    before = _snapshot(out)
    cfg = _cfg(small_table, out)
    store = Store()(spark, cfg.output, D1, new_run_id(D1))
    st = _restage_centroids(spark, store, out, old)
    real_commit = Store().commit

    def commit(self, s):
        version = real_commit(self, s)
        raise OSError(f"injected: lost the response for version {version}")

    monkeypatch.setattr(Store(), "commit", commit)
    with pytest.raises(OSError, match="injected"):
        publish_run(store, [st], stage_runs=lambda versions: pytest.fail("runs must not be staged"))
    _assert_content_unchanged(out, before)
    assert tables.commit_run_id(_history(out, "centroids")[-2]) == store.run_id  # it did land
    assert not os.path.exists(_staged_dir(out, "centroids", store.run_id))
    assert _journals(out) == []


def test_failed_rollback_keeps_journal_for_next_start(spark, small_table, baseline, base_copy, monkeypatch):
    """If restoring a table fails too, the journal stays so that the next run restores it."""
    out, old = base_copy, baseline["run_id"]
    before = _snapshot(out)
    cfg = _cfg(small_table, out)
    store = Store()(spark, cfg.output, D1, new_run_id(D1))
    st = _restage_centroids(spark, store, out, old)

    def stage_runs(versions):
        raise RuntimeError("injected: staging runs failed")

    def rollback(self, name, version, run_id=None):
        raise OSError("injected: restore failed")

    with monkeypatch.context() as m:
        m.setattr(Store(), "rollback", rollback)
        with pytest.raises(RuntimeError, match="injected: staging runs"):
            publish_run(store, [st], stage_runs)
    assert tables.commit_run_id(_history(out, "centroids")[-1]) == store.run_id  # not restored
    assert [os.path.basename(p) for p in _journals(out)] == [f"{store.run_id}.json"]

    assert recover_interrupted(Store()(spark, cfg.output, D1, new_run_id(D1))) == [store.run_id]
    _assert_content_unchanged(out, before)
    assert _journals(out) == []


def test_failed_first_commit_into_foreign_directory_deletes_nothing(spark, small_table, tmp_path):
    """The table a failed commit was attempted on is rolled back too; when it was not a Delta
    table before (here: someone else's directory, which commit refuses) nothing may be deleted."""
    out = str(tmp_path / "out")
    os.makedirs(os.path.join(out, "centroids"))
    with open(os.path.join(out, "centroids", "notes.txt"), "w") as f:
        f.write("not ours")
    store = Store()(spark, _cfg(small_table, out).output, D1, new_run_id(D1))
    st = store.stage("centroids", spark.createDataFrame([(0, store.run_id)], "cluster_id int, run_id string"), files=1)
    with pytest.raises(OutputError, match="not a Delta table"):
        publish_run(store, [st], stage_runs=lambda versions: pytest.fail("runs must not be staged"))
    assert open(os.path.join(out, "centroids", "notes.txt")).read() == "not ours"
    assert not os.path.exists(_staged_dir(out, "centroids", store.run_id))
    assert _journals(out) == []


# ----------------------------------------------------------------------------------------------
# 8. output.format: parquet


def test_parquet_output_replaces_partitions_and_restores_on_failure(spark, small_table, tmp_path, monkeypatch, writer):
    if writer != DELTA_WRITERS[0]:
        pytest.skip("plain parquet output has no Delta writer: run once")
    out = str(tmp_path / "out")

    def run(date):
        return run_job(_cfg(small_table, out, date, **{"output.format": "parquet"}), spark=spark).run_id

    a, b, c = run(D1), run(D1), run(D2)
    assert len({a, b, c}) == 3
    asg = _pq(out, "assignments")
    assert asg.num_rows == 2 * N
    for n, rows in (("assignments", N), ("centroids", K), ("runs", 1)):
        t = _pq(out, n)
        d1, d2 = _on(t, D1), _on(t, D2)
        assert d1.num_rows == rows and _run_ids(d1) == {b}, n
        assert d2.num_rows == rows and _run_ids(d2) == {c}, n
    assert len(set(_on(asg, D1).column("customer_id").to_pylist())) == N
    assert _files_under(out, "_staging") == [] and _files_under(out, "_trash") == []
    assert _journals(out) == []
    assert _latest_model_run_id(out) == c

    before = {n: (_sorted(_pq(out, n)), _pq_files(out, n)) for n in TABLES}
    seen: dict = {}
    real_commit = ParquetStore.commit

    def commit(self, st):
        seen["run_id"] = self.run_id
        if st.name == "metrics":
            t = _pq(out, "assignments")  # assignments' D1 partition really was swapped
            seen["mid"] = _run_ids(_on(t, D1))
            raise RuntimeError("injected: metrics commit failed")
        return real_commit(self, st)

    monkeypatch.setattr(ParquetStore, "commit", commit)
    with pytest.raises(RuntimeError, match="injected"):
        run(D1)
    failed = seen["run_id"]
    assert seen["mid"] == {failed}

    for n in TABLES:
        data, files = before[n]
        assert _sorted(_pq(out, n)).equals(data), f"content of {n} changed"
        assert _pq_files(out, n) == files, n
    assert _files_under(out, "_staging") == [] and _files_under(out, "_trash") == []
    assert glob.glob(os.path.join(out, "*", "_staging", failed)) == []
    assert _journals(out) == []
    assert _latest_model_run_id(out) == c
    assert not os.path.exists(os.path.join(out, "model", failed))


def test_interrupted_publish_cleans_the_dead_runs_leftovers(spark, small_table, baseline, base_copy):
    out, old = base_copy, baseline["run_id"]
    cfg = _cfg(small_table, out)
    store = Store()(spark, cfg.output, D1, new_run_id(D1))
    st = _restage_centroids(spark, store, out, old)
    before_asg = _rel_files(out, "assignments")
    _write_journal(store)
    store.commit(st)
    os.makedirs(os.path.join(out, "model", store.run_id))
    staged_dir = _staged_dir(out, "centroids", store.run_id)
    # delta-rs committed the files where Spark staged them; Spark's writer staged nothing (lazy)
    assert os.path.isdir(staged_dir) == (_WRITER["name"] == "delta-rs")
    # ... and the dead run's next commit (Spark's writer) had written its files, never committed
    time.sleep(0.01)
    unlanded = os.path.join(out, "assignments", f"run_date={D1}", "part-00000-dead.c000.snappy.parquet")
    shutil.copy(glob.glob(os.path.join(out, "assignments", f"run_date={D1}", "**", "*.parquet"), recursive=True)[0],
                unlanded)

    recover_interrupted(Store()(spark, cfg.output, D1, new_run_id(D1)))
    assert not os.path.exists(staged_dir)  # no longer referenced after the restore: deleted
    assert not os.path.exists(unlanded)  # written after the journal, referenced by no version
    assert _rel_files(out, "assignments") == before_asg  # the committed files stay
    assert not os.path.exists(os.path.join(out, "model", store.run_id))
    assert _run_ids(_read(out, "centroids")) == {old}


def test_journal_of_a_complete_run_is_not_rolled_back(spark, small_table, baseline, base_copy):
    """A driver that dies after the runs commit but before deleting its journal left a complete
    run: recovery keeps it and only removes the journal."""
    out = base_copy
    run_id = _read(out, "runs").column("run_id")[0].as_py()
    versions = {n: _delta(out, n).version() for n in TABLES}
    pending = os.path.join(out, "_clusterlake", "pending")
    os.makedirs(pending, exist_ok=True)
    with open(os.path.join(pending, f"{run_id}.json"), "w") as f:
        json.dump({"run_id": run_id, "run_date": D1, "store": "delta-rs",
                   "pre_versions": {n: None for n in TABLES}}, f)
    cfg = _cfg(small_table, out)
    assert recover_interrupted(Store()(spark, cfg.output, D1, new_run_id(D1))) == [run_id]
    assert {n: _delta(out, n).version() for n in TABLES} == versions
    assert _journals(out) == []
    assert os.path.isdir(os.path.join(out, "model", run_id))


# ----------------------------------------------------------------------------------------------
# 7. what must never be deleted


def test_rollback_never_deletes_a_table_this_run_did_not_create(spark, small_table, baseline, base_copy):
    """A pre-version of None (the table looked absent when the journal was written) must not make
    a rollback delete a table another run created."""
    out = base_copy
    before = _snapshot(out)
    store = Store()(spark, _cfg(small_table, out).output, D1, new_run_id(D1))
    for n in TABLES:
        store.rollback(n, None)
    _assert_content_unchanged(out, before)


def test_failure_after_the_runs_commit_keeps_the_committed_run(spark, small_table, baseline, base_copy, monkeypatch):
    """Once the runs row is committed the run is published: a failing cleanup step (journal
    removal, trash cleanup, model pointer) is logged, and no committed file or model is deleted."""
    out = base_copy

    def boom(*a, **kw):
        raise OSError("injected: cleanup failed")

    monkeypatch.setattr(Store(), "finish", boom)
    monkeypatch.setattr(clusterlake.io.model_artifact, "point_latest", boom)
    result = run_job(_cfg(small_table, out), spark=spark)
    runs = _read(out, "runs").to_pylist()
    assert [r["run_id"] for r in runs] == [result.run_id]
    for n in DATA_TABLES:
        assert _run_ids(_read(out, n)) == {result.run_id}
        for f in _rel_files(out, n):  # every referenced file is still on disk
            assert os.path.isfile(os.path.join(out, n, f)), f
    assert _read(out, "assignments").num_rows == N
    assert os.path.isfile(os.path.join(out, "model", result.run_id, "model.json"))
    assert _latest_model_run_id(out) == baseline["run_id"]  # the pointer move failed: old model stays latest


def test_runs_row_times_are_utc_and_secrets_redacted(spark, small_table, tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        out = str(tmp_path / "out")
        t0 = dt.datetime.now(dt.timezone.utc)
        run_job(_cfg(small_table, out, **{"output.storage_options.AWS_SECRET_ACCESS_KEY": "s3cr3t"}),
                spark=spark)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    (row,) = _read(out, "runs").to_pylist()
    started = row["started_at"]
    assert abs((started - t0).total_seconds()) < 120  # not shifted by the local zone's offset
    assert "s3cr3t" not in row["config_json"]
    assert json.loads(row["config_json"])["output"]["storage_options"] == {"AWS_SECRET_ACCESS_KEY": "***"}
