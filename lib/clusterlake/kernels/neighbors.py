"""Exact nearest-neighbour index for the "extend sample labels to every row" passes (pure numpy).

The extension passes (:func:`clusterlake.kernels.density.extend`, the nearest-sampled-point rule
of :mod:`clusterlake.kernels.hierarchy`) need, for every row, the nearest of ``m`` reference
points (``m`` ~ 1e5, ``d`` ~ 16). The brute-force blocked GEMM
(:func:`~clusterlake.kernels.kmeans.nearest`) is bound by the ``n x m`` distance block; this
module prunes it:

* :func:`build` (driver) splits the points into ``G`` groups by a few Lloyd iterations of k-means
  and then assigns every point to its nearest centre, so the groups are the Voronoi cells of their
  centres. The points are stored reordered so that each group is contiguous, with the centres, the
  radii and a tiny per-group *Voronoi slack* (below).
* :func:`query` (tasks) handles the rows block by block; per block it

  1. finds every row's nearest centre (one ``n x G`` GEMM) and sorts the rows by it;
  2. *phase 1*: searches every row in the group of its nearest centre (a Python loop over the
     groups, never over rows; one small GEMM per group and chunk) -> an upper bound ``best``;
  3. computes for every (row, group) pair the *hyperplane* lower bound
     ``lb = (|y - c_g|^2 - |y - c_a|^2 - slack_g) / (2 |c_g - c_a|)`` (``a`` the row's nearest
     centre) as one more GEMM, and keeps the pairs with ``lb < best``;
  4. *phase 2*: one loop over the groups searches the kept pairs and improves ``best``. The pairs
     are first screened with a float32 GEMM: ``min_p S32 + |y - c_g|^2`` minus a rigorous bound of
     the float32 round-off is a lower bound of the group's nearest squared distance, and only the
     rows for which it could beat ``best`` (~7% of the pairs on 16-D blobs) are searched again in
     float64 (half the cost of a float64 search per pair).

  The bound holds because a member ``p`` of group ``g`` satisfies
  ``|p - c_g|^2 - |p - c_a|^2 <= slack_g`` for every centre ``a`` (Voronoi cell; ``slack_g`` ~ 1e-13
  covers the round-off of the assignment), i.e. lies in a half-space whose distance from ``y`` is
  ``lb``. In 16-D it prunes far more than the ball bound ``|y - c_g| - radius_g`` (measured: 9
  groups searched per row instead of 36 on Gaussian blobs; in 2-D and 5-D likewise), which is
  therefore not used by :func:`query` (``radii`` is kept for diagnostics).

Exactness: every decision runs in float64 (float32 rows are converted block by block; the float32
screen of phase 2 only discards pairs it proves cannot win), in a frame
shifted by the mean of the points (``shift``); inside a group the distances are ranked relative to
the group centre (``[y - c, 1] . [-2 (p - c), |p - c|^2]``), so the round-off of the GEMM expansion
is relative to the group's size, not to the data's offset. The bounds carry explicit allowances
for the round-off of the expansion. The winner's distance is recomputed as
``sqrt(sum((x - p)^2))`` in the original coordinates. The result is the exact nearest point up to
near-ties within that round-off (~1e-15 relative to the group scale); ties go to any tied point.

:class:`PointIndex` is a plain dataclass of numpy arrays (picklable, meant to be broadcast); the
arrays :func:`query` derives from it are computed on first use and kept in a cache that is not
pickled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clusterlake.kernels.kmeans import nearest, row_sq_norms

__all__ = ["PointIndex", "build", "query", "default_n_groups"]

_EPS = float(np.finfo(np.float64).eps)
_EPS32 = float(np.finfo(np.float32).eps)


_MAX_GROUPS = 2048  # query() keeps G x G float64 centre-distance tables (32 MiB at the cap)


def default_n_groups(m: int) -> int:
    """Default number of groups for ``m`` points: ``sqrt(m) / 2`` clipped to ``[1, 1024]`` (and ``<= m``).

    Tuned on 100k points (16-D, 5-D and 2-D blobs, one BLAS thread, scripts/bench_neighbors.py):
    100..250 groups are within the timing noise of each other; 50 is slower in 2-D and 5-D (the
    own-group search grows), >= 316 slower everywhere (the per-group Python loops and the
    ``n x G`` bound matrix grow), 1024 four times slower.
    """
    if m <= 0:
        return 0
    return int(min(m, max(1, min(1024, round(0.5 * np.sqrt(m))))))


def err_coef(d: int) -> float:
    """``K`` such that ``K (|x|^2 + |c|^2)`` bounds the round-off of the float64 expansion of ``|x - c|^2``.

    The product ``x.c`` over ``d`` terms errs by at most ``~d eps |x||c|``, the additions by a few
    ``eps`` of the magnitudes, and ``2 |x||c| <= |x|^2 + |c|^2``; a factor 4 of headroom.
    """
    return 4.0 * (d + 4) * _EPS


@dataclass(eq=False)  # identity equality (field-wise == of numpy arrays is ambiguous)
class PointIndex:
    """Reference points grouped for pruned exact nearest-neighbour search (see the module doc)."""

    points: np.ndarray  # (m, d) float64, reordered so that each group is contiguous
    order: np.ndarray  # (m,) int64: points[i] == original[order[i]]
    starts: np.ndarray  # (G + 1,) int64 group boundaries into points
    centers: np.ndarray  # (G, d) float64 group centres
    radii: np.ndarray  # (G,) float64: max distance of a member to its centre
    slack: np.ndarray  # (G,) float64: bound of |p - c_g|^2 - min_a |p - c_a|^2 over the members
    shift: np.ndarray  # (d,) float64: origin of the computing frame (mean of the points)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_points(self) -> int:
        return int(self.points.shape[0])

    @property
    def n_groups(self) -> int:
        return int(self.centers.shape[0])

    @property
    def dim(self) -> int:
        return int(self.points.shape[1])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._cache = {}

    def centre_distances(self) -> np.ndarray:
        """``(G, G)`` distances between the group centres, from the differences."""
        return self._derived()["cc"]

    def _derived(self) -> dict:
        """Arrays derived from the fields, computed once per process (not pickled)."""
        c = self._cache
        if c:
            return c
        G = self.n_groups
        Cs = self.centers - self.shift  # centres in the shifted frame (as build() used them)
        grp = np.repeat(np.arange(G), np.diff(self.starts))
        local = (self.points - self.shift) - Cs[grp]  # members relative to their centre
        local_sq = row_sq_norms(local)
        c_sq = row_sq_norms(Cs)
        cc = np.empty((G, G))
        for a in range(0, G, 64):  # centre-to-centre distances from the differences, G x G
            diff = Cs[a:a + 64, None, :] - Cs[None, :, :]
            cc[a:a + 64] = np.sqrt(np.einsum("abk,abk->ab", diff, diff))
        cc_exact = cc.copy()
        cc *= 1 + 1e-12  # a larger divisor only weakens a bound (whose numerator is > 0 when it matters)
        # 1 / (2 |c_g - c_a|); 0 for a == g and coincident centres (the bound degrades to 0).
        inv = np.zeros((G, G))
        np.divide(0.5, cc, out=inv, where=cc > 0)
        aug = np.ascontiguousarray(np.hstack([local * -2.0, local_sq[:, None]]))
        # One dict.update: a concurrent reader never sees a partly filled cache.
        c.update(
            Cs=Cs,
            CTm2=np.ascontiguousarray(Cs.T) * -2.0,
            c_sq=c_sq,
            c_sq_max=float(c_sq.max()) if G else 0.0,
            # [y, 1] @ W + |y|^2 = |y - c_g|^2 - slack_g
            W=np.ascontiguousarray(np.vstack([Cs.T * -2.0, (c_sq - self.slack)[None, :]])),
            inv_cc2=inv,
            cc=cc_exact,
            # [y - c, 1] @ aug.T = |p - c|^2 - 2 (y - c).(p - c) = |y - p|^2 - |y - c|^2
            aug=aug,
            aug32=aug.astype(np.float32),
            # max |p - c|^2 per group, as the float32 screen's round-off allowance uses it
            rad2=np.maximum.reduceat(local_sq, self.starts[:-1]) if G else np.zeros(0),
        )
        return c


def group_bounds(index: PointIndex, g: int, Ys: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Lower bounds ``(len(Ys), len(cells))`` of the distance from each row of ``Ys`` (members of
    group ``g``, in the index's frame: ``points - shift``) to every member of each group of
    ``cells``: the larger of the ball bound ``|y - c_h| - radius_h`` and the hyperplane bound
    ``(|y - c_h|^2 - |y - c_g|^2 - slack_h) / (2 |c_h - c_g|)`` (a member ``p`` of ``h`` lies in
    the half-space ``|p - c_h|^2 - |p - c_g|^2 <= slack_h``), both with the expansion's round-off
    taken off. For searches of a sample against itself (:mod:`~clusterlake.kernels.knn`,
    :mod:`~clusterlake.kernels.boruvka`); :func:`query` keeps its own blocked form."""
    c = index._derived()
    y_sq = row_sq_norms(Ys)
    dc2 = y_sq[:, None] + Ys @ c["CTm2"][:, cells] + c["c_sq"][None, cells]
    dc2 -= err_coef(index.dim) * (y_sq[:, None] + c["c_sq_max"])  # rounded down
    own = row_sq_norms(Ys - c["Cs"][g]) * (1 + 1e-12)
    plane = (dc2 - own[:, None] - index.slack[None, cells]) * c["inv_cc2"][g, cells][None, :]
    ball = np.sqrt(np.maximum(dc2, 0.0)) - index.radii[None, cells] * (1 + 1e-12)
    return np.maximum(ball, plane)


