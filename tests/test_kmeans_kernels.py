"""Tests of the K-means kernels (pure numpy, no Spark), with scikit-learn as the oracle."""

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chi2_contingency, chisquare

try:
    import clusterlake  # noqa: F401
except ImportError:  # no conftest.py adding lib/ to the path yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from sklearn.cluster import KMeans
from sklearn.cluster import kmeans_plusplus as sk_kmeans_plusplus
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score, pairwise_distances_argmin
from sklearn.metrics.pairwise import euclidean_distances

from clusterlake.kernels.kmeans import (
    LloydResult,
    PartialStats,
    candidate_weights,
    center_shift_sq,
    centers_from_stats,
    kmeans_parallel_sample,
    kmeans_plusplus,
    lloyd,
    nearest,
    normalize_rows,
    partial_stats,
    repair_empty,
    row_sq_norms,
    tolerance,
)

DTYPES = [np.float64, np.float32]
# Relative tolerance of float64 accumulations of float32 / float64 data.
RTOL = {np.float64: 1e-10, np.float32: 1e-6}


def blobs(n=3000, d=7, k=9, seed=0, dtype=np.float64, std=1.0):
    X, y = make_blobs(n_samples=n, n_features=d, centers=k, cluster_std=std,
                      center_box=(-10, 10), random_state=seed)
    return X.astype(dtype), y


def brute(X, C, w=None):
    """float64 brute force: squared distances, labels, sums, counts, inertia."""
    X64 = X.astype(np.float64)
    D = ((X64[:, None, :] - np.asarray(C, np.float64)[None, :, :]) ** 2).sum(-1)
    lab = D.argmin(1)
    d2 = D[np.arange(len(X)), lab]
    w = np.ones(len(X)) if w is None else w
    k = len(C)
    sums = np.zeros((k, X.shape[1]))
    np.add.at(sums, lab, X64 * w[:, None])
    counts = np.bincount(lab, weights=w, minlength=k)
    return D, lab, d2, sums, counts, float(d2 @ w)


