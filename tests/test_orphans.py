"""What a dead run leaves behind, and the next run's recovery of it (``clusterlake.io.tables``).

A run's journal ``_clusterlake/pending/<run_id>.json`` is written (atomically) before anything of
the run is, so a driver killed while staging its tables or right after saving its model leaves
a journal naming what to delete. The next run's ``recover_interrupted`` deletes the staged files
(Spark's ``_temporary`` directories inside), the model directory and the journal; a damaged
journal is handled by the run id in its file name.

Everything is real: Spark (or the engine's tasks) writes the staged files, delta-rs or Spark's
Delta writer commits, and the kill tests SIGKILL a ``clusterlake run`` subprocess (the Python
driver and its Spark JVM) at a pause point, once per Delta writer and once for parquet.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import yaml
from deltalake import DeltaTable

from clusterlake.errors import OutputError
from clusterlake.io import tables
from clusterlake.io.fs import location
from clusterlake.io.tables import DeltaRsStore, ParquetStore, recover_interrupted, staging
from clusterlake.pipeline import new_run_id, run_job
from tests.conftest import DELTA_WRITERS, job_config, require_writer, store_class

K = 5
N = 6000
D1, D2 = "2026-11-20", "2026-11-21"
TABLES = tuple(n for n in tables.RUN_TABLES if n != "groups")  # a K-means run writes no groups
FAST = {"kmeans.k": K, "kmeans.max_iter": 10, "report.enabled": "false", "density.enabled": "false",
        "hierarchical.enabled": "false", "serving.members_per_cluster": 200,
        "output.delta_writer": "delta-rs"}  # its run-id directories: the tests below look for them


# ----------------------------------------------------------------------------------------------
# helpers


def _cfg(small_table, out, run_date=D1, **over):
    return job_config(small_table, out, **{**FAST, "job.run_date": run_date, **over})


def _journals(out) -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "_clusterlake", "pending", "*")))


def _versions(out) -> dict:
    return {n: DeltaTable(os.path.join(out, n)).version() for n in TABLES}


def _latest(out) -> str:
    with open(os.path.join(out, "model", "latest", "model.json")) as f:
        return json.load(f)["run_id"]


def _run_ids(out, name, fmt="delta") -> set:
    if fmt != "parquet":
        t = DeltaTable(os.path.join(out, name)).to_pyarrow_table(columns=["run_id"])
    else:
        t = ds.dataset(os.path.join(out, name), format="parquet", partitioning="hive").to_table(columns=["run_id"])
    return set(t.column("run_id").to_pylist())


def _paths_naming(out, *words) -> list[str]:
    """Every file or directory under ``out`` whose name contains one of ``words``."""
    found = []
    for root, dirs, files in os.walk(out):
        found += [os.path.join(root, n) for n in dirs + files if any(w in n for w in words)]
    return found


def _tiny(spark, run_id):
    return spark.createDataFrame([(0, run_id), (1, run_id)], "cluster_id int, run_id string")


def _fake_temporary(staged_dir) -> str:
    """What a Spark write killed halfway leaves: task output under ``_temporary``."""
    d = os.path.join(staged_dir, "_temporary", "0", "_temporary", "attempt_202611200000_0001_m_000000_0")
    os.makedirs(d)
    with open(os.path.join(d, "part-00000-aaaa.snappy.parquet"), "wb") as f:
        f.write(b"PAR1 half a file")
    return os.path.join(staged_dir, "_temporary")


def _save_model_dir(out, run_id) -> str:
    d = os.path.join(out, "model", run_id)
    os.makedirs(os.path.join(d, "members"))
    with open(os.path.join(d, "centroids.npy"), "wb") as f:
        f.write(b"\x93NUMPY")
    with open(os.path.join(d, "model.json"), "w") as f:
        json.dump({"run_id": run_id}, f)
    return d


def _write_staging_journal(store, model_dir) -> str:
    """Exactly what ``staging()`` writes before the run writes anything."""
    store.model_dir = location(model_dir)
    return tables._write_journal(store, "staging").path


# ----------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def baseline(request, spark, small_table, tmp_path_factory):
    if any(item.name.startswith("test_next_run_removes") for item in request.session.items):
        request.getfixturevalue("drivers")  # start the kill tests' drivers first (see drivers)
    out = str(tmp_path_factory.mktemp("orphans-baseline") / "out")
    return {"out": out, "run_id": run_job(_cfg(small_table, out), spark=spark).run_id}


@pytest.fixture
def base_copy(baseline, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(baseline["out"], out, symlinks=True)  # keep model/latest a symlink
    return out


# ----------------------------------------------------------------------------------------------
# 1. the journal itself


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    loc = location(str(tmp_path / "pending" / "r.json"))
    loc.write_bytes_atomic(b'{"a": 1}')
    loc.write_bytes_atomic(b'{"a": 2}')
    assert loc.read_bytes() == b'{"a": 2}'
    with pytest.raises(TypeError):  # the write fails after the temporary file was created
        loc.write_bytes_atomic("not bytes")
    assert loc.read_bytes() == b'{"a": 2}'
    assert os.listdir(tmp_path / "pending") == ["r.json"]  # no temporary file left


def test_staging_journals_the_run_and_a_failure_deletes_everything(spark, small_table, tmp_path):
    out = str(tmp_path / "out")
    store = DeltaRsStore(spark, _cfg(small_table, out).output, D1, new_run_id(D1))
    model_dir = location(out).child("model", store.run_id)
    seen = {}
    with pytest.raises(RuntimeError, match="injected"):
        with staging(store, model_dir) as staged:
            with open(tables.journal_location(store).path) as f:
                seen["journal"] = json.load(f)  # written before anything of the run
            staged.append(store.stage("centroids", _tiny(spark, store.run_id), files=1))
            _save_model_dir(out, store.run_id)
            seen["staged"] = os.path.isdir(os.path.join(out, "centroids", f"run_date={D1}", store.run_id))
            raise RuntimeError("injected: the fit of the next table failed")
    assert seen["journal"] == {"version": 2, "phase": "staging", "run_id": store.run_id, "run_date": D1,
                               "store": "delta-rs", "tables": list(tables.RUN_TABLES), "model_dir": model_dir.uri}
    assert seen["staged"]
    assert _paths_naming(out, store.run_id) == []
    assert not os.path.exists(os.path.join(out, "centroids"))  # the table directory it created, too
    assert _journals(out) == []


# ----------------------------------------------------------------------------------------------
# 2. damaged journals


def test_damaged_journals_of_runs_that_committed_nothing_are_cleaned(spark, small_table, baseline, base_copy, caplog):
    """A 0-byte journal and a torn one: the next run deletes what the runs named by the file names
    left (staged files of both layouts, ``_temporary``, model), the journals, and succeeds."""
    out, cfg = base_copy, _cfg(small_table, base_copy)
    a = DeltaRsStore(spark, cfg.output, D1, new_run_id(D1))
    b = DeltaRsStore(spark, cfg.output, D2, new_run_id(D2))
    leftovers = [
        a.stage("centroids", _tiny(spark, a.run_id), files=1).staged.path,
        _fake_temporary(os.path.join(out, "assignments", f"run_date={D1}", a.run_id)),
        _save_model_dir(out, a.run_id),
        b.stage("metrics", _tiny(spark, b.run_id), files=1).staged.path,  # a date no run committed yet
        ParquetStore(spark, cfg.output, D2, b.run_id).stage("lineage", _tiny(spark, b.run_id), files=1).staged.path,
        _save_model_dir(out, b.run_id),
    ]
    assert all(os.path.exists(p) for p in leftovers)
    pending = os.path.join(out, "_clusterlake", "pending")
    os.makedirs(pending, exist_ok=True)
    open(os.path.join(pending, f"{a.run_id}.json"), "wb").close()
    with open(os.path.join(pending, f"{b.run_id}.json"), "wb") as f:
        f.write(b'{"run_id": "' + b.run_id.encode() + b'", "run_da')
    before = _versions(out)

    with caplog.at_level(logging.WARNING, logger="clusterlake.io.tables"):
        result = run_job(cfg, spark=spark)

    assert _paths_naming(out, a.run_id, b.run_id) == []
    assert not os.path.exists(os.path.join(out, "metrics", f"run_date={D2}"))  # emptied partition dir
    assert not os.path.exists(os.path.join(out, "lineage", "_staging"))
    assert _journals(out) == []
    assert _paths_naming(out, "_temporary") == []
    warned = caplog.text
    for rid in (a.run_id, b.run_id):
        assert os.path.join(pending, f"{rid}.json") in warned and os.path.join(out, "model", rid) in warned
    assert {n: v + 1 for n, v in before.items()} == _versions(out)
    for n in ("centroids", "assignments", "runs"):
        assert _run_ids(out, n) == {result.run_id}, n
    assert _latest(out) == result.run_id


def test_damaged_journal_of_a_run_that_committed_stops_the_job_untouched(spark, small_table, baseline, base_copy):
    out, old = base_copy, baseline["run_id"]
    cfg = _cfg(small_table, out)
    x = DeltaRsStore(spark, cfg.output, D1, new_run_id(D1))
    df = spark.read.parquet(os.path.join(out, "centroids", f"run_date={D1}", old))
    from pyspark.sql import functions as F

    x.commit(x.stage("centroids", df.withColumn("run_id", F.lit(x.run_id)), files=1))  # ... and dies
    journal = os.path.join(out, "_clusterlake", "pending", f"{x.run_id}.json")
    os.makedirs(os.path.dirname(journal), exist_ok=True)
    open(journal, "wb").close()
    before, on_disk = _versions(out), sorted(_paths_naming(out, x.run_id))

    with pytest.raises(OutputError) as exc:
        run_job(cfg, spark=spark)
    msg = str(exc.value)
    assert exc.value.exit_code == 2 and "\n" not in msg
    assert journal in msg and "['centroids']" in msg and "an empty file" in msg
    assert f"DeltaTable('{os.path.join(out, 'centroids')}').restore(0)" in msg and "then delete" in msg
    # nothing changed: tables, model pointer, the dead run's files and journal
    assert _versions(out) == before
    assert _run_ids(out, "centroids") == {x.run_id} and _run_ids(out, "runs") == {old}
    assert _latest(out) == old
    assert sorted(_paths_naming(out, x.run_id)) == on_disk
    assert _journals(out) == [f"{x.run_id}.json"]


# ----------------------------------------------------------------------------------------------
# 3. a staging-phase journal (written by hand where the kill tests below kill a real driver)


def _stage_tiny(spark, store, name) -> str:
    """Stage two rows of table ``name``; the staged directory. Spark's Delta writer stages a
    DataFrame lazily (nothing on disk before its commit): it gets files written the way the
    engine's tasks write the assignments (``stage_files``)."""
    if isinstance(store, store_class("spark")):
        def write(folder):
            os.makedirs(folder.path, exist_ok=True)
            _tiny(spark, store.run_id).toPandas().to_parquet(os.path.join(folder.path, "part-00000-t.parquet"))
        return store.stage_files(name, write)[0].staged.path
    return store.stage(name, _tiny(spark, store.run_id), files=1).staged.path