# --------------------------------------------------------------------------- build


def _lloyd_steps(P, p_sq, C, n_iter, block_rows):
    """``n_iter`` plain Lloyd updates of the centres ``C`` (an empty cluster keeps its centre)."""
    G, d = C.shape
    for _ in range(n_iter):
        lab, _ = nearest(P, C, p_sq, block_rows=block_rows)
        counts = np.bincount(lab, minlength=G)
        sums = np.empty((G, d))
        for j in range(d):
            sums[:, j] = np.bincount(lab, weights=P[:, j], minlength=G)
        ne = counts > 0
        newC = C.copy()
        newC[ne] = sums[ne] / counts[ne, None]
        if np.array_equal(newC, C):
            break
        C = newC
    return C


def build(points: np.ndarray, n_groups: int | None = None, seed: int = 0, n_iter: int = 8) -> PointIndex:
    """Group ``points`` (m, d) for :func:`query`.

    ``n_groups`` (default :func:`default_n_groups`) initial centres are distinct points drawn with
    ``np.random.default_rng(seed)``; ``n_iter`` Lloyd iterations move them, then every point is
    assigned to its nearest centre (the groups are the Voronoi cells of the centres) and empty
    groups are dropped, so ``G <= min(n_groups, 2048, number of distinct points)`` (the cap keeps
    :func:`query`'s ``G x G`` centre tables at 32 MiB at most). Deterministic for a
    given ``seed`` (and BLAS round-off). ``m == 0`` gives an empty index, for which :func:`query`
    returns ``idx = -1``, ``dist = inf``.

    Complexity: O(n_iter m G d) time (blocked GEMMs), O(m d + G^2) memory.
    """
    P = np.asarray(points, dtype=np.float64)
    if P.ndim != 2:
        raise ValueError(f"points must be 2-D, got shape {P.shape}")
    m, d = P.shape
    if m == 0:
        return PointIndex(points=np.zeros((0, d)), order=np.zeros(0, np.int64), starts=np.zeros(1, np.int64),
                          centers=np.zeros((0, d)), radii=np.zeros(0), slack=np.zeros(0), shift=np.zeros(d))
    G = default_n_groups(m) if n_groups is None else int(min(max(1, int(n_groups)), m, _MAX_GROUPS))
    shift = P.mean(axis=0)
    Ps = P - shift
    p_sq = row_sq_norms(Ps)
    block_rows = int(max(256, min(65536, (32 << 20) // (12 * G))))
    rng = np.random.default_rng(seed)
    init = np.arange(m) if G == m else np.sort(rng.choice(m, size=G, replace=False))
    C = np.unique(Ps[init], axis=0)  # distinct initial centres
    if len(C) < m:
        C = _lloyd_steps(Ps, p_sq, C, n_iter, block_rows)
    # The stored centres define the frame of query(): use them exactly as query() will.
    centers = C + shift
    Cs = centers - shift
    lab, d2exp = nearest(Ps, Cs, p_sq, block_rows=block_rows)
    counts = np.bincount(lab, minlength=len(Cs))
    keep = np.flatnonzero(counts > 0)
    remap = np.full(len(Cs), -1, np.int64)
    remap[keep] = np.arange(len(keep))
    lab = remap[lab]
    centers, Cs, counts = centers[keep], Cs[keep], counts[keep]
    order = np.argsort(lab, kind="stable").astype(np.int64)
    starts = np.zeros(len(keep) + 1, np.int64)
    np.cumsum(counts, out=starts[1:])
    diff = Ps[order] - Cs[lab[order]]
    e_own = np.einsum("ij,ij->i", diff, diff)  # squared distance to the own centre, from the differences
    radii = np.sqrt(np.maximum.reduceat(e_own, starts[:-1]))
    # Voronoi slack. The expansion chose the own centre b: exp_b <= exp_a for every a, and
    # |exp - exact| <= err, so |p - c_b|^2 - |p - c_a|^2 <= e_own - exp_b + 2 err; the factor 4
    # also covers the clamping of exp_b at 0 (<= err) and e_own's own round-off.
    err = err_coef(d) * (p_sq[order] + float(row_sq_norms(Cs).max()))
    viol = np.maximum(e_own - d2exp[order], 0.0) + 4.0 * err
    slack = np.maximum.reduceat(viol, starts[:-1])
    return PointIndex(points=np.ascontiguousarray(P[order]), order=order, starts=starts,
                      centers=np.ascontiguousarray(centers), radii=radii, slack=slack, shift=shift)


# --------------------------------------------------------------------------- query

_S_ELEMS = 1 << 17  # elements of one in-group distance chunk (1 MiB of float64: stays in cache)
_YA_ROWS = 4096  # most rows per in-group GEMM


def query(index: PointIndex, X: np.ndarray, budget_bytes: int = 64 << 20, *,
          _stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest indexed point of every row of ``X`` (n, d): ``(idx int64, dist float64)``.

    ``idx`` indexes the points in the order given to :func:`build`; ``dist`` is recomputed as
    ``sqrt(sum((x - p)^2))`` in float64. An empty index gives ``idx = -1``, ``dist = inf``.

    Rows are processed in blocks of ``B`` rows, ``B`` sized so that the block's temporaries
    (``G + 8 (2 d + 16)`` bytes per row: the groups-by-rows candidate mask, the float64 rows,
    per-row state) take at most half of ``budget_bytes``; the rows-by-groups bound matrices are
    built in sub-blocks of at most an eighth of it, the in-group distance chunks are ~1 MiB (at most
    1/32 of the budget). Measured peak of the temporaries: 51 MiB for the default budget.

    ``_stats`` (private, for benchmarks): filled with the search counters (pairs searched in
    float64 / screened in float32, distance elements computed, blocks).
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, got shape {X.shape}")
    n = X.shape[0]
    idx = np.full(n, -1, np.int64)
    dist = np.full(n, np.inf)
    if n == 0 or index.n_points == 0:
        return idx, dist
    if X.shape[1] != index.dim:
        raise ValueError(f"X has {X.shape[1]} columns, the index {index.dim}")
    q = _Workspace.create(index, n, budget_bytes)
    for s in range(0, n, q.block):
        e = min(n, s + q.block)
        perm, bpos = _query_block(q, X[s:e])
        q.stats["blocks"] += 1
        out = s + perm
        idx[out] = index.order[bpos]
        diff = np.asarray(X[out], dtype=np.float64) - index.points[bpos]
        dist[out] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    if _stats is not None:
        _stats.update(q.stats)
    return idx, dist


@dataclass(eq=False)
class _Workspace:
    """One :func:`query` call's sizes, the index's derived arrays and the scratch buffers reused by
    every block and group, so that the search allocates nothing per group."""

    index: PointIndex
    dv: dict  # PointIndex._derived()
    block: int  # rows per block
    sub: int  # rows per sub-block of the rows-by-groups bound matrices
    s_elems: int  # elements of one float64 in-group distance chunk
    Sbuf: np.ndarray
    Sbuf32: np.ndarray
    Ya: np.ndarray  # gathered local rows [y - c, 1]
    Ya32: np.ndarray
    low32: np.ndarray
    candT: np.ndarray  # (G, block) candidate mask
    stats: dict

    @classmethod
    def create(cls, index: PointIndex, n: int, budget_bytes: int) -> "_Workspace":
        """Sizes the blocks and buffers for ``n`` rows within ``budget_bytes`` (see :func:`query`)."""
        G, d = index.n_groups, index.dim
        max_g = int(np.diff(index.starts).max())
        block = int(max(64, min(n, (budget_bytes // 2) // (G + 8 * (2 * d + 16)))))
        sub = int(max(16, min(block, (budget_bytes // 8) // (8 * 2 * G + 8))))
        # In-group distance chunks: ~1 MiB (cache-resident), more for very large groups (>= 64 rows
        # per GEMM), at most budget / 32 elements; at least one row.
        s_elems = int(max(max_g, min(max(_S_ELEMS, 64 * max_g), budget_bytes // 32)))
        Ya = np.empty((int(min(block, _YA_ROWS)), d + 1))
        Ya[:, d] = 1.0
        return cls(index=index, dv=index._derived(), block=block, sub=sub, s_elems=s_elems,
                   Sbuf=np.empty(s_elems), Sbuf32=np.empty(2 * s_elems, np.float32), Ya=Ya,
                   Ya32=np.empty(Ya.shape, np.float32), low32=np.empty(len(Ya), np.float32),
                   candT=np.empty((G, block), dtype=bool),
                   stats=dict(elems=0, elems32=0, pairs=0, pairs32=0, blocks=0, block=block))

    def group(self, g: int) -> tuple[int, int]:
        """``(first position, size)`` of group ``g`` in ``index.points``."""
        lo = int(self.index.starts[g])
        return lo, int(self.index.starts[g + 1]) - lo

    def local_rows(self, Yb: np.ndarray, rows: np.ndarray, g: int) -> np.ndarray:
        """``[y - c_g, 1]`` of ``Yb[rows]`` in the first ``len(rows)`` rows of the scratch ``Ya``."""
        Yl = self.Ya[: rows.size]
        np.take(Yb, rows, axis=0, out=Yl)
        Yl[:, :-1] -= self.dv["Cs"][g]
        return Yl


def _search(q: _Workspace, g: int, Yl: np.ndarray, dc2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest member of group ``g`` for the local rows ``Yl = [y - c_g, 1]`` (k, d + 1) given
    ``dc2 = |y - c_g|^2``: (positions into ``points``, squared distances up to round-off)."""
    lo, mg = q.group(g)
    k = Yl.shape[0]
    S = np.matmul(Yl, q.dv["aug"][lo:lo + mg].T, out=q.Sbuf[: k * mg].reshape(k, mg))
    j = np.argmin(S, axis=1)
    d2 = S[np.arange(k), j]
    d2 += dc2
    q.stats["elems"] += k * mg
    q.stats["pairs"] += k
    return j + lo, d2


def _query_block(q: _Workspace, Xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The nearest point of each row of one block: ``(perm, bpos)``, ``bpos[r]`` the position in
    ``index.points`` of the nearest point of row ``perm[r]`` of the block."""
    perm, own, Yb = _sorted_block(q, Xb)
    G = q.index.n_groups
    cnt = np.bincount(own, minlength=G)
    bnd = np.zeros(G + 1, np.int64)
    np.cumsum(cnt, out=bnd[1:])
    groups = np.flatnonzero(cnt)
    best2, bpos, d2own = _own_group_search(q, Yb, bnd, groups)
    np.maximum(best2, 0.0, out=best2)
    best = np.sqrt(best2)
    best *= 1 + 1e-12  # best2 carries the in-group round-off: never prune on a too-small best
    cand = _candidates(q, Yb, d2own, best, bnd, groups)
    for g in range(G):
        rows = np.flatnonzero(cand[g])
        if rows.size:
            _search_other_group(q, g, Yb, rows, best2, bpos)
    return perm, bpos


def _sorted_block(q: _Workspace, Xb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The block's rows sorted by their nearest centre (so that each group's rows are one
    contiguous slice): ``(perm, own[perm], [y, 1] in the order of perm)``, in the shifted frame.

    The nearest centre comes from the GEMM expansion: it is only a choice, never a bound."""
    nb, d = Xb.shape[0], q.index.dim
    Yraw = np.asarray(Xb, dtype=np.float64) - q.index.shift
    own = np.empty(nb, np.int64)
    for a in range(0, nb, q.sub):
        b = min(nb, a + q.sub)
        D2 = Yraw[a:b] @ q.dv["CTm2"]
        D2 += q.dv["c_sq"]
        own[a:b] = np.argmin(D2, axis=1)
    perm = np.argsort(own, kind="stable")
    Yb = np.empty((nb, d + 1))
    np.take(Yraw, perm, axis=0, out=Yb[:, :d])
    Yb[:, d] = 1.0
    return perm, own[perm], Yb


def _own_group_search(q: _Workspace, Yb: np.ndarray, bnd: np.ndarray,
                      groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Phase 1: every row searched in the group of its nearest centre (rows ``bnd[g]:bnd[g+1]``
    of ``Yb``): ``(best2, bpos, d2own)``, the upper bound of each row's nearest squared distance,
    the point reaching it and ``|y - c_own|^2``. A loop over the groups, never over rows."""
    nb, d = Yb.shape[0], q.index.dim
    Cs = q.dv["Cs"]
    best2 = np.empty(nb)
    bpos = np.empty(nb, np.int64)
    d2own = np.empty(nb)
    for g in groups:
        step = max(1, min(len(q.Ya), q.s_elems // q.group(g)[1]))
        for a in range(int(bnd[g]), int(bnd[g + 1]), step):
            b = min(int(bnd[g + 1]), a + step)
            Yl = q.Ya[: b - a]
            np.subtract(Yb[a:b, :d], Cs[g], out=Yl[:, :d])
            dc2 = np.einsum("ij,ij->i", Yl[:, :d], Yl[:, :d])
            d2own[a:b] = dc2
            bpos[a:b], best2[a:b] = _search(q, g, Yl, dc2)
    return best2, bpos, d2own


def _candidates(q: _Workspace, Yb: np.ndarray, d2own: np.ndarray, best: np.ndarray,
                bnd: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``(G, nb)`` mask of the (group, row) pairs whose hyperplane lower bound is below the row's
    ``best``, the own group excluded. With the round-off allowances,
    ``lb[r, g] = (|y - c_g|^2 - slack_g - |y - c_a|^2 - err_r) / (2 |c_g - c_a|)``, where
    ``[y, 1] @ W + |y|^2 = |y - c_g|^2 - slack_g`` (one GEMM per own group ``a`` and sub-block)."""
    nb, d = Yb.shape[0], q.index.dim
    W, inv_cc2 = q.dv["W"], q.dv["inv_cc2"]
    y_sq = row_sq_norms(Yb[:, :d])
    cand = q.candT[:, :nb]
    rowterm = y_sq - d2own - err_coef(d) * (y_sq + q.dv["c_sq_max"] + d2own)
    for a_g in groups:
        for a in range(int(bnd[a_g]), int(bnd[a_g + 1]), q.sub):
            b = min(int(bnd[a_g + 1]), a + q.sub)
            N = Yb[a:b] @ W
            N += rowterm[a:b, None]
            N *= inv_cc2[a_g]
            np.less(N.T, best[a:b], out=cand[:, a:b])
            cand[a_g, a:b] = False
    return cand


def _search_other_group(q: _Workspace, g: int, Yb: np.ndarray, rows: np.ndarray,
                        best2: np.ndarray, bpos: np.ndarray) -> None:
    """Phase 2 for group ``g``: the candidate ``rows`` the float32 screen cannot rule out are
    searched in float64, improving ``best2``/``bpos`` in place."""
    low, dc2 = _screen32(q, g, Yb, rows)
    need = np.flatnonzero(low < best2[rows])
    if need.size == 0:
        return
    r = rows[need]
    dc2 = dc2[need]
    step = max(1, min(len(q.Ya), q.s_elems // q.group(g)[1]))
    for a in range(0, r.size, step):
        b = min(r.size, a + step)
        Yl = q.local_rows(Yb, r[a:b], g)
        p, d2 = _search(q, g, Yl, dc2[a:b])
        better = d2 < best2[r[a:b]]
        rb = r[a:b][better]
        best2[rb] = d2[better]
        bpos[rb] = p[better]


def _screen32(q: _Workspace, g: int, Yb: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A float32 GEMM's lower bound of the smallest ``|y - p|^2`` over group ``g`` for each of
    ``rows``, and ``|y - c_g|^2`` (float64): the group's smallest ``|y - p|^2`` is
    ``>= min(S32) + |y - c|^2 - K32 (|y - c|^2 + max |p - c|^2)``. Half the cost of a float64
    search per pair, and it rules out most of them."""
    d = q.index.dim
    lo, mg = q.group(g)
    A32 = q.dv["aug32"][lo:lo + mg]
    step = max(1, min(len(q.Ya), (2 * q.s_elems) // mg))
    low = np.empty(rows.size)
    dc2 = np.empty(rows.size)
    for a in range(0, rows.size, step):
        b = min(rows.size, a + step)
        k = b - a
        Yl = q.local_rows(Yb, rows[a:b], g)
        np.einsum("ij,ij->i", Yl[:, :d], Yl[:, :d], out=dc2[a:b])
        Yl32 = q.Ya32[:k]
        Yl32[...] = Yl
        S32 = np.matmul(Yl32, A32.T, out=q.Sbuf32[: k * mg].reshape(k, mg))
        S32.min(axis=1, out=q.low32[:k])
        low[a:b] = q.low32[:k]
    q.stats["elems32"] += rows.size * mg
    q.stats["pairs32"] += rows.size
    low += dc2
    low -= 4.0 * (d + 4) * _EPS32 * (dc2 + q.dv["rad2"][g])  # err_coef's bound, float32
    return low, dc2
