"""HDBSCAN's parameters chosen on the sample by DBCV when the user sets neither (issue 23)."""

import numpy as np
import pytest
from sklearn.datasets import make_moons
from sklearn.metrics import adjusted_rand_score

from clusterlake.kernels import density as Dk
from clusterlake.kernels import density_defaults as DD
from clusterlake.kernels.dbcv import dbcv


def _moons_and_specks(seed=0):
    """Two moons (1,200 rows) and six tight specks of 8 rows: shapes the former defaults
    (min_samples 10, min_cluster_size 10) cannot hold."""
    rng = np.random.default_rng(seed)
    X, y = make_moons(1200, noise=0.05, random_state=seed)
    specks = [rng.normal(loc=c, scale=0.02, size=(8, 2))
              for c in [(-1.5, -1), (-1.5, 1.5), (2.5, 1.5), (2.5, -1), (0.5, 2), (0.5, -1.5)]]
    X, y = np.vstack([X] + specks), np.r_[y, np.repeat(np.arange(2, 8), 8)]
    p = rng.permutation(len(X))
    return X[p], y[p]


def test_the_grid_finds_the_shapes_the_former_defaults_lose():
    X, y = _moons_and_specks()
    auto = Dk.fit_sample(X, "hdbscan", None, None, None)
    fixed = Dk.fit_sample(X, "hdbscan", None, 10, 10)
    assert fixed.n_clusters == 2
    assert (auto.min_samples, auto.min_cluster_size, auto.n_clusters) == (5, 5, 8)
    assert adjusted_rand_score(y, auto.sample_labels) == 1.0
    assert auto.choice["dbcv"] > dbcv(X[:3000], fixed.sample_labels)


def test_the_choice_is_the_best_of_the_grid_and_its_labels_are_hdbscans():
    X, _ = _moons_and_specks(1)
    ch = DD.choose(X, score_rows=800)
    grid = [(ms, mcs) for ms in DD.GRID_MIN_SAMPLES for mcs in DD.cluster_size_grid(len(X))]
    assert [(c["min_samples"], c["min_cluster_size"]) for c in ch.candidates] == grid
    for c in ch.candidates:  # every score is DBCV of HDBSCAN's labels on the first 800 rows
        labels, _ = Dk.hdbscan(X, c["min_samples"], c["min_cluster_size"])
        assert c["dbcv"] == pytest.approx(dbcv(X[:800], labels[:800]), rel=1e-12)
    assert ch.score == max(c["dbcv"] for c in ch.candidates)
    first_best = next(c for c in ch.candidates if c["dbcv"] == ch.score)  # ties: the earlier (the former default first)
    assert (ch.min_samples, ch.min_cluster_size) == (first_best["min_samples"], first_best["min_cluster_size"])
    labels, knn = Dk.hdbscan(X, ch.min_samples, ch.min_cluster_size)
    np.testing.assert_array_equal(ch.labels, labels)
    np.testing.assert_allclose(ch.knn, knn)


def test_a_large_sample_is_searched_on_a_prefix_and_its_cluster_size_scaled(monkeypatch):
    X, _ = _moons_and_specks(2)
    monkeypatch.setattr(DD, "GRID_ROWS", 600)
    model = Dk.fit_sample(X, "hdbscan", None, None, None)
    ch = DD.choose(X[:600])
    assert ch.min_cluster_size in DD.cluster_size_grid(600) and model.min_cluster_size > ch.min_cluster_size
    assert model.choice["grid_rows"] == 600 and model.min_samples == ch.min_samples
    assert model.min_cluster_size == max(2, round(ch.min_cluster_size * len(X) / 600))
    labels, _ = Dk.hdbscan(X, model.min_samples, model.min_cluster_size)
    np.testing.assert_array_equal(model.sample_labels, labels)
    assert model.choice["dbcv"] == pytest.approx(dbcv(X[:3000], labels[:3000]))  # the final labeling's score


def test_cluster_size_grid():
    assert DD.cluster_size_grid(1500) == (10, 5, 20)
    assert DD.cluster_size_grid(100_000) == (100, 50, 400)
    assert DD.cluster_size_grid(8) == (8, 5)


def test_the_job_records_the_choice_in_metrics_and_the_model(spark, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import DeltaTable

    from clusterlake.io import model_artifact
    from clusterlake.pipeline import run_job
    from tests.conftest import job_config

    X, y = _moons_and_specks(3)
    pq.write_table(pa.table({"customer_id": np.arange(len(X), dtype=np.int64), "f0": X[:, 0], "f1": X[:, 1],
                             "true_segment": y.astype(np.int32)}), str(tmp_path / "in.parquet"))
    res = run_job(job_config(str(tmp_path / "in.parquet"), str(tmp_path / "out"),
                             **{"kmeans.k": 2, "density.enabled": "true", "density.sample_size": 2000,
                                "preprocess.pca.enabled": "false", "preprocess.scaling": "none"}), spark=spark)
    met = DeltaTable(str(tmp_path / "out" / "metrics")).to_pandas()
    got = met[(met.scope == "sample") & (met.algorithm == "hdbscan")].set_index("metric").value
    assert (got["min_samples"], got["min_cluster_size"]) == (5.0, 5.0)
    assert got["dbcv"] > 0.3
    passes = model_artifact.load(res.model_path).passes["density"]
    assert (passes["min_samples"], passes["min_cluster_size"]) == (5, 5)
    assert passes["choice"]["by"] == "dbcv" and len(passes["choice"]["candidates"]) == 9
    full = met[(met.scope == "full") & (met.algorithm == "hdbscan")].set_index("metric").value
    assert full["n_clusters"] == 8 and full["ari"] > 0.99
