"""The nightly job reads its input once: after the rows are loaded into the engine's tasks, nothing
reads the input again (issue 19). Proven by taking the input away at that moment: the job must
still commit every table, with every pass (density, hierarchy, report) on."""

from __future__ import annotations

import os
import shutil
import threading
import time

from deltalake import DeltaTable

from clusterlake import faults
from clusterlake.pipeline import run_job
from tests.conftest import job_config


def _take_away_when_loaded(folder: str, src: str, dst: str, seen: dict) -> None:
    """Wait for the pause at ``rows.loaded``, move the input away, let the job go on."""
    tag = os.path.join(folder, "rows.loaded@1")
    deadline = time.time() + 300
    while not os.path.exists(tag + ".paused") and time.time() < deadline:
        time.sleep(0.05)
    if os.path.exists(tag + ".paused"):
        shutil.move(src, dst)
        seen["moved"] = True
    with open(tag + ".resume", "w"):
        pass


def test_the_input_is_not_read_after_the_load(spark, small_table, tmp_path, monkeypatch):
    data = str(tmp_path / "in.parquet")
    shutil.copytree(small_table, data)
    pause_dir = str(tmp_path / "pause")
    monkeypatch.setenv(faults.ENV, "rows.loaded@1")
    monkeypatch.setenv(faults.DIR_ENV, pause_dir)
    faults.reset()
    seen: dict = {}
    mover = threading.Thread(target=_take_away_when_loaded,
                             args=(pause_dir, data, str(tmp_path / "gone.parquet"), seen), daemon=True)
    mover.start()
    out = str(tmp_path / "out")
    cfg = job_config(data, out, **{"kmeans.k": 5, "density.enabled": "true", "hierarchical.enabled": "true",
                                   "report.enabled": "true", "serving.members_per_cluster": 100})
    try:
        res = run_job(cfg, spark=spark)
    finally:
        mover.join(timeout=10)
        faults.reset()
    assert seen.get("moved") and not os.path.exists(data)  # the input was gone from the load on
    assert res.rows_used == 6000
    asg = DeltaTable(f"{out}/assignments").to_pandas()
    assert len(asg) == 6000 and asg["customer_id"].is_unique
    assert asg["density_label"].notna().all() and asg["hierarchy"].notna().all()
    for name in ("centroids", "metrics", "profiles", "lineage", "runs"):
        assert len(DeltaTable(f"{out}/{name}").to_pandas()) > 0, name
