"""The density and hierarchical passes in the job (issue 5): shapes K-means cannot see, far noise,
agreement with scikit-learn's DBSCAN on all rows, nested hierarchy levels, the Ward tree over the
K-means centroids, degenerate results, the memory guard, and the model artifact."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from sklearn.cluster import DBSCAN
from sklearn.datasets import make_circles, make_moons
from sklearn.metrics import adjusted_rand_score

from clusterlake.io.model_artifact import pass_models
from clusterlake.config import load_config
from clusterlake.errors import ConfigError
from clusterlake.io import model_artifact
from clusterlake.kernels import density as Dk
from clusterlake.kernels import hierarchy as Hk
from clusterlake.pipeline import run_job, summary_text

pytestmark = pytest.mark.spark

FAR = np.array([[8.0, 8.0], [-9.0, 2.0], [3.0, -12.0], [20.0, 0.0], [0.0, 15.0], [-14.0, -14.0]])


def _write(path, X, y, files=4):
    os.makedirs(path)
    ids = np.arange(len(X), dtype=np.int64) * 7 + 100
    for i, part in enumerate(np.array_split(np.random.default_rng(0).permutation(len(X)), files)):
        pq.write_table(pa.table({"id": ids[part], "x": X[part, 0], "y": X[part, 1],
                                 "shape": y[part].astype(np.int64)}), f"{path}/part-{i}.parquet")
    return ids


def _config(src, out, **over):
    data = {
        "job": {"name": "passes", "run_date": "2026-11-21"},
        "input": {"path": src, "id_column": "id", "feature_columns": ["x", "y"], "label_column": "shape"},
        "preprocess": {"pca": {"enabled": False}},
        "kmeans": {"k": 2, "seed": 3},
        "quality": {"sample_size": 1000},
        "output": {"path": out, "delta_writer": "delta-rs"},  # the table tests cover Spark's writer
    }
    return load_config(data=data, overrides=[f"{k}={v}" for k, v in over.items()])


def _read(out, name):
    return DeltaTable(f"{out}/{name}").to_pandas()


def _metric(m, algorithm, metric, k=None, scope="full"):
    sel = m[(m.algorithm == algorithm) & (m.metric == metric) & (m.scope == scope)]
    if k is not None:
        sel = sel[sel.k == k]
    assert len(sel) == 1, (algorithm, metric, k, scope, sel)
    return float(sel.value.iloc[0])


@pytest.fixture(scope="module")
def moons(spark, tmp_path_factory):
    """3,000 two-moons rows and 6 far rows over 4 files; HDBSCAN on half of it, Ward at 2 and 4."""
    base = tmp_path_factory.mktemp("moons")
    X, y = make_moons(3000, noise=0.05, random_state=0)
    X, y = np.vstack([X, FAR]), np.r_[y, np.full(len(FAR), -1)]
    ids = _write(f"{base}/in", X, y)
    out = f"{base}/out"
    cfg = _config(f"{base}/in", out, **{
        "density.enabled": "true", "density.sample_size": 1500, "density.min_cluster_size": 15,
        "hierarchical.enabled": "true", "hierarchical.sample_size": 800, "hierarchical.levels": "[4, 2]"})
    result = run_job(cfg, spark=spark)
    asg = _read(out, "assignments").set_index("id").loc[ids]
    return {"X": X, "y": y, "out": out, "result": result, "asg": asg, "metrics": _read(out, "metrics")}


def test_density_labels_follow_the_moons_where_kmeans_does_not(moons):
    a, y = moons["asg"], moons["y"]
    assert len(a) == len(y) and a.index.is_unique
    moon = y >= 0
    lab = a.density_label.to_numpy()
    assert adjusted_rand_score(y[moon], lab[moon]) > 0.95
    assert adjusted_rand_score(y[moon], a.cluster_id.to_numpy()[moon]) < 0.6  # K-means cuts across
    assert (lab[~moon] == -1).all() and a.is_outlier.to_numpy()[~moon].all()  # far rows are noise
    assert (a.is_outlier == (a.density_label == -1)).all()
    assert (a.density_distance.to_numpy()[~moon] > 3).all() and (a.density_distance[moon] < 1).mean() > 0.99


def test_density_metrics_over_all_rows(moons):
    m, a, y = moons["metrics"], moons["asg"], moons["y"]
    n = len(a)
    assert _metric(m, "hdbscan", "noise_share") == pytest.approx((a.density_label == -1).mean())
    assert _metric(m, "hdbscan", "n_clusters") == 2
    ari_km = adjusted_rand_score(a.cluster_id, a.density_label)  # noise is one more label
    assert _metric(m, "hdbscan", "ari_vs_kmeans") == pytest.approx(ari_km, abs=1e-12)
    assert _metric(m, "hdbscan", "ari") == pytest.approx(adjusted_rand_score(y, a.density_label), abs=1e-12)
    assert set(m[m.algorithm == "hdbscan"].sample_size[m.scope == "full"]) == {n}
    assert 0 < _metric(m, "hdbscan", "silhouette", scope="sample") < 1
    assert _metric(m, "hdbscan", "noise_share", scope="sample") < 0.05
    text = summary_text(moons["result"])
    assert "density (hdbscan): 2 clusters" in text and "hierarchical, 4 clusters" in text


def test_hierarchy_levels_are_nested_and_measured(moons):
    a, m = moons["asg"], moons["metrics"]
    h = a.hierarchy.map(dict)
    l2, l4 = h.map(lambda d: d[2]).to_numpy(), h.map(lambda d: d[4]).to_numpy()
    assert set(l2) == {0, 1} and set(l4) == {0, 1, 2, 3}
    for c in range(4):  # every level-4 cluster sits inside one level-2 cluster
        assert len(set(l2[l4 == c])) == 1
    for lv, lab in ((2, l2), (4, l4)):
        assert _metric(m, "hierarchical", "n_clusters", lv) == lv
        shares = np.bincount(lab) / len(lab)
        assert _metric(m, "hierarchical", "max_cluster_share", lv) == pytest.approx(shares.max())
        assert _metric(m, "hierarchical", "ari_vs_kmeans", lv) == pytest.approx(
            adjusted_rand_score(a.cluster_id, lab), abs=1e-12)


def test_the_artifact_extends_like_the_job_and_holds_the_dendrogram(moons):
    """What downstream needs to label new rows as last night's job did: no pickle, same answers."""
    art = model_artifact.load(f"{moons['out']}/model/latest")
    dens, hier = pass_models(art)
    assert dens.algorithm == "hdbscan" and dens.n_clusters == 2 and art.passes["density"]["sample_rows"] == 1500
    assert hier.method == "ward" and hier.levels == [2, 4] and hier.linkage.shape == (799, 4)
    Z = art.prep.transform(moons["X"])
    lab, dist = Dk.extend(Z, dens)
    np.testing.assert_array_equal(lab, moons["asg"].density_label.to_numpy())
    np.testing.assert_allclose(dist, moons["asg"].density_distance.to_numpy(), rtol=1e-12)
    levels = Hk.extend(Z, hier)
    np.testing.assert_array_equal(levels[4], moons["asg"].hierarchy.map(lambda d: dict(d)[4]).to_numpy())


