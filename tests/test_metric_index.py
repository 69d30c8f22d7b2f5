"""The exact nearest-point search under every distance (kernels/metric_index.py) against brute force."""

import numpy as np
import pytest

from clusterlake.kernels.distances import metric, nearest
from clusterlake.kernels.metric_index import build, query


def _metric(name, d, rng):
    if name == "minkowski":
        return metric(name, p=3.0)
    if name == "mahalanobis":
        A = rng.normal(size=(d, d))
        return metric(name, VI=np.linalg.inv(A @ A.T / d + np.eye(d)))
    return metric(name)


def _blobs(rng, n, d, centres=12):
    C = rng.normal(scale=4.0, size=(centres, d))
    return C[rng.integers(0, centres, n)] + rng.normal(size=(n, d))


@pytest.mark.parametrize("name", ["euclidean", "manhattan", "chebyshev", "minkowski", "cosine", "mahalanobis"])
def test_equals_brute_force_on_continuous_rows(name):
    rng = np.random.default_rng(3)
    P, X = _blobs(rng, 1500, 6), _blobs(rng, 2000, 6)
    m = _metric(name, 6, rng)
    idx, dist = query(build(P, m), X, budget_bytes=1 << 20)  # small budget: many blocks and chunks
    ref_i, ref_d, _, _ = nearest(X, P, m)
    np.testing.assert_allclose(dist, ref_d, rtol=1e-12, atol=1e-12)
    assert (idx == ref_i).mean() == 1.0


@pytest.mark.parametrize("name", ["hamming", "jaccard"])
def test_ties_go_to_the_lowest_index_as_brute_force(name):
    rng = np.random.default_rng(5)
    proto = rng.random((8, 20)) < 0.3
    P = (proto[rng.integers(0, 8, 900)] ^ (rng.random((900, 20)) < 0.1)).astype(np.float64)
    X = (proto[rng.integers(0, 8, 1200)] ^ (rng.random((1200, 20)) < 0.1)).astype(np.float32)
    P[:5] = 0.0  # empty sets: jaccard 0 between two of them, 1 to every other
    X[:3] = 0.0
    m = metric(name)
    idx, dist = query(build(P, m), X, budget_bytes=1 << 20)
    ref_i, ref_d, _, _ = nearest(X, P, m)
    np.testing.assert_array_equal(dist, ref_d)
    np.testing.assert_array_equal(idx, ref_i)


def test_cosine_with_zero_vectors_and_duplicate_pivots():
    rng = np.random.default_rng(1)
    P = np.repeat(rng.normal(size=(30, 4)), 20, axis=0)  # duplicates: some groups stay empty
    P[::50] = 0.0
    X = np.vstack([rng.normal(size=(300, 4)), np.zeros((3, 4))])
    m = metric("cosine")
    idx, dist = query(build(P, m, seed=7), X)
    ref_i, ref_d, _, _ = nearest(X, P, m)
    np.testing.assert_allclose(dist, ref_d, atol=1e-12)
    np.testing.assert_array_equal(idx, ref_i)  # 20 copies of every point: the lowest index wins, as brute force
    np.testing.assert_allclose(dist[-3:], 1.0)


def test_prunes_and_handles_empty_inputs():
    rng = np.random.default_rng(0)
    P = _blobs(rng, 4000, 4, centres=40)
    m = metric("manhattan")
    index = build(P, m)
    assert len(index.pivots) == 63 and index.starts[-1] == 4000
    assert sorted(index.order) == list(range(4000))
    i, d = query(index, np.zeros((0, 4)))
    assert i.shape == (0,) and d.shape == (0,)
    i, d = query(build(np.zeros((0, 4)), m), P[:3])
    assert (i == -1).all() and np.isinf(d).all()
    with pytest.raises(ValueError, match="3 columns, the index 4"):
        query(index, np.zeros((2, 3)))


def test_cosine_over_non_zero_points_searches_the_unit_sphere():
    rng = np.random.default_rng(2)
    P = _blobs(rng, 800, 5) + 0.5
    X = np.vstack([_blobs(rng, 600, 5), np.zeros((2, 5))])
    m = metric("cosine")
    index = build(P, m)
    assert index.euclid is not None  # the Euclidean index over the normalised points
    idx, dist = query(index, X)
    ref_i, ref_d, _, _ = nearest(X, P, m)
    np.testing.assert_allclose(dist, ref_d, rtol=1e-9, atol=1e-12)
    assert (idx == ref_i).all() and (idx[-2:] == 0).all() and (dist[-2:] == 1.0).all()
