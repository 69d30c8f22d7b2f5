"""The nightly job with ``kmeans.algorithm: gmm`` (issue 24): on elongated, rotated clusters the
mixture finds what K-means cannot (its ARI at least scikit-learn's ``GaussianMixture``'s minus
0.02); every row's ``cluster_id``, ``probability``, runner-up and margin are the posterior of the
saved mixture (scikit-learn's ``predict_proba`` with our parameters is the oracle), the
log-likelihood, BIC and AIC are scikit-learn's over every row, weights count as repeated rows, and
serving (in-process and HTTP) returns the batch job's posterior."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

from clusterlake.errors import ConfigError
from clusterlake.pipeline import run_job
from tests.conftest import job_config

FEATURES = ["f0", "f1", "f2"]


def _elongated(path, n: int = 4000, seed: int = 0, weights: bool = False) -> str:
    """Four long thin clusters (sd 3 along, 0.3 across), rotated, their centres close enough that
    K-means cuts across them; a third feature of pure noise. ``weights``: a column ``w`` of 1s
    and 2s."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0], [3.0, 3.0], [-3.0, 4.0], [5.0, -3.0]])
    angles = np.array([0.3, 1.2, -0.6, 0.9])
    y = rng.integers(0, 4, n)
    local = rng.normal(size=(n, 2)) * np.array([3.0, 0.3])
    c, s = np.cos(angles[y]), np.sin(angles[y])
    X2 = centers[y] + np.stack([c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1]], axis=1)
    X = np.column_stack([X2, rng.normal(size=n)])
    cols = {"customer_id": pa.array(np.arange(n, dtype=np.int64)),
            **{f: pa.array(X[:, j]) for j, f in enumerate(FEATURES)}, "true_segment": pa.array(y.astype(np.int32))}
    if weights:
        cols["w"] = pa.array(rng.integers(1, 3, n).astype(np.float64))
    pq.write_table(pa.table(cols), str(path))
    return str(path)


def _table(out, name: str):
    return DeltaTable(f"{out}/{name}").to_pyarrow_table().to_pandas()


def _full_metrics(out: str, run_id: str):
    met = _table(out, "metrics")
    return met[(met.scope == "full") & met.cluster_id.isna() & (met.run_id == run_id)
               & (met.algorithm == "kmeans")].set_index("metric").value


OVER = {"kmeans.k": 4, "preprocess.pca.enabled": "false", "kmeans.algorithm": "gmm"}


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("gmm")
    data = _elongated(root / "in.parquet")
    gmm = run_job(job_config(data, str(root / "gmm"), **OVER), spark=spark)
    km = run_job(job_config(data, str(root / "km"), **{**OVER, "kmeans.algorithm": "kmeans"}), spark=spark)
    return {"data": data, "gmm": gmm, "km": km, "out": str(root / "gmm"), "km_out": str(root / "km")}


def _sklearn_with(art) -> GaussianMixture:
    """scikit-learn's GaussianMixture holding the saved mixture's parameters (the oracle)."""
    from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

    mix = art.mixture()
    sk = GaussianMixture(mix.k, covariance_type=mix.covariance_type)
    sk.weights_, sk.means_, sk.covariances_ = mix.weights, mix.means, mix.covariances
    sk.precisions_cholesky_ = _compute_precision_cholesky(mix.covariances, mix.covariance_type)
    return sk


def _model_space(art, data: str):
    X = pq.read_table(data).to_pandas().set_index("customer_id")
    return X, art.prep.transform(X[FEATURES].to_numpy())


def test_the_mixture_separates_what_kmeans_cannot(runs):
    X = pq.read_table(runs["data"]).to_pandas()
    Z = (X[FEATURES] - X[FEATURES].mean()) / X[FEATURES].std(ddof=0)
    sk = GaussianMixture(4, covariance_type="full", random_state=0).fit(Z)
    sk_ari = adjusted_rand_score(X.true_segment, sk.predict(Z))
    assert runs["gmm"].metrics["ari"] >= sk_ari - 0.02
    assert runs["gmm"].metrics["ari"] > runs["km"].metrics["ari"] + 0.15  # K-means cuts across the long clusters


