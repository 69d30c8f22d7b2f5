"""Tests of the pure-numpy kernels (no Spark), with scikit-learn as the oracle."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import cdist

try:
    import clusterlake  # noqa: F401
except ImportError:  # no conftest.py adding lib/ to the path yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))

from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    pairwise_distances_argmin,
)
from sklearn.metrics.cluster import contingency_matrix
from sklearn.metrics.pairwise import euclidean_distances

from clusterlake.kernels.distance import assign
from clusterlake.kernels.metrics import (
    adjusted_rand_from_contingency,
    calinski_harabasz_from_stats,
    davies_bouldin_from_stats,
    normalized_mutual_info_from_contingency,
    within_ss_from_center_moments,
)
from clusterlake.kernels.stats import cluster_moments, cluster_sums, merge_moments


# --------------------------------------------------------------------------- assign


def _random_problem(seed, n=700, p=6, k=9, dtype=np.float64):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, p)).astype(dtype)
    C = rng.normal(size=(k, p))
    return Z, C


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_assign_matches_sklearn(seed, dtype):
    Z, C = _random_problem(seed, dtype=dtype)
    labels, dist, second, second_dist = assign(Z, C)

    assert labels.dtype == np.int32 and second.dtype == np.int32
    assert dist.dtype == np.float64 and second_dist.dtype == np.float64
    assert labels.shape == dist.shape == second.shape == second_dist.shape == (Z.shape[0],)

    np.testing.assert_array_equal(labels, pairwise_distances_argmin(Z, C))

    rows = np.arange(Z.shape[0])
    D_sk = euclidean_distances(Z.astype(np.float64), C)
    np.testing.assert_allclose(dist, D_sk[rows, labels], rtol=1e-12)
    np.testing.assert_allclose(second_dist, D_sk[rows, second], rtol=1e-12)

    # second nearest: argmin once the nearest is excluded
    D_sk[rows, labels] = np.inf
    np.testing.assert_array_equal(second, np.argmin(D_sk, axis=1))
    assert np.all(second != labels)
    assert np.all(second_dist >= dist)


def test_assign_distances_are_exact_far_from_origin():
    # Large offset: the norm expansion loses ~eps * ||z||^2 = 1e-4 absolute in
    # squared distance; the returned distances must still match exact differences.
    rng = np.random.default_rng(7)
    offset = 1e6
    C = offset + rng.normal(size=(4, 3))
    Z = offset + rng.normal(size=(300, 3))
    labels, dist, second, second_dist = assign(Z, C)
    exact = cdist(Z, C)
    rows = np.arange(Z.shape[0])
    np.testing.assert_array_equal(labels, np.argmin(exact, axis=1))
    np.testing.assert_allclose(dist, exact[rows, labels], rtol=1e-9)
    np.testing.assert_allclose(second_dist, exact[rows, second], rtol=1e-9)


def test_assign_k1():
    Z, C = _random_problem(5, k=1)
    labels, dist, second, second_dist = assign(Z, C)
    np.testing.assert_array_equal(labels, np.zeros(Z.shape[0], dtype=np.int32))
    np.testing.assert_array_equal(labels, pairwise_distances_argmin(Z, C))
    np.testing.assert_allclose(dist, np.linalg.norm(Z - C[0], axis=1), rtol=1e-14)
    np.testing.assert_array_equal(second, np.full(Z.shape[0], -1, dtype=np.int32))
    assert np.all(np.isnan(second_dist))


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_assign_empty_input(k, dtype):
    C = np.arange(2.0 * k).reshape(k, 2)
    labels, dist, second, second_dist = assign(np.empty((0, 2), dtype=dtype), C)
    for arr, dt in ((labels, np.int32), (dist, np.float64), (second, np.int32),
                    (second_dist, np.float64)):
        assert arr.shape == (0,)
        assert arr.dtype == dt


def test_assign_hand_computed():
    Z = np.array([[0.0, 0.0], [3.0, 4.0]])
    C = np.array([[0.0, 0.0], [3.0, 0.0]])
    labels, dist, second, second_dist = assign(Z, C)
    np.testing.assert_array_equal(labels, [0, 1])
    np.testing.assert_array_equal(dist, [0.0, 4.0])
    np.testing.assert_array_equal(second, [1, 0])
    np.testing.assert_array_equal(second_dist, [3.0, 5.0])


def test_assign_ties_lowest_index_wins():
    # [1.5, 0] is equidistant from both centroids; [0, 0] hits duplicated centroids.
    Z = np.array([[1.5, 0.0], [0.0, 0.0]])
    C = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 0.0]])
    labels, dist, second, second_dist = assign(Z, C)
    np.testing.assert_array_equal(labels, [0, 0])
    np.testing.assert_array_equal(second, [1, 2])
    np.testing.assert_array_equal(dist, [1.5, 0.0])
    np.testing.assert_array_equal(second_dist, [1.5, 0.0])
    np.testing.assert_array_equal(labels, pairwise_distances_argmin(Z, C))


@pytest.mark.parametrize("block_rows", [1, 7, 64, 1000])
def test_assign_block_and_batch_invariance(block_rows):
    Z, C = _random_problem(11, n=500, k=13)
    ref = assign(Z, C)
    blocked = assign(Z, C, block_rows=block_rows)
    a = 173
    split = [np.concatenate(parts) for parts in zip(assign(Z[:a], C), assign(Z[a:], C))]
    for got in (blocked, split):
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[2], ref[2])
        np.testing.assert_allclose(got[1], ref[1], rtol=1e-15)
        np.testing.assert_allclose(got[3], ref[3], rtol=1e-15)


# --------------------------------------------------------------------------- stats


def _naive_sums(Z, labels, k, weights=None):
    w = np.ones(Z.shape[0]) if weights is None else weights
    counts = np.zeros(k)
    sums = np.zeros((k, Z.shape[1]))
    np.add.at(counts, labels, w)
    np.add.at(sums, labels, Z.astype(np.float64) * w[:, None])
    return counts, sums


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cluster_sums_vs_add_at(weighted, dtype):
    rng = np.random.default_rng(3)
    n, p, k = 1000, 4, 7
    Z = rng.normal(size=(n, p)).astype(dtype)
    labels = rng.integers(0, k - 1, size=n).astype(np.int32)  # cluster k-1 is empty
    weights = rng.random(n) if weighted else None
    counts, sums = cluster_sums(Z, labels, k, weights=weights)
    exp_counts, exp_sums = _naive_sums(Z, labels, k, weights)
    assert counts.dtype == np.float64 and sums.dtype == np.float64
    assert counts.shape == (k,) and sums.shape == (k, p)
    np.testing.assert_allclose(counts, exp_counts, rtol=1e-12)
    np.testing.assert_allclose(sums, exp_sums, rtol=1e-12, atol=1e-12)
    assert counts[-1] == 0 and np.all(sums[-1] == 0)
    if not weighted:
        np.testing.assert_array_equal(counts, np.bincount(labels, minlength=k))


def test_cluster_sums_empty():
    counts, sums = cluster_sums(np.empty((0, 3)), np.empty(0, dtype=np.int32), 4)
    np.testing.assert_array_equal(counts, np.zeros(4))
    np.testing.assert_array_equal(sums, np.zeros((4, 3)))


def test_cluster_moments_vs_naive():
    rng = np.random.default_rng(4)
    n, p, k = 800, 3, 6
    Z = rng.normal(size=(n, p))
    labels = rng.integers(0, k - 1, size=n)  # cluster k-1 is empty
    centers = rng.normal(size=(k, p))
    m = cluster_moments(Z, labels, centers, k)
    assert set(m) == {"count", "sum_dist", "sum_sq_dist", "max_dist"}
    for j in range(k):
        d = np.linalg.norm(Z[labels == j] - centers[j], axis=1)
        assert m["count"][j] == d.size
        np.testing.assert_allclose(m["sum_dist"][j], d.sum(), rtol=1e-12)
        np.testing.assert_allclose(m["sum_sq_dist"][j], (d**2).sum(), rtol=1e-12)
        assert m["max_dist"][j] == (d.max() if d.size else 0.0)
    assert m["count"][-1] == 0 and m["sum_dist"][-1] == 0 and m["max_dist"][-1] == 0


def test_merge_moments_of_split_equals_whole():
    rng = np.random.default_rng(5)
    n, p, k = 900, 4, 5
    Z = rng.normal(size=(n, p))
    labels = rng.integers(0, k, size=n)
    centers = rng.normal(size=(k, p))
    whole = cluster_moments(Z, labels, centers, k)
    cuts = [0, 250, 250, 600, n]  # includes an empty partition
    parts = [cluster_moments(Z[a:b], labels[a:b], centers, k) for a, b in zip(cuts, cuts[1:])]
    merged = merge_moments(parts)
    np.testing.assert_array_equal(merged["count"], whole["count"])
    np.testing.assert_array_equal(merged["max_dist"], whole["max_dist"])
    np.testing.assert_allclose(merged["sum_dist"], whole["sum_dist"], rtol=1e-12)
    np.testing.assert_allclose(merged["sum_sq_dist"], whole["sum_sq_dist"], rtol=1e-12)
    # pairwise (reduce-style) merging gives the same result
    pairwise = merge_moments([merge_moments(parts[:2]), merge_moments(parts[2:])])
    np.testing.assert_array_equal(pairwise["count"], whole["count"])
    np.testing.assert_array_equal(pairwise["max_dist"], whole["max_dist"])
    # merging does not alias its inputs
    single = merge_moments([whole])
    single["count"][0] += 1
    assert single["count"][0] == whole["count"][0] + 1
    with pytest.raises(ValueError):
        merge_moments([])


# --------------------------------------------------------------------------- CH / DB


def _blobs():
    X, _ = make_blobs(n_samples=600, centers=4, n_features=5, cluster_std=1.5, random_state=0)
    return X


def _kmeans_labels(X):
    return KMeans(n_clusters=4, n_init=3, random_state=0).fit(X).labels_


def _random_labels(X):
    return np.random.default_rng(9).integers(0, 5, size=X.shape[0])


@pytest.mark.parametrize("make_labels", [_kmeans_labels, _random_labels])
def test_ch_db_from_stats_match_sklearn(make_labels):
    X = _blobs()
    raw = make_labels(X)
    # Leave index 2 empty: it must be ignored by both scores.
    labels = np.where(raw >= 2, raw + 1, raw).astype(np.int32)
    k = int(labels.max()) + 1
    rng = np.random.default_rng(1)

    # Pass 1 (as two partitions): counts, sums and SS around *other* centers.
    centers = rng.normal(size=(k, X.shape[1])) * 0.5
    half = X.shape[0] // 2
    c1, s1 = cluster_sums(X[:half], labels[:half], k)
    c2, s2 = cluster_sums(X[half:], labels[half:], k)
    counts, sums = c1 + c2, s1 + s2
    assert counts[2] == 0
    mask = counts > 0
    means = np.zeros_like(sums)
    means[mask] = sums[mask] / counts[mask, None]
    centers[mask] += means[mask]  # near the means, but not equal to them
    overall_mean = sums.sum(axis=0) / counts.sum()
    mom = merge_moments([
        cluster_moments(X[:half], labels[:half], centers, k),
        cluster_moments(X[half:], labels[half:], centers, k),
    ])
    np.testing.assert_array_equal(mom["count"], counts)
    within = within_ss_from_center_moments(counts, mom["sum_sq_dist"], centers, means)

    # Pass 2: moments around the means (also checks the identity).
    mom_mean = cluster_moments(X, labels, means, k)
    np.testing.assert_allclose(within, mom_mean["sum_sq_dist"].sum(), rtol=1e-10)

    ch = calinski_harabasz_from_stats(counts, means, overall_mean, within)
    np.testing.assert_allclose(ch, calinski_harabasz_score(X, labels), rtol=1e-10)

    mean_dist = mom_mean["sum_dist"][mask] / mom_mean["count"][mask]
    db = davies_bouldin_from_stats(means[mask], mean_dist)
    np.testing.assert_allclose(db, davies_bouldin_score(X, labels), rtol=1e-10)


def test_within_ss_identity_hand_computed():
    # Points 0 and 2 around mean 1: SS around mean = 2; around center 4: 16 + 4 = 20.
    within = within_ss_from_center_moments(
        counts=np.array([2, 0]),
        sum_sq_dist_to_center=np.array([20.0, 0.0]),
        centers=np.array([[4.0], [7.0]]),
        means=np.array([[1.0], [np.nan]]),
    )
    assert within == 2.0


def test_ch_db_edge_cases_match_sklearn():
    # Every point sits on its cluster mean: CH -> 1.0 and DB -> 0.0 (sklearn).
    X = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    labels = np.array([0, 0, 1, 1, 1])
    counts, sums = cluster_sums(X, labels, 2)
    means = sums / counts[:, None]
    mom = cluster_moments(X, labels, means, 2)
    ch = calinski_harabasz_from_stats(counts, means, sums.sum(0) / counts.sum(), mom["sum_sq_dist"].sum())
    assert ch == calinski_harabasz_score(X, labels) == 1.0
    db = davies_bouldin_from_stats(means, mom["sum_dist"] / mom["count"])
    assert db == davies_bouldin_score(X, labels) == 0.0

    # Coincident means: all centroid distances 0 -> DB 0.0 (sklearn).
    X2 = np.array([[-1.0], [1.0], [-2.0], [2.0]])
    l2 = np.array([0, 0, 1, 1])
    assert davies_bouldin_from_stats(np.zeros((2, 1)), np.array([1.0, 2.0])) == 0.0
    assert davies_bouldin_score(X2, l2) == 0.0

    # Fewer than 2 non-empty clusters is an error, as in sklearn.
    with pytest.raises(ValueError, match="Number of labels is 1"):
        calinski_harabasz_from_stats(np.array([5.0, 0.0]), np.zeros((2, 2)), np.zeros(2), 1.0)
    with pytest.raises(ValueError, match="Number of labels is 1"):
        calinski_harabasz_score(np.zeros((5, 2)), np.zeros(5))
    with pytest.raises(ValueError):
        davies_bouldin_from_stats(np.zeros((1, 2)), np.array([1.0]))


# --------------------------------------------------------------------------- ARI / NMI


def _check_agreement(a, b):
    C = contingency_matrix(a, b)
    np.testing.assert_allclose(
        adjusted_rand_from_contingency(C), adjusted_rand_score(a, b), rtol=1e-12, atol=1e-15
    )
    np.testing.assert_allclose(
        normalized_mutual_info_from_contingency(C),
        normalized_mutual_info_score(a, b),
        rtol=1e-12,
        atol=1e-15,
    )


@pytest.mark.parametrize("seed", range(6))
def test_ari_nmi_random_labelings(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 2000))
    a = rng.integers(0, int(rng.integers(2, 8)), size=n)
    b = rng.integers(0, int(rng.integers(2, 12)), size=n)
    _check_agreement(a, b)
    # correlated labelings
    c = np.where(rng.random(n) < 0.7, a, rng.integers(0, 4, size=n))
    _check_agreement(a, c)


def test_ari_nmi_identical_and_permuted():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 6, size=500)
    perm = rng.permutation(6)
    for b in (a, perm[a], perm[a] + 10):
        _check_agreement(a, b)
        C = contingency_matrix(a, b)
        assert adjusted_rand_from_contingency(C) == 1.0
        np.testing.assert_allclose(normalized_mutual_info_from_contingency(C), 1.0, rtol=1e-14)


def test_ari_nmi_single_cluster_edge_cases():
    ones = np.zeros(50, dtype=int)
    split = np.arange(50) % 3
    # both labelings a single cluster: perfect match
    _check_agreement(ones, ones)
    assert adjusted_rand_from_contingency(contingency_matrix(ones, ones)) == 1.0
    assert normalized_mutual_info_from_contingency(contingency_matrix(ones, ones)) == 1.0
    # one side a single cluster: NMI 0
    _check_agreement(ones, split)
    _check_agreement(split, ones)
    assert normalized_mutual_info_from_contingency(contingency_matrix(ones, split)) == 0.0
    # every point its own cluster vs one cluster
    _check_agreement(ones, np.arange(50))
    # no data at all
    assert adjusted_rand_from_contingency(np.zeros((0, 0), dtype=int)) == adjusted_rand_score([], [])
    assert normalized_mutual_info_from_contingency(np.zeros((0, 0), dtype=int)) == (
        normalized_mutual_info_score([], [])
    )


def test_ari_nmi_ignore_empty_rows_and_columns():
    rng = np.random.default_rng(8)
    a = rng.integers(0, 3, size=300)
    b = np.where(rng.random(300) < 0.5, a, 2)
    C = contingency_matrix(a, b)
    padded = np.zeros((C.shape[0] + 2, C.shape[1] + 1), dtype=np.int64)
    padded[1:-1, 1:] = C  # a class and a cluster with no points
    assert adjusted_rand_from_contingency(padded) == adjusted_rand_from_contingency(C)
    assert normalized_mutual_info_from_contingency(padded) == normalized_mutual_info_from_contingency(C)
    # a single non-empty cluster padded with empty ones is still "a single cluster"
    single = np.array([[0, 7, 0], [0, 0, 0]])
    assert normalized_mutual_info_from_contingency(single) == 1.0
    assert adjusted_rand_from_contingency(single) == 1.0


def test_ari_nmi_huge_counts_no_overflow():
    # ~6e12 points: n^2 overflows int64, the exact integer path must not.
    C_small = np.array([[50, 3, 1], [2, 40, 9], [0, 5, 60]])
    C = C_small * 10**11
    n = int(C.sum())
    comb = lambda x: math.comb(int(x), 2)  # noqa: E731
    index = sum(comb(x) for x in C.ravel())
    sum_a = sum(comb(x) for x in C.sum(axis=1))
    sum_b = sum(comb(x) for x in C.sum(axis=0))
    expected = (index - sum_a * sum_b / comb(n)) / ((sum_a + sum_b) / 2 - sum_a * sum_b / comb(n))
    np.testing.assert_allclose(adjusted_rand_from_contingency(C), expected, rtol=1e-9)
    # NMI only depends on the proportions
    np.testing.assert_allclose(
        normalized_mutual_info_from_contingency(C),
        normalized_mutual_info_from_contingency(C_small),
        rtol=1e-12,
    )


def test_silhouette_equals_scikit_learn_with_any_label_values():
    from sklearn.metrics import silhouette_score

    from clusterlake.kernels.metrics import silhouette

    rng = np.random.default_rng(4)
    X = np.vstack([rng.normal(c, 1.0, size=(150, 3)) for c in (0.0, 4.0, 9.0)])
    labels = np.repeat([-1, 7, 3], 150)  # noise-like and sparse label values
    labels[::17] = 7
    assert silhouette(X, labels) == pytest.approx(silhouette_score(X, labels), abs=1e-12)
    assert silhouette(X, np.zeros(len(X), int)) is None  # one cluster: undefined
    assert silhouette(X[:3], np.arange(3)) is None  # as many clusters as rows


def test_merge_mean_m2_equals_one_pass_over_all_rows():
    from clusterlake.kernels.stats import merge_mean_m2

    rng = np.random.default_rng(4)
    parts = [rng.normal(1e6, 3.0, size=(n, 3)) for n in (0, 5, 1, 40)]
    total = None
    for x in parts:
        part = (np.full(3, len(x), float), x.mean(axis=0) if len(x) else np.zeros(3),
                ((x - x.mean(axis=0)) ** 2).sum(axis=0) if len(x) else np.zeros(3))
        total = part if total is None else merge_mean_m2(total, part)
    allx = np.vstack(parts)
    np.testing.assert_array_equal(total[0], len(allx))
    np.testing.assert_allclose(total[1], allx.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(total[2] / len(allx), allx.var(axis=0), rtol=1e-9)  # no cancellation at 1e6
