"""Stable ids, lineage, drift and mini-batch updates (clusterlake.algorithms.lineage): numpy only."""

from __future__ import annotations

import itertools
import math
import sys

import numpy as np
import pytest

from clusterlake.algorithms.lineage import (
    centroid_distances,
    drift_metrics,
    lineage_rows,
    match_clusters,
    minibatch_update,
    psi,
)


def _blobs(rng, k, p, scale=10.0):
    return rng.normal(size=(k, p)) * scale


def _by(metrics, name):
    return [m for m in metrics if m.metric == name]


def _one(metrics, name):
    found = _by(metrics, name)
    assert len(found) == 1, (name, found)
    return found[0]


def test_module_does_not_import_pyspark():
    import subprocess

    code = ("import sys, clusterlake.algorithms.lineage; "
            "sys.exit(any(m.split('.')[0] == 'pyspark' for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ------------------------------------------------------------------------------------------
# match_clusters
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_permuted_noisy_centroids_keep_their_ids(seed):
    rng = np.random.default_rng(seed)
    k, p = 9, 4
    prev_C = _blobs(rng, k, p)
    prev_ids = rng.permutation(np.arange(100, 100 + k))
    radius = rng.uniform(0.5, 1.5, size=k)
    perm = rng.permutation(k)
    C = prev_C[perm] + rng.normal(scale=0.05, size=(k, p))
    m = match_clusters(C, prev_C, prev_ids, radius, max_distance=3.0, next_id=500)
    np.testing.assert_array_equal(m.ids, prev_ids[perm])
    np.testing.assert_array_equal(m.prev_index, perm)
    assert m.ids.dtype == np.int64 and m.prev_index.dtype == np.int64
    assert m.retired.size == 0 and m.next_id == 500
    expected = np.linalg.norm(C - prev_C[perm], axis=1) / radius[perm]
    np.testing.assert_allclose(m.distance, expected, rtol=1e-12)


def test_far_new_centroid_gets_next_id_and_removed_one_is_retired():
    rng = np.random.default_rng(1)
    prev_C = _blobs(rng, 5, 3)
    prev_ids = np.array([3, 7, 1, 9, 4])
    C = np.vstack([prev_C[[4, 0, 3]], [[1e3, 1e3, 1e3]], prev_C[[1]], [[-1e3, 0, 0]]])
    m = match_clusters(C, prev_C, prev_ids, np.ones(5), max_distance=2.0, next_id=10)
    np.testing.assert_array_equal(m.ids, [4, 3, 9, 10, 7, 11])
    np.testing.assert_array_equal(m.prev_index, [4, 0, 3, -1, 1, -1])
    np.testing.assert_array_equal(m.retired, [2])
    assert m.next_id == 12
    assert np.isnan(m.distance[[3, 5]]).all() and np.isfinite(m.distance[[0, 1, 2, 4]]).all()
    np.testing.assert_array_equal(m.new, [3, 5])
    assert m.n_matched == 4


@pytest.mark.parametrize("k,m", [(3, 7), (7, 3), (1, 4), (4, 1)])
def test_rectangular(k, m):
    rng = np.random.default_rng(k * 10 + m)
    base = _blobs(rng, max(k, m), 3)
    prev_C, C = base[:m], base[:k] + 0.01
    prev_ids = np.arange(m) * 2
    res = match_clusters(C, prev_C, prev_ids, np.ones(m), max_distance=1.0, next_id=2 * m)
    n = min(k, m)
    np.testing.assert_array_equal(res.ids[:n], prev_ids[:n])
    np.testing.assert_array_equal(res.ids[n:], 2 * m + np.arange(k - n))
    np.testing.assert_array_equal(res.retired, np.arange(n, m))
    assert res.next_id == 2 * m + (k - n)


def test_beyond_max_distance_is_not_matched_even_if_only_candidate():
    prev_C = np.array([[0.0, 0.0]])
    C = np.array([[5.0, 0.0]])
    m = match_clusters(C, prev_C, [42], [1.0], max_distance=3.0, next_id=43)
    np.testing.assert_array_equal(m.ids, [43])
    np.testing.assert_array_equal(m.prev_index, [-1])
    np.testing.assert_array_equal(m.retired, [0])
    assert m.next_id == 44
    # the same distance in a wider cluster (radius 2: 2.5 radius units) is allowed
    m = match_clusters(C, prev_C, [42], [2.0], max_distance=3.0, next_id=43)
    np.testing.assert_array_equal(m.ids, [42])
    assert m.distance[0] == pytest.approx(2.5)
    # the bound is inclusive
    m = match_clusters(C, prev_C, [42], [1.0], max_distance=5.0, next_id=43)
    np.testing.assert_array_equal(m.ids, [42])


def test_only_allowed_pairs_even_when_assignment_prefers_another():
    # tonight 0 is close to prev 0 (allowed); tonight 1 is too far from both
    prev_C = np.array([[0.0], [10.0]])
    C = np.array([[0.5], [30.0]])
    m = match_clusters(C, prev_C, [5, 6], [1.0, 1.0], max_distance=2.0, next_id=7)
    np.testing.assert_array_equal(m.ids, [5, 7])
    np.testing.assert_array_equal(m.retired, [1])


def _brute_force(cost, allowed):
    k, m = cost.shape
    best = (-1, math.inf)
    if k <= m:
        candidates = (list(zip(range(k), perm)) for perm in itertools.permutations(range(m), k))
    else:
        candidates = (list(zip(perm, range(m))) for perm in itertools.permutations(range(k), m))
    for pairs in candidates:
        ok = [(i, j) for i, j in pairs if allowed[i, j]]
        total = sum(cost[i, j] for i, j in ok)
        key = (len(ok), total)
        if key[0] > best[0] or (key[0] == best[0] and key[1] < best[1] - 1e-12):
            best = key
    return best


@pytest.mark.parametrize("shape", [(5, 5), (4, 6), (6, 4), (5, 3)])
@pytest.mark.parametrize("seed", range(8))
def test_hungarian_equals_brute_force(shape, seed):
    k, m = shape
    rng = np.random.default_rng(seed)
    C = rng.normal(size=(k, 2))
    prev_C = rng.normal(size=(m, 2))
    radius = rng.uniform(0.3, 1.5, size=m)
    cost = centroid_distances(C, prev_C, radius)
    max_distance = float(np.quantile(cost, 0.4))  # a good share of the pairs disallowed
    allowed = cost <= max_distance
    res = match_clusters(C, prev_C, np.arange(m), radius, max_distance, next_id=m)
    got = res.prev_index >= 0
    assert np.all(allowed[np.flatnonzero(got), res.prev_index[got]])
    n_best, total_best = _brute_force(cost, allowed)
    assert got.sum() == n_best
    assert np.nansum(res.distance) == pytest.approx(total_best, rel=1e-12, abs=1e-12)


def test_large_max_distance_still_maximises_allowed_pairs_first():
    # with max_distance huge and a naive "1e6 + cost" penalty, costs of allowed pairs could
    # compete with the penalty; every pair here is allowed, so all must match
    rng = np.random.default_rng(3)
    C = rng.normal(size=(6, 2)) * 1e7
    prev_C = rng.normal(size=(6, 2)) * 1e7
    res = match_clusters(C, prev_C, np.arange(6), np.ones(6), max_distance=np.inf, next_id=6)
    assert res.n_matched == 6


def test_no_previous_run_all_new():
    C = np.arange(6.0).reshape(3, 2)
    for prev_C in (np.empty((0, 2)), np.empty(0)):
        m = match_clusters(C, prev_C, np.empty(0, dtype=np.int64), np.empty(0), 3.0, next_id=0)
        np.testing.assert_array_equal(m.ids, [0, 1, 2])
        np.testing.assert_array_equal(m.prev_index, [-1, -1, -1])
        assert m.retired.size == 0 and m.next_id == 3 and np.isnan(m.distance).all()


def test_zero_radius_is_floored_with_the_median():
    prev_C = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]])
    C = prev_C + [0.5, 0.0]
    m = match_clusters(C, prev_C, [1, 2, 3], [1.0, 0.0, 1.0], max_distance=1.0, next_id=4)
    np.testing.assert_array_equal(m.ids, [1, 2, 3])
    np.testing.assert_allclose(m.distance, 0.5)
    D = centroid_distances(C, prev_C, [1.0, 0.0, 1.0])
    assert np.all(np.isfinite(D))


