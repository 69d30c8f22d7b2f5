"""Tests of the automatic choice of K-means' k (clusterlake.algorithms.auto_k), no Spark.

The blob cases draw their centres with a minimum separation of 10 (cluster_std 1.0), so the true k
is unambiguous; with make_blobs' own random centres some seeds put two centres ~4 apart (2-D), and
then k - 1 is a fair answer too.
"""

import logging

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

from clusterlake.algorithms import auto_k as A
from clusterlake.algorithms.auto_k import AutoK, choose_k, elbow, silhouette_scores
from clusterlake.kernels import silhouette as silhouette_kernel

SCORES = ("inertia", "silhouette", "calinski_harabasz", "davies_bouldin")
CASES = [(k, s) for k in (3, 5, 8) for s in range(3)]  # 9 cases: k_true x seed
DIMS = (2, 5, 10)  # seed s uses DIMS[s] features
MAX_K = 12


def separated_centres(k, p, rng, box=20.0, min_dist=10.0):
    """k centres uniform in [-box, box]^p, pairwise at least min_dist apart (rejection)."""
    C = [rng.uniform(-box, box, p)]
    while len(C) < k:
        c = rng.uniform(-box, box, p)
        if np.min(np.linalg.norm(np.asarray(C) - c, axis=1)) >= min_dist:
            C.append(c)
    return np.asarray(C)


def blobs(k, s, n=3000):
    """n rows in k equal-size, separated Gaussian blobs (std 1.0), rows in random order."""
    rng = np.random.default_rng(1000 * k + s)
    Z, y = make_blobs(n, centers=separated_centres(k, DIMS[s], rng), cluster_std=1.0,
                      random_state=1000 * k + s)
    return Z, y


@pytest.fixture(scope="module")
def blob_cases():
    return {(k, s): blobs(k, s) for k, s in CASES}


def values(res: AutoK, metric):
    return {m.k: m.value for m in res.metrics if m.scope == "auto_k" and m.metric == metric}


# ----------------------------------------------------------------------------------------- hit rates


def test_silhouette_finds_the_true_k_on_blobs(blob_cases):
    """criterion=silhouette finds k_true in >= 8 of the 9 blob cases (measured: 9 of 9)."""
    got = {case: choose_k(Z, 2, MAX_K, "silhouette", seed=42).k for case, (Z, _) in blob_cases.items()}
    hits = sum(got[(k, s)] == k for k, s in CASES)
    assert hits >= 8, got


def test_dynamic_with_min_cluster_share_0_75_over_k_true_finds_the_true_k_on_equal_blobs(blob_cases):
    """criterion=dynamic with min_cluster_share = 0.75 / k_true (0.25, 0.15, 0.09375 for k_true 3, 5,
    8; percentile 95) finds k_true in >= 7 of the 9 equal-size blob cases (measured: 9 of 9).

    The share has to lie in (1 / (2 k_true), 1 / k_true]: each true cluster holds 1 / k_true of the
    rows and splitting one gives two halves of ~1 / (2 k_true); 0.75 / k_true is the middle. A fixed
    share such as 0.05 cannot work for all three (see the next test).
    """
    got = {}
    for (k, s), (Z, _) in blob_cases.items():
        share = 0.75 / k
        res = choose_k(Z, 2, MAX_K, "dynamic", seed=42, min_cluster_share=share, percentile=95.0)
        got[(k, s)] = res.k
        shares = values(res, "min_cluster_share")
        assert shares[res.k] >= share  # the chosen k passes the rule ...
        if res.k + 1 in shares:
            assert shares[res.k + 1] < share  # ... and the next one is where growth stopped
    hits = sum(got[(k, s)] == k for k, s in CASES)
    assert hits >= 7, got


def test_dynamic_with_fixed_share_0_05_keeps_splitting_three_equal_blobs(blob_cases):
    """min_cluster_share=0.05 on 3 equal blobs: halves of a blob (~1/6) still pass, so k grows past 3.

    This pins the documented granularity semantics of ``dynamic`` (measured with 0.05 on the 9
    cases: 1 of 9 hits, all misses above k_true).
    """
    Z, _ = blob_cases[(3, 1)]
    res = choose_k(Z, 2, MAX_K, "dynamic", seed=42, min_cluster_share=0.05)
    assert res.k > 3
    assert values(res, "min_cluster_share")[4] > 0.05


