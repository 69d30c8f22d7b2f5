"""Density-Based Clustering Validation (DBCV; Moulavi et al., SDM 2014), numpy only (issue 23).

The score of a density clustering (noise allowed) that the job uses to choose HDBSCAN's
``min_samples`` and ``min_cluster_size`` when the user sets neither
(:func:`clusterlake.kernels.density.choose_parameters`). As the paper and the reference
implementation (``hdbscan.validity.validity_index``, the test oracle) define it, for rows of
dimension ``d``:

* every member's *all-points core distance* in its cluster ``c``:
  ``(sum_{j in c, d_ij > 0} d_ij^-d / (|c| - 1))^(-1/d)``;
* the cluster's minimum spanning tree under the mutual reachability
  ``max(core_i, core_j, d_ij)``; its *internal* nodes are those of degree > 1, its *density
  sparseness* the heaviest edge between two internal nodes (the heaviest edge of all, if none);
* the *density separation* of two clusters: the smallest mutual reachability between their
  internal nodes;
* a cluster's validity ``(min separation - sparseness) / max(min separation, sparseness)``, and
  the score their mean weighted by size over **all** rows (noise included, so noise costs).

Between -1 and 1, higher is better; NaN with fewer than two clusters (no separation). A cluster
of one scored row (the reference returns NaN for it) is counted as noise. Nothing is
held as a full matrix: the core distances and separations go a block of rows at a time, the
trees are the job's own Prim (:mod:`clusterlake.kernels.mst`), so a few thousand rows score in a
fraction of a second.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from clusterlake.kernels.distances import Metric, euclidean_frame, exact

__all__ = ["dbcv"]

_BLOCK = 16 << 20  # bytes of one block of distances


def dbcv(X: np.ndarray, labels: np.ndarray, metric: Optional[Metric] = None) -> float:
    """The DBCV score of ``labels`` (-1 = noise) on the rows ``X`` under ``metric`` (None: euclidean)."""
    X, labels = np.ascontiguousarray(X, dtype=np.float64), np.asarray(labels)
    d = X.shape[1]
    X, m = euclidean_frame(X, metric)
    m = m or Metric("euclidean")
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    ids = [c for c, cnt in zip(ids, counts) if cnt >= 2]  # a one-row cluster has no density: noise, here
    if len(ids) < 2:
        return float("nan")
    parts = []  # (rows, core distances, internal nodes, sparseness)
    for c in ids:
        Xc = X[labels == c]
        core = _all_points_core(Xc, m, d)
        parts.append((Xc, core, *_internal_tree(Xc, core, m)))
    k = len(parts)
    sep = np.full((k, k), np.inf)
    for i in range(k):
        for j in range(i + 1, k):
            sep[i, j] = sep[j, i] = _separation(parts[i], parts[j], m)
    score = 0.0
    for (Xc, _, _, sparse), s in zip(parts, sep.min(axis=1)):
        score += len(Xc) / len(X) * (s - sparse) / max(s, sparse)
    return float(score)


def _all_points_core(Xc: np.ndarray, m: Metric, d: int) -> np.ndarray:
    """Every member's all-points core distance, in log space: ``sum d_ij^-d`` overflows (or
    underflows) once ``d`` is in the hundreds (768-d embeddings), where the reference returns
    inf or 0; ``-(logsumexp(-d log d_ij) - log(n - 1)) / d`` is the same number wherever the
    reference's is finite. Zero distances (duplicates) are left out, as the reference does."""
    from scipy.special import logsumexp

    n = len(Xc)
    if n < 2:
        return np.zeros(n)
    lse = np.full(n, -np.inf)
    step = max(1, _BLOCK // (8 * n))
    for s in range(0, n, step):
        D = exact(Xc[s:s + step], Xc, m)  # from the differences: identical rows exactly 0
        with np.errstate(divide="ignore"):
            lse[s:s + step] = logsumexp(np.where(D > 0, -d * np.log(np.where(D > 0, D, 1.0)), -np.inf), axis=1)
    if np.isneginf(lse).all():  # every member identical
        return np.zeros(n)
    return np.exp(-(lse - np.log(n - 1)) / d)


def _internal_tree(Xc: np.ndarray, core: np.ndarray, m: Metric) -> tuple[np.ndarray, float]:
    """The internal nodes (degree > 1) of the cluster's mutual-reachability tree and its density
    sparseness.

    The tree's weights are unique, its edges are not: where a node's core distance dominates, it
    is equally far from many tree nodes. The reference takes, for every node in the order Prim
    adds it, the lowest-numbered node already in the tree at that weight (``numpy.isclose``) as its
    parent; so do we, as the degrees (and so the internal nodes) depend on it."""
    from clusterlake.kernels.mst import metric_mst, mutual_reachability_mst

    n = len(Xc)
    if n < 2:
        return np.arange(n), 0.0
    src, b, w = mutual_reachability_mst(Xc, core) if m.name == "euclidean" else metric_mst(Xc, core, m)
    order = np.r_[0, b]
    a = np.empty(n - 1, np.int64)
    for i in range(n - 1):  # one vectorised row per added node (a cluster of the scoring sample)
        earlier = np.sort(order[:i + 1])
        mr = np.maximum(np.maximum(exact(Xc[b[i]:b[i] + 1], Xc[earlier], m)[0], core[earlier]), core[b[i]])
        hit = np.flatnonzero(np.isclose(mr, w[i]))
        a[i] = earlier[hit[0]] if len(hit) else src[i]  # (an asymmetric custom distance: Prim's own parent)
    degree = np.bincount(np.r_[a, b], minlength=n)
    internal = np.flatnonzero(degree > 1)
    inner = (degree[a] > 1) & (degree[b] > 1)
    return (internal if len(internal) else np.arange(n)), float(w[inner].max() if inner.any() else w.max())


def _separation(p: tuple, q: tuple, m: Metric) -> float:
    (Xp, cp, ip, _), (Xq, cq, iq, _) = p, q
    A, B, ca, cb = Xp[ip], Xq[iq], cp[ip], cq[iq]
    best = np.inf
    step = max(1, _BLOCK // (8 * max(1, len(B))))
    for s in range(0, len(A), step):
        D = exact(A[s:s + step], B, m)
        np.maximum(D, ca[s:s + step, None], out=D)
        np.maximum(D, cb[None, :], out=D)
        best = min(best, float(D.min()))
    return best
