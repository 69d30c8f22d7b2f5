"""HDBSCAN's backbone (``clusterlake.kernels.mst``, ``clusterlake.kernels.density.hdbscan``), with
scikit-learn's HDBSCAN and scipy's minimum spanning tree on the dense graph as the oracles. No Spark."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse.csgraph import minimum_spanning_tree
from sklearn.cluster import HDBSCAN
from sklearn.datasets import make_blobs, make_moons
from sklearn.metrics import pairwise_distances

from clusterlake.kernels import density as D
from clusterlake.kernels.mst import mutual_reachability_mst


def _core(X, min_samples):
    d = pairwise_distances(X)
    return d, np.sort(d, axis=1)[:, min_samples - 1]


@pytest.mark.parametrize("n,p,min_samples", [(2, 3, 1), (7, 2, 3), (600, 5, 10), (1500, 17, 4)])
def test_the_tree_is_a_minimum_spanning_tree_of_the_mutual_reachability_graph(n, p, min_samples):
    X = np.random.default_rng(n).normal(size=(n, p))
    d, core = _core(X, min_samples)
    a, b, w = mutual_reachability_mst(X, core)
    assert len(a) == n - 1
    mrd = np.maximum(np.maximum(core[:, None], core[None, :]), d)
    np.testing.assert_allclose(w, mrd[a, b], rtol=1e-12)  # the weights are the edges' own
    # a spanning tree (every point reached once, from a point already in the tree) ...
    seen = {0}
    for u, v in zip(a, b):
        assert u in seen and v not in seen
        seen.add(int(v))
    assert len(seen) == n
    # ... of minimum total weight (scipy's MST of the dense graph; no two distinct rows coincide,
    # so its only zeros, the non-edges to itself, are on the diagonal)
    assert w.sum() == pytest.approx(minimum_spanning_tree(mrd).sum(), rel=1e-12)


@pytest.mark.parametrize("case", ["blobs", "moons", "noisy", "duplicates"])
def test_hdbscan_labels_are_scikit_learns(case):
    rng = np.random.default_rng(0)
    if case == "blobs":
        X, _ = make_blobs(3000, n_features=8, centers=7, cluster_std=1.5, random_state=1)
    elif case == "moons":
        X, _ = make_moons(2500, noise=0.07, random_state=2)
    elif case == "noisy":
        X, _ = make_blobs(2000, n_features=3, centers=4, random_state=3)
        X = np.vstack([X, rng.uniform(X.min(0) - 5, X.max(0) + 5, size=(300, 3))])
    else:  # many identical rows: zero core distances, zero weights
        X = np.vstack([np.repeat(rng.normal(size=(20, 4)), 15, axis=0), rng.normal(size=(200, 4)) * 3])
    for min_samples, mcs in [(5, 20), (10, 40)]:
        got, knn = D.hdbscan(X, min_samples, mcs)
        want = D.first_seen_order(HDBSCAN(min_cluster_size=mcs, min_samples=min_samples, copy=True).fit(X).labels_)
        _same_up_to_ties(X, got, want, knn[:, min_samples - 1])
        assert knn.shape == (len(X), max(2, min_samples))
        assert (got >= 0).any()


def test_first_seen_order():
    np.testing.assert_array_equal(D.first_seen_order(np.array([4, -1, 2, 4, 0, 2])), [0, -1, 1, 0, 2, 1])
    assert D.first_seen_order(np.array([-1, -1])).tolist() == [-1, -1]


def _same_up_to_ties(X, got, want, core):
    """Equal labels, except rows tied between clusters: a row whose own core distance exceeds its
    distance to both clusters joins them at the same height, and which one the tree names depends
    on the order of tied edges (scikit-learn's own kd-tree and brute-force trees differ likewise)."""
    bad = np.flatnonzero(got != want)
    assert len(bad) <= max(1, len(X) // 1000), f"{len(bad)} rows differ"
    if not len(bad):
        return
    d = pairwise_distances(X[bad], X)
    for r, i in enumerate(bad):
        mrd = np.maximum(np.maximum(core[i], core), d[r])
        reach = [mrd[(lab == c) & (np.arange(len(X)) != i)].min() for lab, c in ((got, got[i]), (want, want[i]))
                 if c >= 0]
        assert len(reach) == 2 and reach[0] == pytest.approx(reach[1], rel=1e-12) == core[i], i


def test_more_min_samples_than_rows_names_the_setting():
    with pytest.raises(ValueError, match=r"density.min_samples=10 is more than the 4 rows"):
        D.hdbscan(np.zeros((4, 2)), 10, 5)
