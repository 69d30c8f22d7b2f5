"""DBCV (kernels/dbcv.py) against the reference implementation, hdbscan.validity.validity_index."""

import numpy as np
import pytest
from hdbscan.validity import validity_index
from sklearn.cluster import HDBSCAN
from sklearn.datasets import make_blobs, make_moons

from clusterlake.kernels.dbcv import dbcv
from clusterlake.kernels.distances import metric


@pytest.mark.parametrize("case", ["blobs", "moons", "noisy"])
def test_equals_the_reference_on_hdbscan_labels(case):
    rng = np.random.default_rng(0)
    if case == "blobs":
        X, _ = make_blobs(700, n_features=5, centers=4, cluster_std=1.2, random_state=1)
    elif case == "moons":
        X, _ = make_moons(600, noise=0.06, random_state=2)
    else:
        X, _ = make_blobs(500, n_features=3, centers=3, random_state=3)
        X = np.vstack([X, rng.uniform(X.min(0) - 4, X.max(0) + 4, size=(80, 3))])
    labels = HDBSCAN(min_cluster_size=15, copy=True).fit(X).labels_
    assert len(set(labels) - {-1}) >= 2
    assert dbcv(X, labels) == pytest.approx(validity_index(X, labels), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", ["manhattan", "chebyshev"])
def test_equals_the_reference_under_another_distance(name):
    X, y = make_blobs(400, n_features=4, centers=3, random_state=5)
    y[::37] = -1
    ref = validity_index(X, y, metric={"manhattan": "cityblock"}.get(name, name))
    assert dbcv(X, y, metric(name)) == pytest.approx(ref, rel=1e-9)


def test_the_moons_score_higher_as_moons_than_as_kmeans_halves():
    from sklearn.cluster import KMeans

    X, y = make_moons(500, noise=0.05, random_state=0)
    halves = KMeans(2, n_init=4, random_state=0).fit_predict(X)
    assert dbcv(X, y) > 0.2 and dbcv(X, halves) < -0.3  # measured: 0.28 and -0.60


def test_one_cluster_has_no_score():
    assert np.isnan(dbcv(np.random.default_rng(0).normal(size=(50, 2)), np.r_[np.zeros(45), -np.ones(5)]))


def test_high_dimensions_do_not_overflow():
    """(1/d_ij)^768 overflows float64: the log-space core distances stay finite and agree with the
    reference on the dimensions where it does not overflow."""
    rng = np.random.default_rng(3)
    C = rng.normal(size=(3, 768))
    y = np.repeat(np.arange(3), 60)
    X = C[y] + 0.05 * rng.normal(size=(180, 768))
    s = dbcv(X, y, metric("cosine"))
    assert np.isfinite(s) and s > 0.5
    Xl = X[:, :8] * 0.3
    assert dbcv(Xl, y) == pytest.approx(validity_index(Xl, y), rel=1e-9)


def test_a_one_row_cluster_counts_as_noise_and_duplicates_are_fine():
    X, y = make_blobs(300, n_features=3, centers=3, random_state=7)
    y = y.copy()
    y[0] = 5  # a cluster of one row
    X[1:20] = X[1]  # duplicates inside a cluster
    y[1:20] = y[1]
    z = y.copy()
    z[0] = -1
    assert dbcv(X, y) == pytest.approx(dbcv(X, z), rel=1e-12)
    assert np.isfinite(dbcv(X, y))
