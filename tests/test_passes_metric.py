"""The density and hierarchical passes under other distances (issue 23): scikit-learn's HDBSCAN and
DBSCAN, scipy's linkage as the oracles; the extension equals brute force under the distance."""

import numpy as np
import pytest
from scipy.cluster.hierarchy import linkage as scipy_linkage
from scipy.spatial.distance import pdist
from sklearn.cluster import DBSCAN, HDBSCAN
from sklearn.metrics import adjusted_rand_score

from clusterlake.kernels import density as Dk
from clusterlake.kernels import hierarchy as Hk
from clusterlake.kernels.distances import metric, nearest, pairwise
from clusterlake.kernels.mst import metric_mst


def _laplace_blobs(seed, n=1200, d=5, k=5):
    rng = np.random.default_rng(seed)
    C = rng.normal(scale=6.0, size=(k, d))
    y = rng.integers(0, k, n)
    return C[y] + rng.laplace(size=(n, d)), y


def _tags(seed, n=900, d=24, k=4):
    rng = np.random.default_rng(seed)
    proto = rng.random((k, d)) < 0.35
    y = rng.integers(0, k, n)
    return (proto[y] ^ (rng.random((n, d)) < 0.06)).astype(np.float64), y


METRICS = [("manhattan", None), ("chebyshev", None), ("minkowski", 3.0), ("cosine", None)]


