"""Hierarchical clustering of a sample, cut at several levels, and its extension to every row;
Ward's tree over weighted K-means centroids. numpy + scipy only.

* :func:`fit_sample` -- scipy ``linkage`` (ward, average, complete, single) on a sample, cut with
  ``cut_tree`` at the configured numbers of clusters. Cuts of one dendrogram are nested: every
  cluster of a finer level lies inside one cluster of each coarser level.
* :func:`extend` -- ward: every row goes to the nearest level centroid (Ward's clusters are
  summarised by their means); the other linkages: the label of the nearest sampled point.
* :func:`weighted_ward` -- Ward's agglomeration of k centroids with sizes: merging clusters a and
  b costs ``n_a n_b / (n_a + n_b) ||c_a - c_b||^2`` (the increase of the within-cluster sum of
  squares), so the tree is the one Ward would build on all rows if every cluster were kept
  whole. In scipy's linkage format (heights ``sqrt(2 cost)``, as scipy's ward).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clusterlake.kernels.kmeans import nearest, row_sq_norms

LINKAGES = ("ward", "average", "complete", "single")


def linkage_bytes(n: int) -> int:
    """Peak memory of scipy's linkage on n points: the condensed distance matrix (float64) twice."""
    return int(2 * 8 * n * (n - 1) // 2)


@dataclass
class HierarchyModel:
    method: str
    linkage: np.ndarray  # (s - 1, 4) scipy linkage matrix of the sample (the dendrogram)
    levels: list[int]
    sample_labels: dict[int, np.ndarray]  # level -> (s,) int32 labels of the sample
    sample_points: np.ndarray  # (s, d): for 1-NN extension (non-ward)
    centroids: dict[int, np.ndarray] = field(default_factory=dict)  # ward: level -> (level, d)


def fit_sample(X: np.ndarray, method: str = "ward", levels=(4, 16)) -> HierarchyModel:
    from scipy.cluster.hierarchy import cut_tree, linkage

    if method not in LINKAGES:
        raise ValueError(f"unknown linkage {method!r} ({' | '.join(LINKAGES)})")
    X = np.ascontiguousarray(X, dtype=np.float64)
    levels = sorted({int(v) for v in levels})
    if not levels or levels[0] < 1:
        raise ValueError(f"levels must be positive numbers of clusters, got {levels}")
    if len(X) < max(2, levels[-1]):
        raise ValueError(f"the hierarchical sample has {len(X)} rows, fewer than the finest level {levels[-1]}")
    Z = linkage(X, method=method)
    cuts = cut_tree(Z, n_clusters=levels)
    labels = {lv: cuts[:, j].astype(np.int32) for j, lv in enumerate(levels)}
    cents = {}
    if method == "ward":
        for lv, lab in labels.items():
            cents[lv] = np.stack([X[lab == c].mean(axis=0) for c in range(lv)])
    return HierarchyModel(method, Z, levels, labels, X, cents)


def extend(X: np.ndarray, model: HierarchyModel, budget_bytes: int = 64 << 20) -> dict[int, np.ndarray]:
    """Labels at every level for the rows ``X`` (level -> int32 array)."""
    X = np.ascontiguousarray(X)
    if not len(X):
        return {lv: np.zeros(0, np.int32) for lv in model.levels}
    xs = row_sq_norms(X)
    if model.method == "ward":
        return {lv: nearest(X, C, xs)[0].astype(np.int32) for lv, C in model.centroids.items()}
    m = len(model.sample_points)
    block = int(max(64, min(65536, budget_bytes // (12 * m))))
    idx, _ = nearest(X, model.sample_points, xs, block_rows=block)
    return {lv: lab[idx] for lv, lab in model.sample_labels.items()}


def weighted_ward(C: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Ward's linkage of centroids ``C`` weighted by ``sizes`` (scipy format: row i merges
    clusters Z[i,0] and Z[i,1] (ids >= k are earlier merges) at height Z[i,2] into a cluster of
    Z[i,3] weight). O(k^3), for the k of a K-means model."""
    C = np.asarray(C, dtype=np.float64)
    w = np.asarray(sizes, dtype=np.float64)
    k = len(C)
    if k < 2:
        return np.zeros((0, 4))
    if (w <= 0).any():
        w = np.maximum(w, 1e-12)  # an empty cluster merges first, at no cost
    active = list(range(k))
    ids = list(range(k))
    cent = [c for c in C]
    wt = list(w)
    Z = np.zeros((k - 1, 4))
    for step in range(k - 1):
        A = np.stack([cent[i] for i in active])
        W = np.array([wt[i] for i in active])
        d2 = ((A[:, None, :] - A[None, :, :]) ** 2).sum(-1)
        cost = (W[:, None] * W[None, :]) / (W[:, None] + W[None, :]) * d2
        np.fill_diagonal(cost, np.inf)
        a, b = np.unravel_index(np.argmin(cost), cost.shape)
        a, b = (a, b) if ids[active[a]] < ids[active[b]] else (b, a)
        ia, ib = active[a], active[b]
        nw = wt[ia] + wt[ib]
        Z[step] = [ids[ia], ids[ib], np.sqrt(2.0 * cost[a, b]), nw]
        cent.append((wt[ia] * cent[ia] + wt[ib] * cent[ib]) / nw)
        wt.append(nw)
        ids.append(k + step)
        active = [i for i in active if i not in (ia, ib)] + [len(cent) - 1]
    return Z


def parents_from_linkage(Z: np.ndarray, k: int) -> np.ndarray:
    """Parent node id of every node (leaves 0..k-1, merges k..2k-2; the root's parent is -1)."""
    parent = np.full(2 * k - 1, -1, dtype=np.int64)
    for i, (a, b, _, _) in enumerate(Z):
        parent[int(a)] = parent[int(b)] = k + i
    return parent
