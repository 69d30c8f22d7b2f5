"""Hierarchical clustering of a sample, cut at several levels, and its extension to every row;
Ward's tree over weighted K-means centroids. numpy + scipy only.

* :func:`fit_sample` -- fastcluster's linkage (ward, average, complete, single; the same trees as
  scipy's, which is the test oracle) on a sample, cut with :func:`cut` (scipy's ``cut_tree``
  gives the same partitions but is quadratic or worse: 62 s for 8,000 rows) at the configured
  numbers of clusters. Ward and single linkage run on the points themselves (``linkage_vector``:
  O(s d) memory, 20,000 x 10 in 3 s); average and complete need the condensed distance matrix
  (O(s^2) memory, see :func:`linkage_bytes`). Cuts of one dendrogram are nested: every
  cluster of a finer level lies inside one cluster of each coarser level.
* :func:`extend` -- every row takes the labels of its nearest sampled point under the tree's
  distance (exact pruned search, :mod:`clusterlake.kernels.metric_index`): a sampled row gets exactly its own labels, and every row's
  levels are nested, as the sample's are. (Nearest *level centroid*, the cheaper rule for Ward,
  gives neither: a row between two centroids can land on different branches at two levels.)
  Ward's level centroids are still computed, for profiles and the report.
* :func:`weighted_ward` -- Ward's agglomeration of k centroids with sizes: merging clusters a and
  b costs ``n_a n_b / (n_a + n_b) ||c_a - c_b||^2`` (the increase of the within-cluster sum of
  squares), so the tree is the one Ward would build on all rows if every cluster were kept
  whole. In scipy's linkage format (heights ``sqrt(2 cost)``, as scipy's ward).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from clusterlake.kernels import metric_index
from clusterlake.kernels.distances import METRICS, Metric, euclidean_frame, pairwise, scipy_name, sklearn_rows

LINKAGES = ("ward", "average", "complete", "single")


VECTOR_LINKAGES = ("ward", "single")  # fastcluster.linkage_vector: no distance matrix


def on_points(method: str, metric: Optional[str]) -> bool:
    """Whether fastcluster links the points themselves (no distance matrix): ward (euclidean,
    mahalanobis) and single (any distance)."""
    return (method == "single" and (metric is None or metric in METRICS)) or (
        method == "ward" and metric in (None, "euclidean", "mahalanobis"))  # (a custom distance: the matrix)


def linkage_bytes(n: int, method: str = "average", d: int = 1, metric: Optional[str] = None) -> int:
    """Peak memory of the linkage of n points in d dimensions: for average/complete, the condensed
    distance matrix (float64) twice (fastcluster copies it); for ward/single a few n x d and n x 4
    arrays."""
    if on_points(method, metric):
        return int(8 * n * (2 * d + 8))
    return int(2 * 8 * n * (n - 1) // 2)


def _linkage(X: np.ndarray, method: str, metric: Optional[Metric] = None) -> np.ndarray:
    """fastcluster's linkage of the rows ``X`` under ``metric`` (None: euclidean; mahalanobis
    given as whitened rows). Ward and single linkage run on the points; average and complete on
    scipy's condensed distances (the definitions :mod:`clusterlake.kernels.distances` holds to;
    cosine with all-zero rows from its own, which scipy leaves NaN); single on the points under
    any distance (fastcluster spells chebyshev ``chebychev``)."""
    import fastcluster

    if metric is None:
        if method in VECTOR_LINKAGES:
            return fastcluster.linkage_vector(X, method=method)
        return fastcluster.linkage(X, method=method, metric="euclidean")
    if metric.fn is not None:  # custom: its own distances, every pair, as the condensed matrix
        return fastcluster.linkage(_condensed(X, metric), method=method)
    if metric.name == "cosine" and not np.linalg.norm(X, axis=1).all():
        # a zero row is 1 from everything (kernels.distances), which scipy and fastcluster leave NaN
        if on_points(method, metric.name):
            raise ValueError(f"the hierarchical sample has {int((np.linalg.norm(X, axis=1) == 0).sum())} all-zero "
                             "rows, whose cosine distance single linkage on the points cannot take: use average or "
                             "complete linkage, or leave all-zero rows out of the input")
        return fastcluster.linkage(_condensed(X, metric), method=method)
    name = {"chebyshev": "chebychev"}.get(metric.name, scipy_name(metric)) if on_points(method, metric.name) \
        else scipy_name(metric)
    X = sklearn_rows(X, metric)
    if on_points(method, metric.name):
        return fastcluster.linkage_vector(X, method=method, metric=name, extraarg=metric.p)
    from scipy.spatial.distance import pdist

    return fastcluster.linkage(pdist(X, name, **({"p": metric.p} if metric.name == "minkowski" else {})),
                               method=method)


def _condensed(X: np.ndarray, m: Metric) -> np.ndarray:
    """The condensed distance matrix of ``X`` under ``m`` (as scipy's ``pdist``), a block of rows
    at a time from :func:`~clusterlake.kernels.distances.pairwise`."""
    n = len(X)
    out = np.empty(n * (n - 1) // 2)
    pos, step = 0, max(1, (32 << 20) // (8 * max(1, n)))
    for s0 in range(0, n, step):
        D = pairwise(X[s0:s0 + step], X, m)
        for r in range(len(D)):
            i = s0 + r
            out[pos:pos + n - i - 1] = D[r, i + 1:]
            pos += n - i - 1
    return out


@dataclass
class HierarchyModel:
    method: str
    linkage: np.ndarray  # (s - 1, 4) scipy linkage matrix of the sample (the dendrogram)
    levels: list[int]
    sample_labels: dict[int, np.ndarray]  # level -> (s,) int32 labels of the sample
    sample_points: np.ndarray  # (s, d): for 1-NN extension (non-ward)
    centroids: dict[int, np.ndarray] = field(default_factory=dict)  # ward: level -> (level, d)
    index: Optional[metric_index.MetricIndex] = None  # over sample_points, built on first use
    metric: Optional[Metric] = None  # the distance of the tree and the extension; None = euclidean


def fit_sample(X: np.ndarray, method: str = "ward", levels=(4, 16), metric: Optional[Metric] = None) -> HierarchyModel:
    """The linkage of the sample ``X`` under ``metric`` (None: euclidean; Ward's is Euclidean
    only), its cuts at ``levels`` and the index that extends them."""
    if method not in LINKAGES:
        raise ValueError(f"unknown linkage {method!r} ({' | '.join(LINKAGES)})")
    if metric is not None and metric.name == "euclidean":
        metric = None
    if method == "ward" and metric is not None and (metric.name != "mahalanobis" or metric.fn is not None):
        raise ValueError(f"ward linkage minimises squared euclidean (or mahalanobis) distances; under "
                         f"{metric.describe()} use average, complete or single linkage")
    X = np.ascontiguousarray(X, dtype=np.float64)
    levels = sorted({int(v) for v in levels})
    if not levels or levels[0] < 1:
        raise ValueError(f"levels must be positive numbers of clusters, got {levels}")
    if len(X) < max(2, levels[-1]):
        raise ValueError(f"the hierarchical sample has {len(X)} rows, fewer than the finest level {levels[-1]}")
    Xf, mf = euclidean_frame(X, metric)  # mahalanobis: the whitened rows, euclidean
    sklearn_rows(X, metric)  # jaccard: 0/1 features, checked before anything is linked
    Z = _linkage(Xf, method, mf)
    labels = {lv: cut(Z, lv) for lv in levels}
    cents = {}
    if method == "ward":
        for lv, lab in labels.items():
            cents[lv] = np.stack([X[lab == c].mean(axis=0) for c in range(lv)])
    model = HierarchyModel(method, Z, levels, labels, X, cents, metric=metric)
    model.index = metric_index.build(X, metric)  # once, on the driver: the tasks get it broadcast
    return model


def cut(Z: np.ndarray, n_clusters: int) -> np.ndarray:
    """Labels (0..n_clusters-1) of the n leaves after the first ``n - n_clusters`` merges of the
    linkage ``Z``: exactly ``n_clusters`` clusters even with tied heights, and cuts of one tree are
    nested. One top-down walk over the merges, O(n)."""
    n = len(Z) + 1
    applied = n - int(n_clusters)  # merges 0..applied-1 are done
    label = np.full(2 * n - 1, -1, dtype=np.int64)
    nxt = 0
    if applied == n - 1:  # one cluster: the root
        label[2 * n - 2] = 0
        nxt = 1
    kids = Z[:, :2].astype(np.int64)
    for i in range(n - 2, -1, -1):  # merge i made node n + i
        a, b = kids[i]
        if i >= applied:  # not done at this level: its children are clusters of their own
            label[a], label[b] = nxt, nxt + 1
            nxt += 2
        else:
            label[a] = label[b] = label[n + i]
    # children of undone merges that are themselves undone were numbered too: renumber densely
    leaves = label[:n]
    _, dense = np.unique(leaves, return_inverse=True)
    return dense.astype(np.int32)


def extend(X: np.ndarray, model: HierarchyModel, budget_bytes: int = 64 << 20) -> dict[int, np.ndarray]:
    """Labels at every level for the rows ``X`` (level -> int32 array)."""
    X = np.ascontiguousarray(X)
    if not len(X):
        return {lv: np.zeros(0, np.int32) for lv in model.levels}
    if model.index is None:
        model.index = metric_index.build(model.sample_points, model.metric)
    idx, _ = metric_index.query(model.index, X, budget_bytes)
    return {lv: lab[idx] for lv, lab in model.sample_labels.items()}


def weighted_ward(C: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Ward's linkage of centroids ``C`` weighted by ``sizes`` (scipy format: row i merges
    clusters Z[i,0] and Z[i,1] (ids >= k are earlier merges) at height Z[i,2] into a cluster of
    Z[i,3] weight). A k x k cost matrix updated one row per merge, with each row's minimum kept
    so that finding the cheapest merge costs O(k), not O(k^2): O(k^2) memory, O(k (k + d)) per
    merge (rows whose nearest cluster merged away are searched again). The merges are the
    greedy global argmin's, ties included (first row, then first column)."""
    C = np.asarray(C, dtype=np.float64)
    w = np.asarray(sizes, dtype=np.float64)
    k = len(C)
    if k < 2:
        return np.zeros((0, 4))
    w = np.maximum(w, 1e-12)  # an empty cluster merges first, at no cost
    cent = np.zeros((2 * k - 1, C.shape[1]))
    cent[:k] = C
    wt = np.zeros(2 * k - 1)
    wt[:k] = w
    slot = np.arange(k)  # slot -> node id held there
    active = np.ones(k, dtype=bool)
    sq = (C * C).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (C @ C.T), 0.0)
    cost = (w[:, None] * w[None, :]) / (w[:, None] + w[None, :]) * d2
    np.fill_diagonal(cost, np.inf)
    rmin, rarg = cost.min(axis=1), cost.argmin(axis=1)
    Z = np.zeros((k - 1, 4))
    for step in range(k - 1):
        a = int(np.argmin(rmin))
        b = int(rarg[a])
        if slot[a] > slot[b]:
            a, b = b, a
        ia, ib = slot[a], slot[b]
        nw = wt[ia] + wt[ib]
        # the exact cost of this merge (the matrix's expansion may carry round-off)
        diff = cent[ia] - cent[ib]
        Z[step] = [ia, ib, np.sqrt(2.0 * wt[ia] * wt[ib] / nw * float(diff @ diff)), nw]
        node = k + step
        cent[node] = (wt[ia] * cent[ia] + wt[ib] * cent[ib]) / nw
        wt[node] = nw
        slot[a] = node  # the merge takes a's slot; b's slot is retired
        active[b] = False
        cost[b, :] = cost[:, b] = np.inf
        others = np.flatnonzero(active)
        others = others[others != a]
        if len(others):
            dv = cent[slot[others]] - cent[node]
            ww = wt[slot[others]]
            row = ww * nw / (ww + nw) * np.einsum("ij,ij->i", dv, dv)
            cost[a, others] = cost[others, a] = row
        cost[a, a] = np.inf
        _update_row_minima(cost, rmin, rarg, a, b, others)
    return Z


