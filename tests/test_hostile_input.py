"""Issue 17: bad data never commits silently, every user error is exit 2, and a failed run changes
nothing visible.

Each case runs against a copy of one good run's output (a parquet input directory of two files,
3 blobs, k=3) and compares every table's Delta version, ``model/latest`` and the files on disk
before and after. Real Spark (the shared session), real parquet and Delta files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from clusterlake.errors import ClusterlakeError, InputDataError, OutputError
from clusterlake.pipeline import run_job
from tests.conftest import ROOT, job_config

TABLES = ("centroids", "assignments", "metrics", "profiles", "lineage", "runs")
FAST = {"kmeans.k": 3, "input.label_column": "null", "density.enabled": "false",
        "hierarchical.enabled": "false", "report.enabled": "false", "serving.members_per_cluster": 0}


def blob_columns(n: int = 300, seed: int = 5, start: int = 1000) -> dict:
    rng = np.random.default_rng(seed)
    centers = np.array([[25.0, 20_000.0, 2.0], [45.0, 60_000.0, 10.0], [65.0, 120_000.0, 25.0]])
    seg = np.arange(n) % 3
    X = centers[seg] + rng.normal(size=(n, 3)) * np.array([1.5, 1_500.0, 0.7])
    return {"customer_id": pa.array(np.arange(start, start + n, dtype=np.int64)),
            "age": pa.array(X[:, 0]), "income": pa.array(X[:, 1]), "visits": pa.array(X[:, 2])}


def write_dir(path, *parts: dict) -> str:
    """A parquet directory with one file per dict (part-0.parquet, part-1.parquet, ...)."""
    os.makedirs(path, exist_ok=True)
    for i, cols in enumerate(parts):
        pq.write_table(pa.table(cols), os.path.join(path, f"part-{i}.parquet"))
    return str(path)


def halves(cols: dict) -> tuple[dict, dict]:
    n = len(next(iter(cols.values())))
    return ({k: v.slice(0, n // 2) for k, v in cols.items()}, {k: v.slice(n // 2) for k, v in cols.items()})


def snapshot(out: str) -> dict:
    """Everything a reader or the next run sees: table versions, model/latest, every file."""
    files = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)
    return {"versions": {t: DeltaTable(f"{out}/{t}").version() for t in TABLES},
            "latest": os.readlink(f"{out}/model/latest"), "files": files}


def config(inp: str, out: str, **over):
    return job_config(inp, out, **{**FAST, **over})


@pytest.fixture(scope="module")
def good(spark, tmp_path_factory):
    """One good first run (2026-11-20) into an output directory; tests copy it."""
    base = tmp_path_factory.mktemp("hostile")
    inp = write_dir(base / "in", *halves(blob_columns()))
    out = str(base / "out")
    res = run_job(config(inp, out), spark=spark)
    return {"input": inp, "out": out, "run_id": res.run_id, "base": base}


@pytest.fixture
def copy(good, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(good["out"], out, symlinks=True)
    return out


def fails_unchanged(spark, cfg, out: str, exc=InputDataError) -> str:
    before = snapshot(out)
    with pytest.raises(exc) as ei:
        run_job(cfg, spark=spark)
    assert snapshot(out) == before
    msg = str(ei.value)
    assert "\n" not in msg and ei.value.exit_code == 2
    return msg


# --------------------------------------------------------------------------------------------
# the feature set is a contract across runs


def test_feature_turned_string_fails_naming_it(spark, good, copy, tmp_path):
    a, b = halves(blob_columns())
    b = dict(b, visits=pa.array([f"{v:.1f}" for v in b["visits"].to_pylist()]))
    inp = write_dir(tmp_path / "in", a, b)  # one file has it as a string: conflicting types
    msg = fails_unchanged(spark, config(inp, copy, **{"job.run_date": "2026-11-21"}), copy)
    assert "'visits'" in msg and "conflicting types" in msg and "part-1.parquet" in msg
    # every file has it as a string: the features differ from the previous model's
    inp2 = write_dir(tmp_path / "in2", *halves(dict(blob_columns(), visits=pa.array(["x"] * 300))))
    msg = fails_unchanged(spark, config(inp2, copy, **{"job.run_date": "2026-11-21"}), copy)
    assert f"run {good['run_id']}" in msg and "lost 'visits' (now string, not numeric)" in msg
    assert "input.allow_feature_change: true" in msg


@pytest.mark.parametrize("lacking", [0, 1])
def test_file_without_a_feature_column_fails_whichever_sorts_first(spark, copy, tmp_path, lacking):
    parts = list(halves(blob_columns()))
    parts[lacking] = {k: v for k, v in parts[lacking].items() if k != "income"}
    inp = write_dir(tmp_path / "in", *parts)
    msg = fails_unchanged(spark, config(inp, copy, **{"job.run_date": "2026-11-21"}), copy)
    assert "'income' is missing from 1 of 2 files" in msg and f"part-{lacking}.parquet" in msg


def test_allowed_feature_change_runs_and_is_recorded(spark, good, copy, tmp_path):
    cols = {k: v for k, v in blob_columns().items() if k != "visits"}
    inp = write_dir(tmp_path / "in", *halves(cols))
    cfg = config(inp, copy, **{"job.run_date": "2026-11-21", "input.allow_feature_change": "true"})
    res = run_job(cfg, spark=spark)
    runs = DeltaTable(f"{copy}/runs").to_pandas().set_index("run_id")
    assert runs.loc[res.run_id, "feature_change"] == "lost 'visits' (not in the input)"
    assert runs.loc[good["run_id"], "feature_change"] is None
    assert res.lineage == {"new": 3, "retired": 3}  # a new feature set: every cluster renumbered


# --------------------------------------------------------------------------------------------
# values, files and types


def test_values_whose_squares_overflow_are_invalid(spark, copy, tmp_path):
    cols = blob_columns()
    income = cols["income"].to_numpy(zero_copy_only=False).copy()
    income[[4, 9]] = [1e300, -3e200]
    inp = write_dir(tmp_path / "in", *halves(dict(cols, income=pa.array(income))))
    msg = fails_unchanged(spark, config(inp, copy, **{"job.run_date": "2026-11-21"}), copy)
    assert "'income' 2 too_large" in msg and "1e+100" in msg
    res = run_job(config(inp, copy, **{"job.run_date": "2026-11-21", "input.invalid_rows": "drop"}), spark=spark)
    runs = DeltaTable(f"{copy}/runs").to_pandas().set_index("run_id")
    assert dict(runs.loc[res.run_id, "invalid_counts"]) == {"income:too_large": 2}
    assert res.rows_used == 298
    scale = np.load(f"{copy}/model/{res.run_id}/scale.npy")
    assert np.isfinite(scale).all() and scale[1] > 1000  # income's spread, not inf


def test_model_with_infinite_scale_is_refused_naming_the_feature():
    from clusterlake.io.model_artifact import check_finite

    with pytest.raises(InputDataError, match=r"scale is not finite for feature\(s\) \['income'\]"):
        check_finite({"scale": np.array([1.0, np.inf]), "centroids": np.zeros((2, 2))}, ["age", "income"])
    with pytest.raises(RuntimeError, match="centroids array holds NaN"):
        check_finite({"scale": np.ones(2), "centroids": np.array([[0.0, np.nan]])}, ["age", "income"])


def test_truncated_parquet_file_is_named(spark, copy, tmp_path):
    inp = write_dir(tmp_path / "in", *halves(blob_columns()))
    f = os.path.join(inp, "part-1.parquet")
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
    msg = fails_unchanged(spark, config(inp, copy, **{"job.run_date": "2026-11-21"}), copy)
    assert f"input file {f} is not a readable parquet file" in msg and "1 of 2 files" in msg


def test_damaged_page_behind_a_good_footer_is_named(spark, copy, tmp_path):
    inp = write_dir(tmp_path / "in", *halves(blob_columns()))
    f = os.path.join(inp, "part-0.parquet")
    raw = bytearray(open(f, "rb").read())
    raw[4:200] = b"\xff" * 196  # the first page headers: the footer still reads
    open(f, "wb").write(bytes(raw))
    msg = fails_unchanged(spark, config(inp, copy, **{"job.run_date": "2026-11-21"}), copy)
    assert msg.startswith("Spark could not read file") and "part-0.parquet" in msg
    assert "rewrite or remove the damaged file" in msg and "collectToPython" not in msg


@pytest.mark.parametrize("int_type", [np.int32, np.int64])
def test_int_and_double_across_files_are_unified(spark, good, copy, tmp_path, int_type):
    a, b = halves(blob_columns())
    a = dict(a, age=pa.array(np.round(a["age"].to_numpy()).astype(int_type)))  # ints here, doubles there
    inp = write_dir(tmp_path / "in", a, b)
    res = run_job(config(inp, copy, **{"job.run_date": "2026-11-21"}), spark=spark)
    assert res.rows_used == 300 and res.feature_columns == ["age", "income", "visits"]
    prof = DeltaTable(f"{copy}/profiles").to_pandas()
    age = prof[(prof.run_id == res.run_id) & (prof.feature == "age")]
    expect = np.concatenate([a["age"].to_numpy().astype(float), b["age"].to_numpy()]).mean()
    assert abs(float(age.population_mean.iloc[0]) - expect) < 1e-9
    assert res.lineage == {"persist": 3}  # same features, same clusters


def test_same_features_in_another_column_order_are_no_change(spark, good, copy, tmp_path):
    cols = blob_columns()
    inp = write_dir(tmp_path / "in", *halves({k: cols[k] for k in ("visits", "customer_id", "income", "age")}))
    res = run_job(config(inp, copy, **{"job.run_date": "2026-11-21"}), spark=spark)
    assert res.feature_columns == ["age", "income", "visits"]  # the model's order
    assert res.lineage == {"persist": 3}


def test_damaged_journal_named_after_a_complete_older_run_deletes_nothing(spark, good, copy, tmp_path):
    later = run_job(config(good["input"], copy, **{"job.run_date": "2026-11-21"}), spark=spark)
    pending = os.path.join(copy, "_clusterlake", "pending")
    os.makedirs(pending, exist_ok=True)
    open(os.path.join(pending, f"{good['run_id']}.json"), "wb").close()  # 0 bytes, the first run's name
    before = [f for f in snapshot(copy)["files"] if good["run_id"] in f]
    run_job(config(good["input"], copy, **{"job.run_date": "2026-11-22"}), spark=spark)
    after = snapshot(copy)
    assert [f for f in after["files"] if good["run_id"] in f] == [f for f in before if "pending" not in f]
    first = DeltaTable(f"{copy}/assignments").to_pandas()
    assert set(first.run_id) == {good["run_id"], later.run_id, after["latest"]}


def test_nanosecond_timestamp_that_is_no_feature_is_ignored(spark, copy, tmp_path):
    cols = dict(blob_columns(), loaded_at=pa.array(np.arange(300) * 10**9, pa.timestamp("ns")))
    inp = write_dir(tmp_path / "in", *halves(cols))
    res = run_job(config(inp, copy, **{"job.run_date": "2026-11-21"}), spark=spark)
    assert res.rows_used == 300 and res.feature_columns == ["age", "income", "visits"]
    cols2 = dict(blob_columns(), loaded_at=pa.array(np.arange(300) * 10**9, pa.timestamp("ns")))
    inp2 = write_dir(tmp_path / "in2", *halves(cols2))
    msg = fails_unchanged(spark, config(inp2, copy, **{"job.run_date": "2026-11-22",
                                                         "input.label_column": "loaded_at"}), copy)
    assert "'loaded_at' has type timestamp[ns]" in msg and "Spark cannot read" in msg


# --------------------------------------------------------------------------------------------
# re-running a date


def test_rerun_of_a_date_compares_with_the_run_before_it(spark, good, copy, tmp_path):
    nxt = write_dir(tmp_path / "in", *halves(blob_columns(seed=6)))
    first = run_job(config(nxt, copy, **{"job.run_date": "2026-11-21"}), spark=spark)
    again = run_job(config(nxt, copy, **{"job.run_date": "2026-11-21"}), spark=spark)
    assert first.previous_run_id == again.previous_run_id == good["run_id"]
    assert again.cluster_ids == first.cluster_ids  # idempotent: the same ids for the same input
    runs = DeltaTable(f"{copy}/runs").to_pandas().set_index("run_id")
    assert runs.loc[again.run_id, "previous_run_id"] == good["run_id"]
    assert first.run_id not in runs.index  # replaced
    lin = DeltaTable(f"{copy}/lineage").to_pandas()
    assert set(lin[lin.run_id == again.run_id].previous_run_id) == {good["run_id"]}


# --------------------------------------------------------------------------------------------
# the update job


def test_update_missing_model_column_names_the_model_not_a_config_key(spark, good, copy, tmp_path):
    from clusterlake.update import run_update

    cols = {k: v for k, v in blob_columns(n=30, start=9000).items() if k != "visits"}
    new = write_dir(tmp_path / "new", cols)
    before = snapshot(copy)
    with pytest.raises(InputDataError) as ei:
        run_update(config(good["input"], copy), new, spark=spark)
    msg = str(ei.value)
    assert f"the model of run {good['run_id']} was fitted on feature column(s) ['visits']" in msg
    assert "input.feature_columns" not in msg
    assert snapshot(copy) == before


# --------------------------------------------------------------------------------------------
# unusable output paths and a held lock: exit 2 / 75 before Spark starts (a subprocess: no
# session is active there, and Spark's start-up would log "spark ... session")


def _cli(tmp_path, out: str, inp: str, extra_env=None) -> subprocess.CompletedProcess:
    yaml = tmp_path / "job.yaml"
    yaml.write_text(f"job: {{name: t, run_date: 2026-11-21}}\ninput: {{path: '{inp}', id_column: customer_id}}\n"
                    f"kmeans: {{k: 3}}\noutput: {{path: '{out}'}}\n")
    env = dict(os.environ, **(extra_env or {}))
    return subprocess.run([sys.executable, "-m", "clusterlake.cli", "run", "--config", str(yaml)],
                          capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=300)


def _one_error_no_spark(p: subprocess.CompletedProcess, code: int) -> str:
    assert p.returncode == code, p.stderr
    errors = [ln for ln in p.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and errors[0].startswith("clusterlake: error: "), p.stderr
    assert "session: master=" not in p.stderr and "Traceback" not in p.stderr, p.stderr
    return errors[0]


@pytest.mark.parametrize("case", ["file", "under_file", "proc"])
def test_unusable_output_path_exits_2_before_spark(good, tmp_path, case):
    plain = tmp_path / "plain.txt"
    plain.write_text("not a directory")
    out = {"file": str(plain), "under_file": str(plain / "out"), "proc": "/proc/clusterlake-out"}[case]
    line = _one_error_no_spark(_cli(tmp_path, out, good["input"]), 2)
    assert f"output.path {out}" in line
    assert {"file": "is a regular file", "under_file": "which is a regular file",
            "proc": "is not writable"}[case] in line
    assert plain.read_text() == "not a directory" and not os.path.exists("/proc/clusterlake-out")


def test_held_lock_exits_75_before_spark(good, tmp_path):
    import json
    import socket
    import time

    out = tmp_path / "out"
    (out / "_clusterlake").mkdir(parents=True)
    (out / "_clusterlake" / "lock.json").write_text(json.dumps(
        {"run_id": "other-run", "host": socket.gethostname(), "pid": os.getpid(), "started_at": time.time(),
         "heartbeat_at": time.time()}))
    line = _one_error_no_spark(_cli(tmp_path, str(out), good["input"]), 75)
    assert "another run (other-run" in line


def test_output_check_leaves_nothing_behind(tmp_path):
    from clusterlake.io.output_check import check_output_path

    check_output_path(str(tmp_path / "a" / "b" / "c"))
    assert not (tmp_path / "a").exists()
    with pytest.raises(OutputError) as ei:
        check_output_path("/proc/self/clusterlake/x")
    assert isinstance(ei.value, ClusterlakeError) and "/proc/self/clusterlake/x" in str(ei.value)
