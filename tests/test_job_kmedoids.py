"""The nightly job with ``kmeans.algorithm: kmedoids`` (issue 23): the medoids are rows of the
input, every row is assigned to its nearest medoid under the distance (the table against brute
force), the metrics are under that distance, serving assigns as the batch did, and on data with
heavy-tailed noise the Manhattan medoids beat Euclidean K-means against the planted labels."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from scipy.spatial.distance import cdist

from clusterlake.errors import ConfigError
from clusterlake.pipeline import run_job
from tests.conftest import job_config

FEATURES = ["f0", "f1", "f2", "f3"]


def _heavy_tailed(path, n: int = 3000, seed: int = 0) -> str:
    """4 Laplace blobs in 4-D, 1% of the rows thrown far by Cauchy noise."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-5, 5, (4, 4))
    y = rng.integers(0, 4, n)
    X = centers[y] + rng.laplace(scale=1.0, size=(n, 4))
    far = rng.random(n) < 0.01
    X[far] += rng.standard_cauchy((int(far.sum()), 4)) * 5
    cols = {"customer_id": pa.array(np.arange(10_000, 10_000 + n, dtype=np.int64)),
            **{f: pa.array(X[:, j]) for j, f in enumerate(FEATURES)}, "true_segment": pa.array(y.astype(np.int32))}
    pq.write_table(pa.table(cols), str(path))
    return str(path)


def _table(out, name: str):
    return DeltaTable(f"{out}/{name}").to_pyarrow_table().to_pandas()


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("kmedoids")
    data = _heavy_tailed(root / "in.parquet")
    over = {"kmeans.k": 4, "kmeans.kmedoids.sample_size": 1500, "preprocess.pca.enabled": "false"}
    med = run_job(job_config(data, str(root / "med"), **over, **{"kmeans.algorithm": "kmedoids",
                                                                  "kmeans.distance": "manhattan"}), spark=spark)
    km = run_job(job_config(data, str(root / "km"), **over), spark=spark)
    return {"data": data, "med": med, "km": km, "out": str(root / "med")}


def test_manhattan_medoids_beat_euclidean_kmeans_on_heavy_tails(runs):
    assert runs["med"].metrics["ari"] > runs["km"].metrics["ari"] + 0.1
    assert runs["med"].metrics["ari"] > 0.8


def test_medoids_are_input_rows_and_rows_go_to_the_nearest_medoid(runs):
    from clusterlake.io import model_artifact

    art = model_artifact.load(runs["med"].model_path)
    assert art.algorithm == "kmedoids" and art.distance == "manhattan"
    X = pq.read_table(runs["data"]).to_pandas().set_index("customer_id")
    Z = art.prep.transform(X[FEATURES].to_numpy())
    cen = _table(runs["out"], "centroids").sort_values("cluster_id")
    # the medoid is a row of the input: its first exemplar, at distance 0
    for cid, ex in zip(cen.cluster_id, cen.exemplar_ids):
        i = list(art.cluster_ids).index(cid)
        row = art.prep.transform(X.loc[[int(ex[0])], FEATURES].to_numpy())[0]
        np.testing.assert_allclose(row, art.centroids[i], rtol=0, atol=1e-12)
    asg = _table(runs["out"], "assignments").set_index("customer_id").loc[X.index]
    D = cdist(Z, art.centroids, "cityblock")
    np.testing.assert_array_equal(asg.cluster_id.to_numpy(), art.cluster_ids[np.argmin(D, axis=1)])
    np.testing.assert_allclose(asg.distance.to_numpy(), D.min(axis=1), rtol=1e-12)
    second = np.sort(D, axis=1)[:, 1]
    np.testing.assert_allclose(asg.margin.to_numpy(), second - D.min(axis=1), rtol=1e-9, atol=1e-12)
    # the metrics under the distance: the loss is the sum of the distances
    met = _table(runs["out"], "metrics")
    full = met[(met.scope == "full") & met.cluster_id.isna()].set_index("metric").value
    assert full["loss"] == pytest.approx(asg.distance.sum(), rel=1e-9)
    assert full["mean_distance"] == pytest.approx(asg.distance.mean(), rel=1e-9)
    assert -1 <= runs["med"].metrics["silhouette"] <= 1
    # radii in the distance's units, as the table's distances
    for cid, rmax in zip(cen.cluster_id, cen.radius_max):
        assert rmax == pytest.approx(asg.distance[asg.cluster_id == cid].max(), rel=1e-12)