def test_match_validation():
    C = np.zeros((2, 3))
    with pytest.raises(ValueError, match="next_id"):
        match_clusters(C, np.ones((2, 3)), [4, 5], [1, 1], 2.0, next_id=5)
    with pytest.raises(ValueError, match="duplicate"):
        match_clusters(C, np.ones((2, 3)), [4, 4], [1, 1], 2.0, next_id=6)
    with pytest.raises(ValueError, match="model space"):
        match_clusters(C, np.ones((2, 2)), [4, 5], [1, 1], 2.0, next_id=6)
    with pytest.raises(ValueError, match="prev_radius"):
        match_clusters(C, np.ones((2, 3)), [4, 5], [1, -1], 2.0, next_id=6)
    with pytest.raises(ValueError, match="max_distance"):
        match_clusters(C, np.ones((2, 3)), [4, 5], [1, 1], 0.0, next_id=6)
    with pytest.raises(ValueError, match="NaN"):
        match_clusters(C + np.nan, np.ones((2, 3)), [4, 5], [1, 1], 2.0, next_id=6)


# ------------------------------------------------------------------------------------------
# lineage_rows
# ------------------------------------------------------------------------------------------

def _rows_by_event(rows):
    out = {}
    for r in rows:
        out.setdefault(r["event"], []).append(r)
    return out