def test_every_row_is_assigned_by_the_posterior_of_the_saved_mixture(runs):
    from clusterlake.io import model_artifact

    art = model_artifact.load(runs["gmm"].model_path)
    assert art.algorithm == "gmm" and art.meta["mixture"]["covariance_type"] == "full"
    assert art.extras["mixture_covariances"].shape == (4, 3, 3)
    X, Z = _model_space(art, runs["data"])
    sk = _sklearn_with(art)
    P = sk.predict_proba(Z)
    asg = _table(runs["out"], "assignments").set_index("customer_id").loc[X.index]
    lp = sk._estimate_weighted_log_prob(Z)  # (the runner-up's posterior may underflow to 0: rank in logs)
    order = np.argsort(-lp, axis=1, kind="stable")
    np.testing.assert_array_equal(asg.cluster_id.to_numpy(), art.cluster_ids[order[:, 0]])
    np.testing.assert_array_equal(asg.second_cluster_id.to_numpy(), art.cluster_ids[order[:, 1]])
    rows = np.arange(len(P))
    np.testing.assert_allclose(asg.probability.to_numpy(), P[rows, order[:, 0]], rtol=0, atol=1e-9)
    np.testing.assert_allclose(asg.margin.to_numpy(), lp[rows, order[:, 0]] - lp[rows, order[:, 1]], rtol=1e-9,
                               atol=1e-9)
    diff = Z - art.centroids[order[:, 0]]
    np.testing.assert_allclose(asg.distance.to_numpy(), np.sqrt((diff ** 2).sum(1)), rtol=1e-12)
    # the whole-run figures: scikit-learn's over every row
    full = _full_metrics(runs["out"], runs["gmm"].run_id)
    n = len(Z)
    assert full["log_likelihood"] == pytest.approx(sk.score(Z) * n, rel=1e-9)
    assert full["mean_log_likelihood"] == pytest.approx(sk.score(Z), rel=1e-9)
    assert full["bic"] == pytest.approx(sk.bic(Z), rel=1e-9)
    assert full["aic"] == pytest.approx(sk.aic(Z), rel=1e-9)
    assert full["mean_probability"] == pytest.approx(asg.probability.mean(), rel=1e-9)
    cen = _table(runs["out"], "centroids").set_index("cluster_id").loc[art.cluster_ids]
    np.testing.assert_allclose(cen.weight.to_numpy(), art.mixture().weights, rtol=1e-12)
    assert cen.weight.sum() == pytest.approx(1.0)
    assert _table(runs["km_out"], "assignments").probability.isna().all()


