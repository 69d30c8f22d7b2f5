"""The nightly job on a real Spark standalone cluster: `make test-cluster` (also run by `.ci/run`).

A master and two 1-core workers on 127.0.0.1 (``scripts/standalone_cluster.py``), the job
submitted in client mode with the artefacts of ``make dist`` (``scripts/submit.sh``: the packed
virtualenv as ``--archives``, the config with ``--files``), exactly as the README's "Run on a
cluster" section. Separate processes for driver and executors: closures must pickle, executors
must find their dependencies in the archive, and nothing can be read from the driver's memory.

In order (one cluster for the module):

1. a plain run, its tables committed by Spark's Delta writer (Delta's jars shipped with
   ``--jars``): tables complete, and the Spark event log shows tasks (the engine's barrier stage
   included) on both executors;
2. the same date again, with worker 1 (and its executor) SIGKILLed before the 3rd Lloyd
   iteration: the fit continues on the remaining executor and the tables equal run 1's (the
   re-run replaced the date's partition instead of adding to it);
3. the driver SIGKILLed while it commits the tables: readers still see run 2, unchanged; the next
   run takes over the dead driver's run lock, restores the tables the dead run had committed and
   succeeds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
CONFIG = "conf/standalone.yaml"
RUN_DATE = "2026-11-23"
ROWS = 200_000  # data/sample/customers.parquet


def _cluster_script(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "scripts/standalone_cluster.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    for f in ("dist/clusterlake-env.tar.gz", "dist/venv/bin/python", "data/sample/customers.parquet", CONFIG):
        assert (ROOT / f).exists(), f"{f} is missing: run `make test-cluster` (it builds dist/ and the data)"
    base = tmp_path_factory.mktemp("standalone")
    cdir = base / "cluster"
    p = _cluster_script("start", "--dir", str(cdir), "--workers", "2", "--cores", "1", "--memory", "2g")
    assert p.returncode == 0, f"the standalone cluster did not start:\n{p.stderr}"
    state = json.loads((cdir / "cluster.json").read_text())
    pids = [state["master"]["pid"]] + [w["pid"] for w in state["workers"]]
    try:
        yield {"master": p.stdout.strip().splitlines()[-1], "dir": cdir, "base": base, "out": base / "out"}
    finally:
        import importlib.util

        spec = importlib.util.spec_from_file_location("standalone_cluster", ROOT / "scripts" / "standalone_cluster.py")
        sc = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sc)
        everything = pids + [c for pid in pids for c in sc.descendants(pid)]  # executors, Python workers
        stopped = _cluster_script("stop", "--dir", str(cdir))
        assert stopped.returncode == 0, stopped.stderr
        left = [pid for pid in everything if not _gone(pid)]
        assert not left, f"processes left after stop: {left}"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _submit_cmd(cluster, spark_opts=(), job_opts=()) -> list[str]:
    return ["scripts/submit.sh", cluster["master"], CONFIG, *spark_opts, "--",
            "--set", f"output.path={cluster['out']}", "--set", f"job.run_date={RUN_DATE}",
            "--set", "kmeans.recovery_wait_seconds=5", *job_opts]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_HOME", "CLUSTERLAKE_"))}
    env.update(extra)
    return env


def submit(cluster, log: Path, spark_opts=(), job_opts=(), timeout=900, **env) -> str:
    with open(log, "w") as f:
        p = subprocess.run(_submit_cmd(cluster, spark_opts, job_opts), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                           env=_env(**env), timeout=timeout)
    text = log.read_text()
    assert p.returncode == 0, f"the job failed (exit {p.returncode}); driver log {log}:\n{text[-6000:]}"
    return text


def start_paused(cluster, log: Path, point: str, pause_dir: Path) -> tuple[subprocess.Popen, dict]:
    """Submit with a pause point; return the running submission and what the pause reported."""
    with open(log, "w") as f:
        proc = subprocess.Popen(_submit_cmd(cluster), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                env=_env(CLUSTERLAKE_PAUSE_AT=point, CLUSTERLAKE_PAUSE_DIR=str(pause_dir)),
                                start_new_session=True)
    _started.append(proc)
    paused = pause_dir / f"{point}.paused"
    deadline = time.time() + 600
    while not paused.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the job never reached {point} (exit {proc.poll()}):\n{log.read_text()[-6000:]}")
        time.sleep(0.2)
    return proc, json.loads(paused.read_text())


_started: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_driver_left_behind():
    """A paused driver of a failed test must not resume later against a stopped cluster."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=60)


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while _running(pid) and time.time() < deadline:
        time.sleep(0.1)
    return not _running(pid)