def test_kmeans_centroids_get_wards_tree_as_parents(moons):
    cen = _read(moons["out"], "centroids").sort_values("cluster_id")
    assert list(cen.parent_id) == [2, 2]  # k = 2: both merge into node 2, the root
    art = model_artifact.load(f"{moons['out']}/model/latest")
    assert list(art.tree["parent_ids"]) == [2, 2, -1] and art.tree["linkage"].shape == (1, 4)
    sizes = cen["size"].to_numpy()
    np.testing.assert_allclose(art.tree["centers"][2], (art.centroids * sizes[:, None]).sum(0) / sizes.sum())


def test_circles_and_sklearn_dbscan_on_all_rows(spark, tmp_path):
    """Concentric circles: HDBSCAN finds both rings (K-means cannot); DBSCAN on half the rows,
    extended, agrees with scikit-learn's DBSCAN on all rows (same eps, min_samples x 2)."""
    X, y = make_circles(3000, noise=0.04, factor=0.5, random_state=0)
    ids = _write(str(tmp_path / "in"), X, y, files=3)
    run_job(_config(str(tmp_path / "in"), str(tmp_path / "o1"), **{
        "density.enabled": "true", "density.sample_size": 1500, "density.min_cluster_size": 15}), spark=spark)
    a = _read(tmp_path / "o1", "assignments").set_index("id").loc[ids]
    assert adjusted_rand_score(y, a.density_label) > 0.95
    assert adjusted_rand_score(y, a.cluster_id) < 0.1

    Xm, ym = make_moons(3000, noise=0.05, random_state=1)
    ids = _write(str(tmp_path / "in2"), Xm, ym, files=3)
    out = str(tmp_path / "o2")
    run_job(_config(str(tmp_path / "in2"), out, **{
        "density.enabled": "true", "density.algorithm": "dbscan", "density.sample_size": 1500}), spark=spark)
    a = _read(out, "assignments").set_index("id").loc[ids]
    m = _read(out, "metrics")
    eps = _metric(m, "dbscan", "eps", scope="sample")
    Z = model_artifact.load(f"{out}/model/latest").prep.transform(Xm)
    full = DBSCAN(eps=eps, min_samples=20).fit_predict(Z)
    assert adjusted_rand_score(full, a.density_label) >= 0.95
    assert adjusted_rand_score(ym, a.density_label) > 0.95