def test_split_by_ids():
    prev_C = np.array([[0.0, 0.0], [10.0, 0.0]])
    C = np.array([[0.2, 0.0], [10.0, 0.1], [0.0, 5.0]])  # tonight 2 is far from both
    m = match_clusters(C, prev_C, [10, 11], [1.0, 1.0], max_distance=3.0, next_id=12)
    np.testing.assert_array_equal(m.ids, [10, 11, 12])
    overlap = np.array([[50, 0], [0, 100], [50, 0]])  # half of prev 10 went to tonight 12
    rows = lineage_rows(m, [10, 11], sizes=[60, 100, 55], prev_sizes=[100, 100], overlap=overlap)
    assert [(r["cluster_id"], r["previous_cluster_id"], r["event"]) for r in rows] == [
        (10, 10, "persist"), (11, 11, "persist"), (12, 10, "split")]
    split = rows[2]
    assert split["overlap_previous"] == pytest.approx(0.5)
    assert split["overlap_current"] == pytest.approx(1.0)
    assert split["basis"] == "ids" and split["size"] == 55 and split["previous_size"] == 100
    assert split["distance"] is None  # no centroid_dist given
    assert rows[0]["overlap_previous"] == pytest.approx(0.5) and rows[0]["basis"] == "match"
    assert rows[0]["distance"] == pytest.approx(0.2)
    assert set(rows[0]) == {"cluster_id", "previous_cluster_id", "event", "distance",
                            "overlap_previous", "overlap_current", "size", "previous_size", "basis"}