def rel(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(np.max(np.abs(b)), 1e-300)


def init_centers(X, k, seed):
    C, _ = sk_kmeans_plusplus(X.astype(np.float64), k, random_state=seed)
    return C


# --------------------------------------------------------------------------- norms, nearest


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_sq_norms_float64(dtype):
    X, _ = blobs(dtype=dtype)
    x_sq = row_sq_norms(X)
    assert x_sq.dtype == np.float64
    np.testing.assert_allclose(x_sq, (X.astype(np.float64) ** 2).sum(1), rtol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_rows", [8192, 257])
def test_nearest_matches_brute_force_and_sklearn(dtype, block_rows):
    X, _ = blobs(dtype=dtype)
    rng = np.random.default_rng(1)
    C = X[rng.choice(len(X), 9, replace=False)].astype(np.float64) + rng.normal(0, 0.5, (9, 7))
    labels, d2 = nearest(X, C, block_rows=block_rows)
    assert labels.dtype == np.int32 and d2.dtype == np.float64
    assert labels.shape == d2.shape == (len(X),)
    D, lab_bf, d2_bf, *_ = brute(X, C)
    np.testing.assert_array_equal(labels, lab_bf)
    np.testing.assert_array_equal(labels, pairwise_distances_argmin(X.astype(np.float64), C))
    assert (d2 >= 0).all()
    scale = row_sq_norms(X) + row_sq_norms(C).max()
    eps = np.finfo(dtype).eps
    assert np.all(np.abs(d2 - d2_bf) <= 8 * X.shape[1] * eps * scale)
    sk = euclidean_distances(X.astype(np.float64), C, squared=True).min(1)
    np.testing.assert_allclose(d2, sk, rtol=1e-3 if dtype == np.float32 else 1e-9, atol=1e-6)
    # x_sq given == computed; block size does not matter beyond round-off.
    labels2, d2b = nearest(X, C, x_sq=row_sq_norms(X), block_rows=len(X))
    np.testing.assert_array_equal(labels2, labels)
    np.testing.assert_allclose(d2b, d2, rtol=RTOL[dtype], atol=1e-9)


def test_nearest_ties_lowest_index_and_empty_input():
    X = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    C = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    labels, d2 = nearest(X, C)
    np.testing.assert_array_equal(labels, [2, 0, 0])
    np.testing.assert_array_equal(d2, [0.0, 0.0, 4.0])
    labels, d2 = nearest(np.empty((0, 2)), C)
    assert labels.shape == (0,) and d2.shape == (0,)


# --------------------------------------------------------------------------- partial_stats


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_partial_stats_matches_brute_force(dtype, weighted):
    X, _ = blobs(dtype=dtype, seed=3)
    rng = np.random.default_rng(2)
    w = rng.uniform(0.1, 3.0, len(X)) if weighted else None
    C = init_centers(X, 9, seed=4)
    D, lab, d2, sums, counts, inertia = brute(X, C, w)
    n_far = 11
    for block_rows in (8192, 500):
        ps = partial_stats(X, C, weights=w, n_far=n_far, block_rows=block_rows)
        assert ps.sums.dtype == ps.counts.dtype == np.float64
        assert rel(ps.sums, sums) < RTOL[dtype]
        assert rel(ps.counts, counts) < 1e-12
        assert ps.inertia == pytest.approx(inertia, rel=RTOL[dtype])
        far = np.lexsort((np.arange(len(X)), -d2))[:n_far]
        np.testing.assert_array_equal(ps.far_points, X[far].astype(np.float64))
        np.testing.assert_allclose(ps.far_d2, d2[far], rtol=1e-5 if dtype == np.float32 else 1e-10)
        assert np.all(np.diff(ps.far_d2) <= 0)
        # x_sq given: same result.
        ps2 = partial_stats(X, C, weights=w, x_sq=row_sq_norms(X), n_far=n_far, block_rows=block_rows)
        np.testing.assert_allclose(ps2.sums, ps.sums, rtol=1e-13)
        assert ps2.inertia == pytest.approx(ps.inertia, rel=1e-12)
    # The labels written to out_labels are those of nearest().
    out = np.empty(len(X), dtype=np.int32)
    partial_stats(X, C, weights=w, out_labels=out)
    np.testing.assert_array_equal(out, lab)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_partial_stats_merge_over_split_equals_whole(dtype, weighted):
    X, _ = blobs(dtype=dtype, seed=5)
    w = np.random.default_rng(3).uniform(0.5, 2.0, len(X)) if weighted else None
    C = init_centers(X, 9, seed=6)
    whole = partial_stats(X, C, weights=w, n_far=7)
    cuts = [0, 1000, 1001, 2200, len(X)]
    merged = PartialStats.zeros(9, X.shape[1])
    for a, b in zip(cuts[:-1], cuts[1:]):
        merged = merged.merge(partial_stats(X[a:b], C, weights=None if w is None else w[a:b], n_far=7))
    assert rel(merged.sums, whole.sums) < 1e-12
    np.testing.assert_allclose(merged.counts, whole.counts, rtol=1e-13)
    assert merged.inertia == pytest.approx(whole.inertia, rel=1e-12)
    np.testing.assert_array_equal(merged.far_points, whole.far_points)
    np.testing.assert_allclose(merged.far_d2, whole.far_d2, rtol=1e-12)
    # Empty block and zeros() are identities.
    empty = partial_stats(X[:0], C, weights=None if w is None else w[:0], n_far=7)
    again = whole.merge(empty)
    np.testing.assert_array_equal(again.sums, whole.sums)
    np.testing.assert_array_equal(again.far_d2, whole.far_d2)


def test_merge_far_lists_ties_are_deterministic():
    a = PartialStats(np.zeros((1, 1)), np.zeros(1), 1.0,
                     far_points=np.array([[1.0], [2.0]]), far_d2=np.array([5.0, 3.0]))
    b = PartialStats(np.zeros((1, 1)), np.zeros(1), 2.0,
                     far_points=np.array([[9.0], [8.0], [7.0]]), far_d2=np.array([5.0, 3.0, 1.0]))
    m = a.merge(b)
    assert m.inertia == 3.0
    np.testing.assert_array_equal(m.far_points[:, 0], [1.0, 9.0, 2.0])
    np.testing.assert_array_equal(m.far_d2, [5.0, 5.0, 3.0])


def test_partial_stats_zero_weight_rows_are_never_far_points():
    X = np.array([[0.0], [1.0], [100.0], [2.0]])
    ps = partial_stats(X, np.array([[0.0]]), weights=np.array([1.0, 1.0, 0.0, 1.0]), n_far=10)
    np.testing.assert_array_equal(ps.far_points[:, 0], [2.0, 1.0, 0.0])
    assert ps.counts[0] == 3.0 and ps.inertia == 5.0


# --------------------------------------------------------------------------- lloyd vs scikit-learn


def _sk_equivalent_tol(X, w, tol):
    """Our relative tol giving the same absolute tolerance as sklearn (unweighted variance)."""
    if w is None or tol == 0:
        return tol
    return tol * tolerance(X, 1.0) / tolerance(X, 1.0, w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lloyd_matches_sklearn(dtype, weighted, seed):
    X, _ = blobs(n=2000, d=5, k=6, seed=seed, dtype=dtype, std=1.8)
    rng = np.random.default_rng(seed)
    w = rng.integers(1, 5, len(X)).astype(np.float64) if weighted else None
    k = 6
    # A random init (not k-means++) so that Lloyd needs several iterations.
    C0 = X[rng.choice(len(X), k, replace=False)].astype(np.float64)
    tol = 1e-4 if seed != 2 else 0.0
    km = KMeans(n_clusters=k, init=C0.astype(dtype), n_init=1, algorithm="lloyd",
                tol=tol, max_iter=300).fit(X, sample_weight=w)
    res = lloyd(X, C0, weights=w, tol=_sk_equivalent_tol(X, w, tol), max_iter=300)
    assert isinstance(res, LloydResult)
    assert res.n_iter > 2 and res.n_repaired == 0
    assert res.centers.dtype == np.float64 and res.labels.dtype == np.int32
    assert rel(res.centers, km.cluster_centers_.astype(np.float64)) < 1e-5
    np.testing.assert_array_equal(res.labels, km.labels_)
    assert res.n_iter == km.n_iter_
    # Exact inertia of sklearn's solution, and sklearn's own (float32-accumulated) value.
    exact = brute(X, km.cluster_centers_.astype(np.float64), w)[5]
    assert res.inertia == pytest.approx(exact, rel=1e-6)
    assert res.inertia == pytest.approx(km.inertia_, rel=1e-6)


def test_lloyd_max_iter_and_tol_zero():
    X, _ = blobs(n=1500, d=4, k=5, seed=7, std=2.5)
    C0 = X[:5].copy()
    res = lloyd(X, C0, max_iter=2)
    km = KMeans(5, init=C0, n_init=1, max_iter=2, algorithm="lloyd").fit(X)
    assert res.n_iter == 2 == km.n_iter_
    assert rel(res.centers, km.cluster_centers_) < 1e-10
    res0 = lloyd(X, C0, tol=0.0)
    km0 = KMeans(5, init=C0, n_init=1, tol=0.0, algorithm="lloyd").fit(X)
    assert res0.n_iter == km0.n_iter_
    assert rel(res0.centers, km0.cluster_centers_) < 1e-10


def test_lloyd_integer_weights_equal_repeated_rows():
    X, _ = blobs(n=800, d=4, k=5, seed=8, std=2.0)
    w = np.random.default_rng(8).integers(1, 4, len(X))
    Xr = np.repeat(X, w, axis=0)
    C0 = X[np.random.default_rng(9).choice(len(X), 5, replace=False)]
    assert tolerance(X, 1e-4, w.astype(float)) == pytest.approx(tolerance(Xr, 1e-4), rel=1e-10)
    a = lloyd(X, C0, weights=w.astype(float))
    b = lloyd(Xr, C0)
    assert a.n_iter == b.n_iter
    assert rel(a.centers, b.centers) < 1e-10
    assert a.inertia == pytest.approx(b.inertia, rel=1e-10)
    np.testing.assert_array_equal(np.repeat(a.labels, w), b.labels)


def test_tolerance_and_center_shift():
    X, _ = blobs(n=500, d=3, seed=10)
    assert tolerance(X, 1e-4) == pytest.approx(1e-4 * np.mean(np.var(X, axis=0)), rel=1e-12)
    assert tolerance(X, 0) == 0
    w = np.random.default_rng(0).uniform(0, 2, len(X))
    mean = w @ X / w.sum()
    var = w @ (X - mean) ** 2 / w.sum()
    assert tolerance(X, 1e-3, w) == pytest.approx(1e-3 * var.mean(), rel=1e-12)
    a, b = np.zeros((2, 2)), np.array([[3.0, 4.0], [1.0, 0.0]])
    assert center_shift_sq(a, b) == 26.0


# --------------------------------------------------------------------------- empty clusters


def test_centers_from_stats_keeps_old_centre_of_empty_cluster():
    sums = np.array([[2.0, 4.0], [0.0, 0.0], [3.0, 0.0]])
    counts = np.array([2.0, 0.0, 3.0])
    old = np.array([[9.0, 9.0], [7.0, 7.0], [5.0, 5.0]])
    C, empty = centers_from_stats(sums, counts, old)
    np.testing.assert_array_equal(C, [[1.0, 2.0], [7.0, 7.0], [1.0, 0.0]])
    np.testing.assert_array_equal(empty, [False, True, False])
    Cs, empty_s = centers_from_stats(sums, counts, old, spherical=True)
    np.testing.assert_allclose(Cs, [[1 / np.sqrt(5), 2 / np.sqrt(5)], [7.0, 7.0], [1.0, 0.0]])
    np.testing.assert_array_equal(empty_s, empty)


def test_repair_empty_farthest_first_skips_coinciding_points():
    centers = np.array([[0.0, 0.0], [5.0, 5.0], [1.0, 1.0], [2.0, 2.0]])
    empty = np.array([False, True, False, True])
    far = np.array([[1.0, 1.0], [8.0, 0.0], [8.0, 0.0], [6.0, 0.0], [4.0, 0.0]])
    far_d2 = np.array([50.0, 40.0, 40.0, 30.0, 20.0])
    C, r = repair_empty(centers, empty, far, far_d2)
    assert r == 2
    # [1, 1] coincides with centre 2; the second [8, 0] with the repaired centre 1.
    np.testing.assert_array_equal(C, [[0.0, 0.0], [8.0, 0.0], [1.0, 1.0], [6.0, 0.0]])
    # Not enough distinct far points: repairs what it can.
    C, r = repair_empty(centers, empty, far[:3], far_d2[:3])
    assert r == 1 and np.array_equal(C[3], centers[3])
    assert repair_empty(centers, empty, far[:0], far_d2[:0])[1] == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_lloyd_repairs_far_away_and_duplicate_centres(dtype):
    X, _ = blobs(n=1200, d=3, k=4, seed=11, dtype=dtype)
    C0 = init_centers(X, 4, seed=11)
    # Centre 1 far from all data, centre 3 a duplicate of centre 0.
    C0[1] = 1e6
    C0[3] = C0[0]
    ps = partial_stats(X, C0, n_far=4)
    C1, empty = centers_from_stats(ps.sums, ps.counts, C0)
    np.testing.assert_array_equal(empty, [False, True, False, True])
    C2, r = repair_empty(C1, empty, ps.far_points, ps.far_d2)
    assert r == 2
    d2 = brute(X, C0)[2]
    order = np.argsort(-d2, kind="stable")
    np.testing.assert_array_equal(C2[1], X[order[0]].astype(np.float64))  # the farthest point
    np.testing.assert_array_equal(C2[3], X[order[1]].astype(np.float64))
    res = lloyd(X, C0)
    assert res.n_repaired >= 2
    assert len(np.unique(res.centers, axis=0)) == 4
    assert np.all(np.bincount(res.labels, minlength=4) > 0)


def test_lloyd_more_empty_clusters_than_far_points():
    # 6 tight groups, 6 identical initial centres: 5 empty clusters, n_far=1 is
    # not enough far points, the repair falls back to all rows.
    X = np.repeat(np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0],
                            [5.0, 5.0], [20.0, 20.0]]), 5, axis=0)
    X = X + np.random.default_rng(0).normal(0, 0.1, X.shape)
    C0 = np.repeat(X[:1], 6, axis=0)
    res = lloyd(X, C0, n_far=1)
    assert len(np.unique(res.centers, axis=0)) == 6
    assert np.all(np.bincount(res.labels, minlength=6) > 0)
    assert res.n_repaired == 5
    # Fewer distinct points than k: warns and returns k centres.
    with pytest.warns(UserWarning, match="fewer distinct points"):
        res = lloyd(np.repeat(np.eye(2), 3, axis=0), np.zeros((3, 2)))
    assert res.centers.shape == (3, 2)


