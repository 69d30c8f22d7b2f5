"""kernels/neighbors: the pruned exact nearest-neighbour index against brute force (no Spark)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.datasets import make_blobs, make_moons

from clusterlake.kernels import neighbors as NB


def brute(P, Q):
    """Exact nearest distances, from the differences in float64 (no GEMM expansion)."""
    P = np.asarray(P, dtype=np.float64)
    Q = np.asarray(Q, dtype=np.float64)
    out = np.empty(len(Q))
    step = max(1, (1 << 21) // max(1, P.size))
    for s in range(0, len(Q), step):
        diff = Q[s:s + step, None, :] - P[None, :, :]
        out[s:s + step] = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff).min(axis=1))
    return out


def check(P, Q, index=None, **kw):
    """Query ``Q`` against ``P`` and compare with brute force; returns (idx, dist)."""
    index = NB.build(P, **kw) if index is None else index
    idx, dist = NB.query(index, Q)
    assert idx.dtype == np.int64 and dist.dtype == np.float64
    assert idx.shape == dist.shape == (len(Q),)
    ref = brute(P, Q)
    np.testing.assert_allclose(dist, ref, rtol=1e-9, atol=0)
    # the returned index is a nearest point and dist is its distance, recomputed exactly
    P64 = np.asarray(P, dtype=np.float64)
    Q64 = np.asarray(Q, dtype=np.float64)
    assert ((idx >= 0) & (idx < len(P))).all()
    again = np.sqrt(((Q64 - P64[idx]) ** 2).sum(axis=1))
    np.testing.assert_allclose(dist, again, rtol=1e-14, atol=0)
    return idx, dist


def blobs16(m, n, seed=0):
    X, _ = make_blobs(n_samples=m + n, n_features=16, centers=6, cluster_std=1.0,
                      center_box=(-20, 20), random_state=seed)
    rng = np.random.default_rng(seed)
    noise = rng.uniform(-30, 30, size=(n // 10, 16))
    return X[:m], np.vstack([X[m:], noise, X[:50]])  # queries: new rows, noise, copies of points


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("n_groups", [None, 7, 60])
def test_gaussian_blobs_16d(n_groups):
    P, Q = blobs16(3000, 1500)
    idx, dist = check(P, Q, n_groups=n_groups)
    assert (dist[-50:] == 0).all()  # copies of indexed points


def test_uniform_5d():
    rng = np.random.default_rng(1)
    P = rng.uniform(size=(2000, 5))
    Q = rng.uniform(-0.2, 1.2, size=(1500, 5))
    check(P, Q)
    check(P, Q, n_groups=200)


def test_moons_2d():
    P, _ = make_moons(n_samples=2000, noise=0.05, random_state=0)
    Q, _ = make_moons(n_samples=1000, noise=0.1, random_state=1)
    g = np.linspace(-2, 3, 30)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    check(P, np.vstack([Q, grid, P[:100]]))


def test_duplicate_points():
    rng = np.random.default_rng(2)
    U = rng.normal(size=(40, 8))
    P = np.repeat(U, 25, axis=0)[rng.permutation(1000)]
    Q = np.vstack([U, rng.normal(size=(300, 8))])
    idx, dist = check(P, Q, n_groups=30)
    assert (dist[:40] == 0).all()
    # all points identical: one group
    P1 = np.tile(U[:1], (500, 1))
    index = NB.build(P1, n_groups=20)
    assert index.n_groups == 1
    check(P1, Q, index=index)


@pytest.mark.parametrize("m", [1, 2])
def test_tiny_index(m):
    rng = np.random.default_rng(3)
    P = rng.normal(size=(m, 4))
    Q = rng.normal(size=(200, 4))
    index = NB.build(P, n_groups=m)
    assert index.n_groups == m
    check(P, Q, index=index)
    check(P, Q)  # default n_groups
    index = NB.build(P, n_groups=5)  # n_groups > m is clipped
    assert index.n_groups == m
    check(P, np.vstack([P, Q]), index=index)


@pytest.mark.parametrize("n_groups", [1, "m"])
def test_extreme_group_counts(n_groups):
    P, Q = blobs16(300, 400, seed=4)
    k = len(P) if n_groups == "m" else n_groups
    index = NB.build(P, n_groups=k)
    assert index.n_groups == k
    if n_groups == "m":
        assert (index.radii == 0).all()
    check(P, Q, index=index)


def test_no_query_rows_and_empty_index():
    P, _ = blobs16(500, 0)
    idx, dist = NB.query(NB.build(P), np.zeros((0, 16)))
    assert idx.shape == dist.shape == (0,) and idx.dtype == np.int64 and dist.dtype == np.float64
    empty = NB.build(np.zeros((0, 16)))
    assert empty.n_points == 0 and empty.n_groups == 0
    idx, dist = NB.query(empty, P[:10])
    assert (idx == -1).all() and np.isinf(dist).all()
    idx, dist = NB.query(empty, np.zeros((0, 16)))
    assert idx.shape == (0,)


def test_float32_input():
    P, Q = blobs16(2000, 800, seed=5)
    P32, Q32 = P.astype(np.float32), Q.astype(np.float32)
    index = NB.build(P32)
    assert index.points.dtype == np.float64
    check(P32, Q32, index=index)  # exact for the float32 values (compared in float64)
    check(P, Q32, index=NB.build(P))  # float32 rows against a float64 index


def test_large_offset_and_far_rows():
    # The frame shift and the group-local ranking keep the result exact far from the origin.
    P, Q = blobs16(2000, 500, seed=6)
    check(P + 1e6, Q + 1e6)
    far = np.random.default_rng(6).normal(size=(100, 16)) * 1e4
    check(P, far)


def test_small_budget_many_blocks():
    P, Q = blobs16(2000, 1500, seed=7)
    index = NB.build(P)
    idx, dist = NB.query(index, Q)
    st = {}
    idx2, dist2 = NB.query(index, Q, budget_bytes=1 << 16, _stats=st)
    assert st["blocks"] > 5
    np.testing.assert_array_equal(dist, dist2)
    check(P, Q, index=index)


def test_deterministic_build_and_layout():
    P, _ = blobs16(1500, 0, seed=8)
    a, b = NB.build(P, seed=3), NB.build(P, seed=3)
    for f in ("points", "order", "starts", "centers", "radii", "slack", "shift"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    # layout: points[i] == original[order[i]], contiguous groups, radii cover the members
    np.testing.assert_array_equal(a.points, P[a.order])
    assert np.array_equal(np.sort(a.order), np.arange(len(P)))
    assert a.starts[0] == 0 and a.starts[-1] == len(P) and (np.diff(a.starts) > 0).all()
    grp = np.repeat(np.arange(a.n_groups), np.diff(a.starts))
    r = np.sqrt(((a.points - a.centers[grp]) ** 2).sum(1))
    assert (r <= a.radii[grp] * (1 + 1e-9) + 1e-12).all()
    # every member is (up to the slack) nearest to its own centre: the groups are Voronoi cells
    d2 = ((a.points[:, None, :] - a.centers[None]) ** 2).sum(-1)
    assert (d2[np.arange(len(P)), grp] <= d2.min(1) + a.slack[grp] + 1e-9).all()


def test_pickle_round_trip():
    P, Q = blobs16(2000, 600, seed=9)
    index = NB.build(P)
    idx, dist = NB.query(index, Q)  # fills the derived-array cache
    assert index._cache
    blob = pickle.dumps(index)
    assert len(blob) < 2 * (P.nbytes + index.order.nbytes + index.centers.nbytes) + 10_000  # cache not pickled
    clone = pickle.loads(blob)
    assert not clone._cache
    idx2, dist2 = NB.query(clone, Q)
    np.testing.assert_array_equal(idx, idx2)
    np.testing.assert_array_equal(dist, dist2)


def test_bad_shapes():
    index = NB.build(np.zeros((5, 3)) + np.arange(5)[:, None])
    with pytest.raises(ValueError):
        NB.query(index, np.zeros((4, 2)))
    with pytest.raises(ValueError):
        NB.build(np.zeros(5))
