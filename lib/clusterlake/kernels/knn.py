"""Every row's distances to its k nearest rows of the same sample, exact and pruned (numpy only).

HDBSCAN's core distances (:func:`clusterlake.kernels.density.hdbscan`) need each sampled row's
``k`` nearest rows. scikit-learn's brute search measures every pair (0.55 s on 20,000 rows x 17
dimensions, on two cores) and returns the GEMM expansion's distances (off by up to ~1e-7 from
the exact ones on this data). :func:`self_knn_distances` measures far fewer pairs on clustered
data, and returns exact distances:

1. the rows are grouped by k-means (:func:`clusterlake.kernels.neighbors.build`: Voronoi cells of
   ``G`` centres, each with its radius and slack);
2. *seed*: each group's rows are measured against the nearest groups (by centre distance, its
   own first) until they hold ``k + 2`` rows: the k-th distance found is an upper bound ``u`` of
   each row's true k-th distance;
3. *search*: a row is measured against another group ``h`` only if its lower bound to every
   member of ``h`` is below its ``u``: the larger of the ball bound ``|y - c_h| - radius_h`` and
   the Voronoi hyperplane bound ``(|y - c_h|^2 - |y - c_g|^2 - slack_h) / (2 |c_h - c_g|)``
   (``c_g`` the row's own group's centre; in 8 and more dimensions it prunes far more than the
   ball; :func:`~clusterlake.kernels.neighbors.group_bounds`). One GEMM per group and row
   block, never per row; the distances below ``u`` are kept
   and each row's ``k + 2`` best by the expansion re-measured exactly from the differences, sorted
   (groups on two threads);
4. if a tenth of the groups measured more than a quarter of their pairs (data without clusters),
   or the groups' own pairs alone are more than that (a few large groups: many identical rows),
   the brute search, whose pairs cost about a third as much, is used instead.

Measured on 20,000 rows, k=10 (two cores): the embedded sample's 8 model dimensions 0.55 s (the
brute search: the former per-group plan measured a third of the pairs) -> 0.28 s; 17-D blobs
0.23 -> 0.20 s; 100,000 rows of 17-D blobs 2.8 -> 1.8 s, 200,000 rows 13 -> 5.2 s. The squared
norms ride in the GEMM (``[p, |p|^2, 1] . [-2q; 1; |q|^2]``) and a group's columns are a slice:
each distance costs one GEMM entry and one comparison.

Exactness: the bounds carry the expansion's round-off
(:func:`~clusterlake.kernels.neighbors.err_coef` times the squared norms, measured from the mean
of the rows), so no row that could be among the k nearest is left out; the distances returned
are computed from the differences (the brute search's too). Near-ties within the expansion's round-off (~1e-13 relative) may be ordered
differently than exact arithmetic would, which changes no distance by more than that.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from clusterlake.kernels.neighbors import err_coef, group_bounds

__all__ = ["metric_knn_distances", "self_knn", "self_knn_distances"]

_MIN_ROWS = 5000  # below this many rows the brute search is as fast
_BLOCK = 1 << 22  # distances per block of rows (32 MiB of float64)
_MAX_SHARE = 1 / 4  # of all pairs: above it the brute search is used (its pairs cost ~a third as much)


def self_knn_distances(X: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)`` distances of every row of ``X`` to its ``k`` nearest rows of ``X`` (itself
    included, at 0), ascending: what ``NearestNeighbors(n_neighbors=k).fit(X).kneighbors(X)[0]``
    returns, computed exactly."""
    return self_knn(X, k)[0]