def test_davies_bouldin_and_calinski_harabasz_choose_the_true_k(blob_cases):
    Z, _ = blob_cases[(5, 1)]
    assert choose_k(Z, 2, MAX_K, "davies_bouldin").k == 5
    assert choose_k(Z, 2, MAX_K, "calinski_harabasz").k == 5


def test_outlier_does_not_capture_a_centre_under_the_percentile_rule(blob_cases, caplog):
    """One row 1000 units away: with percentile 95 no centre is seeded on it (no singleton cluster
    up to the chosen k, k_true found); with percentile 100 (plain farthest point) it takes the
    second centre, the smallest share collapses to 1/n and min_k is chosen with a warning.

    (Past the true k, at the k where growth stops, Lloyd itself may end with the outlier alone: for
    4 centres on 3 blobs plus the outlier that is the k-means optimum. The percentile rule protects
    the seeding, not Lloyd; the tiny share then stops the growth, as it should.)"""
    Z, _ = blob_cases[(3, 1)]
    Z = Z.copy()
    Z[0] = Z.mean(axis=0) + 1000.0  # first row: also inside the silhouette prefix
    n = Z.shape[0]
    res = choose_k(Z, 2, MAX_K, "dynamic", min_cluster_share=0.75 / 3, percentile=95.0)
    assert res.k == 3
    shares = values(res, "min_cluster_share")
    assert all(shares[k] > 1.0 / n for k in shares if k <= res.k)

    caplog.set_level(logging.WARNING, logger=A.__name__)
    res100 = choose_k(Z, 2, MAX_K, "dynamic", min_cluster_share=0.75 / 3, percentile=100.0)
    assert values(res100, "min_cluster_share")[2] == pytest.approx(1.0 / n)
    assert res100.k == 2
    assert "already at min_k=2" in caplog.text


# ----------------------------------------------------------------------------------------- elbow


def test_elbow_on_a_constructed_curve():
    ks = list(range(1, 11))
    assert elbow(ks, [100, 70, 40, 10, 9, 8, 7, 6, 5, 4]) == 4
    assert elbow(ks[2:], [40, 10, 9, 8, 7, 6, 5, 4]) == 4  # range does not have to start at 1
    # Scale-free: both axes are normalised.
    assert elbow([10, 20, 30, 40, 50], [1e9, 2e8, 1.5e8, 1.2e8, 1e8]) == 20
    # No point below the chord (straight, concave, flat, too short): the smallest k.
    assert elbow([2, 3, 4, 5], [4, 3, 2, 1]) == 2
    assert elbow([2, 3, 4, 5], [10, 9.5, 8, 1]) == 2
    assert elbow([2, 3, 4], [5, 5, 5]) == 2
    assert elbow([2, 3], [5, 1]) == 2
    with pytest.raises(ValueError, match="strictly increasing"):
        elbow([3, 2, 4], [3, 2, 1])
    with pytest.raises(ValueError, match="same, non-zero length"):
        elbow([2, 3, 4], [3, 2])


def test_elbow_criterion_uses_the_sweeps_inertias(blob_cases):
    Z, _ = blob_cases[(3, 0)]
    res = choose_k(Z, 2, 8, "elbow")
    inertia = values(res, "inertia")
    assert res.k == elbow(sorted(inertia), [inertia[k] for k in sorted(inertia)]) == 3


# ----------------------------------------------------------------------------------------- metrics


