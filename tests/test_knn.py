"""The pruned exact k-nearest-neighbour distances of a sample to itself (HDBSCAN's core
distances) against brute force from the differences, and against scikit-learn's search."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

from clusterlake.kernels import knn as K


def _exact(X: np.ndarray, k: int) -> np.ndarray:
    return np.sort(cdist(X, X), axis=1)[:, :k]


def _blobs(n: int, d: int, seed: int, offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-20, 20, (12, d)) + offset
    return centers[rng.integers(0, 12, n)] + rng.normal(size=(n, d))


@pytest.mark.parametrize("d, k, offset", [(5, 10, 0.0), (17, 10, 0.0), (17, 2, 1e4), (3, 25, 0.0)])
def test_pruned_knn_equals_brute_force(d, k, offset):
    X = _blobs(6000, d, seed=d + k, offset=offset)
    X[:40] = X[40:80]  # exact duplicates: distance 0 beside the row itself
    got = K.self_knn_distances(X, k)
    np.testing.assert_allclose(got, _exact(X, k), rtol=1e-12, atol=1e-9)
    assert (got[:, 0] == 0).all()


def test_pruned_knn_agrees_with_sklearn_and_prunes(monkeypatch):
    X = _blobs(8000, 8, seed=1)
    calls = []
    monkeypatch.setattr(K, "_brute", lambda X, k: calls.append(k) or (_exact(X, k), None))
    got = K.self_knn_distances(X, 10)
    assert calls == []  # clustered data: the pruned search ran
    ref = NearestNeighbors(n_neighbors=10).fit(X).kneighbors(X)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_unclustered_data_falls_back_to_the_brute_search(monkeypatch):
    X = np.random.default_rng(0).normal(size=(6000, 17))
    calls = []
    monkeypatch.setattr(K, "_brute", lambda X, k: calls.append(k) or (_exact(X, k), None))
    got = K.self_knn_distances(X, 10)
    assert calls == [10]
    np.testing.assert_allclose(got, _exact(X, 10), rtol=1e-12)


def test_small_samples_use_the_brute_search():
    X = _blobs(300, 4, seed=3)
    np.testing.assert_allclose(K.self_knn_distances(X, 7), _exact(X, 7), rtol=1e-6, atol=1e-9)
    assert K.self_knn_distances(X[:3], 10).shape == (3, 3)


def test_the_brute_search_returns_exact_distances():
    """Unclustered rows far from the origin: the brute search, whose expansion loses digits there;
    its neighbours' distances are re-measured from the differences and re-sorted."""
    X = np.random.default_rng(3).normal(size=(6000, 17)) + 50.0
    d, j, _ = K.self_knn(X, 10)
    np.testing.assert_allclose(d, np.sqrt(((X[:, None, :] - X[j]) ** 2).sum(-1)), rtol=1e-14)
    np.testing.assert_allclose(d, _exact(X, 10), rtol=1e-12)
    assert (np.diff(d, axis=1) >= 0).all()
