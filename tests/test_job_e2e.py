"""End to end on a small generated table: the tables the job writes, read back independently,
checked against scikit-learn on the same rows; and the Assigner reproducing the batch job."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.dataset as ds
import pytest
from deltalake import DeltaTable
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_score,
)

from clusterlake.io import model_artifact
from clusterlake.pipeline import run_job, summary_text
from clusterlake.serving import Assigner
from tests.conftest import job_config

K = 7


@pytest.fixture(scope="module")
def run(spark, small_table, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("e2e") / "out")
    result = run_job(job_config(small_table, out, **{"kmeans.k": K}), spark=spark)
    raw = ds.dataset(small_table, format="parquet").to_table().to_pandas()
    asg = DeltaTable(f"{out}/assignments").to_pandas()
    merged = raw.merge(asg, on="customer_id", how="left", validate="one_to_one")
    return {"result": result, "out": out, "raw": raw, "asg": asg, "merged": merged}


def _table(run, name):
    return DeltaTable(f"{run['out']}/{name}").to_pandas()


def test_every_input_row_assigned_exactly_once(run):
    asg, raw = run["asg"], run["raw"]
    assert len(asg) == len(raw) == 6000
    assert asg["customer_id"].is_unique
    assert set(asg["customer_id"]) == set(raw["customer_id"])
    assert str(asg["customer_id"].dtype) == str(raw["customer_id"].dtype)  # same name and type
    assert asg["cluster_id"].between(0, K - 1).all()
    assert (asg["run_id"] == run["result"].run_id).all()
    assert (asg["run_date"].astype(str) == "2026-11-20").all()


def test_assignment_columns_are_consistent(run):
    a = run["asg"]
    assert (a["second_cluster_id"] != a["cluster_id"]).all()
    assert (a["margin"] >= 0).all() and (a["distance"] >= 0).all()
    cen = _table(run, "centroids").sort_values("cluster_id")
    C = np.stack(cen["centroid_model"].to_numpy())
    prep = Assigner.load(f"{run['out']}/model/latest")._prep
    m = run["merged"]
    Z = prep.transform(m[prep.feature_names].to_numpy(float))
    d = np.linalg.norm(Z - C[m["cluster_id"].to_numpy()], axis=1)
    np.testing.assert_allclose(m["distance"], d, rtol=1e-9, atol=1e-12)
    d2 = np.linalg.norm(Z - C[m["second_cluster_id"].to_numpy()], axis=1)
    np.testing.assert_allclose(m["margin"], d2 - d, rtol=1e-9, atol=1e-9)
    # nearest really is nearest
    full = np.linalg.norm(Z[:, None, :] - C[None, :, :], axis=2)
    assert (full.argmin(axis=1) == m["cluster_id"].to_numpy()).all()


def test_centroids_table(run):
    cen = _table(run, "centroids").sort_values("cluster_id")
    assert len(cen) == K and list(cen["cluster_id"]) == list(range(K))
    assert cen["size"].sum() == 6000
    np.testing.assert_allclose(cen["share"].sum(), 1.0)
    m = run["merged"]
    feats = run["result"].feature_columns
    means = m.groupby("cluster_id")[feats].mean().sort_index()
    np.testing.assert_allclose(np.stack(cen["centroid"].to_numpy()), means.to_numpy(), rtol=1e-9)
    sizes = m.groupby("cluster_id").size().sort_index()
    assert list(cen["size"]) == list(sizes)
    assert (cen["radius_max"] >= cen["radius_rms"]).all() and (cen["radius_rms"] >= cen["radius_mean"]).all()


def test_metrics_match_scikit_learn_on_the_same_rows(run):
    met = _table(run, "metrics")
    got = {(r.scope, r.metric): r.value for r in met.itertuples()}
    expected = {"inertia", "n_clusters", "min_cluster_share", "max_cluster_share", "mean_distance",
                "calinski_harabasz", "davies_bouldin", "ari", "nmi"}
    assert expected <= {m for s, m in got if s == "full"}
    assert ("sample", "silhouette") in got
    assert (met["k"] == K).all() and (met["algorithm"] == "kmeans").all()

    m = run["merged"]
    prep = Assigner.load(f"{run['out']}/model/latest")._prep
    Z = prep.transform(m[prep.feature_names].to_numpy(float))
    labels = m["cluster_id"].to_numpy()
    assert got[("full", "calinski_harabasz")] == pytest.approx(calinski_harabasz_score(Z, labels), rel=1e-8)
    assert got[("full", "davies_bouldin")] == pytest.approx(davies_bouldin_score(Z, labels), rel=1e-8)
    truth = m["true_segment"].to_numpy()
    assert got[("full", "ari")] == pytest.approx(adjusted_rand_score(truth, labels), abs=1e-12)
    assert got[("full", "nmi")] == pytest.approx(normalized_mutual_info_score(truth, labels), abs=1e-12)
    assert got[("full", "inertia")] == pytest.approx(float((m["distance"] ** 2).sum()), rel=1e-9)
    shares = m["cluster_id"].value_counts(normalize=True)
    assert got[("full", "min_cluster_share")] == pytest.approx(shares.min())
    # silhouette on a 2,000-row sample is close to the exact value on all 6,000 rows
    assert got[("sample", "silhouette")] == pytest.approx(silhouette_score(Z, labels), abs=0.03)
    # the generated segments are well separated: K-means recovers them
    assert got[("full", "ari")] > 0.8


def test_runs_row(run):
    runs = _table(run, "runs")
    assert len(runs) == 1
    r = runs.iloc[0]
    res = run["result"]
    assert r["run_id"] == res.run_id and r["status"] == "success"
    assert r["rows_read"] == 6000 and r["rows_dropped"] == 0 and r["rows_used"] == 6000
    assert r["k"] == K and r["k_requested"] == K
    assert list(r["feature_columns"]) == res.feature_columns
    assert "segment_name" not in res.feature_columns and "true_segment" not in res.feature_columns
    cfg = json.loads(r["config_json"])
    assert cfg["kmeans"]["k"] == K and cfg["input"]["id_column"] == "customer_id"
    versions = dict(r["table_versions"])
    for name in ("centroids", "assignments", "metrics"):
        assert versions[name] == DeltaTable(f"{run['out']}/{name}").version()
    assert set(dict(r["versions"])) >= {"clusterlake", "pyspark", "numpy", "scikit-learn"}


def test_model_artifact_has_no_pickle_and_latest_points_to_the_run(run):
    res = run["result"]
    model_dir = f"{run['out']}/model/{res.run_id}"
    files = sorted(os.listdir(model_dir))
    assert files == ["center.npy", "centroids.npy", "cluster_ids.npy", "cluster_means_x.npy", "cluster_members.npy",
                     "cluster_radius_max.npy", "cluster_radius_mean.npy", "cluster_radius_p50.npy",
                     "cluster_radius_p90.npy", "cluster_radius_p99.npy", "cluster_radius_rms.npy", "cluster_sizes.npy",
                     "components.npy", "members", "model.json", "report_cluster.npy", "report_points.npy",
                     "report_silhouette.npy", "scale.npy", "tree_centers.npy", "tree_linkage.npy", "tree_node_ids.npy",
                     "tree_parent_ids.npy"]  # Ward's tree; members/: the similar-item sample (tests/test_serving.py)
    files.remove("members")
    for f in files:
        if f.endswith(".npy"):
            np.load(os.path.join(model_dir, f), allow_pickle=False)  # raises if an object array
    assert os.path.realpath(f"{run['out']}/model/latest") == os.path.realpath(model_dir)
    meta = json.load(open(os.path.join(model_dir, "model.json")))
    assert meta["run_id"] == res.run_id and meta["k"] == K
    # the first run: every id is fresh, the lineage starts here, the quality is kept for drift
    assert meta["lineage"] == {"kind": "full", "previous_run_id": None, "base_run_id": res.run_id,
                               "assignment_runs": [[res.run_id, res.run_date]], "next_cluster_id": K}
    assert meta["quality"]["silhouette"] == pytest.approx(res.metrics["silhouette"])
    art = model_artifact.load(model_dir)
    assert art.cluster_stats["sizes"].tolist() == res.sizes and art.cluster_ids.tolist() == list(range(K))


def test_assigner_reproduces_the_batch_job(run):
    a = Assigner.load(f"{run['out']}/model/latest")
    m = run["merged"]
    assert a.feature_names == run["result"].feature_columns
    X = m[a.feature_names].to_numpy(float)
    got = a.assign(X)
    np.testing.assert_array_equal(got.cluster_id, m["cluster_id"].to_numpy())
    np.testing.assert_allclose(got.distance, m["distance"].to_numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(got.second_cluster_id, m["second_cluster_id"].to_numpy())
    # a mapping of name -> values, in any key order, gives the same answer for a few rows
    few = m.sample(25, random_state=0)
    mapping = {c: few[c].to_list() for c in reversed(a.feature_names)}
    np.testing.assert_array_equal(a.assign(mapping).cluster_id, few["cluster_id"].to_numpy())


def test_assigner_rejects_bad_rows(run):
    from clusterlake.errors import ClusterlakeError

    a = Assigner.load(f"{run['out']}/model/latest")
    with pytest.raises(ClusterlakeError, match="expected rows of 12 features .* got an array of shape \\(2, 3\\)"):
        a.assign(np.zeros((2, 3)))
    row = np.ones((1, 12))
    row[0, 4] = np.nan
    with pytest.raises(ClusterlakeError, match=f"row 0 feature '{a.feature_names[4]}' is NaN"):
        a.assign(row)
    with pytest.raises(ClusterlakeError, match="missing feature"):
        a.assign({"age": [30]})


def test_summary_names_k_sizes_and_paths(run):
    text = summary_text(run["result"])
    assert f"k = {K}" in text and "silhouette" in text and run["out"] in text
    assert "6,000 read" in text


def test_every_spark_pass_is_named_under_its_stage(run):
    # the passes over the rows, as the log and RunResult.spark_passes name them (bench_job prints them)
    passes = run["result"].spark_passes
    # (the rows are read once, by "load rows"; the later passes are commands on the resident rows)
    assert set(passes["read+validate"]) == {"unique ids", "load rows"}  # the load validates the rows
    assert set(passes["preprocess"]) == {"moments", "model space"}
    assert set(passes["kmeans"]) == {"kmeans fit (clusterlake)"}
    assert set(passes["metrics"]) == {"assign", "cluster statistics", "exemplars", "sample"}  # sample: the run's one draw
    assert {"radius quantiles", "member sample", "write assignments", "write centroids",
            "write metrics"} <= set(passes["write"])
    assert all(s >= 0 for ps in passes.values() for s in ps.values())