def test_metrics_one_row_per_candidate_per_score_and_stability(blob_cases):
    Z, _ = blob_cases[(5, 0)]
    res = choose_k(Z, 2, 9, "silhouette", silhouette_size=1000)
    assert res.k == 5 and res.criterion == "silhouette" and res.seconds > 0
    auto = [m for m in res.metrics if m.scope == "auto_k"]
    assert sorted((m.metric, m.k) for m in auto) == sorted((s, k) for s in SCORES for k in range(2, 10))
    assert all(m.algorithm == "kmeans" for m in res.metrics)
    assert {m.sample_size for m in auto if m.metric == "silhouette"} == {1000}
    assert {m.sample_size for m in auto if m.metric != "silhouette"} == {len(Z)}
    sil = values(res, "silhouette")
    assert max(sil, key=sil.get) == 5
    inertia = values(res, "inertia")
    assert inertia[5] < inertia[4] < inertia[3] < inertia[2]
    (stab,) = [m for m in res.metrics if m.scope == "sample"]
    assert (stab.metric, stab.k, stab.sample_size) == ("stability_ari", 5, len(Z))
    assert stab.value == res.stability_ari > 0.99


def test_dynamic_metrics_include_min_cluster_share_for_every_visited_k(blob_cases):
    Z, _ = blob_cases[(3, 2)]
    res = choose_k(Z, 2, MAX_K, "dynamic", min_cluster_share=0.25)
    assert res.k == 3
    auto = [m for m in res.metrics if m.scope == "auto_k"]
    visited = sorted({m.k for m in auto})
    assert visited == [2, 3, 4]  # grown until the first failure at k=4
    assert sorted((m.metric, m.k) for m in auto) == sorted(
        (s, k) for s in SCORES + ("min_cluster_share",) for k in visited)
    assert res.stability_ari > 0.99


def test_candidate_fits_do_not_depend_on_the_range_swept(blob_cases):
    Z, _ = blob_cases[(3, 0)]
    a = values(choose_k(Z, 2, 4, "calinski_harabasz"), "inertia")
    b = values(choose_k(Z, 3, 6, "calinski_harabasz"), "inertia")
    assert a[3] == b[3] and a[4] == b[4]


def test_max_k_is_capped_at_n_minus_1():
    Z = np.random.default_rng(0).normal(size=(7, 2))
    res = choose_k(Z, 2, 20, "silhouette")
    assert sorted(values(res, "inertia")) == [2, 3, 4, 5, 6]
    assert 2 <= res.k <= 6


def test_progress_is_logged_one_line_per_candidate(blob_cases, caplog):
    Z, _ = blob_cases[(3, 0)]
    caplog.set_level(logging.INFO, logger=A.__name__)
    choose_k(Z, 2, 5, "davies_bouldin")
    lines = [r.getMessage() for r in caplog.records if r.name == A.__name__]
    for k in range(2, 6):
        assert sum(line.startswith(f"auto-k: k={k} inertia=") for line in lines) == 1
    assert any("chose k=3 by davies_bouldin" in line for line in lines)


def test_spherical_on_unit_vectors():
    rng = np.random.default_rng(3)
    dirs = np.eye(6)[:4]
    Z = np.repeat(dirs, 300, axis=0) + rng.normal(scale=0.1, size=(1200, 6))
    Z = Z[rng.permutation(len(Z))]
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    res = choose_k(Z, 2, 8, "silhouette", spherical=True)
    assert res.k == 4 and res.stability_ari > 0.99


# ----------------------------------------------------------------------------------------- scores


def test_silhouette_scores_match_scikit_learn(monkeypatch):
    rng = np.random.default_rng(7)
    X, y = make_blobs(400, n_features=3, centers=4, random_state=7)
    labelings = [y, rng.integers(0, 3, 400), rng.integers(0, 9, 400)]
    sparse = y.copy()
    sparse[sparse == 1] = 5  # absent labels 1, 4
    sparse[0] = 7  # a singleton cluster
    labelings.append(sparse)
    ref = [silhouette_score(X, lab) for lab in labelings]
    np.testing.assert_allclose(silhouette_scores(X, labelings), ref, rtol=0, atol=1e-12)
    # Several row blocks and several groups of labelings give the same result.
    monkeypatch.setattr(silhouette_kernel, "_SIL_BLOCK_BYTES", 8 * 400 * 37)
    monkeypatch.setattr(silhouette_kernel, "_SIL_GROUP_COLS", 9)
    np.testing.assert_allclose(silhouette_scores(X, labelings), ref, rtol=0, atol=1e-12)
    # Undefined (one cluster / every row its own cluster): NaN where scikit-learn raises.
    out = silhouette_scores(X[:5], [np.zeros(5, int), np.arange(5), np.array([0, 0, 1, 1, 1])])
    assert np.isnan(out[0]) and np.isnan(out[1])
    assert out[2] == pytest.approx(silhouette_score(X[:5], [0, 0, 1, 1, 1]), abs=1e-12)


