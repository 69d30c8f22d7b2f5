"""EM on the engine (algorithms/gmm.py): from the same start equal to scikit-learn's iterations,
the same fit on 1 and 2 tasks, row weights honoured, a collapsed component re-seeded, a lost task
recovered (the fit ends where the uninterrupted one does)."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

from clusterlake.algorithms import gmm as A
from clusterlake.algorithms.kmeans_engine import KMeansStage, fit_on
from clusterlake.kernels import gmm as G
from tests.test_engine import _fit_killing_a_task, frame, source


def _elongated(seed=0, n=2400):
    """Three rotated, elongated Gaussians (K-means' round cells cut across them)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = np.empty((n, 2))
    for c, (mu, ang) in enumerate([((0, 0), 0.3), ((0, 3.0), 0.3), ((6, 1), -1.2)]):
        R = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        m = y == c
        X[m] = (rng.normal(size=(m.sum(), 2)) * [4.0, 0.4]) @ R.T + mu
    return X, y


@pytest.mark.parametrize("t", ["full", "diag"])
def test_em_on_the_engine_equals_scikit_learn_from_the_same_start(spark, t):
    X, _ = _elongated()
    df = frame(spark, X, parts=2)
    with KMeansStage(spark, df, source(2), num_tasks=2, worker=A.MixtureWorker) as bc:
        km = fit_on(bc, 3, seed=1)
        res = A.em_on(bc, km.centers, t, tol=0.0, max_iter=6)
    shift = km.centers.mean(axis=0)
    start = G.m_step(G.hard_stats(X, km.centers, t, shift), t)
    prec = np.linalg.inv(start.covariances) if t == "full" else 1.0 / start.covariances
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = GaussianMixture(3, covariance_type=t, weights_init=start.weights, means_init=start.means,
                             precisions_init=prec, max_iter=6, tol=0.0).fit(X)
    np.testing.assert_allclose(res.mixture.means, sk.means_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(res.mixture.covariances, sk.covariances_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(res.mixture.weights, sk.weights_, rtol=1e-6)
    assert res.log_likelihood == pytest.approx(sk.lower_bound_, rel=1e-9) and res.n_iter == 6


def test_one_and_four_tasks_agree_and_beat_kmeans_on_elongated_clusters(spark):
    X, y = _elongated(1)
    full = A.fit_mixture(spark, frame(spark, X, parts=1), source(2), 3, num_tasks=1, seed=2, tol=1e-4)
    assert full.converged
    # from the same K-means centres, 4 tasks give the same EM (K-means' own start depends on the layout)
    with KMeansStage(spark, frame(spark, X, parts=4), source(2), num_tasks=4, worker=A.MixtureWorker) as bc:
        four = A.em_on(bc, full.kmeans.centers, "full", tol=1e-4)
    np.testing.assert_allclose(four.mixture.means, full.mixture.means, rtol=1e-9)
    assert four.n_iter == full.n_iter
    _, R = G.responsibilities(X, full.mixture)
    km_labels = ((X[:, None, :] - full.kmeans.centers[None]) ** 2).sum(-1).argmin(axis=1)
    assert adjusted_rand_score(y, R.argmax(axis=1)) > adjusted_rand_score(y, km_labels) + 0.2


def test_integer_weights_are_repeated_rows(spark):
    X, _ = _elongated(2, n=600)
    w = np.random.default_rng(0).integers(1, 4, len(X)).astype(float)
    a = A.fit_mixture(spark, frame(spark, X, parts=2, weights=w), source(2, weight_column="w"), 3, num_tasks=2,
                      seed=4, tol=0.0, max_iter=5, kmeans_max_iter=0)
    rep = np.repeat(X, w.astype(int), axis=0)
    shift = a.kmeans.centers.mean(axis=0)
    mix = G.m_step(G.hard_stats(rep, a.kmeans.centers, "full", shift), "full")
    for _ in range(5):
        mix = G.m_step(G.e_step_stats(rep, mix, shift), "full")
    np.testing.assert_allclose(a.mixture.means, mix.means, rtol=1e-6)  # summation order only


def test_a_component_started_far_away_is_reseeded_and_the_fit_stays_finite(spark, caplog):
    X, _ = _elongated(3, n=900)
    centers = np.array([[0.0, 0.0], [6.0, 1.0], [1e6, 1e6]])  # the third owns no row
    with KMeansStage(spark, frame(spark, X, parts=2), source(2), num_tasks=2, worker=A.MixtureWorker) as bc:
        res = A.em_on(bc, centers, "full", tol=1e-4, max_iter=40)
    assert res.reseeded >= 1 and "re-seeded" in caplog.text
    m = res.mixture
    assert np.isfinite(m.means).all() and np.isfinite(m.covariances).all() and m.means[2, 0] < 1e3
    assert m.weights.min() * len(X) >= 1  # the restarted component explains rows (here the outliers it was seeded at)


def test_em_continues_after_a_lost_task(spark, tmp_path, monkeypatch):
    """Kill one task's Python worker before the 3rd EM iteration: the stage reloads its rows, EM
    goes on from the driver's mixture and ends where the uninterrupted fit ends."""
    X, _ = _elongated(2)
    kw = dict(df=frame(spark, X, parts=2), source=source(2), k=3, num_tasks=2, seed=2, tol=0.0, max_iter=6,
              recovery_wait=0.0)
    ref = A.fit_mixture(spark, **kw)
    assert ref.recoveries == 0
    res, info = _fit_killing_a_task(spark, tmp_path, monkeypatch, "engine.em@3", victim=1, fit=A.fit_mixture, **kw)
    assert info["iteration"] == 3 and len(info["tasks"]) == 2
    assert res.recoveries == 1 and res.n_iter == ref.n_iter == 6
    np.testing.assert_allclose(res.mixture.means, ref.mixture.means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.mixture.covariances, ref.mixture.covariances, rtol=1e-10, atol=1e-12)
    assert res.log_likelihood == pytest.approx(ref.log_likelihood, rel=1e-12)
