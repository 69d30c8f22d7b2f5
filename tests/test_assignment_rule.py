"""The one assignment rule (:mod:`clusterlake.kernels.assignment`, issue 18).

Part 1 (numpy only): the kernel against brute force / scikit-learn at its edges: k = 1, exact ties,
a point on a centroid, duplicate centroids, density outliers (both nearest-core searches), no
rows; and the encodings of "no second cluster" (null in Arrow and in JSON).

Part 2 (local Spark): one real job (6,000 generated customers, k=4, HDBSCAN and hierarchical
passes) and a real stream over some of its rows; the batch ``assignments`` table, the serving
``Assigner`` on the same raw rows, ``ml.KMeansModel`` (built on the model-space centroids, fed
model-space vectors) and the stream's table agree row for row. Then k = 1 through the batch pass,
the Assigner and the ml model, with identical answers (no second cluster: null everywhere).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.spatial.distance import cdist
from sklearn.datasets import make_blobs
from sklearn.metrics import pairwise_distances_argmin

from clusterlake.io.contract import assignments as contract
from clusterlake.kernels import density as Dk
from clusterlake.kernels.assignment import NO_CLUSTER, AssignmentRule, assign_points, density_labels

ID = "customer_id"
INT_COLUMNS = ("cluster_id", "second_cluster_id", "density_label", "is_outlier")


# ------------------------------------------------------------------------------------------------
# part 1: the kernel at its edges


def test_matches_brute_force_with_stable_ids():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(2000, 5)) * 3 + 100.0  # far from the origin: the expansion's round-off
    C = rng.normal(size=(7, 5)) * 3 + 100.0
    ids = np.array([4, 9, 0, 12, 3, 7, 1])
    a = assign_points(Z, C, ids)
    D = cdist(Z, C)
    order = np.argsort(D, axis=1, kind="stable")
    np.testing.assert_array_equal(a.index, pairwise_distances_argmin(Z, C))
    np.testing.assert_array_equal(a.index, order[:, 0])
    np.testing.assert_array_equal(a.cluster_id, ids[order[:, 0]])
    np.testing.assert_array_equal(a.second_index, order[:, 1])
    np.testing.assert_array_equal(a.second_cluster_id, ids[order[:, 1]])
    rows = np.arange(len(Z))
    np.testing.assert_allclose(a.distance, D[rows, order[:, 0]], rtol=1e-12)
    np.testing.assert_allclose(a.margin, D[rows, order[:, 1]] - D[rows, order[:, 0]], rtol=1e-9, atol=1e-12)
    assert a.has_second.all() and (a.margin >= 0).all()
    assert a.density_label is None and a.is_outlier is None and a.hierarchy is None


def test_k1_has_no_second_cluster_and_encodes_it_as_null():
    Z = np.array([[0.0, 1.0], [3.0, 4.0], [5.0, 5.0]])
    a = assign_points(Z, np.array([[0.0, 0.0]]), np.array([42]))
    assert a.cluster_id.tolist() == [42, 42, 42] and a.distance.tolist() == [1.0, 5.0, np.sqrt(50.0)]
    assert a.second_index.tolist() == a.second_cluster_id.tolist() == [NO_CLUSTER] * 3
    assert np.isnan(a.margin).all() and not a.has_second.any()
    cols = contract.arrow_columns(a)
    assert cols["second_cluster_id"].to_pylist() == [None] * 3 and cols["margin"].to_pylist() == [None] * 3
    assert cols["cluster_id"].to_pylist() == [42] * 3
    assert cols["density_label"].null_count == cols["is_outlier"].null_count == cols["hierarchy"].null_count == 3
    from clusterlake.serving.assigner import Assignment

    recs = Assignment.of(a, np.zeros(3, bool)).records()
    assert [(r["second_cluster_id"], r["margin"]) for r in recs] == [(None, None)] * 3


def test_exact_ties_go_to_the_lowest_centroid_index():
    C = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    ids = np.array([30, 20, 10, 0])  # the lowest *index* wins, not the lowest id
    a = assign_points(np.zeros((1, 2)), C, ids)
    assert (a.index[0], a.second_index[0], a.cluster_id[0], a.second_cluster_id[0]) == (0, 1, 30, 20)
    assert a.distance[0] == 1.0 and a.margin[0] == 0.0
    # the same tie with the centroids in the other order: still the lowest index
    b = assign_points(np.zeros((1, 2)), C[::-1], ids[::-1])
    assert (b.index[0], b.second_index[0], b.cluster_id[0]) == (0, 1, 0)
    assert pairwise_distances_argmin(np.zeros((1, 2)), C)[0] == a.index[0]  # scikit-learn's answer too


def test_a_point_on_a_centroid_and_duplicate_centroids():
    C = np.array([[2.0, 3.0, -1.0], [7.5, 0.25, 4.0], [7.5, 0.25, 4.0], [-3.0, 8.0, 0.5]])
    a = assign_points(C, C, np.array([5, 6, 7, 8]))
    assert a.distance.tolist() == [0.0] * 4  # exactly 0, not round-off of the expansion
    assert a.index.tolist() == [0, 1, 1, 3]  # the duplicate goes to the lower index
    assert a.second_index[1] == 2 and a.second_index[2] == 2 and a.margin[1] == a.margin[2] == 0.0
    assert a.second_cluster_id[1] == 7 and a.cluster_id[2] == 6
    D = cdist(C, C)
    np.testing.assert_allclose(a.margin[[0, 3]], np.sort(D[[0, 3]], axis=1)[:, 1], rtol=1e-12)


def test_no_rows():
    a = AssignmentRule(np.eye(3), density=None)(np.zeros((0, 3)))
    assert len(a) == 0 and a.cluster_id.dtype == np.int32 and a.margin.dtype == np.float64
    batch = contract.record_batch("id", pa.array([], pa.int64()), a)
    assert batch.num_rows == 0 and batch.schema.names == ["id", *contract.COLUMNS]


@pytest.fixture(scope="module")
def density_model():
    X, _ = make_blobs(3000, centers=4, n_features=5, cluster_std=0.8, random_state=3)
    model = Dk.fit_sample(X[:1200], "hdbscan", min_samples=10, min_cluster_size=40)
    far = np.array([[40.0] * 5, [-40.0] * 5, [0.0, 60.0, 0.0, 0.0, 0.0]])
    return model, np.vstack([X[1200:], far])


def _density_oracle(Z, model):
    """The rule by brute force: exact distances to every core point (scipy), the nearest decides."""
    D = cdist(Z, model.core_points)
    j = D.argmin(axis=1)
    d = D[np.arange(len(Z)), j]
    return np.where(d <= model.core_reach[j] * (1 + 1e-12), model.core_labels[j], -1), d


def test_density_outliers_follow_the_rule_on_both_searches(density_model):
    model, Q = density_model
    want_lab, want_dist = _density_oracle(Q, model)
    assert (want_lab[-3:] == -1).all() and 0 < (want_lab >= 0).sum()
    small = Q[-40:]  # rows x core points x dims <= 2e6: one GEMM and exact candidates
    assert len(small) * model.core_points.size <= 2_000_000 < len(Q) * model.core_points.size
    serving = AssignmentRule(Q[:3], density=model, small_search=True)  # small blocks: the GEMM search
    for rows in (small, Q):  # the whole set goes to the pruned index
        for lab, dist in (density_labels(rows, model), (lambda a: (a.density_label, a.density_distance))(serving(rows))):
            np.testing.assert_array_equal(lab, want_lab[-len(rows):])
            np.testing.assert_allclose(dist, want_dist[-len(rows):], rtol=1e-9)
    ref_lab, ref_dist = Dk.extend(Q, model)
    lab, dist = density_labels(Q, model)
    np.testing.assert_array_equal(lab, ref_lab)
    np.testing.assert_array_equal(dist, ref_dist)  # the batch pass's kernel, bit for bit
    a = assign_points(Q, Q[:3], density=model)
    np.testing.assert_array_equal(a.is_outlier, want_lab < 0)
    assert a.is_outlier[-3:].all()
    cols = contract.arrow_columns(a)
    assert cols["is_outlier"].to_pylist() == (want_lab < 0).tolist()
    assert cols["density_label"].to_pylist() == want_lab.tolist()


def test_a_density_model_without_core_points_makes_every_row_noise():
    model = Dk.DensityModel("dbscan", np.zeros((0, 2)), np.zeros(0, np.int32), np.zeros(0), np.zeros(0, np.int32))
    a = assign_points(np.ones((4, 2)), np.zeros((2, 2)), density=model)
    assert a.density_label.tolist() == [-1] * 4 and a.is_outlier.all() and np.isinf(a.density_distance).all()


# ------------------------------------------------------------------------------------------------
# part 2: batch, serving, ml and the stream agree on a real job


@pytest.fixture(scope="module")
def job(spark, small_table, tmp_path_factory):
    from deltalake import DeltaTable

    from clusterlake.io import model_artifact
    from clusterlake.pipeline import run_job
    from tests.conftest import job_config

    out = str(tmp_path_factory.mktemp("rule") / "out")
    cfg = job_config(small_table, out, **{
        "kmeans.k": 4, "density.enabled": "true", "hierarchical.enabled": "true", "hierarchical.levels": "[3, 8]",
        "report.enabled": "false", "quality.sample_size": 500, "serving.members_per_cluster": 0})
    run_job(cfg, spark=spark)
    inp = pq.read_table(small_table)
    batch = DeltaTable(os.path.join(out, "assignments")).to_pyarrow_table()
    art = model_artifact.load(os.path.join(out, "model", "latest"))
    return dict(cfg=cfg, out=out, inp=inp, batch=_by_id(batch, inp.column(ID).to_numpy()), art=art)


def _by_id(table: pa.Table, ids: np.ndarray) -> pa.Table:
    """``table``'s rows in the order of ``ids`` (every id once)."""
    pos = {v: i for i, v in enumerate(table.column(ID).to_pylist())}
    assert len(pos) == table.num_rows
    return table.take(pa.array([pos[i] for i in ids.tolist()]))


