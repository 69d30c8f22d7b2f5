"""`spark-submit jobs/cluster.py --config FILE` runs the same job as `clusterlake run`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from deltalake import DeltaTable

ROOT = Path(__file__).resolve().parents[1]


def test_spark_submit_runs_the_job(tmp_path):
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0, 0], [10, 10, 0], [0, 10, 10]], float)
    lab = np.repeat(np.arange(3), 200)
    X = centers[lab] + rng.normal(scale=0.5, size=(600, 3))
    data = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": np.arange(600, dtype=np.int64) * 7, "a": X[:, 0], "b": X[:, 1],
                             "c": X[:, 2], "seg": lab.astype(np.int32)}), data)
    cfg = {
        "job": {"name": "submit-test", "run_date": "2026-11-21"},
        "input": {"path": str(data), "id_column": "id", "label_column": "seg"},
        "kmeans": {"k": 3, "seed": 1},
        "output": {"path": str(tmp_path / "out")},
        "spark": {"master": "local[1]", "conf": {"spark.sql.shuffle.partitions": 2}},
    }
    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    env.pop("PYTHONPATH", None)
    submit = Path(sys.executable).parent / "spark-submit"
    proc = subprocess.run(
        [str(submit), "--master", "local[2]", "--conf", "spark.ui.enabled=false",
         str(ROOT / "jobs" / "cluster.py"), "--config", str(cfg_path), "--set", "kmeans.max_iter=20"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "k = 3" in proc.stdout and "ARI 1.0000" in proc.stdout
    asg = DeltaTable(str(tmp_path / "out" / "assignments")).to_pandas()
    assert len(asg) == 600 and asg["id"].is_unique
    runs = DeltaTable(str(tmp_path / "out" / "runs")).to_pandas()
    assert runs["config_json"].str.contains('"max_iter": 20').all()


def test_spark_submit_bad_config_exits_2_with_one_line(tmp_path):
    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text("input: {path: x, id_column: id}\noutput: {path: o}\nkmeans: {k: 1}\n")
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    submit = Path(sys.executable).parent / "spark-submit"
    proc = subprocess.run([str(submit), str(ROOT / "jobs" / "cluster.py"), "--config", str(cfg_path)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    # spark-submit's PythonRunner merges the Python driver's stderr into its own stdout
    output = proc.stdout + proc.stderr
    errors = [line for line in output.splitlines() if line.startswith("clusterlake: error:")]
    assert len(errors) == 1 and "'kmeans.k'" in errors[0], output[-2000:]