def test_merge_new_retired_by_ids():
    # prev 20, 21, 22, 23; tonight matches 20 and 21; prev 22 merged into 21;
    # prev 23 spread thin (below min_overlap everywhere) -> retired; tonight's 3rd cluster
    # takes 10% of prev 20, 20% of prev 22, 1/3 of prev 23 -> all below 0.4 -> new, no source
    prev_C = np.array([[0.0, 0], [10.0, 0], [12.0, 0], [50.0, 50]])
    C = np.array([[0.0, 0.1], [10.5, 0], [-30.0, 0]])
    prev_ids = [20, 21, 22, 23]
    m = match_clusters(C, prev_C, prev_ids, np.ones(4), max_distance=3.0, next_id=24)
    np.testing.assert_array_equal(m.ids, [20, 21, 24])
    np.testing.assert_array_equal(m.retired, [2, 3])
    overlap = np.array([
        [90, 0, 0, 5],
        [0, 100, 80, 5],
        [10, 0, 20, 5],
    ])  # prev 23: 15 joinable rows, a third in each tonight's cluster
    rows = lineage_rows(m, prev_ids, [100, 180, 40], [100, 100, 100, 100], overlap=overlap,
                        min_overlap=0.4)
    ev = [(r["cluster_id"], r["previous_cluster_id"], r["event"], r["basis"]) for r in rows]
    assert ev == [
        (20, 20, "persist", "match"),
        (21, 21, "persist", "match"),
        (24, None, "new", "ids"),         # largest share 1/3 < 0.4
        (21, 22, "merge", "ids"),         # 80% of prev 22 went to tonight 21 (matched to 21)
        (None, 23, "retired", "ids"),     # 1/3 everywhere < 0.4
    ]
    merge = rows[3]
    assert merge["overlap_previous"] == pytest.approx(0.8)
    assert merge["overlap_current"] == pytest.approx(80 / 185)
    assert merge["size"] == 180 and merge["previous_size"] == 100


def test_new_with_source_and_retired_into_new():
    # prev 1 moved too far to match: tonight's cluster is 'new' (source prev 1 for information),
    # prev 1 is 'retired' with cluster_id = that new cluster
    prev_C = np.array([[0.0], [10.0]])
    C = np.array([[0.1], [20.0]])
    m = match_clusters(C, prev_C, [0, 1], [1.0, 1.0], max_distance=3.0, next_id=2)
    overlap = np.array([[100, 0], [0, 90]])
    rows = lineage_rows(m, [0, 1], [100, 95], [100, 90], overlap=overlap,
                        centroid_dist=centroid_distances(C, prev_C, [1.0, 1.0]))
    ev = [(r["cluster_id"], r["previous_cluster_id"], r["event"]) for r in rows]
    assert ev == [(0, 0, "persist"), (2, 1, "new"), (2, 1, "retired")]
    assert rows[1]["distance"] == pytest.approx(10.0)  # centroid_dist of the pair
    assert rows[1]["overlap_previous"] == pytest.approx(1.0)


def test_unjoinable_cluster_falls_back_to_centroids():
    prev_C = np.array([[0.0], [10.0]])
    C = np.array([[0.0], [10.0], [1.0]])
    m = match_clusters(C, prev_C, [0, 1], [1.0, 1.0], max_distance=0.5, next_id=2)
    overlap = np.array([[100, 0], [0, 100], [0, 0]])  # tonight 2: only new rows (no joined id)
    D = centroid_distances(C, prev_C, [1.0, 1.0])
    rows = lineage_rows(m, [0, 1], [100, 100, 30], [100, 100], overlap=overlap, centroid_dist=D)
    assert rows[2]["event"] == "split" and rows[2]["previous_cluster_id"] == 0
    assert rows[2]["basis"] == "centroids" and rows[2]["overlap_previous"] == 0.0
    assert rows[2]["overlap_current"] is None  # undefined: tonight 2 has no joined row
    rows = lineage_rows(m, [0, 1], [100, 100, 30], [100, 100], overlap=overlap)
    assert (rows[2]["event"], rows[2]["previous_cluster_id"], rows[2]["basis"]) == (
        "new", None, "centroids")