@pytest.mark.parametrize("fmt", [*DELTA_WRITERS, "parquet"])
def test_recovery_of_a_staging_journal_deletes_staged_files_and_model(spark, small_table, baseline, tmp_path, fmt):
    out = str(tmp_path / "out")
    if fmt != "parquet":  # on top of a committed run, staging a new date
        shutil.copytree(baseline["out"], out, symlinks=True)
    over = {"output.format": "parquet"} if fmt == "parquet" else {"output.delta_writer": require_writer(spark, fmt)}
    cfg = _cfg(small_table, out, **over)
    store_cls = ParquetStore if fmt == "parquet" else store_class(fmt)
    dead = store_cls(spark, cfg.output, D2, new_run_id(D2))
    _write_staging_journal(dead, os.path.join(out, "model", dead.run_id))
    staged = [_stage_tiny(spark, dead, n) for n in ("centroids", "assignments")]
    # a third table whose Spark write died halfway: only its _temporary directory is there
    temporary = _fake_temporary(staged[0].replace(f"{os.sep}centroids{os.sep}", f"{os.sep}metrics{os.sep}"))
    model = _save_model_dir(out, dead.run_id)
    assert all(os.path.exists(p) for p in staged + [temporary, model])
    before = _versions(out) if fmt != "parquet" else None

    assert recover_interrupted(store_cls(spark, cfg.output, D2, new_run_id(D2))) == [dead.run_id]

    assert _paths_naming(out, dead.run_id, "_temporary") == []
    assert _journals(out) == []
    if fmt != "parquet":
        assert _versions(out) == before and _latest(out) == baseline["run_id"]
        assert glob.glob(os.path.join(out, "*", f"run_date={D2}")) == []  # the dates it created
    else:
        assert sorted(os.listdir(out)) == ["_clusterlake", "model"]  # the tables it created went too
        assert os.listdir(os.path.join(out, "model")) == []