def self_knn(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, object]:
    """:func:`self_knn_distances` with the neighbours' row numbers ``(n, k)`` (among rows at the
    same distance, in no particular order) and the cells it grouped the rows by (a
    :class:`~clusterlake.kernels.neighbors.PointIndex`, None below 5,000 rows, where every pair is
    measured):
    ``(distances, rows, index)``."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    n = len(X)
    k = int(min(max(1, k), n))
    if n < _MIN_ROWS:
        return (*_brute(X, k), None)
    from clusterlake.kernels.neighbors import build

    index = build(X)
    sizes = np.diff(index.starts).astype(np.float64)
    if (sizes * sizes).sum() > _MAX_SHARE * n * n:  # a few large groups (many identical rows)
        return (*_brute(X, k), index)
    cells = _Cells(index)
    out, near = np.empty((n, k)), np.empty((n, k), np.int64)
    groups = [int(g) for g in np.random.default_rng(0).permutation(index.n_groups) if index.starts[g + 1] > index.starts[g]]
    probe = groups[: max(1, len(groups) // 10)]  # any tenth of the groups tells the share of pairs measured
    pairs = done = 0
    with _one_blas_thread(), ThreadPoolExecutor(max(1, min(2, os.cpu_count() or 1))) as pool:
        for todo in (probe, groups[len(probe):]):
            for rows, d, j, p in pool.map(lambda g: _search(cells, g, k), todo):
                out[index.order[rows]], near[index.order[rows]] = d, index.order[j]
                pairs, done = pairs + p, done + len(rows)
            if todo is probe and pairs > _MAX_SHARE * n * done:  # data without clusters: brute is cheaper
                break
        else:
            return out, near, index
    return (*_brute(X, k), index)


def metric_knn_distances(X: np.ndarray, k: int, m) -> np.ndarray:
    """:func:`self_knn_distances` under the distance ``m`` (a
    :class:`~clusterlake.kernels.distances.Metric`, not mahalanobis: whiten the rows for it), by
    scikit-learn's search for that distance (a k-d tree for manhattan, chebyshev and minkowski:
    1.25 s on 20,000 x 16 under manhattan, against 4.0 s measuring every pair), on two threads.
    Cosine: the Euclidean search on the unit sphere, where ``d_cos = |x - y|^2 / 2`` (unless a row
    is zero, 1 from everything: then scikit-learn's brute search). A custom distance: every pair."""
    from sklearn.neighbors import NearestNeighbors

    from clusterlake.kernels.distances import sklearn_args, sklearn_rows

    X = np.ascontiguousarray(X, dtype=np.float64)
    n = len(X)
    k = int(min(max(1, k), n))
    if m.fn is not None:  # a custom distance: every pair, a block of rows at a time
        from clusterlake.kernels.distances import pairwise

        out = np.empty((n, k))
        step = int(max(1, (32 << 20) // (8 * max(1, n))))
        for s in range(0, n, step):
            D = pairwise(X[s:s + step], X, m)
            out[s:s + step] = np.sort(np.partition(D, k - 1, axis=1)[:, :k], axis=1)
        return out
    if m.name == "cosine":
        norms = np.linalg.norm(X, axis=1)
        if (norms > 0).all():
            e = self_knn_distances(X / norms[:, None], k)
            return e * e / 2.0
    Xs = sklearn_rows(X, m)
    d, _ = NearestNeighbors(n_neighbors=k, n_jobs=max(1, min(2, os.cpu_count() or 1)), **sklearn_args(m)).fit(Xs).kneighbors(Xs)
    return d


def _brute(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's brute search (every pair, by the expansion), its distances re-measured from
    the differences and re-sorted: exact, as the pruned search's."""
    from sklearn.neighbors import NearestNeighbors

    _, j = NearestNeighbors(n_neighbors=k, algorithm="brute", n_jobs=-1).fit(X).kneighbors(X)
    d = np.empty(j.shape)
    for s in range(0, len(X), 4096):  # ~4096 k d floats of differences at a time
        diff = X[s:s + 4096, None, :] - X[j[s:s + 4096]]
        d[s:s + 4096] = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    o = np.argsort(d, axis=1, kind="stable")
    return np.take_along_axis(d, o, axis=1), np.take_along_axis(j, o, axis=1).astype(np.int64)


def _one_blas_thread():
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


class _Cells:
    """The grouped rows in the index's frame and the tables every group's search reads."""

    def __init__(self, index):
        self.index, self.st = index, index.starts
        self.Ps = index.points - index.shift
        self.sq = np.einsum("ij,ij->i", self.Ps, self.Ps)
        n = len(self.Ps)  # [p, |p|^2, 1] . [-2q; 1; |q|^2] = |p - q|^2: one GEMM, no elementwise pass
        self.A = np.hstack([self.Ps, self.sq[:, None], np.ones((n, 1))])
        self.B = np.ascontiguousarray(np.hstack([-2.0 * self.Ps, np.ones((n, 1)), self.sq[:, None]]).T)
        self.cc = index.centre_distances()
        self.sizes = np.diff(self.st)
        self.cols = [np.arange(self.st[h], self.st[h + 1]) for h in range(index.n_groups)]
        self.sq_max = float(self.sq.max())

    def d2(self, rows: np.ndarray, cols) -> np.ndarray:
        """Squared distances by the expansion (shifted frame), rows x cols (positions, or a slice:
        a group's columns are contiguous)."""
        return self.A[rows] @ self.B[:, cols]

    def group(self, h: int) -> slice:
        return slice(int(self.st[h]), int(self.st[h + 1]))


def _search(c: _Cells, g: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Group ``g``'s rows (positions in ``index.points``), their k nearest distances, those
    neighbours' positions and the pairs measured: the nearest groups holding ``k + 2`` rows
    first, then each other group for the rows whose lower bound to it is below their k-th
    distance in those (the distances below it kept); the ``k + 2`` best by the expansion
    re-measured exactly. In blocks of rows of at most :data:`_BLOCK` distances (a group of many
    identical rows is large)."""
    near = np.argsort(c.cc[g], kind="stable")
    near = np.r_[g, near[near != g]]
    m = int(min(k + 2, len(c.Ps)))
    first = near[: int(np.searchsorted(np.cumsum(c.sizes[near]), m)) + 1]
    cols = np.concatenate([c.cols[h] for h in first])
    step = max(1, _BLOCK // max(1, len(cols)))
    parts = [_search_rows(c, g, c.cols[g][s:s + step], k, m, near[len(first):], cols)
             for s in range(0, int(c.sizes[g]), step)]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]), sum(p[3] for p in parts))


def _search_rows(c: _Cells, g: int, rows: np.ndarray, k: int, m: int, rest: np.ndarray, cols: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """:func:`_search` for a block ``rows`` of group ``g``: ``m`` candidates kept per row, ``cols``
    the seed's rows, ``rest`` the other groups, nearest first."""
    cd, cj = _best(c.d2(rows, cols), np.broadcast_to(cols, (len(rows), len(cols))), m)
    allow = err_coef(c.Ps.shape[1]) * 2.0 * (c.sq[rows] + c.sq_max)  # twice: the seed's and a rival's round-off
    u2 = np.partition(cd, k - 1, axis=1)[:, k - 1] + allow  # >= each row's true k-th distance, squared
    pairs = len(rows) * len(cols)
    rest = rest[np.maximum(c.cc[g, rest] - c.index.radii[g] - c.index.radii[rest], 0.0) ** 2 < u2.max()]
    if len(rest):
        lb = group_bounds(c.index, g, c.Ps[rows], rest)
        lb2 = np.where(lb > 0, lb * lb, -1.0)
        extra = []  # (row, column, squared distance) below the row's bound, from the other groups
        for j, h in enumerate(rest):
            found = np.flatnonzero(lb2[:, j] < u2)
            step = max(1, _BLOCK // max(1, int(c.sizes[h])))
            for sel in (found[s:s + step] for s in range(0, len(found), step)):
                D2 = c.d2(rows[sel], c.group(h))
                pairs += D2.size
                hit = np.flatnonzero(D2 < u2[sel, None])  # (cheaper than the 2-D nonzero)
                r, q = np.divmod(hit, D2.shape[1])
                extra.append((sel[r], q + c.st[h], D2.ravel()[hit]))
        if extra:
            cd, cj = _merge(cd, cj, extra, m)
    diff = c.index.points[rows][:, None, :] - c.index.points[cj]
    d = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    o = np.argsort(d, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(d, o, axis=1), np.take_along_axis(cj, o, axis=1), pairs


def _merge(cd: np.ndarray, cj: np.ndarray, extra: list, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``m`` smallest among its candidates ``cd``/``cj`` (rows x m) and the ``extra``
    ``(row, position, squared distance)`` triples."""
    r = len(cd)
    rr = np.concatenate([np.repeat(np.arange(r), m)] + [e[0] for e in extra])
    jj = np.concatenate([cj.ravel()] + [e[1] for e in extra])
    dd = np.concatenate([cd.ravel()] + [e[2] for e in extra])
    o = np.lexsort((dd, rr))
    starts = np.r_[0, np.cumsum(np.bincount(rr, minlength=r))[:-1]]
    take = o[starts[:, None] + np.arange(m)[None, :]]
    return dd[take], jj[take]


def _best(D2: np.ndarray, J: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``m`` smallest of ``D2`` (unordered) and their columns' positions ``J``."""
    if D2.shape[1] <= m:
        return D2.copy(), np.array(J)
    pick = np.argpartition(D2, m - 1, axis=1)[:, :m]
    return np.take_along_axis(D2, pick, axis=1), np.take_along_axis(J, pick, axis=1)