# --------------------------------------------------------------------------- spherical


def test_spherical_lloyd_matches_sklearn_on_normalised_blobs():
    rng = np.random.default_rng(12)
    dirs = normalize_rows(rng.normal(size=(5, 8)))
    X = np.concatenate([d * rng.uniform(0.5, 20, (300, 1)) + rng.normal(0, 0.08, (300, 8)) * 3
                        for d in dirs])
    Xn = normalize_rows(X)
    np.testing.assert_allclose(np.linalg.norm(Xn, axis=1), 1.0, rtol=1e-12)
    C0 = normalize_rows(Xn[rng.choice(len(Xn), 5, replace=False)] + rng.normal(0, 0.05, (5, 8)))
    res = lloyd(Xn, C0, spherical=True)
    km = KMeans(5, init=C0, n_init=1, algorithm="lloyd").fit(Xn)
    assert adjusted_rand_score(km.labels_, res.labels) == 1.0
    np.testing.assert_allclose(np.linalg.norm(res.centers, axis=1), 1.0, rtol=1e-12)
    cos = np.sum(res.centers * normalize_rows(km.cluster_centers_), axis=1)
    assert np.all(cos > 0.999)


def test_normalize_rows():
    X = np.array([[3.0, 4.0], [0.0, 0.0], [3e-200, -4e-200], [3e200, 4e200]], dtype=np.float64)
    np.testing.assert_allclose(normalize_rows(X), [[0.6, 0.8], [0.0, 0.0], [0.6, -0.8], [0.6, 0.8]])
    X32 = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    Xn = normalize_rows(X32)
    assert Xn.dtype == np.float32
    np.testing.assert_allclose(Xn, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-7)