def test_davies_bouldin_under_the_distance(runs):
    from sklearn.metrics import davies_bouldin_score

    from clusterlake.io import model_artifact

    art = model_artifact.load(runs["med"].model_path)
    asg = _table(runs["out"], "assignments")
    med = {cid: art.centroids[i] for i, cid in enumerate(art.cluster_ids)}
    ids = sorted(set(asg.cluster_id))
    s = np.array([asg.distance[asg.cluster_id == c].mean() for c in ids])
    D = cdist(np.array([med[c] for c in ids]), np.array([med[c] for c in ids]), "cityblock")
    np.fill_diagonal(D, np.inf)
    want = np.mean(np.max((s[:, None] + s[None, :]) / D, axis=1))
    met = _table(runs["out"], "metrics")
    full = met[(met.scope == "full") & met.cluster_id.isna()].set_index("metric").value
    assert full["davies_bouldin_manhattan"] == pytest.approx(want, rel=1e-9)
    assert full["davies_bouldin_manhattan"] != pytest.approx(full["davies_bouldin"], rel=1e-3)  # not the Euclidean one


def test_serving_assigns_as_the_batch_did(runs):
    from clusterlake.serving.assigner import Assigner

    X = pq.read_table(runs["data"]).to_pandas().head(300)
    a = Assigner.load(runs["med"].model_path).assign(X[FEATURES])
    asg = _table(runs["out"], "assignments").set_index("customer_id").loc[X.customer_id]
    np.testing.assert_array_equal(a.cluster_id, asg.cluster_id.to_numpy())
    np.testing.assert_allclose(a.distance, asg.distance.to_numpy(), rtol=1e-12)


def test_similar_and_nearest_rank_under_the_distance(runs):
    from clusterlake.serving.query import ClusterCatalog

    cat = ClusterCatalog.load(runs["med"].model_path)
    X = pq.read_table(runs["data"]).to_pandas()
    row = X.iloc[[7]][FEATURES]
    asg = _table(runs["out"], "assignments").set_index("customer_id")
    own = int(asg.loc[int(X.customer_id.iloc[7]), "cluster_id"])
    out = cat.similar(row, n=5)
    assert out["cluster_id"] == own and len(out["items"]) == 5
    # the members' distances are Manhattan distances in the model space, nearest first
    art, Zr = cat.assigner.artifact, cat.assigner.transform(row)
    ids = [it["id"] for it in out["items"]]
    Zm = art.prep.transform(X.set_index("customer_id").loc[ids, FEATURES].to_numpy())
    np.testing.assert_allclose([it["distance"] for it in out["items"]], cdist(Zr, Zm, "cityblock")[0], rtol=1e-6, atol=1e-6)  # members are float32
    assert [it["distance"] for it in out["items"]] == sorted(it["distance"] for it in out["items"])
    near = cat.nearest(row, n=2)[0]
    D = cdist(Zr, art.centroids, "cityblock")[0]
    assert near[0]["cluster_id"] == own == int(art.cluster_ids[np.argmin(D)])
    assert near[0]["distance"] == pytest.approx(D.min(), rel=1e-12)


def test_the_update_job_refuses_a_kmedoids_model(spark, runs, tmp_path):
    from clusterlake.update import run_update

    cfg = job_config(runs["data"], runs["out"], **{"kmeans.algorithm": "kmedoids", "kmeans.distance": "manhattan"})
    with pytest.raises(ConfigError, match="k-medoids"):
        run_update(cfg, runs["data"], spark=spark)


@pytest.mark.parametrize("over, text", [
    ({"kmeans.distance": "manhattan"}, "needs kmeans.algorithm: kmedoids"),
    ({"kmeans.algorithm": "kmedoids", "kmeans.batch_size": 1000}, "needs kmeans.algorithm: kmeans"),
    ({"kmeans.algorithm": "kmedoids", "kmeans.engine": "spark-mllib"}, "does not support kmeans.algorithm=kmedoids"),
    ({"kmeans.algorithm": "kmedoids", "kmeans.distance": "minkowski"}, "minkowski_p"),
    ({"kmeans.algorithm": "kmedoids", "kmeans.distance": "jaccard"}, "preprocess.scaling: none"),
    ({"kmeans.algorithm": "kmedoids", "kmeans.distance": "hamming"}, "preprocess.scaling: none"),
    ({"kmeans.minkowski_p": 3}, "minkowski_p goes with kmeans.distance: minkowski"),
    ({"kmeans.algorithm": "kmedoids", "kmeans.k": "auto", "kmeans.auto.criterion": "elbow"}, "silhouette"),
    ({"kmeans.algorithm": "kmedoids", "input.weight_column": "w"}, "takes no row weights"),
])
def test_kmedoids_settings_are_checked(over, text):
    with pytest.raises(ConfigError, match=text):
        job_config("in", "out", **over)