def _features(job, rows=None) -> np.ndarray:
    inp = job["inp"] if rows is None else job["inp"].take(pa.array(rows))
    return np.column_stack([inp.column(f).to_numpy().astype(np.float64) for f in job["art"].prep.feature_names])


def _agree(ref: pa.Table, got: dict, what: str, passes: bool = True) -> None:
    """Row for row: the ids, second ids, outlier flags exactly (nulls included), the distances to
    1e-12 and the margins to 1e-9 (a difference of two distances)."""
    names = INT_COLUMNS if passes else INT_COLUMNS[:2]
    for c in names:
        assert got[c].to_pylist() == ref.column(c).to_pylist(), (what, c)
    np.testing.assert_allclose(got["distance"].to_numpy(zero_copy_only=False), ref.column("distance").to_numpy(),
                               rtol=1e-12, atol=1e-12, err_msg=what)
    for c, rtol in (("margin", 1e-9),) + ((("density_distance", 1e-12),) if passes else ()):
        g = np.asarray(got[c].to_pylist(), dtype=np.float64)
        r = np.asarray(ref.column(c).to_pylist(), dtype=np.float64)
        np.testing.assert_allclose(g, r, rtol=rtol, atol=1e-12, equal_nan=True, err_msg=f"{what} {c}")