# --------------------------------------------------------------------------- k-means++


def _potential(X, C, w=None):
    return brute(X, C, w)[5]


def _unequal_blobs():
    # Well-separated blobs of unequal sizes and spreads.
    X, y = make_blobs(n_samples=[60, 25, 15], n_features=2, cluster_std=[1.0, 0.5, 2.0],
                      centers=[[0, 0], [30, 0], [0, 40]], random_state=0)
    return X, y


SEEDS = range(300)


def test_kmeans_plusplus_first_and_second_centre_distribution_matches_sklearn():
    X, y = _unequal_blobs()
    ours = np.array([y[kmeans_plusplus(X, 2, random_state=s)[1]] for s in SEEDS])
    theirs = np.array([y[sk_kmeans_plusplus(X, 2, random_state=s)[1]] for s in SEEDS])
    # First centre: uniform over rows -> blob frequencies 60/25/15 %.
    expected = np.array([0.60, 0.25, 0.15]) * len(SEEDS)
    assert chisquare(np.bincount(ours[:, 0], minlength=3), expected).pvalue > 1e-3
    # (first, second) blob pair: same distribution as sklearn's; never the same blob twice here.
    assert np.all(ours[:, 0] != ours[:, 1])
    pair_o = np.bincount(ours[:, 0] * 3 + ours[:, 1], minlength=9)
    pair_t = np.bincount(theirs[:, 0] * 3 + theirs[:, 1], minlength=9)
    keep = (pair_o + pair_t) > 0
    assert chi2_contingency(np.stack([pair_o[keep], pair_t[keep]])).pvalue > 1e-3
    tv = 0.5 * np.abs(pair_o - pair_t).sum() / len(SEEDS)
    assert tv < 0.12


