"""The nightly job with the engine's options: our engine vs MLlib, bisecting (parent_id and the
split tree), cosine, and warm start from the previous run. Tables and artifacts are read back
independently (deltalake, the model files)."""

from __future__ import annotations

import numpy as np
import pytest
from deltalake import DeltaTable
from sklearn.metrics import adjusted_rand_score

from clusterlake.io import model_artifact
from clusterlake.pipeline import run_job
from clusterlake.serving import Assigner
from tests.conftest import job_config

K = 7


def _runs(out):
    return DeltaTable(f"{out}/runs").to_pandas().sort_values("started_at")


def _merged(out, small_table):
    import pyarrow.dataset as ds

    raw = ds.dataset(small_table, format="parquet").to_table().to_pandas()
    asg = DeltaTable(f"{out}/assignments").to_pandas()
    return raw.merge(asg, on="customer_id", validate="one_to_one")


def test_our_engine_is_at_least_as_good_as_mllib(spark, small_table, tmp_path):
    ours = run_job(job_config(small_table, str(tmp_path / "ours"), **{"kmeans.k": K}), spark=spark)
    mllib = run_job(job_config(small_table, str(tmp_path / "mllib"), **{"kmeans.k": K, "kmeans.engine": "spark-mllib"}),
                    spark=spark)
    assert _runs(str(tmp_path / "ours"))["engine"].tolist() == ["clusterlake"]
    assert _runs(str(tmp_path / "mllib"))["engine"].tolist() == ["spark-mllib"]
    assert ours.metrics["inertia"] <= mllib.metrics["inertia"] * (1 + 1e-6)
    assert ours.metrics["ari"] >= mllib.metrics["ari"] - 1e-9 and ours.metrics["ari"] > 0.9


def test_bisecting_writes_parent_ids_and_the_split_tree(spark, small_table, tmp_path):
    out = str(tmp_path / "out")
    run_job(job_config(small_table, out, **{"kmeans.k": K, "kmeans.algorithm": "bisecting"}), spark=spark)
    cen = DeltaTable(f"{out}/centroids").to_pandas().sort_values("cluster_id")
    art = model_artifact.load(f"{out}/model/latest")
    assert art.algorithm == "bisecting" and art.tree is not None
    node_ids, parent_ids = art.tree["node_ids"].tolist(), art.tree["parent_ids"].tolist()
    assert len(node_ids) == 2 * K - 1 and sorted(node_ids) == list(range(2 * K - 1))
    parent_of = dict(zip(node_ids, parent_ids))
    assert parent_of[K] == -1  # the root is the first inner node
    # every cluster's parent_id in the table is its parent in the artifact's tree, an inner node
    assert cen["parent_id"].notna().all()
    for cid, pid in zip(cen["cluster_id"], cen["parent_id"]):
        assert parent_of[cid] == pid and pid >= K
    # every inner node has exactly two children
    kids = np.bincount([p for p in parent_ids if p >= 0], minlength=2 * K - 1)
    assert set(kids[K:].tolist()) == {2} and set(kids[:K].tolist()) == {0}
    m = _merged(out, small_table)
    assert adjusted_rand_score(m["true_segment"], m["cluster_id"]) > 0.8
    assert _runs(out)["algorithm"].tolist() == ["bisecting"]


def test_cosine_run_is_reproduced_by_the_assigner(spark, small_table, tmp_path):
    out = str(tmp_path / "out")
    run_job(job_config(small_table, out, **{"kmeans.k": K, "kmeans.distance": "cosine"}), spark=spark)
    cen = DeltaTable(f"{out}/centroids").to_pandas()
    C = np.stack(cen["centroid_model"].to_numpy())
    np.testing.assert_allclose(np.linalg.norm(C, axis=1), 1.0, rtol=1e-6)
    a = Assigner.load(f"{out}/model/latest")
    m = _merged(out, small_table)
    res = a.assign(m[a.feature_names].to_numpy(dtype=np.float64))
    assert (np.asarray(res.cluster_id) == m["cluster_id"].to_numpy()).mean() > 0.999
    np.testing.assert_allclose(np.asarray(res.distance), m["distance"].to_numpy(), rtol=1e-6, atol=1e-9)
    assert len(cen) == K and cen["cluster_id"].nunique() == K  # k clusters, each with its own id
    assert set(m["cluster_id"]) <= set(cen["cluster_id"])  # every row assigned to one of them
    assert _runs(out)["distance"].tolist() == ["cosine"]


def test_warm_start_from_the_previous_run(spark, small_table, tmp_path, caplog):
    out = str(tmp_path / "out")
    first = run_job(job_config(small_table, out, **{"kmeans.k": K, "kmeans.init": "previous",
                                                    "job.run_date": "2026-11-20"}), spark=spark)
    second = run_job(job_config(small_table, out, **{"kmeans.k": K, "kmeans.init": "previous",
                                                     "job.run_date": "2026-11-21"}), spark=spark)
    runs = _runs(out)
    # the first run had no model to start from and said so; the second started from it
    assert runs["init"].tolist() == ["kmeans||", "previous"]
    assert runs["iterations"].tolist()[1] <= 2
    c1 = model_artifact.load(f"{out}/model/{first.run_id}").centroids
    c2 = model_artifact.load(f"{out}/model/{second.run_id}").centroids
    np.testing.assert_allclose(c2, c1, atol=1e-3)  # same data: same clusters, same order
    assert second.metrics["inertia"] == pytest.approx(first.metrics["inertia"], rel=1e-4)


def test_warm_start_with_another_k_falls_back(spark, small_table, tmp_path, caplog):
    out = str(tmp_path / "out")
    run_job(job_config(small_table, out, **{"kmeans.k": K, "job.run_date": "2026-11-20"}), spark=spark)
    run_job(job_config(small_table, out, **{"kmeans.k": K - 1, "kmeans.init": "previous",
                                            "job.run_date": "2026-11-21"}), spark=spark)
    assert _runs(out)["init"].tolist() == ["kmeans||", "kmeans||"]
    assert any("has k=7, this run k=6" in r.getMessage() for r in caplog.records)
