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
    on the order of tied edges (scikit-learn's own kd-tree and brute-force trees differ likewise);
    likewise a row that joins the one cluster that names it at its own core distance, the height
    at which the tree may equally drop it as noise."""
    bad = np.flatnonzero(got != want)
    assert len(bad) <= max(1, len(X) // 1000), f"{len(bad)} rows differ"
    if not len(bad):
        return
    d = pairwise_distances(X[bad], X)
    for r, i in enumerate(bad):
        mrd = np.maximum(np.maximum(core[i], core), d[r])
        reach = [mrd[(lab == c) & (np.arange(len(X)) != i)].min() for lab, c in ((got, got[i]), (want, want[i]))
                 if c >= 0]
        assert len(reach) >= 1 and all(v == pytest.approx(core[i], rel=1e-12) for v in reach), i


def test_more_min_samples_than_rows_names_the_setting():
    with pytest.raises(ValueError, match=r"density.min_samples=10 is more than the 4 rows"):
        D.hdbscan(np.zeros((4, 2)), 10, 5)


# --------------------------------------------------------------------------- Borůvka

def _dense_mst_weight(X, core):
    from scipy.spatial.distance import cdist

    d = cdist(X, X)  # from the differences (scikit-learn's expansion leaves ~1e-8 between duplicates)
    mrd = np.maximum(np.maximum(core[:, None], core[None, :]), d) + 1.0  # a dense graph's zeros are
    np.fill_diagonal(mrd, 0.0)  # non-edges: every weight shifted by 1 (the same tree), but the diagonal
    return minimum_spanning_tree(mrd).sum() - (len(X) - 1)


def _boruvka_cases():
    rng = np.random.default_rng(7)
    yield "blobs", make_blobs(2500, n_features=6, centers=9, cluster_std=0.8, random_state=5)[0]
    yield "moons", make_moons(2000, noise=0.05, random_state=6)[0]
    yield "uniform", rng.uniform(size=(2000, 3))
    yield "duplicates", np.vstack([np.repeat(rng.normal(size=(40, 4)), 25, axis=0), rng.normal(size=(600, 4)) * 3])
    yield "grid", np.array(np.meshgrid(*[np.arange(7.0)] * 4)).reshape(4, -1).T  # every weight tied
    yield "one dimension", rng.exponential(size=(1500, 1))
    yield "identical rows", np.ones((300, 2))
    yield "two rows", np.array([[0.0, 1.0], [3.0, 5.0]])


@pytest.mark.parametrize("case,X", list(_boruvka_cases()), ids=[c for c, _ in _boruvka_cases()])
@pytest.mark.parametrize("with_neighbours", [True, False])
def test_boruvka_finds_a_minimum_spanning_tree(case, X, with_neighbours):
    """Borůvka's rounds over the cells: a spanning tree of the mutual-reachability graph, its
    weights the edges' own, of the minimum total weight (scipy's MST of the dense graph), with
    or without the core neighbours as known edges, with few cells or many."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from clusterlake.kernels.boruvka import boruvka_mst
    from clusterlake.kernels.knn import self_knn
    from clusterlake.kernels.neighbors import build

    n, ms = len(X), min(5, len(X))
    knn, rows, _ = self_knn(X, ms)
    core = knn[:, ms - 1]
    for groups in (None, 3):
        a, b, w = boruvka_mst(X, core, rows if with_neighbours else None, build(X, n_groups=groups))
        assert len(a) == n - 1
        g = coo_matrix((np.ones(n - 1), (a, b)), shape=(n, n))
        assert connected_components(g, directed=False)[0] == 1  # n - 1 edges joining all: a tree
        d = np.sqrt(((X[a] - X[b]) ** 2).sum(axis=1))
        np.testing.assert_allclose(w, np.maximum(np.maximum(core[a], core[b]), d), rtol=1e-12)
        assert w.sum() == pytest.approx(_dense_mst_weight(X, core), rel=1e-12, abs=1e-12)


def test_hdbscan_on_a_larger_sample_takes_borůvka_and_agrees_with_scikit_learn(monkeypatch):
    """From 5,000 rows the density pass's tree is Borůvka's: scikit-learn's labels up to ties."""
    from clusterlake.kernels import boruvka

    calls = []
    real = boruvka.boruvka_mst
    monkeypatch.setattr(boruvka, "boruvka_mst", lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = np.random.default_rng(14)
    X, _ = make_blobs(5200, n_features=5, centers=6, cluster_std=1.2, random_state=14)
    X = np.vstack([X, rng.uniform(X.min(0), X.max(0), size=(300, 5))])
    got, knn = D.hdbscan(X, 8, 40)
    assert calls == [1]
    want = D.first_seen_order(HDBSCAN(min_cluster_size=40, min_samples=8, copy=True).fit(X).labels_)
    _same_up_to_ties(X, got, want, knn[:, 7])
    assert len(np.unique(got[got >= 0])) >= 4


@pytest.mark.parametrize("block", [1000, 20_000])
def test_boruvka_and_the_neighbour_search_in_small_blocks(monkeypatch, block):
    """A cell of many identical rows is searched a block of rows at a time: the dense graph's
    tree weight and the exact neighbours with blocks of 1,000 distances (one row a block) and
    20,000 (some dozen rows, the last block shorter)."""
    from scipy.spatial.distance import cdist

    from clusterlake.kernels import boruvka, knn
    from clusterlake.kernels.neighbors import build

    rng = np.random.default_rng(5)
    X = np.vstack([np.repeat(rng.normal(size=(3, 4)), 700, axis=0), rng.normal(size=(400, 4)) * 2])
    index = build(X, n_groups=8)
    want_d = np.sort(cdist(X, X), axis=1)[:, :6]
    monkeypatch.setattr(knn, "_BLOCK", block)
    monkeypatch.setattr(boruvka, "_BLOCK", block)
    cells = knn._Cells(index)
    rows, d, j, _ = zip(*(knn._search(cells, g, 6) for g in range(index.n_groups)))
    got, near = np.empty_like(want_d), np.empty(want_d.shape, np.int64)
    got[index.order[np.concatenate(rows)]] = np.concatenate(d)
    near[index.order[np.concatenate(rows)]] = index.order[np.concatenate(j)]
    np.testing.assert_allclose(got, want_d, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.sqrt(((X[:, None, :] - X[near]) ** 2).sum(-1)), got, rtol=1e-12, atol=1e-12)
    core = want_d[:, 4]
    _, _, w = boruvka.boruvka_mst(X, core, None, index)
    assert w.sum() == pytest.approx(_dense_mst_weight(X, core), rel=1e-12, abs=1e-12)