def test_centroid_variant():
    # prev: A=0 (id 5, r 1), B=10 (id 6, r 1), C=20 (id 7, r 6), D=40 (id 8, r 1)
    prev_C = np.array([[0.0], [10.0], [20.0], [40.0]])
    prev_r = np.array([1.0, 1.0, 6.0, 1.0])
    C = np.array([[0.0], [1.5], [12.0], [-40.0]])
    prev_ids = [5, 6, 7, 8]
    D = centroid_distances(C, prev_C, prev_r)
    np.testing.assert_allclose(D[2], [12.0, 2.0, 8 / 6, 28.0])
    # allowed (<= 2): 0-A (0), 1-A (1.5), 2-B (2), 2-C (1.33): best is 0-A + 2-C
    m = match_clusters(C, prev_C, prev_ids, prev_r, max_distance=2.0, next_id=9)
    np.testing.assert_array_equal(m.prev_index, [0, -1, 2, -1])
    np.testing.assert_array_equal(m.ids, [5, 9, 7, 10])
    rows = lineage_rows(m, prev_ids, [10, 5, 10, 3], [10, 11, 12, 13], centroid_dist=D,
                        split_distance=2.0)
    got = [(r["event"], r["cluster_id"], r["previous_cluster_id"], r["basis"]) for r in rows]
    assert got == [
        ("persist", 5, 5, "match"),
        ("persist", 7, 7, "match"),
        ("split", 9, 5, "centroids"),     # 1.5 radius units from A, A matched to tonight's 5
        ("new", 10, None, "centroids"),   # nothing within 2 radius units
        ("merge", 7, 6, "centroids"),     # B is 2 radius units from tonight's 7 (matched to C)
        ("retired", None, 8, "centroids"),
    ]
    assert rows[2]["distance"] == pytest.approx(1.5) and rows[3]["distance"] is None
    assert rows[4]["size"] == 10 and rows[4]["previous_size"] == 11
    for r in rows:
        assert r["overlap_previous"] is None and r["overlap_current"] is None
    # the same from the centroids themselves
    assert lineage_rows(m, prev_ids, [10, 5, 10, 3], [10, 11, 12, 13], split_distance=2.0,
                        C=C, prev_C=prev_C, prev_radius=prev_r) == rows
    with pytest.raises(ValueError, match="C is None"):
        lineage_rows(m, prev_ids, [10, 5, 10, 3], [10, 11, 12, 13], C=None, prev_C=prev_C,
                     prev_radius=prev_r)
    with pytest.raises(ValueError, match="not both"):
        lineage_rows(m, prev_ids, [10, 5, 10, 3], [10, 11, 12, 13], centroid_dist=D, C=C,
                     prev_C=prev_C, prev_radius=prev_r)
    # a tighter split_distance turns the split into a new cluster (source none) and B retires
    rows = lineage_rows(m, prev_ids, [10, 5, 10, 3], [10, 11, 12, 13], centroid_dist=D,
                        split_distance=1.0)
    assert [(r["event"], r["previous_cluster_id"]) for r in rows][2:5] == [
        ("new", None), ("new", None), ("retired", 6)]


def test_lineage_ordering_and_validation():
    prev_C = np.array([[0.0], [10.0], [20.0]])
    C = np.array([[20.0], [50.0], [0.0]])
    m = match_clusters(C, prev_C, [30, 10, 20], np.ones(3), max_distance=1.0, next_id=31)
    D = centroid_distances(C, prev_C, np.ones(3))
    rows = lineage_rows(m, [30, 10, 20], [1, 1, 1], [1, 1, 1], centroid_dist=D)
    assert [(r["event"], r["cluster_id"], r["previous_cluster_id"]) for r in rows] == [
        ("persist", 20, 20), ("persist", 30, 30), ("new", 31, None), ("retired", None, 10)]
    with pytest.raises(ValueError, match="overlap= .* or centroid_dist="):
        lineage_rows(m, [30, 10, 20], [1, 1, 1], [1, 1, 1])
    with pytest.raises(ValueError, match="overlap must have shape"):
        lineage_rows(m, [30, 10, 20], [1, 1, 1], [1, 1, 1], overlap=np.ones((3, 2)))
    with pytest.raises(ValueError, match="sizes"):
        lineage_rows(m, [30, 10, 20], [1, 1], [1, 1, 1], centroid_dist=D)
    # first run: no previous cluster, nothing to compare with
    m0 = match_clusters(C, np.empty((0, 1)), [], [], 1.0, next_id=0)
    rows = lineage_rows(m0, [], [1, 2, 3], [])
    assert [(r["event"], r["cluster_id"]) for r in rows] == [("new", 0), ("new", 1), ("new", 2)]


# ------------------------------------------------------------------------------------------
# psi
# ------------------------------------------------------------------------------------------