def _ml_columns(model, Z: np.ndarray, ids: np.ndarray) -> dict:
    """The ml model's assignment in the table's encoding, its centre indices mapped to the ids."""
    a = model.assign(Z)
    stable = dataclasses.replace(a, cluster_id=ids[a.index].astype(np.int32),
                                 second_cluster_id=np.where(a.has_second, ids[np.maximum(a.second_index, 0)],
                                                            NO_CLUSTER).astype(np.int32))
    return contract.arrow_columns(stable)


@pytest.mark.spark
def test_batch_assigner_and_ml_agree_row_for_row(spark, job):
    import pandas as pd

    from clusterlake.io.model_artifact import pass_models
    from clusterlake.ml import KMeansModel
    from clusterlake.serving import Assigner

    art, ref = job["art"], job["batch"]
    X = _features(job)
    assigner = Assigner(art)
    assert assigner.outlier_rule == "density"
    served = assigner.assign(X)
    _agree(ref, contract.arrow_columns(served), "Assigner")
    recs = served.records()
    assert [r["second_cluster_id"] for r in recs] == ref.column("second_cluster_id").to_pylist()
    assert 0 < served.is_outlier.sum() < len(X)  # the outlier rule is exercised both ways

    Z = art.prep.transform(X)
    rule = AssignmentRule(art.centroids, art.cluster_ids, *pass_models(art))(Z)
    _agree(ref, contract.arrow_columns(rule), "kernel")
    assert contract.arrow_columns(rule)["hierarchy"].to_pylist() == ref.column("hierarchy").to_pylist()

    model = KMeansModel(art.centroids)
    _agree(ref, _ml_columns(model, Z, art.cluster_ids), "ml.assign", passes=False)
    df = spark.createDataFrame(pd.DataFrame({"row": np.arange(len(Z)), "features": list(Z)}))
    pred = model.transform(df).select("row", "prediction").toPandas().sort_values("row")["prediction"].to_numpy()
    np.testing.assert_array_equal(art.cluster_ids[pred], ref.column("cluster_id").to_numpy())
    assert [art.cluster_ids[model.predict(z)] for z in Z[:20]] == ref.column("cluster_id").to_pylist()[:20]


@pytest.mark.spark
def test_the_stream_agrees_with_the_batch(spark, job, tmp_path):
    """A real streaming query (two landed files) over rows of the job's input: its table holds the
    batch job's answer for every row (it calls the batch pass, ``passes.assign_rows``)."""
    from deltalake import DeltaTable

    from clusterlake.config import load_config
    from clusterlake.stream import run_assign_stream

    landing = tmp_path / "landing"
    landing.mkdir()
    rows = np.r_[0:250, 3000:3250]
    for j, part in enumerate((rows[:250], rows[250:])):
        pq.write_table(job["inp"].take(pa.array(part)), str(landing / f"f{j}.parquet"))
    data = job["cfg"].model_dump(mode="json")
    data["stream"] = {**data.get("stream", {}), "landing_path": str(landing),
                      "checkpoint_path": str(tmp_path / "ckpt"), "table": "rule_stream"}
    res = run_assign_stream(load_config(data=data), spark=spark)
    assert res.rows_written == len(rows)
    got = DeltaTable(os.path.join(job["out"], "rule_stream")).to_pyarrow_table()
    ids = job["inp"].column(ID).to_numpy()[rows]
    got = _by_id(got, ids)
    ref = job["batch"].take(pa.array(rows))
    _agree(ref, {c: got.column(c) for c in got.column_names}, "stream")
    assert got.column("hierarchy").to_pylist() == ref.column("hierarchy").to_pylist()