@pytest.mark.parametrize("dtype", DTYPES)
def test_kmeans_plusplus_expected_potential_matches_sklearn(dtype):
    X, _ = make_blobs(n_samples=400, n_features=3, centers=12, cluster_std=1.5,
                      center_box=(-12, 12), random_state=1)
    X = X.astype(dtype)
    k = 8
    pots_o, pots_t = [], []
    for s in range(150):
        C, idx = kmeans_plusplus(X, k, random_state=s)
        assert C.dtype == np.float64 and idx.dtype == np.int64
        np.testing.assert_array_equal(C, X[idx].astype(np.float64))
        assert len(np.unique(idx)) == k
        pots_o.append(_potential(X, C))
        pots_t.append(_potential(X, sk_kmeans_plusplus(X, k, random_state=s)[0]))
    assert np.mean(pots_o) == pytest.approx(np.mean(pots_t), rel=0.05)
    # And clearly better than uniform random seeding (the test is discriminative).
    rng = np.random.default_rng(0)
    pots_r = [_potential(X, X[rng.choice(len(X), k, replace=False)]) for _ in range(150)]
    assert np.mean(pots_o) < 0.8 * np.mean(pots_r)


def test_kmeans_plusplus_integer_weights_behave_like_repeated_rows():
    X, y = _unequal_blobs()
    w = np.random.default_rng(5).integers(1, 5, len(X))
    w[y == 2] *= 3  # the small blob gets heavy
    Xr, yr = np.repeat(X, w, axis=0), np.repeat(y, w)
    wf = w.astype(np.float64)
    ours = np.array([y[kmeans_plusplus(X, 2, weights=wf, random_state=s)[1]] for s in SEEDS])
    rep = np.array([yr[kmeans_plusplus(Xr, 2, random_state=s)[1]] for s in SEEDS])
    skw = np.array([y[sk_kmeans_plusplus(X, 2, sample_weight=wf, random_state=s)[1]] for s in SEEDS])
    blob_w = np.bincount(y, weights=wf) / wf.sum()
    assert chisquare(np.bincount(ours[:, 0], minlength=3), blob_w * len(SEEDS)).pvalue > 1e-3
    pair = [np.bincount(a[:, 0] * 3 + a[:, 1], minlength=9) for a in (ours, rep, skw)]
    keep = sum(pair) > 0
    assert chi2_contingency(np.stack([pair[0][keep], pair[1][keep]])).pvalue > 1e-3
    assert chi2_contingency(np.stack([pair[0][keep], pair[2][keep]])).pvalue > 1e-3
    # Expected weighted potential == expected potential on the repeated rows.
    pw = [_potential(X, kmeans_plusplus(X, 4, weights=wf, random_state=s)[0], wf) for s in SEEDS]
    pr = [_potential(Xr, kmeans_plusplus(Xr, 4, random_state=s)[0]) for s in SEEDS]
    assert np.mean(pw) == pytest.approx(np.mean(pr), rel=0.1)


