"""The distances of issue 23 against scipy's cdist and scikit-learn's pairwise_distances (the
oracles), float32 and float64, and the nearest-medoid assignment against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.metrics import pairwise_distances

from clusterlake.kernels.distances import METRICS, metric, nearest, pairwise

SCIPY = {"manhattan": "cityblock"}


def _data(name: str, dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    if name in ("jaccard",):
        X, Y = (rng.random((57, 9)) < 0.4), (rng.random((23, 9)) < 0.4)
        X[0] = False  # an empty row: 0 from another empty one, 1 from the rest
        Y[0] = False
        return X.astype(dtype), Y.astype(dtype)
    if name == "hamming":
        return rng.integers(0, 3, (57, 9)).astype(dtype), rng.integers(0, 3, (23, 9)).astype(dtype)
    return rng.normal(size=(57, 9)).astype(dtype), rng.normal(size=(23, 9)).astype(dtype)


def _metric(name: str, X):
    if name == "minkowski":
        return metric(name, p=3.0), {"p": 3.0}
    if name == "mahalanobis":
        VI = np.linalg.inv(np.cov(np.asarray(X, np.float64).T))
        return metric(name, VI=VI), {"VI": VI}
    return metric(name), {}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", METRICS)
def test_every_metric_equals_scipy_cdist(name, dtype):
    X, Y = _data(name, dtype)
    m, kw = _metric(name, X)
    want = cdist(np.asarray(X, np.float64), np.asarray(Y, np.float64), SCIPY.get(name, name), **kw)
    got = pairwise(X, Y, m)
    assert got.dtype == np.float64 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    got_small = pairwise(X, Y, m, budget_bytes=1)  # one row per block: the same numbers
    np.testing.assert_allclose(got_small, got, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["euclidean", "cosine", "manhattan", "chebyshev", "minkowski", "hamming"])
def test_metrics_equal_sklearn_pairwise_distances(name):
    X, Y = _data(name, np.float64, seed=3)
    m, kw = _metric(name, X)
    sk = {"manhattan": "manhattan"}.get(name, name)
    want = pairwise_distances(X, Y, metric=sk, **kw)
    np.testing.assert_allclose(pairwise(X, Y, m), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", METRICS)
def test_nearest_equals_brute_force(name):
    X, R = _data(name, np.float64, seed=7)
    R = R[:6]
    m, kw = _metric(name, X)
    D = cdist(X, R, SCIPY.get(name, name), **kw)
    i1, d1, i2, d2 = nearest(X, R, m, budget_bytes=4096)
    order = np.argsort(D, axis=1, kind="stable")
    np.testing.assert_array_equal(i1, order[:, 0])
    np.testing.assert_array_equal(i2, order[:, 1])
    np.testing.assert_allclose(d1, D[np.arange(len(X)), order[:, 0]], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(d2, D[np.arange(len(X)), order[:, 1]], rtol=1e-12, atol=1e-14)


def test_nearest_of_one_reference_has_no_second():
    i1, d1, i2, d2 = nearest(np.eye(3), np.zeros((1, 3)), metric("manhattan"))
    assert (i1 == 0).all() and np.allclose(d1, 1.0) and (i2 == -1).all() and np.isinf(d2).all()


def test_cosine_of_a_zero_vector_is_one():
    D = pairwise(np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[0.0, 0.0], [2.0, 0.0]]), metric("cosine"))
    np.testing.assert_allclose(D, [[1.0, 1.0], [1.0, 0.0]])


@pytest.mark.parametrize("name, kw, text", [
    ("braycurtis", {}, "unknown distance 'braycurtis'"),
    ("minkowski", {}, "p >= 1"),
    ("minkowski", {"p": 0.5}, "p >= 1"),
    ("euclidean", {"p": 2}, "minkowski distance only"),
    ("mahalanobis", {}, "needs VI"),
    ("mahalanobis", {"VI": np.ones((2, 3))}, "square matrix"),
    ("cosine", {"VI": np.eye(2)}, "mahalanobis distance only"),
])
def test_bad_metrics_are_refused_by_name(name, kw, text):
    with pytest.raises(ValueError, match=text):
        metric(name, **kw)


def test_jaccard_on_numeric_columns_needs_binary_features():
    with pytest.raises(ValueError, match="0/1 features"):
        pairwise(np.array([[0.5, 1.0]]), np.array([[1.0, 0.0]]), metric("jaccard"))


def test_aliases_and_description():
    assert metric("cityblock").name == "manhattan" and metric("l2").name == "euclidean"
    assert metric("minkowski", p=3).describe() == "minkowski (p=3)"