def test_serving_returns_the_batch_posterior(runs):
    from clusterlake.serving.assigner import Assigner

    X = pq.read_table(runs["data"]).to_pandas().head(400)
    a = Assigner.load(runs["gmm"].model_path)
    got = a.assign(X[FEATURES], posterior=True)
    asg = _table(runs["out"], "assignments").set_index("customer_id").loc[X.customer_id]
    np.testing.assert_array_equal(got.cluster_id, asg.cluster_id.to_numpy())
    np.testing.assert_allclose(got.probability, asg.probability.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(got.posterior.sum(axis=1), 1.0, rtol=1e-12)
    rec = got.records(a.cluster_ids)[0]
    assert set(rec["posterior"]) == {str(c) for c in a.cluster_ids}
    assert rec["posterior"][str(rec["cluster_id"])] == rec["probability"]
    assert a.assign(X[FEATURES]).posterior is None  # only on request


def test_http_posterior_on_request(runs):
    from tests.test_serving import _start, _stop

    X = pq.read_table(runs["data"]).to_pandas().head(3)
    rows = X[FEATURES].to_dict(orient="records")
    proc, client = _start(runs["gmm"].model_path)
    try:
        status, plain = client.call("POST", "/assign", {"rows": rows})
        assert status == 200 and "posterior" not in plain["assignments"][0]
        status, full = client.call("POST", "/assign", {"rows": rows, "posterior": True})
        assert status == 200
        asg = _table(runs["out"], "assignments").set_index("customer_id").loc[X.customer_id]
        for r, p in zip(full["assignments"], asg.probability):
            assert r["probability"] == pytest.approx(p, rel=1e-12)
            assert sum(r["posterior"].values()) == pytest.approx(1.0)
        status, err = client.call("POST", "/assign", {"rows": rows, "posterior": "yes"})
        assert status == 400 and "posterior" in err["error"]
    finally:
        _stop(proc)


def test_a_weighted_tied_mixture_is_scored_on_every_row_once(spark, tmp_path):
    """A tied mixture with a weight column (the weights shape the fit: tests/test_gmm_engine.py
    holds integer weights to repeated rows): its one covariance is (p, p), and the metrics count
    every row once, as every metric does: the log-likelihood is the sum of scikit-learn's per-row
    scores under the saved mixture, BIC's n the rows."""
    from clusterlake.io import model_artifact

    data = _elongated(tmp_path / "w.parquet", n=2500, seed=1, weights=True)
    out = str(tmp_path / "tied")
    res = run_job(job_config(data, out, **OVER, **{"kmeans.gmm.covariance": "tied", "input.weight_column": "w"}),
                  spark=spark)
    art = model_artifact.load(res.model_path)
    assert art.extras["mixture_covariances"].shape == (3, 3)
    X, Z = _model_space(art, data)
    sk = _sklearn_with(art)
    full = _full_metrics(out, res.run_id)
    assert full["log_likelihood"] == pytest.approx(float(sk.score_samples(Z).sum()), rel=1e-9)
    assert full["bic"] == pytest.approx(sk.bic(Z), rel=1e-9) and full["aic"] == pytest.approx(sk.aic(Z), rel=1e-9)
    unweighted = model_artifact.load(run_job(job_config(data, str(tmp_path / "unweighted"), **OVER, **{
        "kmeans.gmm.covariance": "tied"}), spark=spark).model_path).mixture()
    assert not np.allclose(unweighted.weights, art.mixture().weights, rtol=1e-3)  # the weights shaped the fit
    asg = _table(out, "assignments").set_index("customer_id").loc[X.index]
    np.testing.assert_array_equal(asg.cluster_id.to_numpy(), art.cluster_ids[sk.predict(Z)])


def test_k_auto_by_bic(spark, runs, tmp_path):
    out = str(tmp_path / "auto")
    res = run_job(job_config(runs["data"], out, **{**OVER, "kmeans.k": "auto", "kmeans.auto.max_k": 6,
                                                   "kmeans.auto.sample_size": 2000}), spark=spark)
    met = _table(out, "metrics")
    curve = met[(met.scope == "auto_k") & (met.metric == "bic")].set_index("k").value
    assert sorted(curve.index) == [2, 3, 4, 5, 6]
    assert res.k == int(curve.idxmin()) == 4
    assert res.k_selection == "auto:bic"
    assert set(met[met.scope == "auto_k"].metric) == {"bic", "aic", "mean_log_likelihood"}


def test_two_nights_keep_their_ids(spark, runs, tmp_path):
    out = str(tmp_path / "nights")
    r1 = run_job(job_config(runs["data"], out, **OVER), spark=spark)
    r2 = run_job(job_config(runs["data"], out, **OVER, **{"job.run_date": "2026-11-21", "kmeans.seed": 11}),
                 spark=spark)
    lin = _table(out, "lineage")
    assert sorted(lin[lin.run_id == r2.run_id].event) == ["persist"] * 4
    a = _table(out, "assignments")
    by_run = {r: a[a.run_id == r].set_index("customer_id").cluster_id.sort_index() for r in (r1.run_id, r2.run_id)}
    assert (by_run[r1.run_id] == by_run[r2.run_id]).mean() > 0.99


def test_the_update_job_refuses_a_mixture(spark, runs):
    from clusterlake.update import run_update

    with pytest.raises(ConfigError, match="Gaussian mixture"):
        run_update(job_config(runs["data"], runs["out"], **OVER), runs["data"], spark=spark)


def test_the_report_draws_each_component(runs):
    html = open(runs["gmm"].report_path, encoding="utf-8").read()
    assert "4 Gaussian mixture components drawn as ellipses" in html


@pytest.mark.parametrize("t", ["full", "tied", "diag", "spherical"])
def test_the_report_ellipse_is_the_components_covariance_in_the_plane(t):
    from clusterlake.kernels.gmm import Mixture
    from clusterlake.report.build import plane_covariances

    rng = np.random.default_rng(0)
    k, d = 3, 4
    A = rng.normal(size=(k, d, d))
    full = np.einsum("kij,klj->kil", A, A) + np.eye(d)
    cov = {"full": full, "tied": full[0], "diag": np.stack([np.diag(c) for c in full]),
           "spherical": full[:, 0, 0]}[t]
    as_full = {"full": full, "tied": np.repeat(full[:1], k, axis=0),
               "diag": np.stack([np.diag(np.diag(c)) for c in full]),
               "spherical": full[:, 0, 0][:, None, None] * np.eye(d)}[t]
    mix = Mixture.of(t, np.full(k, 1 / k), rng.normal(size=(k, d)), cov)
    np.testing.assert_allclose(plane_covariances(mix), as_full[:, :2, :2], rtol=0, atol=0)


@pytest.mark.parametrize("over, text", [
    ({"kmeans.algorithm": "gmm", "kmeans.distance": "cosine"}, "does not apply to kmeans.algorithm=gmm"),
    ({"kmeans.algorithm": "gmm", "kmeans.batch_size": 1000}, "needs kmeans.algorithm: kmeans"),
    ({"kmeans.algorithm": "gmm", "kmeans.engine": "spark-mllib"}, "does not support kmeans.algorithm=gmm"),
    ({"kmeans.algorithm": "gmm", "kmeans.k": "auto", "kmeans.auto.criterion": "silhouette"}, "bic or aic"),
    ({"kmeans.auto.criterion": "bic"}, "needs kmeans.algorithm: gmm"),
    ({"kmeans.algorithm": "gmm", "kmeans.gmm.covariance": "round"}, "covariance"),
    ({"kmeans.algorithm": "gmm", "kmeans.gmm.reg_covar": -1}, "reg_covar"),
    ({"kmeans.algorithm": "gmm", "kmeans.gmm.reg_covar": 0}, "reg_covar"),
])
def test_gmm_settings_are_checked(over, text):
    with pytest.raises(ConfigError, match=text):
        job_config("in", "out", **over)


def test_the_config_default_criterion_follows_the_algorithm():
    assert job_config("in", "out", **{"kmeans.algorithm": "gmm"}).kmeans.auto.criterion == "bic"
    assert job_config("in", "out").kmeans.auto.criterion == "silhouette"
    assert json.loads(job_config("in", "out").model_dump_json())["kmeans"]["gmm"]["covariance"] == "full"


def test_the_stream_assigns_by_the_mixture_as_the_batch_did(spark, runs, tmp_path):
    from clusterlake.stream import run_assign_stream

    landing = tmp_path / "landing"
    landing.mkdir()
    rows = pq.read_table(runs["data"]).slice(0, 300)
    pq.write_table(rows, str(landing / "a.parquet"))
    cfg = job_config(runs["data"], runs["out"], **OVER, **{
        "stream.landing_path": str(landing), "stream.checkpoint_path": str(tmp_path / "ckpt"),
        "stream.table": "assignments_stream"})
    assert run_assign_stream(cfg, spark=spark).rows_written == 300
    got = _table(runs["out"], "assignments_stream").set_index("customer_id").sort_index()
    asg = _table(runs["out"], "assignments").set_index("customer_id").loc[got.index]
    np.testing.assert_array_equal(got.cluster_id.to_numpy(), asg.cluster_id.to_numpy())
    np.testing.assert_allclose(got.probability.to_numpy(), asg.probability.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(got.margin.to_numpy(), asg.margin.to_numpy(), rtol=1e-9)


def test_k_auto_leaves_out_what_a_small_sample_cannot_score(caplog):
    """150 rows x 10 features of 3 clusters: a full mixture of k components has k (1 + 10 + 55) - 1
    parameters, so k above 2 cannot be scored on them (BIC would pick the largest k, each
    component a handful of rows with reg_covar as its spread); they are left out, said so, and a
    range with nothing left is a clear error."""
    from clusterlake.algorithms.auto_mixture import choose_components
    from clusterlake.config import GMMSection

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    Z = rng.normal(size=(150, 10)) + 6.0 * np.eye(10)[y]
    with caplog.at_level("WARNING"):
        auto = choose_components(Z, 2, 20, "bic", GMMSection(), seed=1)
    assert auto.k == 2 and "k in [3, 4" in caplog.text and "left out" in caplog.text
    diag = choose_components(Z, 2, 8, "bic", GMMSection(covariance="diag"), seed=1)
    assert diag.k == 3  # 3 x 21 - 1 parameters fit 150 rows: the diagonal mixture finds the clusters
    with pytest.raises(ValueError, match="cannot score a full mixture of 3 or more"):
        choose_components(Z, 3, 5, "bic", GMMSection(), seed=1)


def test_serving_names_a_row_the_mixture_cannot_explain(runs):
    """Finite values far beyond the model's range overflow every component's likelihood before
    they overflow the distances: the client's error naming the row (HTTP 400), not a server
    error. (Where exactly depends on the fitted precisions: the first such value is searched.)"""
    import warnings

    from clusterlake.serving.assigner import Assigner, RowError
    from clusterlake.serving.query import ClusterCatalog

    a, cat = Assigner.load(runs["gmm"].model_path), ClusterCatalog.load(runs["gmm"].model_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (the overflow itself)
        for v in np.geomspace(1e150, 1e156, 400):
            row = {"f0": 0.0, "f1": float(v), "f2": 0.0}
            try:
                a.assign([{"f0": 0.0, "f1": 0.0, "f2": 0.0}, row])
            except RowError as exc:
                err = exc
                break
        assert "row 1 has feature values too far from every mixture component" in str(err) and err.row == 1
        for call in (lambda: cat.nearest(row, 2), lambda: cat.similar(row, 2)):
            with pytest.raises(RowError, match="too far from every mixture component"):
                call()