def read_run(out: Path) -> dict:
    """The latest successful run, read the way the README tells readers to (through `runs`)."""
    runs = DeltaTable(str(out / "runs")).to_pandas()
    last = runs[runs.status == "success"].sort_values("finished_at").iloc[-1]
    versions = dict(last.table_versions)
    tables = {"run": last, "versions": versions}
    for name in ("centroids", "assignments", "metrics"):
        t = DeltaTable(str(out / name), version=versions[name]).to_pandas()
        tables[name] = t[t.run_id == last.run_id].reset_index(drop=True)
    return tables


def assert_same_tables(a: dict, b: dict) -> None:
    ca = a["centroids"].sort_values("cluster_id").reset_index(drop=True)
    cb = b["centroids"].sort_values("cluster_id").reset_index(drop=True)
    assert ca.cluster_id.tolist() == cb.cluster_id.tolist()
    assert ca["size"].tolist() == cb["size"].tolist()
    np.testing.assert_allclose(np.stack(ca.centroid_model), np.stack(cb.centroid_model), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.stack(ca.centroid), np.stack(cb.centroid), rtol=1e-9, atol=1e-9)
    m = a["assignments"].merge(b["assignments"], on="customer_id", suffixes=("_a", "_b"))
    assert len(m) == len(a["assignments"]) == len(b["assignments"]) == ROWS
    assert (m.cluster_id_a == m.cluster_id_b).all(), f"{(m.cluster_id_a != m.cluster_id_b).sum()} rows changed cluster"
    np.testing.assert_allclose(m.distance_a, m.distance_b, rtol=1e-7, atol=1e-9)
    # the sample passes: same sample (keyed by a hash of the ids, whatever the layout), same labels for every row
    assert m.density_label_a.notna().all() and (m.density_label_a == m.density_label_b).all()
    assert (m.hierarchy_a.map(dict) == m.hierarchy_b.map(dict)).all()
    # drift compares a run with the one before it: the first run has none (checked by the caller)
    ma = a["metrics"].query("scope != 'drift'").set_index(["scope", "algorithm", "k", "metric"]).value.sort_index()
    mb = b["metrics"].query("scope != 'drift'").set_index(["scope", "algorithm", "k", "metric"]).value.sort_index()
    assert ma.index.tolist() == mb.index.tolist()
    np.testing.assert_allclose(ma.to_numpy(), mb.to_numpy(), rtol=1e-7)


def executors_by_stage(events_dir: Path) -> tuple[dict, set]:
    """From the Spark event log: {stage id: set of executor ids that ran its tasks} and the ids of
    barrier stages."""
    # rolling logs (Spark 4's default) are eventlog_v2_<app>/events_<n>_<app>; skip .crc files
    files = [p for p in events_dir.rglob("*") if p.is_file() and p.name.startswith(("events_", "app-"))
             and not p.name.endswith(".crc")]
    assert files, f"no event log under {events_dir}"
    by_stage, barrier = defaultdict(set), set()
    for path in files:
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            e = json.loads(line)
            if e["Event"] == "SparkListenerTaskEnd" and e["Task End Reason"]["Reason"] == "Success":
                by_stage[e["Stage ID"]].add(e["Task Info"]["Executor ID"])
            elif e["Event"] == "SparkListenerStageSubmitted":
                if any(r.get("Barrier") for r in e["Stage Info"]["RDD Info"]):
                    barrier.add(e["Stage Info"]["Stage ID"])
    return by_stage, barrier


@pytest.fixture(scope="module")
def first_run(cluster):
    events = cluster["base"] / "events"
    events.mkdir()
    log = submit(cluster, cluster["base"] / "run1.log", spark_opts=[
        "--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir=file://{events}",
        "--conf", "spark.eventLog.compress=false"])
    return {"log": log, "tables": read_run(cluster["out"]), "events": events}