def test_kmeans_plusplus_zero_weight_rows_are_never_chosen():
    X, _ = _unequal_blobs()
    w = np.zeros(len(X))
    w[::7] = 1.0
    for s in range(30):
        _, idx = kmeans_plusplus(X, 5, weights=w, random_state=s)
        assert np.all(w[idx] > 0) and len(np.unique(idx)) == 5


@pytest.mark.parametrize("dtype", DTYPES)
def test_kmeans_plusplus_duplicates_only_when_fewer_distinct_points(dtype):
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, (4, 3)) * 50 + 1000.0  # far from the origin: float32 cancellation
    X = np.repeat(base, [40, 3, 25, 1], axis=0).astype(dtype)
    rng.shuffle(X)
    for s in range(40):
        C, idx = kmeans_plusplus(X, 4, random_state=s)
        assert len(np.unique(C, axis=0)) == 4
    C, idx = kmeans_plusplus(X, 6, random_state=1, n_local_trials=1)
    assert C.shape == (6, 3) and idx.shape == (6,)
    assert len(np.unique(C, axis=0)) == 4
    np.testing.assert_array_equal(C, X[idx].astype(np.float64))


def test_kmeans_plusplus_accepts_generators_and_is_reproducible():
    X, _ = _unequal_blobs()
    a = kmeans_plusplus(X, 3, random_state=42)[1]
    np.testing.assert_array_equal(a, kmeans_plusplus(X, 3, random_state=42)[1])
    np.testing.assert_array_equal(a, kmeans_plusplus(X, 3, random_state=np.random.default_rng(42))[1])
    assert kmeans_plusplus(X, 3, random_state=np.random.RandomState(0))[1].shape == (3,)