@pytest.mark.spark
def test_k1_batch_assigner_and_ml_give_identical_answers(spark, job, small_table):
    """One centroid: no second cluster anywhere (null in the table, None in JSON, has_second False)."""
    from clusterlake.algorithms.passes import assign_rows
    from clusterlake.io.model_artifact import pass_models
    from clusterlake.ml import KMeansModel
    from clusterlake.serving import Assigner

    art = job["art"]
    one = dataclasses.replace(art, centroids=art.centroids[1:2], cluster_ids=art.cluster_ids[1:2],
                              cluster_stats={k: np.asarray(v)[1:2] for k, v in art.cluster_stats.items()})
    density, hierarchy = pass_models(one)
    batch = assign_rows(spark.read.parquet(small_table), one.prep, one.centroids, one.cluster_ids, ID,
                        density, hierarchy).toArrow()
    ref = _by_id(batch, job["inp"].column(ID).to_numpy())
    assert ref.column("second_cluster_id").null_count == ref.column("margin").null_count == len(ref)
    assert set(ref.column("cluster_id").to_pylist()) == {int(art.cluster_ids[1])}

    X = _features(job)
    for rule in ("density", "radius"):
        served = Assigner(one, outlier_rule=rule).assign(X)
        _agree(ref, contract.arrow_columns(served), f"Assigner k=1 {rule}", passes=rule == "density")
        assert {(r["second_cluster_id"], r["margin"]) for r in served.records()} == {(None, None)}
    Z = one.prep.transform(X)
    model = KMeansModel(one.centroids)
    _agree(ref, _ml_columns(model, Z, one.cluster_ids), "ml k=1", passes=False)
    assert not model.assign(Z).has_second.any() and model.predict(Z[0]) == 0


# ----------------------------------------------------------------------------------------------
# under another distance (k-medoids models, issue 23)


@pytest.mark.parametrize("name, kw", [("manhattan", {}), ("chebyshev", {}), ("cosine", {}),
                                      ("minkowski", {"p": 3.0})])
def test_rule_under_another_distance_equals_brute_force(name, kw):
    from scipy.spatial.distance import cdist

    from clusterlake.kernels.distances import metric

    rng = np.random.default_rng(11)
    Z, M = rng.normal(size=(300, 5)), rng.normal(size=(7, 5))
    a = AssignmentRule(M, np.arange(100, 107), metric=metric(name, **kw))(Z.astype(np.float32))
    D = cdist(Z.astype(np.float32).astype(np.float64), M, {"manhattan": "cityblock"}.get(name, name), **kw)
    order = np.argsort(D, axis=1, kind="stable")
    rows = np.arange(len(Z))
    np.testing.assert_array_equal(a.index, order[:, 0])
    np.testing.assert_array_equal(a.cluster_id, 100 + order[:, 0])
    np.testing.assert_array_equal(a.second_cluster_id, 100 + order[:, 1])
    np.testing.assert_allclose(a.distance, D[rows, order[:, 0]], rtol=1e-12)
    np.testing.assert_allclose(a.margin, D[rows, order[:, 1]] - D[rows, order[:, 0]], rtol=1e-9, atol=1e-12)
    assert a.index.dtype == np.int32 and a.second_index.dtype == np.int32


def test_rule_under_another_distance_with_one_medoid_has_no_second():
    from clusterlake.kernels.distances import metric

    a = AssignmentRule(np.zeros((1, 3)), metric=metric("manhattan"))(np.ones((4, 3)))
    assert (a.index == 0).all() and np.allclose(a.distance, 3.0)
    assert not a.has_second.any() and np.isnan(a.margin).all() and (a.second_cluster_id == NO_CLUSTER).all()


def test_euclidean_metric_is_the_default_rule():
    from clusterlake.kernels.distances import metric

    rng = np.random.default_rng(2)
    Z, C = rng.normal(size=(200, 4)), rng.normal(size=(5, 4))
    a = AssignmentRule(C, metric=metric("euclidean"))(Z)
    D = cdist(Z, C)
    np.testing.assert_array_equal(a.index, np.argmin(D, axis=1))
    np.testing.assert_allclose(a.distance, D.min(axis=1), rtol=1e-12)