def test_psi_hand_computation():
    p, q = [0.5, 0.3, 0.2], [0.4, 0.4, 0.2]
    expected = (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.4 - 0.3) * math.log(0.4 / 0.3)
    assert psi(p, q) == pytest.approx(expected, rel=1e-12)
    assert psi([50, 30, 20], [4, 4, 2]) == pytest.approx(expected, rel=1e-12)  # normalised
    # an empty category is floored
    expected = 2 * (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.2 - 1e-4) * math.log(0.2 / 1e-4)
    assert psi([0.5, 0.5, 0.0], [0.4, 0.4, 0.2]) == pytest.approx(expected, rel=1e-12)


def test_psi_identical_zero_symmetric_nonnegative():
    rng = np.random.default_rng(0)
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    for _ in range(50):
        p = rng.dirichlet(np.ones(6)) * (rng.random(6) > 0.2)
        q = rng.dirichlet(np.ones(6))
        if p.sum() == 0:
            continue
        assert psi(p, q) >= 0
        assert psi(p, q) == pytest.approx(psi(q, p), rel=1e-12)
    with pytest.raises(ValueError, match="same length"):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="non-negative"):
        psi([1, -1], [1, 2])


# ------------------------------------------------------------------------------------------
# drift_metrics
# ------------------------------------------------------------------------------------------

def _setup(k=4, seed=0):
    rng = np.random.default_rng(seed)
    prev_C = _blobs(rng, k, 3)
    prev_ids = np.arange(10, 10 + k)
    prev_sizes = rng.integers(100, 1000, size=k).astype(float)
    return rng, prev_C, prev_ids, prev_sizes


def test_drift_identical_inputs():
    _, prev_C, prev_ids, prev_sizes = _setup()
    k = len(prev_ids)
    m = match_clusters(prev_C, prev_C, prev_ids, np.ones(k), 3.0, next_id=20)
    overlap = np.diag(prev_sizes)
    out = drift_metrics(m, prev_sizes, prev_sizes, prev_ids, overlap=overlap,
                        quality={"silhouette": 0.5}, prev_quality={"silhouette": 0.5})
    assert all(x.scope == "drift" and x.algorithm == "kmeans" and x.k == k for x in out)
    shifts = _by(out, "centroid_shift")
    assert sorted(x.cluster_id for x in shifts) == list(prev_ids)
    assert all(x.value == 0 for x in shifts + _by(out, "size_change"))
    assert _one(out, "centroid_shift_max").value == 0
    assert _one(out, "centroid_shift_mean").value == 0
    assert _one(out, "psi").value == 0
    assert _one(out, "changed_share").value == 0
    assert _one(out, "joined_rows").value == prev_sizes.sum()
    assert _one(out, "changed_share").sample_size == int(prev_sizes.sum())
    assert _one(out, "matched_clusters").value == k
    assert _one(out, "new_clusters").value == 0 and _one(out, "retired_clusters").value == 0
    assert _one(out, "silhouette_change").value == 0
    for x in out:
        per_cluster = x.metric in ("centroid_shift", "size_change")
        assert (x.cluster_id is not None) == per_cluster


