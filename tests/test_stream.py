"""The streaming assignment (``jobs/assign_stream.py``, :mod:`clusterlake.stream`), end to end on
local Spark: real parquet files dropped in a landing folder, real streaming queries with
``trigger(availableNow=True)`` from a real checkpoint, tables read back with ``deltalake`` /
pyarrow.

The nightly job runs once (module fixture) on the shared 6,000-row table; the landing files are
rows of that same table, so every streamed row's cluster id can be compared with the one the
nightly job wrote to ``assignments``. Tests other than the first copy the model into their own
output path (the stream needs nothing else from the nightly run). A crash between the sink's
commit and Spark's checkpoint commit is reproduced by deleting the newest ``<checkpoint>/commits``
file, which is exactly what such a crash leaves behind.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml
from deltalake import DeltaTable

from clusterlake.errors import ConfigError, InputDataError
from clusterlake.io import model_artifact
from clusterlake.io.fs import location
from clusterlake.pipeline import run_job
from clusterlake.io.stream_commit import MARKERS
from clusterlake.stream import _LatestModel, run_assign_stream
from tests.conftest import DELTA_WRITERS, ROOT, job_config, require_writer

ID = "customer_id"


@pytest.fixture(scope="module")
def nightly(spark, small_table, tmp_path_factory):
    """The nightly job on the 6,000-row table (k=4); its output, run id, input rows and the
    cluster id it assigned to every id."""
    out = str(tmp_path_factory.mktemp("stream") / "out")
    res = run_job(job_config(small_table, out, **{"kmeans.k": 4, "report.enabled": False, "quality.sample_size": 500}),
                  spark=spark)
    batch = DeltaTable(os.path.join(out, "assignments")).to_pyarrow_table(columns=[ID, "cluster_id", "distance"])
    by_id = {i: (c, d) for i, c, d in zip(*(batch.column(n).to_pylist() for n in (ID, "cluster_id", "distance")))}
    return dict(out=out, run_id=res.run_id, data=pq.read_table(small_table), batch=by_id, input=small_table)


def _cfg(nightly, out, tmp, table="assignments_stream", **over):
    return job_config(nightly["input"], out, **{
        "kmeans.k": 4, "stream.landing_path": str(tmp / "landing"), "stream.checkpoint_path": str(tmp / "ckpt"),
        "stream.table": table, "stream.max_files_per_trigger": 2, **over})


def _own_output(nightly, tmp) -> str:
    """An output path holding only a copy of the nightly model (as model/latest)."""
    out = tmp / "out"
    run_id = nightly["run_id"]
    shutil.copytree(os.path.join(nightly["out"], "model", run_id), out / "model" / run_id)
    model_artifact.point_latest(location(str(out / "model")), run_id)
    return str(out)


def _drop(landing, name: str, rows: pa.Table) -> None:
    """Drop a file the way producers should: written under a hidden name, then renamed."""
    os.makedirs(landing, exist_ok=True)
    tmp = os.path.join(landing, f".{name}.tmp")
    pq.write_table(rows, tmp)
    os.replace(tmp, os.path.join(landing, name))


def _wave(nightly, landing, start: int, sizes: list[int], prefix: str) -> list[int]:
    """Drop consecutive slices of the input (every column, label included) as files; their ids."""
    ids = []
    for j, n in enumerate(sizes):
        part = nightly["data"].slice(start, n)
        _drop(landing, f"{prefix}-{j}.parquet", part)
        ids += part.column(ID).to_pylist()
        start += n
    return ids


def _uncommit_last(ckpt) -> int:
    """Delete the newest entry of Spark's commit log: the state a driver killed after the sink's
    commit, before Spark's own, leaves. Returns that batch id."""
    commits = os.path.join(str(ckpt), "commits")
    last = max(int(f) for f in os.listdir(commits) if f.isdigit())
    for f in (str(last), f".{last}.crc"):
        if os.path.exists(os.path.join(commits, f)):
            os.remove(os.path.join(commits, f))
    return last


def _delta(out, table) -> pa.Table:
    return DeltaTable(os.path.join(out, table)).to_pyarrow_table()


def _exactly_once(tbl: pa.Table, ids: list[int]) -> None:
    got = tbl.column(ID).to_pylist()
    assert len(got) == len(set(got)), "an id was written twice"
    assert sorted(got) == sorted(ids)


# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", DELTA_WRITERS)
def test_two_waves_with_a_restart_write_each_row_once_with_the_batch_jobs_clusters(spark, nightly, tmp_path, writer):
    out = nightly["out"]  # next to the nightly tables, as in production
    table = f"assignments_stream_{writer.replace('-', '_')}"  # one table per writer next to the nightly ones
    cfg = _cfg(nightly, out, tmp_path, table=table, **{"output.delta_writer": require_writer(spark, writer)})
    landing = tmp_path / "landing"
    wave1 = _wave(nightly, landing, 0, [150, 150, 100], "w1")
    r1 = run_assign_stream(cfg, spark=spark)
    assert (r1.batches, r1.batches_skipped, r1.files) == (2, 0, 3)  # 2 files per trigger
    assert (r1.rows_read, r1.rows_dropped, r1.rows_written) == (400, 0, 400)
    assert r1.model_run_ids == [nightly["run_id"]]
    _exactly_once(_delta(out, table), wave1)

    wave2 = _wave(nightly, landing, 1000, [120, 80], "w2")
    r2 = run_assign_stream(cfg, spark=spark)  # a new query from the same checkpoint: a restart
    assert r2.query_id == r1.query_id and r2.app_id == r1.app_id  # the query id survives restarts
    assert (r2.batches, r2.rows_written) == (1, 200)  # only the new files

    tbl = _delta(out, table)
    _exactly_once(tbl, wave1 + wave2)
    dt = DeltaTable(os.path.join(out, table))
    assert dt.transaction_version(r2.app_id) == 2  # batches 0, 1, 2
    rows = tbl.to_pylist()
    for r in rows:  # the cluster the nightly job gave the same row
        cluster, distance = nightly["batch"][r[ID]]
        assert r["cluster_id"] == cluster
        assert r["distance"] == pytest.approx(distance, rel=1e-9, abs=1e-12)
    assert {r["model_run_id"] for r in rows} == {nightly["run_id"]}
    assert sorted({r["batch_id"] for r in rows}) == [0, 1, 2]
    by_file = {}
    for r in rows:
        by_file.setdefault(os.path.basename(r["source_file"]), []).append(r[ID])
    assert sorted(by_file) == ["w1-0.parquet", "w1-1.parquet", "w1-2.parquet", "w2-0.parquet", "w2-1.parquet"]
    assert sorted(by_file["w2-1.parquet"]) == sorted(wave2[120:])
    assert all(r["assigned_at"] is not None for r in rows)
    assert {str(r["run_date"]) for r in rows} == {"2026-11-20"}  # job.run_date of the config


@pytest.mark.parametrize("writer", DELTA_WRITERS)
def test_replayed_batch_after_a_crash_is_skipped_and_an_idle_run_writes_nothing(spark, nightly, tmp_path, writer):
    out = _own_output(nightly, tmp_path)
    cfg = _cfg(nightly, out, tmp_path, **{"output.delta_writer": require_writer(spark, writer)})
    ids = _wave(nightly, tmp_path / "landing", 2000, [60, 60, 60], "a")
    r1 = run_assign_stream(cfg, spark=spark)
    assert (r1.batches, r1.rows_written) == (2, 180)
    version = DeltaTable(os.path.join(out, "assignments_stream")).version()

    assert _uncommit_last(tmp_path / "ckpt") == 1
    r2 = run_assign_stream(cfg, spark=spark)  # Spark runs batch 1 again, with the same file
    assert (r2.batches, r2.batches_skipped, r2.rows_written) == (1, 1, 0)
    assert DeltaTable(os.path.join(out, "assignments_stream")).version() == version
    _exactly_once(_delta(out, "assignments_stream"), ids)

    r3 = run_assign_stream(cfg, spark=spark)  # no new files
    assert (r3.batches, r3.rows_read, r3.rows_written) == (0, 0, 0)
    assert DeltaTable(os.path.join(out, "assignments_stream")).version() == version
    _exactly_once(_delta(out, "assignments_stream"), ids)