def _mst_weight(X, core, m):
    """The weight of the minimum spanning tree of the dense mutual-reachability graph (scipy)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    D = np.maximum(np.maximum(pairwise(X, X, m), core[:, None]), core[None, :])
    D[D == 0] = 1e-12  # scipy reads a zero as "no edge": identical rows (tags) are edges of weight 0
    np.fill_diagonal(D, 0)
    return minimum_spanning_tree(csr_matrix(D)).sum()  # (from a dense array it dropped those 1e-12 edges)


@pytest.mark.parametrize("name,p", METRICS)
def test_hdbscan_under_a_metric_equals_scikit_learn(name, p):
    X, _ = _laplace_blobs(1)
    m = metric(name, p=p)
    ours, knn = Dk.hdbscan(X, 8, 15, m)
    ref = HDBSCAN(min_cluster_size=15, min_samples=8, metric=name, **({"metric_params": {"p": p}} if p else {}),
                  algorithm="brute", copy=True).fit(X).labels_
    # the same labels but for rows tied at the edge of a cluster (which the order of tied edges
    # decides; scikit-learn's own trees differ likewise, tests/test_mst.py)
    assert (Dk.first_seen_order(ref) != ours).sum() <= 3
    np.testing.assert_allclose(knn[:, 7], np.sort(pairwise(X, X, m), axis=1)[:, 7], rtol=1e-12)
    _, _, w = metric_mst(X, knn[:, 7], m)
    assert w.sum() == pytest.approx(_mst_weight(X, knn[:, 7], m), rel=1e-12)
    assert len(np.unique(ours[ours >= 0])) >= 3


def test_hdbscan_on_tags_under_jaccard_equals_scikit_learn():
    X, y = _tags(2, d=60)  # (on 24 tags most distances tie and the two trees part ways more)
    m = metric("jaccard")
    ours, knn = Dk.hdbscan(X, 5, 20, m)
    ref = HDBSCAN(min_cluster_size=20, min_samples=5, metric="jaccard", algorithm="brute",
                  copy=True).fit(X.astype(bool)).labels_
    # jaccard distances tie often: which tied edge a tree takes moves rows at the clusters'
    # edges, so the trees are compared by weight and the clusters by agreement
    _, _, w = metric_mst(X, knn[:, 4], m)
    assert w.sum() == pytest.approx(_mst_weight(X, knn[:, 4], m), rel=1e-9)
    both = (ours >= 0) & (ref >= 0)
    assert adjusted_rand_score(ref[both], ours[both]) == 1.0 and both.mean() > 0.9
    assert adjusted_rand_score(y[ours >= 0], ours[ours >= 0]) > 0.9


def test_metric_mst_weights_equal_the_euclidean_prim_and_brute_force():
    X, _ = _laplace_blobs(4, n=400)
    core = np.abs(np.random.default_rng(0).normal(size=400)) + 0.1
    from clusterlake.kernels.mst import mutual_reachability_mst

    _, _, w = metric_mst(X, core, metric("sqeuclidean"))
    _, _, we = mutual_reachability_mst(X, np.sqrt(core))
    np.testing.assert_allclose(np.sort(np.sqrt(w)), np.sort(we), rtol=1e-9)
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial.distance import cdist

    D = np.maximum(np.maximum(cdist(X, X, "cityblock"), core[:, None]), core[None, :])
    np.fill_diagonal(D, 0)
    _, _, wm = metric_mst(X, core, metric("manhattan"))
    assert wm.sum() == pytest.approx(minimum_spanning_tree(D).sum(), rel=1e-12)


@pytest.mark.parametrize("algorithm", ["hdbscan", "dbscan"])
@pytest.mark.parametrize("name,p", METRICS[:2] + [("mahalanobis", None)])
def test_density_extension_is_the_nearest_core_point_under_the_metric(algorithm, name, p):
    X, _ = _laplace_blobs(7, n=1500)
    m = metric(name, p=p, VI=np.diag(1.0 / X.var(axis=0)) if name == "mahalanobis" else None)
    model = Dk.fit_sample(X[:1000], algorithm, None, 6, 12 if algorithm == "hdbscan" else None, metric=m)
    if algorithm == "dbscan":
        Xf = X[:1000] / X.std(axis=0) if name == "mahalanobis" else X[:1000]
        ref = DBSCAN(eps=model.eps, min_samples=6, metric="euclidean" if name == "mahalanobis" else name).fit(Xf)
        assert adjusted_rand_score(ref.labels_, model.sample_labels) == 1.0
    labels, dist = Dk.extend(X[1000:], model, budget_bytes=1 << 20)
    i, d, _, _ = nearest(X[1000:], model.core_points, m)
    np.testing.assert_allclose(dist, d, rtol=1e-9)
    expect = np.where(d <= model.core_reach[i] * (1 + 1e-12), model.core_labels[i], -1)
    assert (labels == expect).mean() > 0.999  # near-ties of the reach aside
    assert (labels >= 0).mean() > 0.8


@pytest.mark.parametrize("method", ["average", "complete", "single"])
@pytest.mark.parametrize("name,p", METRICS + [("jaccard", None), ("hamming", None)])
def test_linkage_under_a_metric_equals_scipy_and_extends_by_the_nearest_point(method, name, p):
    X, _ = _tags(3, n=300) if name in ("jaccard", "hamming") else _laplace_blobs(3, n=300)
    m = metric(name, p=p)
    model = Hk.fit_sample(X[:200], method, (3, 6), metric=m)
    ref = scipy_linkage(pdist(X[:200].astype(bool) if name == "jaccard" else X[:200],
                              {"manhattan": "cityblock"}.get(name, name), **({"p": p} if p else {})), method)
    if name in ("jaccard", "hamming"):  # tied distances: the merge order of ties differs, not the clusters
        assert adjusted_rand_score(Hk.cut(ref, 3), model.sample_labels[3]) > 0.95
    else:
        np.testing.assert_allclose(model.linkage[:, 2], ref[:, 2], rtol=1e-9)
    out = Hk.extend(X[200:], model, budget_bytes=1 << 20)
    i, _, _, _ = nearest(X[200:], X[:200], m)
    for lv in (3, 6):
        np.testing.assert_array_equal(out[lv], model.sample_labels[lv][i])


def test_ward_is_refused_under_manhattan_but_runs_whitened_under_mahalanobis():
    X, _ = _laplace_blobs(5, n=200)
    with pytest.raises(ValueError, match="ward linkage minimises squared euclidean .* use average, complete or single"):
        Hk.fit_sample(X, "ward", (3,), metric=metric("manhattan"))
    VI = np.diag(1.0 / X.var(axis=0))
    model = Hk.fit_sample(X, "ward", (3,), metric=metric("mahalanobis", VI=VI))
    ref = scipy_linkage(X / X.std(axis=0), "ward")
    np.testing.assert_allclose(model.linkage[:, 2], ref[:, 2], rtol=1e-9)


def test_cosine_hdbscan_with_zero_rows_and_duplicates_keeps_its_core_points():
    """Zero rows (1 from everything under cosine) take the metric path (its tree is the minimum
    one); min_samples identical rows have a core distance of 0, and the extension must still put
    every core point in its cluster (1 - x.y / |x||y| of identical rows can be 2e-16, not 0)."""
    X, _ = _laplace_blobs(6, n=600)
    X[:4] = 0.0
    m = metric("cosine")
    labels, knn = Dk.hdbscan(X, 5, 15, m)
    _, _, w = metric_mst(X, knn[:, 4], m)
    assert w.sum() == pytest.approx(_mst_weight(X, knn[:, 4], m), rel=1e-9)
    ref = HDBSCAN(min_cluster_size=15, min_samples=5, metric="cosine", algorithm="brute", copy=True).fit(X).labels_
    assert (Dk.first_seen_order(ref) != labels).sum() <= 3
    tags = np.repeat(np.array([[1, 1, 1, 1, 1.0, 0], [1, 0, 1, 0, 1, 1], [0, 1, 0, 1, 1, 1]]), 12, axis=0)
    model = Dk.fit_sample(tags, "hdbscan", None, 5, 6, metric=m)
    lab, dist = Dk.extend(model.core_points, model)
    assert (model.core_reach == 0).all() and len(model.core_points) == 36
    np.testing.assert_array_equal(lab, model.core_labels)
    from clusterlake.kernels.assignment import AssignmentRule

    served = AssignmentRule(model.core_points[:3], density=model, small_search=True)(model.core_points)
    np.testing.assert_array_equal(served.density_label, model.core_labels)  # brute cosine: 2e-16 from itself


def test_linkage_under_cosine_with_zero_rows_takes_them_as_one_from_everything():
    X, _ = _laplace_blobs(8, n=120)
    X[:3] = 0.0
    m = metric("cosine")
    model = Hk.fit_sample(X, "average", (3,), metric=m)
    D = pairwise(X, X, m)
    ref = scipy_linkage(D[np.triu_indices(len(X), 1)], "average")
    np.testing.assert_allclose(model.linkage[:, 2], ref[:, 2], rtol=1e-9)
    with pytest.raises(ValueError, match="3 all-zero rows, whose cosine distance single linkage"):
        Hk.fit_sample(X, "single", (3,), metric=m)