@pytest.mark.parametrize("eps, clusters", [(1e-4, 0), (50.0, 1)])
def test_all_noise_and_single_cluster_are_reported(spark, tmp_path, eps, clusters):
    X, y = make_moons(600, noise=0.05, random_state=2)
    _write(str(tmp_path / "in"), X, y, files=2)
    out = str(tmp_path / "out")
    result = run_job(_config(str(tmp_path / "in"), out, **{
        "density.enabled": "true", "density.algorithm": "dbscan", "density.eps": eps,
        "density.sample_size": 300, "density.min_samples": 5}), spark=spark)
    m = _read(out, "metrics")
    assert _metric(m, "dbscan", "n_clusters") == clusters
    assert _metric(m, "dbscan", "noise_share") == (1.0 if clusters == 0 else 0.0)
    assert not ((m.algorithm == "dbscan") & (m.metric == "silhouette")).any()  # undefined: not invented
    a = _read(out, "assignments")
    assert len(a) == 600 and (a.is_outlier.all() if clusters == 0 else (a.density_label == 0).all())
    assert f"density (dbscan): {clusters} clusters" in summary_text(result)


def test_sample_passes_that_do_not_fit_are_refused_before_anything_is_written(spark, tmp_path):
    X, y = make_moons(3000, noise=0.05, random_state=3)
    _write(str(tmp_path / "in"), X, y, files=2)
    out = tmp_path / "out"
    cfg = _config(str(tmp_path / "in"), str(out), **{
        "hierarchical.enabled": "true", "hierarchical.linkage": "average", "hierarchical.sample_size": 3000,
        "job.driver_memory_gb": 0.1})
    with pytest.raises(ConfigError) as e:
        run_job(cfg, spark=spark)
    msg = str(e.value)
    assert "hierarchical.sample_size=3,000 needs" in msg and "job.driver_memory_gb=0.1" in msg
    assert "at most 2,2" in msg and "distance matrix" in msg  # ~2,240 rows fit in 100 MiB
    # DBSCAN's neighbourhoods are measured once eps is known
    cfg = _config(str(tmp_path / "in"), str(out), **{
        "density.enabled": "true", "density.algorithm": "dbscan", "density.eps": 100.0,
        "density.sample_size": 3000, "job.driver_memory_gb": 0.15})
    with pytest.raises(ConfigError, match=r"every row has ~3,000 neighbours.*density.sample_size to at most"):
        run_job(cfg, spark=spark)
    assert not [p for p in out.iterdir() if not p.name.startswith("_")] if out.exists() else True