def _update_row_minima(cost, rmin, rarg, a: int, b: int, others: np.ndarray) -> None:
    """After row/column ``a`` changed and ``b`` retired: each row's minimum and its (first) column."""
    rmin[b], rarg[b] = np.inf, 0
    rmin[a], rarg[a] = cost[a].min(), cost[a].argmin()
    if not len(others):
        return
    stale = others[(rarg[others] == a) | (rarg[others] == b)]  # their nearest changed or left
    if len(stale):
        rmin[stale], rarg[stale] = cost[stale].min(axis=1), cost[stale].argmin(axis=1)
    rest = others[(rarg[others] != a) & (rarg[others] != b)]
    v = cost[rest, a]
    better = (v < rmin[rest]) | ((v == rmin[rest]) & (a < rarg[rest]))
    rmin[rest[better]], rarg[rest[better]] = v[better], a


def parents_from_linkage(Z: np.ndarray, k: int) -> np.ndarray:
    """Parent node id of every node (leaves 0..k-1, merges k..2k-2; the root's parent is -1)."""
    parent = np.full(2 * k - 1, -1, dtype=np.int64)
    for i, (a, b, _, _) in enumerate(Z):
        parent[int(a)] = parent[int(b)] = k + i
    return parent


def centroid_tree(C: np.ndarray, sizes: np.ndarray) -> dict:
    """Ward's tree over K-means centroids weighted by their sizes, in the artifact's tree form:
    ``node_ids`` 0..2k-2 (leaves 0..k-1 are the clusters, k + i the i-th merge), ``parent_ids``
    (-1 for the root), ``centers`` (a merge's centre is the size-weighted mean of its children,
    the mean of all its rows) and ``linkage`` (scipy format, for dendrograms)."""
    C = np.asarray(C, dtype=np.float64)
    k = len(C)
    Z = weighted_ward(C, sizes)
    w = list(np.maximum(np.asarray(sizes, dtype=np.float64), 1e-12))
    centers = list(C)
    for a, b, _, _ in Z:
        a, b = int(a), int(b)
        centers.append((w[a] * centers[a] + w[b] * centers[b]) / (w[a] + w[b]))
        w.append(w[a] + w[b])
    return {"node_ids": np.arange(2 * k - 1, dtype=np.int64), "parent_ids": parents_from_linkage(Z, k),
            "centers": np.stack(centers), "linkage": Z}