# --------------------------------------------------------------------------- k-means||


def test_kmeans_parallel_sample_selection_frequency():
    n = 12
    X = np.zeros((n, 2))
    d2 = np.array([0.0, 0.1, 0.5, 1.0, 2.0, 4.0, 8.0, 3.0, 3.0, 0.2, 6.0, 1.0])
    w = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 5.0, 1.0, 0.5])
    l, phi = 2.0, 10.0
    p = np.minimum(1.0, l * w * d2 / phi)
    reps = 4000
    freq = np.zeros(n)
    rng = np.random.default_rng(0)
    for _ in range(reps):
        idx = kmeans_parallel_sample(X, d2, w, l, phi, rng)
        assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
        freq[idx] += 1
    freq /= reps
    sd = np.sqrt(p * (1 - p) / reps)
    assert np.all(np.abs(freq - p) <= 5 * sd + 1e-12)
    assert freq[0] == 0 and freq[7] == 0 and freq[6] == 1.0 and freq[10] == 1.0
    # Unweighted == unit weights; phi == 0 selects nothing.
    a = kmeans_parallel_sample(X, d2, None, l, phi, np.random.default_rng(3))
    b = kmeans_parallel_sample(X, d2, np.ones(n), l, phi, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert kmeans_parallel_sample(X, np.zeros(n), None, l, 0.0, rng).size == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_candidate_weights(dtype, weighted):
    X, _ = blobs(n=2000, dtype=dtype, seed=13)
    rng = np.random.default_rng(13)
    w = rng.uniform(0, 3, len(X)) if weighted else None
    cands = X[rng.choice(len(X), 30, replace=False)].astype(np.float64)
    cw = candidate_weights(X, cands, weights=w)
    assert cw.shape == (30,) and cw.dtype == np.float64
    total = len(X) if w is None else w.sum()
    assert cw.sum() == pytest.approx(total, rel=1e-12)
    lab = brute(X, cands)[1]
    np.testing.assert_allclose(cw, np.bincount(lab, weights=w, minlength=30), rtol=1e-12)
    np.testing.assert_allclose(candidate_weights(X, cands, weights=w, x_sq=row_sq_norms(X)), cw)


def test_kmeans_parallel_then_weighted_recluster_end_to_end():
    # The k-means|| pipeline on one block, built only from the kernels.
    X, y = blobs(n=3000, d=4, k=6, seed=14, std=0.7)
    rng = np.random.default_rng(14)
    x_sq = row_sq_norms(X)
    C = X[[rng.integers(len(X))]].astype(np.float64)
    for _ in range(5):
        _, d2 = nearest(X, C, x_sq=x_sq)
        idx = kmeans_parallel_sample(X, d2, None, 12.0, float(d2.sum()), rng)
        C = np.unique(np.concatenate([C, X[idx]]), axis=0)
    cw = candidate_weights(X, C, x_sq=x_sq)
    C0, _ = kmeans_plusplus(C, 6, weights=cw, random_state=0)
    C1 = lloyd(C, C0, weights=cw).centers
    res = lloyd(X, C1)
    assert adjusted_rand_score(y, res.labels) > 0.99
