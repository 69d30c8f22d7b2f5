"""k-medoids (FasterPAM) against the reference implementation (the ``kmedoids`` package, GPL, a
test-only oracle), against brute force (no single swap lowers the loss) and its silhouette
against scikit-learn's."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.metrics import silhouette_score

from clusterlake.kernels import kmedoids as K


def _blobs(n: int, k: int, d: int = 4, seed: int = 0, labels: bool = False):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=6.0, size=(k, d))
    y = rng.integers(0, k, n)
    X = centers[y] + rng.normal(size=(n, d))
    return (X, y) if labels else X


@pytest.mark.parametrize("metric_name", ["euclidean", "cityblock", "chebyshev"])
@pytest.mark.parametrize("seed", [0, 1])
def test_fasterpam_equals_the_reference_implementation(metric_name, seed):
    ref = pytest.importorskip("kmedoids")
    X = _blobs(400, 6, seed=seed)
    D = cdist(X, X, metric_name)
    init = K.init_medoids(D, 6, seed)
    want = ref.fasterpam(D, init.astype(np.uint64).copy(), max_iter=100, n_cpu=1)
    got = K.fasterpam(D, init)
    np.testing.assert_array_equal(got.medoids, np.asarray(want.medoids, dtype=np.int64))
    np.testing.assert_array_equal(got.labels, np.asarray(want.labels, dtype=np.int64))
    assert got.loss == pytest.approx(float(want.loss), rel=1e-12)
    assert got.n_swap == int(want.n_swap) and got.n_iter == int(want.n_iter)


def test_fasterpam_from_a_poor_start_equals_the_reference():
    ref = pytest.importorskip("kmedoids")
    X = _blobs(300, 5, seed=4)
    D = cdist(X, X)
    init = np.arange(5)  # the first rows: many swaps
    want = ref.fasterpam(D, init.astype(np.uint64).copy(), max_iter=100, n_cpu=1)
    got = K.fasterpam(D, init)
    np.testing.assert_array_equal(got.medoids, np.asarray(want.medoids, dtype=np.int64))
    assert got.loss == pytest.approx(float(want.loss), rel=1e-12) and got.n_swap > 5


def test_no_single_swap_lowers_the_loss():
    X = _blobs(60, 3, d=2, seed=2)
    D = cdist(X, X, "cityblock")
    f = K.fit(D, 3, seed=5)
    assert f.loss == pytest.approx(D[:, f.medoids].min(axis=1).sum(), rel=1e-12)
    np.testing.assert_array_equal(f.labels, np.argmin(D[:, f.medoids], axis=1))
    for b, j in itertools.product(range(3), range(60)):
        if j in f.medoids:
            continue
        med = f.medoids.copy()
        med[b] = j
        assert D[:, med].min(axis=1).sum() >= f.loss - 1e-9


def test_fit_is_deterministic_for_a_seed_and_finds_planted_medoids():
    X, y = _blobs(500, 4, seed=8, labels=True)
    D = cdist(X, X)
    a, b = K.fit(D, 4, seed=3), K.fit(D, 4, seed=3)
    np.testing.assert_array_equal(a.medoids, b.medoids)
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(y, a.labels) > 0.95  # the planted blobs
    assert a.converged and K.fit(D, 4, seed=3, max_iter=1).converged is False


def test_bad_arguments():
    D = cdist(np.eye(4), np.eye(4))
    with pytest.raises(ValueError, match="distinct rows"):
        K.fasterpam(D, [0, 0])
    with pytest.raises(ValueError, match="square"):
        K.fasterpam(D[:3], [0])
    with pytest.raises(ValueError, match="k=5"):
        K.init_medoids(D, 5, 0)


@pytest.mark.parametrize("metric_name", ["euclidean", "cityblock", "cosine"])
def test_silhouette_equals_sklearn_precomputed(metric_name):
    X = _blobs(200, 4, seed=6)
    D = cdist(X, X, metric_name)
    labels = K.fit(D, 4, seed=0).labels
    labels[:3] = 9  # a cluster of 3; and a singleton below
    labels[5] = 11
    assert K.silhouette(D, labels) == pytest.approx(silhouette_score(D, labels, metric="precomputed"), abs=1e-12)
    assert np.isnan(K.silhouette(D, np.zeros(200)))


def test_choose_k_by_the_silhouette_under_the_distance():
    X = _blobs(300, 5, seed=9)
    D = cdist(X, X, "cityblock")
    k, scores, fits = K.choose_k(D, range(2, 9), seed=1)
    assert k == 5 and set(scores) == set(range(2, 9))
    assert scores[5] == max(scores.values())
    assert scores[5] == pytest.approx(silhouette_score(D, fits[5].labels, metric="precomputed"), abs=1e-12)


def test_float32_distances_give_the_float64_medoids():
    from clusterlake.kernels.distances import metric, pairwise

    X = _blobs(400, 6, seed=10)
    m = metric("manhattan")
    D64, D32 = pairwise(X, X, m), pairwise(X, X, m, dtype=np.float32)
    assert D32.dtype == np.float32
    a, b = K.fit(D64, 6, seed=2), K.fit(D32, 6, seed=2)
    np.testing.assert_array_equal(a.medoids, b.medoids)
    assert b.loss == pytest.approx(a.loss, rel=1e-6)


def test_silhouette_samples_equal_sklearn_precomputed():
    from sklearn.metrics import silhouette_samples

    X = _blobs(150, 3, seed=12)
    D = cdist(X, X, "chebyshev")
    labels = K.fit(D, 3, seed=0).labels
    np.testing.assert_allclose(K.silhouette_samples(D, labels), silhouette_samples(D, labels, metric="precomputed"),
                               atol=1e-12)
    assert K.silhouette_samples(D, np.zeros(150)) is None
    from clusterlake.kernels.distances import metric

    np.testing.assert_allclose(K.silhouette_samples_of(X, labels, metric("chebyshev")),
                               silhouette_samples(D, labels, metric="precomputed"), atol=1e-12)
