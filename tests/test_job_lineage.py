"""Night after night (issue 7): stable cluster ids, lineage and drift, end to end on local Spark.

Each test writes real parquet inputs for two (or more) nights, runs the real job into one output
path, and reads the tables back with ``deltalake``. Blobs are labelled by a hidden column so the
test knows which rows belong together; the job never sees it (``label_column`` is off).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from clusterlake.config import load_config
from clusterlake.io import model_artifact
from clusterlake.pipeline import run_job

D = 4
SD = 0.5
CENTERS = {  # blob name -> centre (input units); far apart compared with SD
    "A": (0.0, 0.0, 0.0, 0.0),
    "B": (8.0, 0.0, 0.0, 0.0),
    "C": (0.0, 8.0, 0.0, 0.0),
    "D": (0.0, 0.0, 8.0, 0.0),
    "E": (8.0, 8.0, 8.0, 8.0),
}
N_BLOB = 500


def _blob(name, ids, rng, shift=None):
    X = np.asarray(CENTERS[name], dtype=np.float64) + rng.normal(0.0, SD, size=(len(ids), D))
    if shift is not None:
        X = X + np.asarray(shift, dtype=np.float64)
    return pd.DataFrame({"item_id": np.asarray(ids, dtype=np.int64), **{f"f{j}": X[:, j] for j in range(D)},
                         "blob": name})


def _write(df: pd.DataFrame, path: str, n_files: int = 2) -> str:
    os.makedirs(path, exist_ok=True)
    df = df.sample(frac=1.0, random_state=0).reset_index(drop=True)  # row order must not matter
    for i, rows in enumerate(np.array_split(np.arange(len(df)), n_files)):
        part = df.iloc[rows]
        pq.write_table(pa.Table.from_pandas(part.drop(columns=["blob"]), preserve_index=False),
                       os.path.join(path, f"part-{i}.parquet"))
    return path


def _cfg(inp, out, run_date, **over):
    data = {
        "job": {"name": "lineage-test", "run_date": run_date},
        "input": {"path": inp, "id_column": "item_id"},
        "preprocess": {"pca": {"enabled": False}},
        "kmeans": {"k": 4, "seed": 1, "max_iter": 50, "init": "kmeans||"},
        "quality": {"sample_size": 1000},
        "output": {"path": out, "delta_writer": "delta-rs"},  # the table tests cover Spark's writer
    }
    return load_config(data=data, overrides=[f"{k}={v}" for k, v in over.items()])


def _table(out, name) -> pd.DataFrame:
    return DeltaTable(os.path.join(out, name)).to_pyarrow_table().to_pandas()


def _of_run(out, name, run_id) -> pd.DataFrame:
    t = _table(out, name)
    return t[t.run_id == run_id].reset_index(drop=True)


def _drift(out, run_id) -> dict:
    m = _of_run(out, "metrics", run_id)
    m = m[(m.scope == "drift") & m.cluster_id.isna()]
    return dict(zip(m.metric, m.value))


def _cluster_of_blob(asg: pd.DataFrame, truth: pd.DataFrame) -> dict:
    j = asg.merge(truth[["item_id", "blob"]], on="item_id")
    return j.groupby("blob")["cluster_id"].agg(lambda s: s.value_counts().index[0]).to_dict()


# ----------------------------------------------------------------------------------------------


def test_ids_stay_stable_when_the_data_shifts_slightly(spark, tmp_path):
    rng = np.random.default_rng(0)
    ids = {b: np.arange(i * N_BLOB, (i + 1) * N_BLOB) for i, b in enumerate("ABCD")}
    night1 = pd.concat([_blob(b, ids[b], rng) for b in "ABCD"])
    # night 2: the same items, moved a little (a drift of 0.3 SD plus fresh noise)
    night2 = pd.concat([_blob(b, ids[b], rng, shift=(0.15, -0.1, 0.1, 0.0)) for b in "ABCD"])
    out = str(tmp_path / "out")
    r1 = run_job(_cfg(_write(night1, str(tmp_path / "n1")), out, "2026-11-20"), spark=spark)
    # another seed: K-means' internal order of the clusters differs from night 1's
    r2 = run_job(_cfg(_write(night2, str(tmp_path / "n2")), out, "2026-11-21", **{"kmeans.seed": 7}), spark=spark)

    a1 = model_artifact.load(r1.model_path)
    a2 = model_artifact.load(r2.model_path)
    assert sorted(a1.cluster_ids.tolist()) == [0, 1, 2, 3]
    assert a2.cluster_ids.tolist() != [0, 1, 2, 3], "precondition: the fit's order differs from night 1's"
    assert sorted(a2.cluster_ids.tolist()) == [0, 1, 2, 3]  # every cluster matched: no fresh id
    # the same id means the same place: each night-2 centroid is next to night 1's of that id
    c1 = dict(zip(a1.cluster_ids.tolist(), a1.prep.inverse_transform(a1.centroids)))
    c2 = dict(zip(a2.cluster_ids.tolist(), a2.prep.inverse_transform(a2.centroids)))
    for cid in c1:
        assert np.linalg.norm(c2[cid] - c1[cid]) < 0.5

    asg1 = _of_run(out, "assignments", r1.run_id)[["item_id", "cluster_id"]]
    asg2 = _of_run(out, "assignments", r2.run_id)[["item_id", "cluster_id"]]
    j = asg1.merge(asg2, on="item_id", suffixes=("_1", "_2"))
    assert len(j) == 4 * N_BLOB
    kept = float((j.cluster_id_1 == j.cluster_id_2).mean())
    assert kept >= 0.95

    lin = _of_run(out, "lineage", r2.run_id)
    assert sorted(lin.event) == ["persist"] * 4
    assert (lin.cluster_id == lin.previous_cluster_id).all()
    assert (lin.overlap_previous > 0.95).all() and (lin.basis == "match").all()
    assert set(_of_run(out, "lineage", r1.run_id).event) == {"new"}  # the first run: every cluster is new

    d = _drift(out, r2.run_id)
    assert d["changed_share"] == pytest.approx(1.0 - kept, abs=1e-9)
    assert d["matched_clusters"] == 4 and d["new_clusters"] == 0 and d["retired_clusters"] == 0
    assert 0.0 < d["centroid_shift_max"] < 0.5
    runs = _table(out, "runs").sort_values("finished_at")
    assert runs.previous_run_id.tolist()[1] == r1.run_id and runs.kind.tolist() == ["full", "full"]
    assert a2.lineage["previous_run_id"] == r1.run_id


def test_a_new_blob_gets_a_new_id_a_gone_blob_retires_and_a_split_is_recorded(spark, tmp_path):
    rng = np.random.default_rng(1)
    ids = {b: np.arange(i * N_BLOB, (i + 1) * N_BLOB) for i, b in enumerate("ABCDE")}
    night1 = pd.concat([_blob(b, ids[b], rng) for b in "ABCD"])
    # night 2: D is gone, E appears (items never seen), and A's items part into two groups
    a_ids = ids["A"]
    night2 = pd.concat([
        _blob("A", a_ids[: N_BLOB // 2], rng, shift=(-1.5, 0, 0, 0)),
        _blob("A", a_ids[N_BLOB // 2:], rng, shift=(1.5, 0, 0, 0)),
        _blob("B", ids["B"], rng), _blob("C", ids["C"], rng), _blob("E", ids["E"], rng),
    ])
    out = str(tmp_path / "out")
    # A's halves are 1.5 radii (rms, 4-D) from A's centre: allow the match within 2 radii
    over = {"lineage.max_distance": 2.0}
    r1 = run_job(_cfg(_write(night1, str(tmp_path / "n1")), out, "2026-11-20", **over), spark=spark)
    r2 = run_job(_cfg(_write(night2, str(tmp_path / "n2")), out, "2026-11-21", **{"kmeans.k": 5, **over}),
                 spark=spark)
    truth1 = night1
    blob_id = _cluster_of_blob(_of_run(out, "assignments", r1.run_id), truth1)
    lin = _of_run(out, "lineage", r2.run_id)
    ev = {e: lin[lin.event == e] for e in ("persist", "split", "merge", "new", "retired")}
    assert len(ev["persist"]) == 3 and len(ev["split"]) == 1 and len(ev["new"]) == 1 and len(ev["retired"]) == 1
    assert len(ev["merge"]) == 0
    assert set(ev["persist"].previous_cluster_id) == {blob_id["A"], blob_id["B"], blob_id["C"]}
    split = ev["split"].iloc[0]
    assert split.previous_cluster_id == blob_id["A"] and split.basis == "ids"
    assert split.overlap_previous == pytest.approx(0.5, abs=0.02)
    new = ev["new"].iloc[0]
    assert pd.isna(new.previous_cluster_id)
    assert {split.cluster_id, new.cluster_id} == {4, 5}  # fresh ids: 0..3 were used on night 1
    assert ev["retired"].iloc[0].previous_cluster_id == blob_id["D"] and pd.isna(ev["retired"].iloc[0].cluster_id)
    asg2 = _of_run(out, "assignments", r2.run_id)
    blob2 = _cluster_of_blob(asg2, night2)
    assert blob2["E"] == new.cluster_id and blob2["B"] == blob_id["B"] and blob2["C"] == blob_id["C"]
    right = asg2[asg2.item_id.isin(a_ids[N_BLOB // 2:])].cluster_id.value_counts().index[0]
    assert sorted(r2.cluster_ids) == sorted([blob_id["A"], blob_id["B"], blob_id["C"], 4, 5])
    d = _drift(out, r2.run_id)
    assert d["new_clusters"] == 2 and d["retired_clusters"] == 1 and d["matched_clusters"] == 3
    # night 3 drops A's second half: its cluster retires, and no id is ever given again
    night3 = pd.concat([_blob("A", a_ids[: N_BLOB // 2], rng, shift=(-1.5, 0, 0, 0)),
                        _blob("B", ids["B"], rng), _blob("C", ids["C"], rng), _blob("E", ids["E"], rng),
                        _blob("D", np.arange(10_000, 10_000 + N_BLOB), rng)])
    r3 = run_job(_cfg(_write(night3, str(tmp_path / "n3")), out, "2026-11-22", **{"kmeans.k": 5, **over}),
                 spark=spark)
    lin3 = _of_run(out, "lineage", r3.run_id)
    assert lin3[lin3.event == "retired"].previous_cluster_id.tolist() == [right]
    assert lin3[lin3.event == "new"].cluster_id.tolist() == [6]  # D is back but as a new cluster: 6, not 3


def _sweep_nights(shift_b, moved_share=0.0):
    """Night 2 moves blob B's items by ``shift_b`` towards A, and ``moved_share`` of them into A
    (the same ids on both nights)."""
    rng = np.random.default_rng(2)
    ids = {b: np.arange(i * N_BLOB, (i + 1) * N_BLOB) for i, b in enumerate("ABCD")}
    base = {b: _blob(b, ids[b], rng) for b in "ABCD"}
    b2 = base["B"].assign(f0=base["B"].f0 - shift_b)
    n_moved = int(round(moved_share * N_BLOB))
    b2.loc[b2.index[:n_moved], "f0"] -= 8.0 - shift_b  # these items now sit in blob A
    return pd.concat(base.values()), pd.concat([base["A"], base["C"], base["D"], b2])


def test_drift_is_zero_for_the_same_input_and_grows_with_the_shift(spark, tmp_path):
    night1, _ = _sweep_nights(0.0)
    n1 = _write(night1, str(tmp_path / "n1"))
    base_out = str(tmp_path / "base")
    over = {"lineage.max_distance": 20.0}  # keep B matched however far it moves: this measures drift
    r1 = run_job(_cfg(n1, base_out, "2026-11-20", **over), spark=spark)

    # the same input again (warm start, the default): nothing moved
    same = str(tmp_path / "same")
    shutil.copytree(base_out, same, symlinks=True)
    r_same = run_job(_cfg(n1, same, "2026-11-21", **{"kmeans.init": "previous", **over}), spark=spark)
    d0 = _drift(same, r_same.run_id)
    assert d0["centroid_shift_max"] < 1e-6 and d0["psi"] < 1e-9 and d0["changed_share"] == 0.0
    assert d0["silhouette_change"] == pytest.approx(0.0, abs=1e-9)
    assert r_same.gate_failures == []

    sweep, drifts = [(1.0, 0.05), (4.0, 0.15), (6.5, 0.3)], []
    for s, f in sweep:
        out = str(tmp_path / f"shift{s}")
        shutil.copytree(base_out, out, symlinks=True)
        _, night2 = _sweep_nights(s, f)
        r = run_job(_cfg(_write(night2, str(tmp_path / f"n2-{s}")), out, "2026-11-21", **over), spark=spark)
        drifts.append(_drift(out, r.run_id))
        assert model_artifact.load(r.model_path).lineage["previous_run_id"] == r1.run_id
    for metric in ("centroid_shift_max", "changed_share", "psi"):
        values = [d[metric] for d in drifts]
        assert values[0] > d0[metric] and all(a < b for a, b in zip(values, values[1:])), (metric, values)
    assert drifts[0]["changed_share"] == pytest.approx(0.05 / 4, abs=0.01)
    # past the default threshold (1 radius) the run is committed with a drift warning
    last = _table(out, "runs").sort_values("finished_at").iloc[-1]
    assert any(f.startswith("drift centroid_shift_max") for f in last.gate_failures)


def test_drift_failure_commits_nothing(spark, tmp_path):
    night1, night2 = _sweep_nights(4.0)
    out = str(tmp_path / "out")
    over = {"lineage.max_distance": 20.0}
    run_job(_cfg(_write(night1, str(tmp_path / "n1")), out, "2026-11-20", **over), spark=spark)
    before = {n: DeltaTable(os.path.join(out, n)).version() for n in ("centroids", "assignments", "lineage", "runs")}
    latest = os.readlink(os.path.join(out, "model", "latest"))
    from clusterlake.errors import QualityGateError

    with pytest.raises(QualityGateError, match=r"drift check failed: drift centroid_shift_max .* > "
                                               r"quality.drift.max_centroid_shift=0.1"):
        run_job(_cfg(_write(night2, str(tmp_path / "n2")), out, "2026-11-21",
                     **{"quality.drift.max_centroid_shift": 0.1, "quality.drift.on_failure": "fail", **over}),
                spark=spark)
    assert {n: DeltaTable(os.path.join(out, n)).version() for n in before} == before
    assert os.readlink(os.path.join(out, "model", "latest")) == latest
    assert sorted(os.listdir(os.path.join(out, "model"))) == sorted([latest, "latest"])