def test_silhouette_scores_of_nested_subsets_share_one_pass():
    """-1 leaves a row out of a labeling: the score is scikit-learn's on the other rows alone."""
    rng = np.random.default_rng(5)
    X, y = make_blobs(900, n_features=4, centers=5, random_state=5)
    noise = rng.random(900) < 0.1
    dens = np.where(noise, -1, y)
    prefix = np.where(np.arange(900) < 300, rng.integers(0, 3, 900), -1)
    got = silhouette_scores(X, [y, dens, prefix, np.full(900, -1), np.where(np.arange(900) < 2, 0, -1)])
    want = [silhouette_score(X, y), silhouette_score(X[~noise], y[~noise]), silhouette_score(X[:300], prefix[:300])]
    np.testing.assert_allclose(got[:3], want, rtol=0, atol=1e-12)
    assert np.isnan(got[3]) and np.isnan(got[4])  # no row; one cluster


def test_silhouette_samples_match_scikit_learn(monkeypatch):
    from sklearn.metrics import silhouette_samples as sk_samples

    X, y = make_blobs(700, n_features=5, centers=6, random_state=3)
    lab = y * 10 - 7  # any integers
    lab[3] = 99  # a singleton: 0
    want = sk_samples(X, lab)
    np.testing.assert_allclose(silhouette_kernel.silhouette_samples(X, lab), want, rtol=0, atol=1e-12)
    monkeypatch.setattr(silhouette_kernel, "_SIL_BLOCK_BYTES", 8 * 700 * 13)  # 54 blocks on the threads
    got = silhouette_kernel.silhouette_samples(X, lab)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert got[3] == 0.0
    with pytest.raises(ValueError, match="2 <= labels <= rows - 1; got 1 labels on 700 rows"):
        silhouette_kernel.silhouette_samples(X, np.zeros(700, int))


def test_calinski_harabasz_and_davies_bouldin_match_scikit_learn():
    X, y = make_blobs(500, n_features=4, centers=5, random_state=2)
    lab = y.copy()
    lab[lab == 2] = 6  # absent labels are ignored, as scikit-learn does
    ch, db = A._ch_db(X, lab, 7)
    assert ch == pytest.approx(calinski_harabasz_score(X, lab), rel=1e-10)
    assert db == pytest.approx(davies_bouldin_score(X, lab), rel=1e-10)


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, needle", [
    (dict(min_k=5, max_k=3), "min_k=5 is larger than max_k=3"),
    (dict(n=4, min_k=4, max_k=6), "the sample has 4 rows: choosing k in [4, 6] needs at least min_k + 1 = 5 rows"),
    (dict(min_k=1), "min_k=1 must be at least 2"),
    (dict(criterion="gap"), "unknown auto-k criterion 'gap'"),
    (dict(criterion="dynamic", min_cluster_share=0.0), "min_cluster_share=0.0 must be in (0, 1)"),
    (dict(criterion="dynamic", percentile=0.0), "percentile=0.0 must be in (0, 100]"),
    (dict(nan=True), "NaN or infinite"),
])
def test_errors(kwargs, needle):
    kwargs = dict(kwargs)
    Z = np.random.default_rng(0).normal(size=(kwargs.pop("n", 50), 3))
    if kwargs.pop("nan", False):
        Z[3, 1] = np.nan
    with pytest.raises(ValueError) as err:
        choose_k(Z, **kwargs)
    assert needle in str(err.value)