def test_staging_journal_of_a_complete_run_only_loses_the_journal(spark, small_table, baseline, base_copy):
    """If the runs row of the journal's run is committed, its 'staged' files are the tables' data."""
    out, old = base_copy, baseline["run_id"]
    cfg = _cfg(small_table, out)
    before, files = _versions(out), sorted(_paths_naming(out, old))
    _write_staging_journal(DeltaRsStore(spark, cfg.output, D1, old), os.path.join(out, "model", old))
    assert recover_interrupted(DeltaRsStore(spark, cfg.output, D1, new_run_id(D1))) == [old]
    assert _versions(out) == before and sorted(_paths_naming(out, old)) == files
    assert _latest(out) == old and _journals(out) == []


# ----------------------------------------------------------------------------------------------
# 4. a driver killed for real (needs pipeline.py's `with staging(...)` and its model.saved point)


KILLS = {"delta-rs": ("write.staged@2", ["assignments", "centroids"]),
         "spark": ("write.staged@2", ["assignments", "centroids"]),
         "parquet": ("model.saved@1", ["assignments"])}
"""Output (a Delta writer, or parquet) -> where its driver is killed, and the tables staged by then."""


@dataclass
class _Driver:
    proc: subprocess.Popen
    out: str
    point: str
    folder: Path


