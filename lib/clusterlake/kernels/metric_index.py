"""Exact nearest-point search under any distance of :mod:`clusterlake.kernels.distances` (issue 23).

The extension of the sample passes gives every row the label of its nearest core point (density)
or sampled point (hierarchy), under the pass's distance. :func:`build` and :func:`query` are the
one entry to that search for every distance:

* ``euclidean``: :mod:`clusterlake.kernels.neighbors`' index (Voronoi half-space bounds);
* ``mahalanobis`` is the Euclidean distance of whitened rows (``x L``, ``VI = L L^T``): the same
  index over the whitened points, exact and as fast; so is ``cosine`` when no point is zero: on
  the unit sphere ``d_cos = |u - v|^2 / 2``, the Euclidean index over the normalised points;
* a custom distance (:func:`~clusterlake.kernels.distances.custom`) promises nothing: every point
  is measured (one group of infinite radius), a block of rows at a time;
* the others are pruned by the triangle inequality. :func:`build` splits the points into groups
  around *pivots* (``sqrt(m)`` points drawn at random: the groups follow the data's density) and
  keeps each group's radius; :func:`query` measures every row against the pivots, searches the
  group of its nearest pivot first, then every other group whose ball bound
  ``d(x, pivot) - radius`` does not exceed the row's best distance so far. ``manhattan``,
  ``chebyshev``, ``minkowski`` (``p >= 1``), ``hamming`` and ``jaccard`` (0/1 features) are
  metrics; ``cosine`` (with zero points) is not, but ``sqrt(2 d)`` is (the chord between unit vectors; a zero vector,
  1 from everything, sits at ``sqrt(2)`` from everything, which keeps the bound valid), so its
  bound runs in that space.

Every distance is :func:`clusterlake.kernels.distances.exact`'s (scipy's definitions, from the
differences), so the pruned search equals the brute-force :func:`clusterlake.kernels.distances.nearest`:
the nearest point, ties to the lowest index (hamming and jaccard tie often); the Euclidean index
(euclidean, mahalanobis, cosine) leaves exact ties to any tied point, as it always has. The bound keeps an
allowance for round-off (1e-10 relative; for cosine's square root ``8 sqrt(2 d eps)`` absolute),
so a point that ties is never skipped. Memory: the rows go in blocks whose rows-by-pivots tables take at most half
of the budget, and each group's distance table at most a quarter.

:class:`MetricIndex` is a plain dataclass of numpy arrays and a :class:`Metric` (picklable: the
tasks get it broadcast).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from clusterlake.kernels import neighbors
from clusterlake.kernels.distances import Metric, exact

__all__ = ["MetricIndex", "build", "query"]

_REL_TOL = 1e-10
_EPS = float(np.finfo(np.float64).eps)


def _abs_tol(m: Metric, dim: int) -> float:
    """The bound's absolute allowance: cosine's ``1 - x.y / |x||y|`` errs by ~``dim eps``, which
    the square root of the bound space magnifies to ``sqrt(2 dim eps)`` (8x headroom)."""
    return 8.0 * float(np.sqrt(2.0 * max(1, dim) * _EPS)) if m.name == "cosine" else 0.0
_NO_INDEX = np.iinfo(np.int64).max


@dataclass(eq=False)
class MetricIndex:
    """Points grouped for exact nearest-point search under ``metric`` (see the module doc)."""

    metric: Metric
    points: np.ndarray  # (m, d) float64, each group contiguous (as given for euclidean/mahalanobis)
    order: np.ndarray  # (m,) int64: points[i] is the order[i]-th point given to build()
    starts: np.ndarray  # (G + 1,) int64 group boundaries into points
    pivots: np.ndarray  # (G, d) float64
    radii: np.ndarray  # (G,) float64: the largest bound-space distance of a member to its pivot
    euclid: Optional[neighbors.PointIndex] = None  # euclidean / mahalanobis: over the (whitened) points

    @property
    def n_points(self) -> int:
        return int(len(self.points))

    @property
    def dim(self) -> int:
        return int(self.points.shape[1])


def _bound_space(m: Metric, d: np.ndarray) -> np.ndarray:
    """Distances mapped where the triangle inequality holds (cosine: ``sqrt(2 d)``)."""
    return np.sqrt(2.0 * d) if m.name == "cosine" else d


def _distance_space(m: Metric, t: np.ndarray) -> np.ndarray:
    t = np.maximum(t, 0.0)
    return t * t / 2.0 if m.name == "cosine" else t


def build(points: np.ndarray, metric: Optional[Metric] = None, n_groups: Optional[int] = None,
          seed: int = 0, budget_bytes: int = 64 << 20) -> MetricIndex:
    """The index of ``points`` (m, d) under ``metric`` (None: euclidean)."""
    P = np.ascontiguousarray(points, dtype=np.float64)
    if P.ndim != 2:
        raise ValueError(f"points must be a 2-D array, got shape {P.shape}")
    m = metric if metric is not None else Metric("euclidean")
    n = len(P)
    unit = m.name == "cosine" and n > 0 and bool((np.linalg.norm(P, axis=1) > 0).all())
    if m.name in ("euclidean", "mahalanobis") or unit:
        E = P @ m.W if m.name == "mahalanobis" else (P / np.linalg.norm(P, axis=1)[:, None] if unit else P)
        return MetricIndex(m, P, np.arange(n, dtype=np.int64), np.array([0, n], np.int64), np.zeros((0, P.shape[1])),
                           np.zeros(0), neighbors.build(E))
    G = 1 if m.fn is not None else int(n_groups or min(n, max(1, round(np.sqrt(n)))))
    piv = np.sort(np.random.default_rng(seed).choice(n, G, replace=False)) if n else np.zeros(0, np.int64)
    own, dmin = _nearest_pivot(P, P[piv], m, budget_bytes)
    order = np.argsort(own, kind="stable")
    starts = np.searchsorted(own[order], np.arange(G + 1)).astype(np.int64)
    radii = np.zeros(G)
    np.maximum.at(radii, own, _bound_space(m, dmin))
    if m.fn is not None:  # a custom distance promises no triangle inequality: one group, never skipped
        radii[:] = np.inf
    return MetricIndex(m, P[order], order.astype(np.int64), starts, P[piv], radii)


def _nearest_pivot(P: np.ndarray, pivots: np.ndarray, m: Metric, budget_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    n, G = len(P), len(pivots)
    own, dmin = np.zeros(n, np.int64), np.zeros(n)
    step = int(max(1, budget_bytes // (8 * max(1, G) * 4)))
    for s in range(0, n, step):
        D = exact(P[s:s + step], pivots, m, budget_bytes)
        own[s:s + step] = D.argmin(axis=1)
        dmin[s:s + step] = D[np.arange(len(D)), own[s:s + step]]
    return own, dmin


def query(index: MetricIndex, X: np.ndarray, budget_bytes: int = 64 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Nearest indexed point of every row of ``X``: ``(idx int64, distance float64)``, ``idx``
    into the points as given to :func:`build` (ties: the lowest); an empty index gives -1, inf."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, got shape {X.shape}")
    n = len(X)
    if n and index.n_points and X.shape[1] != index.dim:
        raise ValueError(f"X has {X.shape[1]} columns, the index {index.dim}")
    if index.euclid is not None:
        if index.metric.name == "cosine":
            return _query_sphere(index, X, budget_bytes)
        if index.metric.name == "mahalanobis":
            X = np.asarray(X, dtype=np.float64) @ index.metric.W
        return neighbors.query(index.euclid, X, budget_bytes)
    idx, dist = np.full(n, -1, np.int64), np.full(n, np.inf)
    if n == 0 or index.n_points == 0:
        return idx, dist
    G = len(index.pivots)
    block = int(max(1, (budget_bytes // 2) // (8 * 4 * G + 64)))
    for s in range(0, n, block):
        idx[s:s + block], dist[s:s + block] = _query_block(index, np.asarray(X[s:s + block], dtype=np.float64),
                                                           budget_bytes)
    return idx, dist


def _query_sphere(index: MetricIndex, X: np.ndarray, budget_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine over points that are all non-zero: the nearest on the unit sphere is the Euclidean
    nearest of the normalised rows, at ``d_cos = |u - v|^2 / 2`` from the differences (as HDBSCAN's
    reach is measured: a row identical to a point is exactly 0 from it, where ``1 - x.y / |x||y|``
    may give 2e-16); a zero row is 1 from every point (the lowest index, as brute force)."""
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1)
    idx, dist = np.zeros(len(X), np.int64), np.ones(len(X))
    live = np.flatnonzero(norms > 0)
    if len(live):
        i, e = neighbors.query(index.euclid, X[live] / norms[live, None], budget_bytes)
        idx[live], dist[live] = i, e * e / 2.0
    return idx, dist