def test_parquet_output_is_exactly_once_after_replays(spark, nightly, tmp_path):
    out = _own_output(nightly, tmp_path)
    cfg = _cfg(nightly, out, tmp_path, **{"output.format": "parquet"})
    ids = _wave(nightly, tmp_path / "landing", 3000, [50, 50, 40], "p")
    table = os.path.join(out, "assignments_stream")

    def rows():
        return ds.dataset(table, format="parquet", partitioning="hive").to_table()

    r1 = run_assign_stream(cfg, spark=spark)
    assert (r1.batches, r1.rows_written) == (2, 140)
    _exactly_once(rows(), ids)

    # crash after the batch's done marker, before Spark's commit: the replay is skipped
    _uncommit_last(tmp_path / "ckpt")
    r2 = run_assign_stream(cfg, spark=spark)
    assert (r2.batches, r2.batches_skipped, r2.rows_written) == (1, 1, 0)
    _exactly_once(rows(), ids)

    # crash after the files moved, before the done marker: the replay removes them and writes again
    n_last = pc.sum(pc.equal(rows().column("batch_id"), 1)).as_py()  # 40 or 50: files go by mtime
    _uncommit_last(tmp_path / "ckpt")
    marks = glob.glob(os.path.join(table, MARKERS, "*"))
    assert len(marks) == 1 and os.path.basename(marks[0]) == r1.app_id
    os.remove(os.path.join(marks[0], "1.done.json"))
    assert os.path.exists(os.path.join(marks[0], "1.intent.json"))
    r3 = run_assign_stream(cfg, spark=spark)
    assert (r3.batches, r3.batches_skipped, r3.rows_written) == (1, 0, n_last)
    tbl = rows()
    _exactly_once(tbl, ids)
    for i, c in zip(tbl.column(ID).to_pylist(), tbl.column("cluster_id").to_pylist()):
        assert c == nightly["batch"][i][0]
    assert not os.path.exists(os.path.join(table, "_staging", f"stream-{r3.query_id}-b1"))
    assert os.path.exists(os.path.join(marks[0], "1.done.json"))


def test_invalid_rows_fail_the_batch_then_drop_counts_them_on_the_retry(spark, nightly, tmp_path):
    out = _own_output(nightly, tmp_path)
    part = nightly["data"].slice(4000, 40)
    income = part.column("annual_income").to_numpy().copy()
    income[3] = np.nan
    age = pa.array([None if i == 7 else v for i, v in enumerate(part.column("age").to_pylist())], pa.int64())
    part = part.set_column(part.schema.get_field_index("annual_income"), "annual_income", pa.array(income))
    part = part.set_column(part.schema.get_field_index("age"), "age", age)
    _drop(tmp_path / "landing", "bad.parquet", part)
    bad_ids = {part.column(ID)[3].as_py(), part.column(ID)[7].as_py()}

    with pytest.raises(InputDataError) as err:
        run_assign_stream(_cfg(nightly, out, tmp_path, **{"input.invalid_rows": "fail"}), spark=spark)
    msg = str(err.value)
    assert "2 of 40 rows" in msg and "'annual_income' 1 nan" in msg and "'age' 1 null" in msg
    assert "bad.parquet" in msg and "input.invalid_rows: drop" in msg
    assert not os.path.exists(os.path.join(out, "assignments_stream"))

    # the failed batch is retried with the same file; under drop its bad rows are dropped and counted
    r = run_assign_stream(_cfg(nightly, out, tmp_path, **{"input.invalid_rows": "drop"}), spark=spark)
    assert (r.batches, r.rows_read, r.rows_dropped, r.rows_written) == (1, 40, 2, 38)
    assert r.invalid_counts == {"annual_income:nan": 1, "age:null": 1}
    tbl = _delta(out, "assignments_stream")
    _exactly_once(tbl, [i for i in part.column(ID).to_pylist() if i not in bad_ids])


def test_no_model_yet_is_a_clear_error(spark, nightly, tmp_path):
    cfg = _cfg(nightly, str(tmp_path / "empty"), tmp_path)
    with pytest.raises(InputDataError, match="no model under .*run the nightly job first"):
        run_assign_stream(cfg, spark=spark)
    assert not os.path.exists(tmp_path / "ckpt")  # no query was started
    with pytest.raises(ConfigError, match="stream.landing_path"):
        run_assign_stream(job_config(nightly["input"], nightly["out"]), spark=spark)

    # the spark-submit entry point: exit code 2 and one error line
    conf = tmp_path / "job.yaml"
    conf.write_text(yaml.safe_dump(json.loads(cfg.to_json())))
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "assign_stream.py"), "--config", str(conf)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("clusterlake: error: ")]
    assert len(errors) == 1 and "run the nightly job first" in errors[0]


def test_the_latest_model_is_reloaded_only_when_it_changes(nightly, tmp_path):
    out = _own_output(nightly, tmp_path)
    cfg = _cfg(nightly, out, tmp_path)
    latest = _LatestModel(cfg)
    art, _, _ = latest.get()
    assert art.run_id == nightly["run_id"] and latest.get()[0] is art  # unchanged: not reloaded
    # tonight's model: same centroids, other ids
    nxt = model_artifact.load(os.path.join(out, "model", "latest"))
    nxt.run_id, nxt.cluster_ids = "20261121-next", nxt.cluster_ids + 100
    model_artifact.save(nxt, location(os.path.join(out, "model", nxt.run_id)))
    model_artifact.point_latest(location(os.path.join(out, "model")), nxt.run_id)
    art2, _, _ = latest.get()
    assert art2.run_id == "20261121-next" and list(art2.cluster_ids) == [c + 100 for c in art.cluster_ids]