def _start(small_table, folder: Path, fmt: str) -> _Driver:
    """``clusterlake run`` in its own process group, to pause at ``KILLS[fmt]``."""
    out, point = str(folder / "out"), KILLS[fmt][0]
    conf = {"job": {"name": "orphans", "run_date": D1},
            "input": {"path": small_table, "id_column": "customer_id", "label_column": "true_segment"},
            "kmeans": {"k": K, "seed": 3, "max_iter": 10}, "quality": {"sample_size": 2000},
            "report": {"enabled": False}, "serving": {"members_per_cluster": 200},
            "output": {"path": out, **({"format": "parquet"} if fmt == "parquet"
                                        else {"format": "delta", "delta_writer": fmt})},
            "spark": {"master": "local[2]", "conf": {"spark.sql.shuffle.partitions": 4, "spark.ui.enabled": "false",
                                                      "spark.driver.memory": "1g"}}}
    (folder / "job.yaml").write_text(yaml.safe_dump(conf))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_HOME", "CLUSTERLAKE_"))}
    env.update(CLUSTERLAKE_PAUSE_AT=point, CLUSTERLAKE_PAUSE_DIR=str(folder / "pause"), CLUSTERLAKE_PAUSE_TIMEOUT="3600")
    with open(folder / "driver.log", "w") as f:
        proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "clusterlake"), "run",
                                 "--config", str(folder / "job.yaml")], stdout=f, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    return _Driver(proc, out, point, folder)


def _paused(d: _Driver) -> dict:
    """Wait until the driver pauses; what the pause point reported (the run id...)."""
    paused = d.folder / "pause" / f"{d.point}.paused"
    deadline = time.time() + 600
    while not paused.exists():
        if d.proc.poll() is not None or time.time() > deadline:
            log = (d.folder / "driver.log").read_text()[-4000:]
            pytest.fail(f"the driver never reached {d.point} (exit {d.proc.poll()}; needs pipeline.py's "
                        f"staging() and model.saved pause point):\n{log}")
        time.sleep(0.2)
    return json.loads(paused.read_text())


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # the Python driver and its Spark JVM
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def drivers(small_table, tmp_path_factory):
    """Both drivers the kill tests kill, started together (by ``baseline`` when kill tests are
    selected): their slow part, a cold JVM and the fit, overlaps with the tests before them."""
    started = {fmt: _start(small_table, tmp_path_factory.mktemp(f"killed-{fmt}"), fmt) for fmt in KILLS}
    yield started
    for d in started.values():  # a test that failed before its kill
        _kill(d.proc)


@pytest.mark.parametrize("fmt", list(KILLS))
def test_next_run_removes_what_a_killed_driver_left(spark, small_table, drivers, fmt):
    if fmt == "spark":
        require_writer(spark, fmt)
    d, tables_staged = drivers[fmt], KILLS[fmt][1]
    out = d.out
    dead = _paused(d)["run_id"]
    assert _journals(out) == [f"{dead}.json"], "no journal while staging: pipeline.py must stage inside staging()"
    for n in tables_staged:
        staged = {"delta-rs": os.path.join(out, n, f"run_date={D1}", dead),
                  "spark": os.path.join(out, n, "_staging", dead)}.get(fmt, os.path.join(out, n, "_staging", dead, f"run_date={D1}"))
        assert glob.glob(os.path.join(staged, "part-*.parquet")), staged
    assert os.path.isfile(os.path.join(out, "model", dead, "model.json"))
    _kill(d.proc)

    over = {"output.format": "parquet"} if fmt == "parquet" else {"output.delta_writer": fmt}
    result = run_job(_cfg(small_table, out, **over), spark=spark)

    assert _paths_naming(out, dead) == []
    assert _paths_naming(out, "_temporary") == [] and _journals(out) == []
    assert not os.path.exists(os.path.join(out, "model", dead))
    for n in TABLES:
        assert _run_ids(out, n, fmt) == {result.run_id}, n
    asg = os.path.join(out, "assignments")
    rows = (DeltaTable(asg).to_pyarrow_table(columns=["customer_id"]) if fmt != "parquet"
            else ds.dataset(asg, format="parquet", partitioning="hive").to_table(columns=["customer_id"]))
    assert rows.num_rows == N == len(set(rows.column("customer_id").to_pylist()))
    if fmt == "parquet":
        assert glob.glob(os.path.join(out, "*", "_staging", "*")) == []
    assert _latest(out) == result.run_id