def test_drift_values_new_retired_quality():
    prev_C = np.array([[0.0], [10.0], [20.0]])
    C = np.array([[10.5], [0.0], [100.0]])
    prev_ids = [1, 2, 3]
    m = match_clusters(C, prev_C, prev_ids, [1.0, 1.0, 1.0], 2.0, next_id=4)
    np.testing.assert_array_equal(m.ids, [2, 1, 4])
    sizes, prev_sizes = np.array([300.0, 100.0, 100.0]), np.array([100.0, 200.0, 200.0])
    overlap = np.array([[0, 150, 50], [90, 0, 0], [0, 0, 100]])
    out = drift_metrics(m, sizes, prev_sizes, prev_ids, overlap=overlap,
                        quality={"silhouette": 0.5, "davies_bouldin": 1.0,
                                 "calinski_harabasz": None},
                        prev_quality={"silhouette": 0.4, "davies_bouldin": 1.2,
                                      "calinski_harabasz": 80.0})
    shift = {x.cluster_id: x.value for x in _by(out, "centroid_shift")}
    assert shift == pytest.approx({2: 0.5, 1: 0.0})
    size_change = {x.cluster_id: x.value for x in _by(out, "size_change")}
    assert size_change == pytest.approx({2: 0.5, 1: 0.0})
    assert _one(out, "centroid_shift_max").value == pytest.approx(0.5)
    assert _one(out, "centroid_shift_mean").value == pytest.approx(0.5 * 300 / 400)
    assert _one(out, "centroid_shift_mean").sample_size == 400
    # shares by id 1, 2, 3, 4: previous (.2, .4, .4, 0); tonight (.2, .6, 0, .2)
    assert _one(out, "psi").value == pytest.approx(psi([0.2, 0.4, 0.4, 0.0], [0.2, 0.6, 0.0, 0.2]))
    assert _one(out, "psi").sample_size == 500
    assert _one(out, "matched_clusters").value == 2
    assert _one(out, "new_clusters").value == 1
    assert _one(out, "retired_clusters").value == 1
    # unchanged: 150 (prev id 2 -> tonight id 2) + 90 (1 -> 1); changed: 50 + 100
    assert _one(out, "changed_share").value == pytest.approx(150 / 390)
    assert _one(out, "joined_rows").value == 390
    assert _one(out, "silhouette_change").value == pytest.approx(0.1)
    assert _one(out, "davies_bouldin_change").value == pytest.approx(-0.2)
    assert not _by(out, "calinski_harabasz_change")
    assert all(x.k == 3 for x in out)
    assert all(x.k == 7 for x in drift_metrics(m, sizes, prev_sizes, prev_ids, k=7))


def test_drift_without_matches_skips_shift():
    m = match_clusters(np.array([[100.0]]), np.array([[0.0]]), [0], [1.0], 2.0, next_id=1)
    out = drift_metrics(m, [10], [10], [0])
    names = {x.metric for x in out}
    assert not names & {"centroid_shift", "size_change", "centroid_shift_max", "centroid_shift_mean"}
    assert _one(out, "new_clusters").value == 1 and _one(out, "retired_clusters").value == 1
    assert all(np.isfinite(x.value) for x in out)
    assert not {"changed_share", "joined_rows"} & names


def test_drift_monotone_in_centroid_perturbation():
    rng, prev_C, prev_ids, prev_sizes = _setup(k=5, seed=4)
    direction = rng.normal(size=prev_C.shape)
    last = -1.0
    for t in [0.0, 0.05, 0.1, 0.2, 0.4, 0.8]:
        C = prev_C + t * direction
        m = match_clusters(C, prev_C, prev_ids, np.ones(5), 5.0, next_id=100)
        np.testing.assert_array_equal(m.ids, prev_ids)
        value = _one(drift_metrics(m, prev_sizes, prev_sizes, prev_ids), "centroid_shift_max").value
        assert value > last or (t == 0 and value == 0)
        last = value


def test_drift_monotone_in_moved_rows():
    prev_C = np.array([[0.0], [10.0], [20.0]])
    prev_ids = np.array([0, 1, 2])
    m = match_clusters(prev_C, prev_C, prev_ids, np.ones(3), 2.0, next_id=3)
    prev_sizes = np.array([1000.0, 1000.0, 1000.0])
    last_changed = last_psi = -1.0
    for f in [0.0, 0.05, 0.1, 0.3, 0.6]:
        overlap = np.diag(prev_sizes)
        overlap[0, 0] = 1000 * (1 - f)
        overlap[1, 0] = 1000 * f  # a share f of cluster 0's rows moved to cluster 1
        sizes = overlap.sum(axis=1)
        out = drift_metrics(m, sizes, prev_sizes, prev_ids, overlap=overlap)
        changed, value = _one(out, "changed_share").value, _one(out, "psi").value
        assert changed == pytest.approx(f / 3)
        assert changed > last_changed and value > last_psi
        last_changed, last_psi = changed, value


# ------------------------------------------------------------------------------------------
# minibatch_update
# ------------------------------------------------------------------------------------------

