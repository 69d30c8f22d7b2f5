"""A custom distance (a vectorised callable, issue 23) through the kernels: equal to the named
distance it re-implements, its output checked, never saved."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from clusterlake.kernels import density as Dk
from clusterlake.kernels import hierarchy as Hk
from clusterlake.kernels import kmedoids as K
from clusterlake.kernels.distances import custom, exact, metric, nearest, pairwise, to_spec
from clusterlake.kernels.metric_index import build, query

L1 = custom(lambda A, B: cdist(A, B, "cityblock"), "my_l1")
MANHATTAN = metric("manhattan")


def _blobs(seed, n=900, d=4):
    rng = np.random.default_rng(seed)
    C = rng.normal(scale=6.0, size=(5, d))
    return C[rng.integers(0, 5, n)] + rng.laplace(size=(n, d))


def test_the_kernels_measure_with_it():
    X, Y = _blobs(0, 300), _blobs(1, 200)
    np.testing.assert_array_equal(pairwise(X, Y, L1), pairwise(X, Y, MANHATTAN))
    np.testing.assert_array_equal(exact(X, Y, L1), exact(X, Y, MANHATTAN))
    for a, b in zip(nearest(X, Y[:7], L1), nearest(X, Y[:7], MANHATTAN)):
        np.testing.assert_array_equal(a, b)
    i, d = query(build(Y, L1), X, budget_bytes=1 << 16)  # every point measured, in blocks
    np.testing.assert_array_equal(i, nearest(X, Y, MANHATTAN)[0])


def test_kmedoids_density_and_hierarchy_equal_the_named_distance():
    X = _blobs(2)
    D1, D2 = pairwise(X, X, L1), pairwise(X, X, MANHATTAN)
    assert K.fit(D1, 5, 0, 100).medoids.tolist() == K.fit(D2, 5, 0, 100).medoids.tolist()
    for algorithm, ms, mcs in (("hdbscan", 8, 15), ("dbscan", 8, None)):
        a = Dk.fit_sample(X[:600], algorithm, None, ms, mcs, metric=L1)
        b = Dk.fit_sample(X[:600], algorithm, None, ms, mcs, metric=MANHATTAN)
        np.testing.assert_array_equal(a.sample_labels, b.sample_labels)
        np.testing.assert_array_equal(Dk.extend(X[600:], a)[0], Dk.extend(X[600:], b)[0])
    for method in ("average", "single"):
        a, b = Hk.fit_sample(X[:300], method, (3, 5), metric=L1), Hk.fit_sample(X[:300], method, (3, 5), metric=MANHATTAN)
        np.testing.assert_allclose(a.linkage, b.linkage)
        np.testing.assert_array_equal(Hk.extend(X[300:], a)[5], Hk.extend(X[300:], b)[5])


@pytest.mark.parametrize("fn,text", [
    (lambda A, B: cdist(A, B)[:, :1], r"returned shape \(5, 1\) for 5 x 3 rows"),
    (lambda A, B: -cdist(A, B) - 1, "returned negative values"),
    (lambda A, B: np.full((len(A), len(B)), np.nan), "returned non-finite values"),
])
def test_a_wrong_answer_is_named(fn, text):
    with pytest.raises(ValueError, match=text):
        pairwise(np.ones((5, 2)), np.zeros((3, 2)), custom(fn, "bad"))


def test_it_is_code_not_data():
    with pytest.raises(ValueError, match="'my_l1' is code and cannot be saved"):
        to_spec(L1)
    with pytest.raises(ValueError, match="cannot take the name of the named distance 'cosine'"):
        custom(lambda A, B: cdist(A, B), "cosine")
    with pytest.raises(ValueError, match="must be a callable"):
        custom("cityblock")
    with pytest.raises(ValueError, match="ward linkage minimises squared euclidean"):
        Hk.fit_sample(_blobs(3, 50), "ward", (3,), metric=L1)