def _query_block(index: MetricIndex, Xb: np.ndarray, budget_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    m = index.metric
    T = _bound_space(m, exact(Xb, index.pivots, m, budget_bytes))  # rows x pivots
    empty = np.diff(index.starts) == 0
    lb = T - index.radii
    lb -= _REL_TOL * (T + index.radii) + _abs_tol(m, Xb.shape[1])
    lb = _distance_space(m, lb)  # a lower bound of the distance to any member of the group
    T[:, empty] = lb[:, empty] = np.inf
    own = T.argmin(axis=1)
    best, best_i = np.full(len(Xb), np.inf), np.full(len(Xb), _NO_INDEX, np.int64)
    for g in np.unique(own):
        _search(index, g, Xb, np.flatnonzero(own == g), best, best_i, budget_bytes)
    for g in np.argsort(lb.mean(axis=0), kind="stable"):
        if empty[g]:
            continue
        rows = np.flatnonzero((lb[:, g] <= best) & (own != g))
        if len(rows):
            _search(index, g, Xb, rows, best, best_i, budget_bytes)
    return best_i, best


def _search(index: MetricIndex, g: int, Xb: np.ndarray, rows: np.ndarray, best: np.ndarray, best_i: np.ndarray,
            budget_bytes: int) -> None:
    """Improve ``best``/``best_i`` of ``rows`` with the members of group ``g`` (ties: lowest index)."""
    lo, hi = int(index.starts[g]), int(index.starts[g + 1])
    members, ids = index.points[lo:hi], index.order[lo:hi]
    step = int(max(1, (budget_bytes // 4) // (8 * 2 * (hi - lo))))
    for s in range(0, len(rows), step):
        r = rows[s:s + step]
        D = exact(Xb[r], members, index.metric, budget_bytes // 4)
        dmin = D.min(axis=1)
        imin = np.where(D == dmin[:, None], ids[None, :], _NO_INDEX).min(axis=1)
        better = (dmin < best[r]) | ((dmin == best[r]) & (imin < best_i[r]))
        best[r[better]], best_i[r[better]] = dmin[better], imin[better]