def test_the_job_runs_on_both_executors(cluster, first_run):
    t = first_run["tables"]
    run = t["run"]
    assert run.rows_used == ROWS and run.k == 7 and run.engine == "clusterlake"
    # Delta's jars went to the driver and the executors with --jars: Spark's Delta writer committed
    assert run.table_writer == "spark-delta"
    assert "Spark's Delta writer commits them" in first_run["log"]
    assert len(t["centroids"]) == 7 and t["centroids"]["size"].sum() == ROWS
    assert len(t["assignments"]) == ROWS and t["assignments"].customer_id.is_unique
    km = t["metrics"][t["metrics"].algorithm == "kmeans"]
    metrics = dict(zip(km.metric, km.value))
    assert metrics["ari"] > 0.9 and metrics["silhouette"] > 0.3
    # the density and hierarchical passes ran and were extended to every row on the executors
    passes = set(t["metrics"].algorithm)
    assert {"hdbscan", "hierarchical"} <= passes
    assert t["assignments"].density_label.notna().all() and t["assignments"].hierarchy.notna().all()
    assert "engine: 2 tasks loaded 200,000 rows" in first_run["log"]
    by_stage, barrier = executors_by_stage(first_run["events"])
    assert set().union(*by_stage.values()) == {"0", "1"}, f"tasks ran on executors {dict(by_stage)}"
    assert barrier, "no barrier stage in the event log"
    assert any(by_stage[s] == {"0", "1"} for s in barrier), \
        f"the engine's barrier tasks did not run on both executors: {[by_stage[s] for s in barrier]}"
    # the model artifact the serving side loads, and `latest` pointing at it
    latest = cluster["out"] / "model" / "latest" / "model.json"
    assert json.loads(latest.read_text())["run_id"] == run.run_id


def test_a_lost_worker_during_kmeans_gives_the_same_tables(cluster, first_run, tmp_path):
    point = "engine.lloyd@3"
    proc, info = start_paused(cluster, cluster["base"] / "run2.log", point, tmp_path)
    assert info["iteration"] == 3 and len(info["tasks"]) == 2
    victim_pid = info["tasks"][1]["pid"]
    k = _cluster_script("kill-worker", "--dir", str(cluster["dir"]), "--owner-of", str(victim_pid))
    assert k.returncode == 0, k.stderr
    killed = int(k.stdout.strip().splitlines()[-1])
    assert _gone(victim_pid)
    (tmp_path / f"{point}.resume").write_text("")
    rc = proc.wait(timeout=900)
    log = (cluster["base"] / "run2.log").read_text()
    assert rc == 0, f"the job did not survive losing worker {killed}:\n{log[-6000:]}"
    assert "Recovering (1 of at most 3)" in log
    assert "continuing with 1 barrier tasks instead of 2" in log
    second = read_run(cluster["out"])
    assert second["run"].run_id != first_run["tables"]["run"].run_id
    assert second["run"].iterations == first_run["tables"]["run"].iterations
    assert_same_tables(first_run["tables"], second)
    # a re-run of the date is compared with what the run it replaces was compared with (here:
    # nothing, it was the first run), not with the replaced run: same ids, no drift scope
    assert pd.isna(second["run"].previous_run_id) and pd.isna(first_run["tables"]["run"].previous_run_id)
    m = second["metrics"]
    assert (m.scope == "drift").sum() == 0
    # a re-run of the date replaced its partition: the latest table holds one run's rows
    latest = DeltaTable(str(cluster["out"] / "assignments")).to_pandas()
    assert len(latest) == ROWS and set(latest.run_id) == {second["run"].run_id}


def test_a_driver_killed_while_publishing_leaves_the_previous_run(cluster, first_run, tmp_path):
    before = read_run(cluster["out"])
    point = "publish.commit@3"  # centroids and assignments are committed, metrics and runs not yet
    proc, info = start_paused(cluster, cluster["base"] / "run3.log", point, tmp_path)
    assert info["table"] == "metrics"
    dead_run = info["run_id"]
    os.killpg(proc.pid, signal.SIGKILL)  # spark-submit's JVM and the Python driver
    proc.wait(timeout=60)
    assert _gone(info["pid"])
    out = cluster["out"]
    # the dead run did commit two tables, yet a reader of `runs` sees the previous run, unchanged
    assert DeltaTable(str(out / "centroids")).version() == before["versions"]["centroids"] + 1
    assert (out / "_clusterlake" / "pending" / f"{dead_run}.json").exists()
    after = read_run(out)
    assert after["run"].run_id == before["run"].run_id
    for name in ("centroids", "assignments", "metrics"):
        pd.testing.assert_frame_equal(after[name], before[name])

    # the next run restores what the dead run committed, then publishes normally
    log = submit(cluster, cluster["base"] / "run4.log")
    assert f"recovered interrupted run(s) ['{dead_run}']" in log
    assert f"taking over the lock of run {dead_run} (its process is gone" in log
    assert not (out / "_clusterlake" / "pending" / f"{dead_run}.json").exists()
    assert not (out / "model" / dead_run).exists()
    fourth = read_run(out)
    assert fourth["run"].run_id not in (dead_run, before["run"].run_id)
    assert len(fourth["assignments"]) == ROWS and fourth["centroids"]["size"].sum() == ROWS
    for name in ("centroids", "assignments", "metrics"):
        latest = DeltaTable(str(out / name)).to_pandas()
        assert set(latest.run_id) == {fourth["run"].run_id}, f"{name} mixes runs: {set(latest.run_id)}"
