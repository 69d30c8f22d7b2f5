"""Hierarchical clustering of a sample and Ward over weighted centroids
(``clusterlake.kernels.hierarchy``); scipy is the oracle. No Spark."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster.hierarchy import linkage
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from clusterlake.kernels import hierarchy as H


@pytest.fixture(scope="module")
def nested_blobs():
    """4 groups of 4 tight blobs each: a 4-level and a 16-level structure."""
    rng = np.random.default_rng(0)
    groups = rng.uniform(-60, 60, size=(4, 3))
    centers = np.concatenate([g + rng.uniform(-8, 8, size=(4, 3)) for g in groups])
    X, y16 = make_blobs(n_samples=3200, centers=centers, cluster_std=0.6, random_state=1)
    return X, y16, y16 // 4


@pytest.mark.parametrize("method", H.LINKAGES)
def test_levels_are_nested_and_the_extension_reproduces_the_sample(nested_blobs, method):
    X, y16, y4 = nested_blobs
    idx = np.random.default_rng(2).choice(len(X), 800, replace=False)
    model = H.fit_sample(X[idx], method, levels=[16, 4])
    assert model.levels == [4, 16] and model.linkage.shape == (799, 4)
    l4, l16 = model.sample_labels[4], model.sample_labels[16]
    assert len(np.unique(l4)) == 4 and len(np.unique(l16)) == 16
    for c in np.unique(l16):  # each level-16 cluster inside one level-4 cluster
        assert len(np.unique(l4[l16 == c])) == 1
    back = H.extend(X[idx], model)
    for lv in model.levels:
        np.testing.assert_array_equal(back[lv], model.sample_labels[lv])
    full = H.extend(X, model)
    if method != "single":  # single linkage chains; the others find the planted structure
        assert adjusted_rand_score(y4, full[4]) > 0.99 and adjusted_rand_score(y16, full[16]) > 0.99


def test_weighted_ward_equals_scipy_ward_on_replicated_points():
    rng = np.random.default_rng(3)
    C = rng.normal(size=(7, 2)) * 5
    sizes = rng.integers(1, 6, size=7)
    Z = H.weighted_ward(C, sizes)
    ref = linkage(np.repeat(C, sizes, axis=0), method="ward")
    top = ref[ref[:, 2] > 1e-9]  # the merges between distinct centroids
    np.testing.assert_allclose(Z[:, 2], top[:, 2], rtol=1e-9)
    np.testing.assert_allclose(Z[:, 3], top[:, 3])
    # equal weights: exactly scipy's ward on the centroids
    np.testing.assert_allclose(H.weighted_ward(C, np.ones(7)), linkage(C, method="ward"), rtol=1e-9)


def _greedy_ward(C, w):
    """The version the row minima replaced: the cheapest merge by a full argmin of the k x k cost
    matrix every time (ties: first row, then first column), O(k^3): the oracle."""
    C, w = np.asarray(C, float), np.maximum(np.asarray(w, float), 1e-12)
    k = len(C)
    cent, wt = np.zeros((2 * k - 1, C.shape[1])), np.zeros(2 * k - 1)
    cent[:k], wt[:k] = C, w
    slot, active = np.arange(k), np.ones(k, bool)
    sq = (C * C).sum(1)
    cost = (w[:, None] * w[None, :]) / (w[:, None] + w[None, :]) * np.maximum(
        sq[:, None] + sq[None, :] - 2.0 * (C @ C.T), 0.0)
    np.fill_diagonal(cost, np.inf)
    Z = np.zeros((k - 1, 4))
    for step in range(k - 1):
        a, b = np.unravel_index(np.argmin(cost), cost.shape)
        a, b = (b, a) if slot[a] > slot[b] else (a, b)
        ia, ib = slot[a], slot[b]
        nw = wt[ia] + wt[ib]
        diff = cent[ia] - cent[ib]
        Z[step] = [ia, ib, np.sqrt(2.0 * wt[ia] * wt[ib] / nw * float(diff @ diff)), nw]
        cent[k + step], wt[k + step] = (wt[ia] * cent[ia] + wt[ib] * cent[ib]) / nw, nw
        slot[a], active[b] = k + step, False
        cost[b, :] = cost[:, b] = np.inf
        others = np.flatnonzero(active)
        others = others[others != a]
        dv = cent[slot[others]] - cent[k + step]
        ww = wt[slot[others]]
        cost[a, others] = cost[others, a] = ww * nw / (ww + nw) * np.einsum("ij,ij->i", dv, dv)
        cost[a, a] = np.inf
    return Z


@pytest.mark.parametrize("grid", [False, True])
def test_weighted_ward_equals_the_plain_greedy(grid):
    rng = np.random.default_rng(11)
    if grid:  # points on a small grid, equal weights: many exactly equal costs, ties must go the same way
        C, w = rng.integers(0, 5, size=(60, 2)).astype(float), np.ones(60)
    else:
        C, w = rng.normal(size=(60, 5)), rng.integers(1, 50, size=60).astype(float)
    Z = H.weighted_ward(C, w)
    ref = _greedy_ward(C, w)
    np.testing.assert_array_equal(Z[:, [0, 1]], ref[:, [0, 1]])
    np.testing.assert_allclose(Z[:, 2:], ref[:, 2:], rtol=1e-9)


def test_weighted_ward_of_many_centroids_is_scipys_ward():
    C = np.random.default_rng(2).normal(size=(1500, 8))
    np.testing.assert_allclose(H.weighted_ward(C, np.ones(1500)), linkage(C, method="ward"), rtol=1e-9)


def test_parents_from_linkage():
    Z = H.weighted_ward(np.array([[0.0], [1.0], [10.0]]), np.array([1, 1, 1]))
    np.testing.assert_array_equal(H.parents_from_linkage(Z, 3), [3, 3, 4, 4, -1])


def test_bad_levels_and_too_small_samples_are_refused():
    X = np.random.default_rng(0).normal(size=(10, 2))
    with pytest.raises(ValueError, match="fewer than the finest level 16"):
        H.fit_sample(X, "ward", levels=[4, 16])
    with pytest.raises(ValueError, match="unknown linkage"):
        H.fit_sample(X, "centroid", levels=[2])
    assert H.linkage_bytes(20_000) == 2 * 8 * 20_000 * 19_999 // 2
    assert H.linkage_bytes(20_000, "ward", d=10) < 10 << 20  # no distance matrix


@pytest.mark.parametrize("method", H.LINKAGES)
def test_the_linkage_is_scipys(method):
    X = np.random.default_rng(5).normal(size=(400, 6))
    model = H.fit_sample(X, method, levels=[3, 9])
    ref = linkage(X, method=method)
    np.testing.assert_allclose(model.linkage[:, 2], ref[:, 2], rtol=1e-9)
    np.testing.assert_array_equal(model.linkage[:, [0, 1, 3]], ref[:, [0, 1, 3]])


def test_centroid_tree_centres_are_the_means_of_their_rows():
    rng = np.random.default_rng(7)
    C = rng.normal(size=(5, 3)) * 10
    sizes = np.array([3, 1, 4, 1, 5])
    tree = H.centroid_tree(C, sizes)
    rows = np.repeat(C, sizes, axis=0)
    owner = np.repeat(np.arange(5), sizes)
    parent = tree["parent_ids"]
    assert list(tree["node_ids"]) == list(range(9)) and (parent == -1).sum() == 1 and parent[8] == -1
    for node in range(5, 9):  # an inner node's centre is the mean of the rows of its leaves
        leaves = [leaf for leaf in range(5) if _is_ancestor(parent, node, leaf)]
        np.testing.assert_allclose(tree["centers"][node], rows[np.isin(owner, leaves)].mean(0), rtol=1e-12)
    np.testing.assert_allclose(tree["centers"][8], rows.mean(0), rtol=1e-12)


def _is_ancestor(parent, node, leaf):
    while leaf != -1:
        if leaf == node:
            return True
        leaf = parent[leaf]
    return False


@pytest.mark.parametrize("method", H.LINKAGES)
def test_cut_is_scipys_cut_tree_and_exact_with_ties(method):
    from scipy.cluster.hierarchy import cut_tree

    rng = np.random.default_rng(8)
    X = rng.normal(size=(500, 4))
    Z = linkage(X, method)
    ref = cut_tree(Z, n_clusters=[1, 2, 7, 60])
    for j, level in enumerate([1, 2, 7, 60]):
        assert adjusted_rand_score(ref[:, j], H.cut(Z, level)) == 1.0 or level == 1
        assert len(np.unique(H.cut(Z, level))) == level
    # tied heights (a grid of duplicates): still exactly the requested number, and nested
    G = np.repeat(rng.integers(0, 5, size=(120, 2)).astype(float), 3, axis=0)
    Zg = linkage(G, method)
    c8, c30 = H.cut(Zg, 8), H.cut(Zg, 30)
    assert len(np.unique(c8)) == 8 and len(np.unique(c30)) == 30
    assert all(len(np.unique(c8[c30 == c])) == 1 for c in range(30))