def test_k_auto_by_the_silhouette_under_the_distance(spark, runs, tmp_path):
    cfg = job_config(runs["data"], str(tmp_path / "auto"), **{
        "kmeans.algorithm": "kmedoids", "kmeans.distance": "manhattan", "kmeans.k": "auto", "kmeans.auto.max_k": 7,
        "kmeans.kmedoids.sample_size": 800, "preprocess.pca.enabled": "false"})
    res = run_job(cfg, spark=spark)
    met = _table(str(tmp_path / "auto"), "metrics")
    curve = met[(met.scope == "auto_k") & (met.metric == "silhouette")].set_index("k").value
    assert sorted(curve.index) == list(range(2, 8))
    assert res.k == int(curve.idxmax())  # the best silhouette under the distance (3 or 4 here)
    assert set(met.algorithm) == {"kmeans"}  # the run's partition, whatever its algorithm


def test_two_nights_keep_their_ids_and_another_distance_starts_afresh(spark, runs, tmp_path):
    out = str(tmp_path / "nights")
    over = {"kmeans.k": 4, "kmeans.kmedoids.sample_size": 1500, "preprocess.pca.enabled": "false",
            "kmeans.algorithm": "kmedoids", "kmeans.distance": "manhattan"}
    r1 = run_job(job_config(runs["data"], out, **over), spark=spark)
    r2 = run_job(job_config(runs["data"], out, **over, **{"job.run_date": "2026-11-21",
                                                           "kmeans.seed": 11}), spark=spark)
    lin = _table(out, "lineage")
    second = lin[lin.run_id == r2.run_id]
    assert sorted(second.event) == ["persist"] * 4  # the same data: every medoid found again
    a1 = _table(out, "assignments")
    by_run = {r: a1[a1.run_id == r].set_index("customer_id").cluster_id for r in (r1.run_id, r2.run_id)}
    assert (by_run[r1.run_id].sort_index() == by_run[r2.run_id].sort_index()).mean() > 0.97  # another seed: other medoids, the same clusters
    # chebyshev: another distance, not comparable: every cluster new, ids never reused
    r3 = run_job(job_config(runs["data"], out, **{**over, "kmeans.distance": "chebyshev",
                                                   "job.run_date": "2026-11-22"}), spark=spark)
    third = _table(out, "lineage")
    third = third[third.run_id == r3.run_id]
    assert set(third.event) == {"new", "retired"} and set(third.basis.dropna()) == {"distance changed"}
    assert min(third[third.event == "new"].cluster_id) >= 4


def test_jaccard_medoids_beat_euclidean_kmeans_on_tags(spark, tmp_path):
    """Sets of tags as 0/1 columns: four topics of 6 to 24 tags, each row keeping a random share
    (25-100%) of its topic's tags plus two stray tags. Euclidean K-means splits by how many tags a
    row has; Jaccard compares the shares of tags in common."""
    rng = np.random.default_rng(0)
    n, d = 3000, 40
    topics = [rng.choice(d, size=s, replace=False) for s in (6, 10, 16, 24)]
    y = rng.integers(0, 4, n)
    member = np.zeros((4, d), bool)
    for t, tags in enumerate(topics):
        member[t, tags] = True
    X = (member[y] & (rng.random((n, d)) < rng.uniform(0.25, 1.0, n)[:, None])).astype(np.float64)
    X[np.arange(n)[:, None], rng.integers(0, d, (n, 2))] = 1.0
    cols = {"customer_id": pa.array(np.arange(n, dtype=np.int64)),
            **{f"t{j:02d}": pa.array(X[:, j]) for j in range(d)}, "true_segment": pa.array(y.astype(np.int32))}
    pq.write_table(pa.table(cols), str(tmp_path / "tags.parquet"))
    over = {"kmeans.k": 4, "preprocess.scaling": "none", "preprocess.pca.enabled": "false"}
    med = run_job(job_config(str(tmp_path / "tags.parquet"), str(tmp_path / "med"), **over,
                             **{"kmeans.algorithm": "kmedoids", "kmeans.distance": "jaccard",
                                "kmeans.kmedoids.sample_size": 1500}), spark=spark)
    km = run_job(job_config(str(tmp_path / "tags.parquet"), str(tmp_path / "km"), **over), spark=spark)
    assert med.metrics["ari"] > km.metrics["ari"] + 0.1 and med.metrics["ari"] > 0.85  # measured: 0.92 vs 0.76
