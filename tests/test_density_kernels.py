"""Density clustering of a sample and its extension (``clusterlake.kernels.density``), with
scikit-learn's DBSCAN/HDBSCAN on the full (small) data as the oracle. No Spark."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import DBSCAN, KMeans
from sklearn.datasets import make_circles, make_moons
from sklearn.metrics import adjusted_rand_score

from clusterlake.kernels import density as D


def moons(n=6000, seed=0):
    X, y = make_moons(n_samples=n, noise=0.06, random_state=seed)
    return X, y


def sample_of(X, size, seed=1):
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(len(X), size, replace=False))


@pytest.mark.parametrize("algorithm", ["dbscan", "hdbscan"])
@pytest.mark.parametrize("shape", ["moons", "circles"])
def test_extension_finds_the_shapes_kmeans_cannot(algorithm, shape):
    if shape == "moons":
        X, y = moons()
    else:
        X, y = make_circles(n_samples=6000, noise=0.04, factor=0.45, random_state=0)
    idx = sample_of(X, 1500)
    model = D.fit_sample(X[idx], algorithm, min_samples=10, min_cluster_size=50)
    labels, dist = D.extend(X, model)
    kept = labels >= 0
    assert kept.mean() > 0.97, f"{1 - kept.mean():.1%} of rows came back as noise"
    assert adjusted_rand_score(y[kept], labels[kept]) > 0.95
    km = KMeans(2, n_init=5, random_state=0).fit_predict(X)
    assert adjusted_rand_score(y, km) < 0.6  # the point of the density pass
    assert np.isfinite(dist).all() and (dist >= 0).all()


def test_far_away_rows_are_noise():
    X, _ = moons()
    model = D.fit_sample(X[sample_of(X, 1500)], "dbscan", min_samples=10)
    far = np.array([[10.0, 10.0], [-8.0, 3.0], [0.5, 40.0]])
    labels, dist = D.extend(far, model)
    assert (labels == -1).all() and (dist > model.eps).all()


def test_extension_agrees_with_dbscan_on_the_full_data():
    X, _ = moons(n=5000, seed=3)
    model = D.fit_sample(X[sample_of(X, 2000, seed=4)], "dbscan", eps=0.1, min_samples=8)
    labels, _ = D.extend(X, model)
    full = DBSCAN(eps=0.1, min_samples=20).fit_predict(X)  # same density: 8 of 2000 ~ 20 of 5000
    assert adjusted_rand_score(full, labels) >= 0.95


def test_core_points_get_their_own_labels_back():
    X, _ = moons()
    idx = sample_of(X, 1500)
    for algorithm in ("dbscan", "hdbscan"):
        model = D.fit_sample(X[idx], algorithm, min_samples=10, min_cluster_size=50)
        labels, dist = D.extend(model.core_points, model)
        np.testing.assert_array_equal(labels, model.core_labels)
        np.testing.assert_allclose(dist, 0.0, atol=1e-12)


def test_the_estimated_eps_sits_at_the_knee():
    X, _ = moons()
    eps = D.estimate_eps(X[sample_of(X, 1500)], 10)
    kd = D.k_distances(X[sample_of(X, 1500)], 10)
    assert np.quantile(kd, 0.5) < eps <= kd.max()
    assert D.knee(np.r_[np.linspace(0, 1, 90), np.linspace(2, 50, 10)]) in range(85, 92)


def test_all_noise_and_the_blocked_search_match_brute_force():
    rng = np.random.default_rng(0)
    S = rng.normal(size=(300, 3))
    model = D.fit_sample(S, "dbscan", eps=1e-6, min_samples=5)  # nothing is dense
    assert len(model.core_points) == 0 and (model.sample_labels == -1).all()
    labels, dist = D.extend(rng.normal(size=(50, 3)), model)
    assert (labels == -1).all() and np.isinf(dist).all()
    # tiny blocks (budget) give exactly the brute-force nearest core point
    model = D.fit_sample(S, "dbscan", eps=0.8, min_samples=4)
    Q = rng.normal(size=(700, 3))
    got, gd = D.extend(Q, model, budget_bytes=1)
    d = np.linalg.norm(Q[:, None, :] - model.core_points[None, :, :], axis=-1)
    nn = d.argmin(1)
    want = np.where(d.min(1) <= model.core_reach[nn], model.core_labels[nn], -1)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(gd, d.min(1), rtol=1e-12)


def test_hdbscan_reach_is_calibrated_so_new_rows_of_clean_blobs_are_not_noise():
    """16-D blobs: with the bare core distance as reach ~20% of new rows came back as noise
    although HDBSCAN left ~1% of the sample as noise; the leave-one-out factor fixes that."""
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(n_samples=24_000, n_features=16, centers=6, cluster_std=1.0, center_box=(-30, 30),
                      random_state=3)
    model = D.fit_sample(X[:4000], "hdbscan", min_samples=10, min_cluster_size=40)
    labels, dist = D.extend(X[4000:], model)
    sample_noise = (model.sample_labels < 0).mean()
    assert model.reach_factor > 1.05
    assert (labels < 0).mean() < max(3 * sample_noise, 0.03)
    bare = np.where(dist <= model.core_reach[model.nearest_core(X[4000:])[0]] / model.reach_factor, 0, -1)
    assert (bare < 0).mean() > 2 * (labels < 0).mean()  # what the uncalibrated rule would have said
    assert D.loo_reach_factor(np.zeros((2, 3)), np.ones(2)) == 1.0