def _assign_stats(X, C):
    d2 = ((X[:, None, :] - C[None, :, :]) ** 2).sum(axis=2)
    labels = d2.argmin(axis=1)
    k = len(C)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    sums = np.zeros_like(C)
    np.add.at(sums, labels, X)
    return labels, counts, sums


def test_minibatch_update_matches_sklearn_partial_fit():
    # scikit-learn 1.x (sklearn/cluster/_kmeans.py): partial_fit's first call takes the init
    # array as is and starts _counts at 0; every call labels the batch with the current centres,
    # then _minibatch_update_dense sets c = (c * N + sum x) / (N + n) for clusters with n > 0 and
    # leaves the others unchanged. Random reassignment of small clusters only happens when
    # reassignment_ratio > 0 (here 0, although an empty cluster makes _random_reassign True).
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.default_rng(0)
    k, p = 4, 3
    centers = np.array([[0, 0, 0], [6, 0, 0], [0, 6, 0], [0, 0, 6]], dtype=np.float64)
    X1 = np.vstack([c + rng.normal(size=(60, p)) for c in centers[:3]])
    X2 = np.vstack([c + rng.normal(size=(40, p)) for c in centers[:3]] + [rng.normal(size=(5, p))])
    C0 = np.vstack([X1[[0, 1, 70]], [[50.0, 50.0, 50.0]]])  # two seeds in one blob, one far away
    mbk = MiniBatchKMeans(n_clusters=k, init=C0, n_init=1, reassignment_ratio=0.0,
                          batch_size=len(X1), random_state=0)

    mbk.partial_fit(X1)
    labels1, n1, s1 = _assign_stats(X1, C0)
    C1, N1 = minibatch_update(C0, np.zeros(k), n1, s1)
    assert n1[3] == 0  # the far centre receives nothing: unchanged, count stays 0
    np.testing.assert_allclose(mbk.cluster_centers_, C1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mbk._counts, N1)  # private attribute, the oracle's N
    np.testing.assert_array_equal(C1[3], C0[3])

    mbk.partial_fit(X2)
    labels2, n2, s2 = _assign_stats(X2, C1)
    assert np.any(labels2 != _assign_stats(X2, C0)[0])  # the 2nd batch sees the moved centres
    C2, N2 = minibatch_update(C1, N1, n2, s2)
    np.testing.assert_allclose(mbk.cluster_centers_, C2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mbk._counts, N2)
    np.testing.assert_array_equal(N2, n1 + n2)


def test_minibatch_update_formula_and_spherical():
    C = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    counts = np.array([3.0, 0.0, 5.0])
    n = np.array([1.0, 2.0, 0.0])
    s = np.array([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
    C_new, N_new = minibatch_update(C, counts, n, s)
    np.testing.assert_allclose(C_new, [[0.75, 0.25], [1.0, 0.0], [0.6, 0.8]])
    np.testing.assert_array_equal(N_new, [4.0, 2.0, 5.0])
    assert C[0, 0] == 1.0 and counts[0] == 3.0  # inputs untouched
    C_sph, _ = minibatch_update(C, counts, n, s, spherical=True)
    np.testing.assert_allclose(C_sph[0], np.array([0.75, 0.25]) / np.hypot(0.75, 0.25))
    np.testing.assert_allclose(np.linalg.norm(C_sph, axis=1), 1.0)
    np.testing.assert_array_equal(C_sph[2], C[2])
    # antipodal batch around a fresh centre: mean 0, keeps its previous value
    C_z, _ = minibatch_update(C, [0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [[0.0, 0.0], [0, 0], [0, 0]],
                              spherical=True)
    np.testing.assert_array_equal(C_z[0], C[0])


def test_minibatch_update_validation():
    C = np.zeros((3, 2))
    with pytest.raises(ValueError, match="counts"):
        minibatch_update(C, np.zeros(2), np.zeros(3), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="batch_sums"):
        minibatch_update(C, np.zeros(3), np.zeros(3), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="batch_counts must be >= 0"):
        minibatch_update(C, np.zeros(3), -np.ones(3), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="2-d"):
        minibatch_update(np.zeros(3), np.zeros(3), np.zeros(3), np.zeros((3, 2)))
