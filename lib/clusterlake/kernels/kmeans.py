"""K-means kernels (pure numpy/scipy, no Spark).

These are the building blocks of a distributed Lloyd / k-means|| engine:

* every task holds a block ``X`` of rows in memory and calls
  :func:`partial_stats` once per Lloyd iteration; the returned
  :class:`PartialStats` are *additive* (:meth:`PartialStats.merge`), so the
  partials of all tasks can be combined in a ``treeReduce``;
* the driver turns the merged statistics into new centres with
  :func:`centers_from_stats` and replaces empty clusters with
  :func:`repair_empty` (from the farthest points collected by
  :func:`partial_stats`);
* :func:`kmeans_parallel_sample` is the per-block sampling step of k-means||
  initialisation (Bahmani et al. 2012), whose weighted candidates are
  reclustered on the driver with :func:`kmeans_plusplus`;
  :func:`candidate_weights` is the one-pass reference for those weights (the
  engine gets the same numbers from each row's nearest candidate, kept
  through the rounds, without a pass of their own);
* :func:`lloyd` is the single-process reference that chains all of the above
  and reproduces ``sklearn.cluster.KMeans(algorithm="lloyd")``.

Distances are ranked with the GEMM expansion
``||x||^2 - 2 x.c + ||c||^2``; the product runs in the dtype of ``X``
(float32 blocks give a float32 GEMM, twice as fast as float64) while every
accumulation (squared distances, sums, counts, inertia) is done in float64.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

__all__ = [
    "PartialStats",
    "LloydResult",
    "row_sq_norms",
    "nearest",
    "partial_stats",
    "centers_from_stats",
    "repair_empty",
    "kmeans_plusplus",
    "lloyd",
    "tolerance",
    "center_shift_sq",
    "kmeans_parallel_sample",
    "candidate_weights",
    "normalize_rows",
]

# Rows per block for the O(n d) helpers (norms, variances, exact distances).
_AUX_BLOCK_ROWS = 65536


# --------------------------------------------------------------------------- helpers


def _as_float(X):
    """``X`` as a 2-D float32/float64 array (no copy when it already is one)."""
    X = np.asarray(X)
    if X.dtype != np.float32 and X.dtype != np.float64:
        X = X.astype(np.float64)
    return X


def _as_weights(weights, n):
    """float64 weights of length ``n``, or ``None`` for unit weights."""
    if weights is None:
        return None
    return np.asarray(weights, dtype=np.float64).reshape(n)


def _check_random_state(random_state):
    """A ``np.random.Generator`` or ``RandomState`` (both have ``.random(size)``)."""
    if isinstance(random_state, (np.random.Generator, np.random.RandomState)):
        return random_state
    return np.random.default_rng(random_state)


class _Ranker:
    """Blockwise nearest-centre ranking by the GEMM expansion.

    Holds the centres prepared for the product in the dtype of the data
    (``-2 C^T``, scaling by a power of two is exact) and ``||c||^2`` in
    float64 of the *same* (possibly float32-rounded) centres, so that the
    expansion is consistent: ``x_sq - 2 x.c + c_sq`` is the squared distance
    to the rounded centre up to the round-off of the product only (the
    rounding of the centres moves ``d2`` by ``2 (x - c).delta``, which is small
    and unbiased, rather than by ``2 x.delta``, which is a per-centre bias).
    Scratch buffers are reused across blocks.
    """

    def __init__(self, C, dtype, block_rows):
        Cg = np.asarray(C, dtype=np.float64).astype(dtype, copy=False)
        self.dtype = dtype
        self.k = Cg.shape[0]
        self.c_sq = row_sq_norms(Cg)
        self.CTm2 = np.ascontiguousarray(Cg.T) * dtype.type(-2)
        self.block_rows = block_rows
        self.P = np.empty((block_rows, self.k), dtype=dtype)
        self.S = self.P if dtype == np.float64 else np.empty((block_rows, self.k), np.float64)
        self.rows = np.arange(block_rows)

    def rank(self, B, xsq_b):
        """Labels (intp) and float64 ``d2`` (clamped >= 0) of the rows of block ``B``."""
        m = B.shape[0]
        P = np.matmul(B, self.CTm2, out=self.P[:m])
        S = self.S[:m]
        # float32 -> float64 (exact) and + ||c||^2 in one pass.
        np.add(P, self.c_sq, out=S)
        lab = np.argmin(S, axis=1)  # ties -> lowest index
        d2 = S[self.rows[:m], lab]
        d2 += xsq_b
        np.maximum(d2, 0.0, out=d2)
        return lab, d2


def _block_f64(B, buf):
    """float64 version of block ``B`` (a view when already float64)."""
    if B.dtype == np.float64:
        return B
    G = buf[: B.shape[0]]
    np.copyto(G, B)
    return G


def _top_far(d2, n_far, weights=None):
    """Indices of the ``n_far`` largest ``d2``, descending; ties -> lowest index.

    Rows with a weight <= 0 are never selected.
    """
    if weights is not None:
        eligible = np.flatnonzero(weights > 0)
        vals = d2[eligible]
    else:
        eligible = None
        vals = d2
    m = min(int(n_far), vals.shape[0])
    if m <= 0:
        return np.empty(0, dtype=np.int64)
    if m < vals.shape[0]:
        # Threshold = m-th largest value; keep everything above it and the
        # lowest-index rows equal to it, so ties are resolved deterministically.
        thr = np.partition(vals, vals.shape[0] - m)[vals.shape[0] - m]
        above = np.flatnonzero(vals > thr)
        at = np.flatnonzero(vals == thr)[: m - above.shape[0]]
        sel = np.concatenate([above, at])
    else:
        sel = np.arange(vals.shape[0])
    order = np.lexsort((sel, -vals[sel]))  # by -d2, then index
    sel = sel[order]
    if eligible is not None:
        sel = eligible[sel]
    return sel.astype(np.int64, copy=False)


def _expanded_sq_dist(X, x_sq, Y, out, block_rows=8192):
    """Fill ``out`` (n, m) with the squared distances from the rows of ``X`` to ``Y``.

    GEMM expansion in the dtype of ``X``, assembled in float64 (with the
    norms of ``Y`` as rounded for the product), clamped to ``>= 0``; the
    work is done block by block so the temporaries stay in cache.
    """
    n = X.shape[0]
    Yg = np.asarray(Y, dtype=np.float64).astype(X.dtype, copy=False)
    y_sq = row_sq_norms(Yg)
    YTm2 = np.ascontiguousarray(Yg.T) * X.dtype.type(-2)
    tmp = np.empty((min(block_rows, n), Yg.shape[0]), dtype=X.dtype)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        P = np.matmul(X[start:stop], YTm2, out=tmp[: stop - start])
        D = out[start:stop]
        np.add(P, y_sq, out=D)
        D += x_sq[start:stop, None]
        np.maximum(D, 0.0, out=D)
    return out


def _fix_small_sq_dist(X, x_sq, y, col, floor=None):
    """Make ``col`` (expanded squared distances to the point ``y``) exact where it is tiny.

    Entries below the worst-case round-off bound of the expansion,
    ``2 d eps (||x||^2 + ||y||^2)``, are recomputed from the differences (and
    combined with ``np.minimum(floor, .)`` when ``floor`` is given). A row
    identical to ``y`` then gets exactly 0 and any other row a positive value.
    Modifies and returns ``col``.
    """
    d = X.shape[1]
    y = np.asarray(y, dtype=np.float64)
    bound = (2.0 * d * np.finfo(X.dtype).eps) * (x_sq + float(y @ y))
    idx = np.flatnonzero(col <= bound)
    if idx.size:
        diff = np.asarray(X[idx], dtype=np.float64) - y
        exact = np.einsum("ij,ij->i", diff, diff)
        if floor is not None:
            np.minimum(exact, floor[idx], out=exact)
        col[idx] = exact
    return col


# --------------------------------------------------------------------------- partial statistics


@dataclass(eq=False)
class PartialStats:
    """Additive per-block statistics of one Lloyd iteration.

    Attributes
    ----------
    sums : ndarray of shape (k, d), dtype float64
        ``sums[j] = sum(w_i * x_i)`` over the rows whose nearest centre is ``j``.
    counts : ndarray of shape (k,), dtype float64
        ``counts[j] = sum(w_i)`` over the same rows.
    inertia : float
        ``sum(w_i * d2_i)``, ``d2_i`` the squared distance to the nearest centre.
    far_points : ndarray of shape (m, d), dtype float64
        The ``m`` rows farthest from their nearest centre (by plain ``d2``, not
        weighted), farthest first.
    far_d2 : ndarray of shape (m,), dtype float64
        Their ``d2``, descending.
    """

    sums: np.ndarray
    counts: np.ndarray
    inertia: float
    far_points: np.ndarray = field(default=None)
    far_d2: np.ndarray = field(default=None)

    def __post_init__(self):
        if self.far_points is None:
            self.far_points = np.empty((0, self.sums.shape[1]), dtype=np.float64)
        if self.far_d2 is None:
            self.far_d2 = np.empty(0, dtype=np.float64)

    @staticmethod
    def zeros(k, d):
        """Identity element of :meth:`merge` (no rows, no far points).

        Parameters
        ----------
        k, d : int
            Number of centres and of columns.

        Returns
        -------
        stats : PartialStats
        """
        return PartialStats(
            sums=np.zeros((k, d), dtype=np.float64),
            counts=np.zeros(k, dtype=np.float64),
            inertia=0.0,
            far_points=np.empty((0, d), dtype=np.float64),
            far_d2=np.empty(0, dtype=np.float64),
        )

    def merge(self, other):
        """Combine the statistics of two disjoint row sets.

        ``sums``, ``counts`` and ``inertia`` are added. The far lists are
        concatenated (``self`` first) and the ``max(len(self.far_d2),
        len(other.far_d2))`` entries with the largest ``far_d2`` are kept,
        descending; ties keep ``self``'s entries before ``other``'s and
        otherwise their order (stable sort), so the result is deterministic.
        Associative; commutative up to the order of tied far points.

        Prior validation of data is assumed: both partials have the same
        ``k`` and ``d``.

        Parameters
        ----------
        other : PartialStats

        Returns
        -------
        merged : PartialStats
            New arrays (the operands are not modified).

        Notes
        -----
        Complexity: O(k d + m log m) time, m the total number of far points.
        """
        m = max(self.far_d2.shape[0], other.far_d2.shape[0])
        far_d2 = np.concatenate([self.far_d2, other.far_d2])
        far_points = np.concatenate([self.far_points, other.far_points], axis=0)
        order = np.argsort(-far_d2, kind="stable")[:m]
        return PartialStats(
            sums=self.sums + other.sums,
            counts=self.counts + other.counts,
            inertia=float(self.inertia) + float(other.inertia),
            far_points=far_points[order],
            far_d2=far_d2[order],
        )


@dataclass(eq=False)
class LloydResult:
    """Result of :func:`lloyd`.

    Attributes
    ----------
    centers : ndarray of shape (k, d), dtype float64
    labels : ndarray of shape (n,), dtype int32
        Nearest centre of every row, for the returned ``centers``.
    inertia : float
        ``sum(w * ||x - centers[labels]||^2)`` for the returned centres.
    n_iter : int
        Number of Lloyd iterations run.
    n_repaired : int
        Total number of empty clusters re-seeded over all iterations.
    """

    centers: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int
    n_repaired: int


def row_sq_norms(X):
    """Squared Euclidean norm of every row, in float64.

    Prior validation of data is assumed: ``X`` is 2-D and finite.

    Parameters
    ----------
    X : ndarray of shape (n, d), dtype float32 or float64
        float32 rows are converted to float64 one block at a time before
        squaring, so the result is the float64 norm of the float32 values.

    Returns
    -------
    x_sq : ndarray of shape (n,), dtype float64

    Notes
    -----
    Complexity: O(n d) time, O(min(n, 65536) d) extra memory for float32.
    Meant to be computed once per block of data and passed as ``x_sq`` to
    :func:`nearest` / :func:`partial_stats` in every iteration.
    """
    X = _as_float(X)
    n = X.shape[0]
    if X.dtype == np.float64:
        return np.einsum("ij,ij->i", X, X)
    out = np.empty(n, dtype=np.float64)
    buf = np.empty((min(n, _AUX_BLOCK_ROWS), X.shape[1]), dtype=np.float64)
    for start in range(0, n, _AUX_BLOCK_ROWS):
        stop = min(start + _AUX_BLOCK_ROWS, n)
        G = _block_f64(X[start:stop], buf)
        np.einsum("ij,ij->i", G, G, out=out[start:stop])
    return out


def nearest(X, C, x_sq=None, block_rows=8192):
    """Nearest centre of every row and the squared distance to it.

    Candidates are ranked with the GEMM expansion
    ``||x||^2 - 2 x.c + ||c||^2`` in blocks of ``block_rows`` rows. The product
    runs in the dtype of ``X`` (a float32 ``X`` gives a float32 GEMM with the
    centres rounded to float32); it is then cast to float64 and
    ``||c||^2`` (float64 norms of the centres as used in the product) and
    ``x_sq`` are added in float64.

    Prior validation of data is assumed: ``X`` and ``C`` are finite, 2-D,
    with the same number of columns, and ``C`` has at least one row.

    Parameters
    ----------
    X : ndarray of shape (n, d), dtype float32 or float64
        Rows to assign (C-contiguous for best speed).
    C : ndarray of shape (k, d)
        Centres (float64; cast to float32 for the product when ``X`` is
        float32).
    x_sq : ndarray of shape (n,), dtype float64, default=None
        ``row_sq_norms(X)``; computed when ``None`` (pass it when the same
        ``X`` is assigned repeatedly).
    block_rows : int, default=8192
        Rows per GEMM. Peak extra memory about ``block_rows * k * 12`` bytes.
        The result does not depend on it beyond the round-off of the product.

    Returns
    -------
    labels : ndarray of shape (n,), dtype int32
        Index of the nearest centre; ties go to the lowest index.
    d2 : ndarray of shape (n,), dtype float64
        Squared Euclidean distance to ``C[labels]``, clamped to ``>= 0``. It
        carries the cancellation error of the expansion, about
        ``eps * (||x||^2 + ||c||^2)`` with ``eps`` of the dtype of ``X``.

    Notes
    -----
    Complexity: O(n k d) time (one GEMM per block) + O(n k) for the ranking;
    O(block_rows * k) extra memory besides the outputs (plus
    O(block_rows * d) when ``x_sq`` is ``None`` and ``X`` is float32).
    ``n == 0`` returns empty arrays.
    """
    X = _as_float(X)
    n, d = X.shape
    block_rows = max(1, min(int(block_rows), n))
    labels = np.empty(n, dtype=np.int32)
    d2 = np.empty(n, dtype=np.float64)
    if n == 0:
        return labels, d2
    ranker = _Ranker(C, X.dtype, block_rows)
    gbuf = None
    if x_sq is None and X.dtype != np.float64:
        gbuf = np.empty((block_rows, d), dtype=np.float64)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        B = X[start:stop]
        if x_sq is None:
            G = _block_f64(B, gbuf)
            xsq_b = np.einsum("ij,ij->i", G, G)
        else:
            xsq_b = x_sq[start:stop]
        lab, d2b = ranker.rank(B, xsq_b)
        labels[start:stop] = lab
        d2[start:stop] = d2b
    return labels, d2


def partial_stats(X, C, weights=None, x_sq=None, n_far=0, block_rows=8192, *, out_labels=None):
    """Per-centre sums, counts, inertia and farthest rows of a block of data.

    One Lloyd E-step plus the accumulation of the M-step statistics: every
    row is assigned to its nearest centre exactly as in :func:`nearest`, then
    the weighted per-centre sums and counts, the inertia and the ``n_far``
    rows farthest from their centre are collected. The results of disjoint
    blocks combine with :meth:`PartialStats.merge`.

    The per-centre sums are computed block by block as ``A @ G`` where ``A``
    is the (k, block) one-hot matrix of the labels holding the weights, stored
    as a CSC sparse matrix (built without sorting), and ``G`` the block in
    float64. Measured on 500k x 32 / 500k x 64 float32 rows (k = 20 / 100),
    this takes 16 / 30 ms (including the float64 conversion of the blocks)
    against 40 / 150 ms for a blocked dense float64 one-hot GEMM (OpenBLAS is
    slow on this shape), 190 / 360 ms for a sort + ``np.add.reduceat`` and
    340 / 360 ms for one ``np.bincount`` per column.

    Prior validation of data is assumed: ``X`` and ``C`` are finite, 2-D,
    with the same number of columns, ``C`` has at least one row and
    ``weights`` (if given) are finite and ``>= 0``.

    Parameters
    ----------
    X : ndarray of shape (n, d), dtype float32 or float64
        The block of rows (C-contiguous for best speed).
    C : ndarray of shape (k, d)
        Current centres.
    weights : ndarray of shape (n,) or None, default=None
        Row weights; ``None`` means all ones.
    x_sq : ndarray of shape (n,), dtype float64, default=None
        ``row_sq_norms(X)``; computed when ``None``. Pass it in every
        iteration (it costs about as much as the sums).
    n_far : int, default=0
        Number of farthest rows to return (for re-seeding empty clusters).
        Rows with weight 0 are never returned.
    block_rows : int, default=8192
        Rows per GEMM; see :func:`nearest`.
    out_labels : ndarray of shape (n,), dtype int32, default=None
        Keyword-only. If given, the labels of the rows are written into it
        (e.g. to count label changes between iterations).

    Returns
    -------
    stats : PartialStats
        ``far_points`` has ``min(n_far, number of rows with weight > 0)``
        rows, farthest first (ties: lowest row index first).

    Notes
    -----
    Complexity: O(n k d) time for the GEMM, O(n (k + d)) for the ranking and
    the sums, O(n) for the far rows; O(block_rows * (k + d)) extra memory
    plus O(n) (labels, and the distances when ``n_far > 0``).
    """
    X = _as_float(X)
    n, d = X.shape
    C = np.asarray(C, dtype=np.float64)
    k = C.shape[0]
    w = _as_weights(weights, n)
    if n == 0:
        return PartialStats.zeros(k, d)
    block_rows = max(1, min(int(block_rows), n))
    n_far = max(0, int(n_far))
    ranker = _Ranker(C, X.dtype, block_rows)
    gbuf = None if X.dtype == np.float64 else np.empty((block_rows, d), dtype=np.float64)
    ones = np.ones(block_rows, dtype=np.float64) if w is None else None
    indptr = np.arange(block_rows + 1, dtype=np.int64)
    labels = out_labels if out_labels is not None else np.empty(n, dtype=np.int32)
    d2_all = np.empty(n, dtype=np.float64) if n_far > 0 else None
    sums = np.zeros((k, d), dtype=np.float64)
    inertia = 0.0

    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        m = stop - start
        B = X[start:stop]
        G = _block_f64(B, gbuf)
        xsq_b = np.einsum("ij,ij->i", G, G) if x_sq is None else x_sq[start:stop]
        lab, d2 = ranker.rank(B, xsq_b)
        labels[start:stop] = lab
        if d2_all is not None:
            d2_all[start:stop] = d2
        wb = ones[:m] if w is None else w[start:stop]
        inertia += float(d2.sum() if w is None else d2 @ wb)
        A = sp.csc_array((wb, lab, indptr[: m + 1]), shape=(k, m))
        sums += A @ G

    if w is None:
        counts = np.bincount(labels, minlength=k).astype(np.float64)
    else:
        counts = np.bincount(labels, weights=w, minlength=k).astype(np.float64, copy=False)
    far = _top_far(d2_all, n_far, w) if n_far > 0 else np.zeros(0, np.int64)
    return PartialStats(sums=sums, counts=counts, inertia=inertia,
                        far_points=np.asarray(X[far], dtype=np.float64).reshape(-1, d),
                        far_d2=d2_all[far] if n_far > 0 else np.empty(0, dtype=np.float64))


def centers_from_stats(sums, counts, old_centers, spherical=False):
    """New centres from merged :class:`PartialStats` (the Lloyd M-step).

    Prior validation of data is assumed: ``sums``, ``counts`` and
    ``old_centers`` describe the same ``k`` clusters, ``counts >= 0``.

    Parameters
    ----------
    sums : ndarray of shape (k, d)
        Weighted per-centre sums.
    counts : ndarray of shape (k,)
        Per-centre sum of weights.
    old_centers : ndarray of shape (k, d)
        Centres the statistics were computed with; kept for empty clusters.
    spherical : bool, default=False
        Spherical k-means (cosine distance on L2-normalised rows): every
        non-empty new centre is L2-normalised. A non-empty cluster whose mean
        is exactly the zero vector keeps its old centre (it is not reported
        as empty).

    Returns
    -------
    centers : ndarray of shape (k, d), dtype float64
        ``sums / counts`` where ``counts > 0``, the old centre elsewhere.
    empty : ndarray of shape (k,), dtype bool
        ``counts == 0``.

    Notes
    -----
    Complexity: O(k d).
    """
    sums = np.asarray(sums, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    centers = np.array(old_centers, dtype=np.float64, copy=True)
    empty = ~(counts > 0)
    full = ~empty
    new = sums[full] / counts[full, None]
    if spherical:
        norms = np.sqrt(row_sq_norms(new))
        ok = norms > 0
        new[ok] /= norms[ok, None]
        idx = np.flatnonzero(full)
        centers[idx[ok]] = new[ok]
    else:
        centers[full] = new
    return centers, empty


def minibatch_update(centers, weight_sums, sums, counts, spherical=False):
    """One mini-batch step from a batch's per-centre statistics (Sculley, 2010).

    Each centre moves towards the mean of its batch rows with the learning rate ``1 / its weight
    seen so far``, as scikit-learn's ``_mini_batch_step`` does (without its random reassignment):
    ``c_new = (c * W + sums) / (W + counts)``, ``W += counts``. A centre that got no row of the
    batch stays where it is.

    Prior validation of data is assumed: the arrays describe the same ``k`` clusters,
    ``weight_sums >= 0``, ``counts >= 0``.

    Parameters
    ----------
    centers : ndarray of shape (k, d)
    weight_sums : ndarray of shape (k,)
        Weight each centre has absorbed over the previous steps.
    sums, counts : ndarray of shape (k, d) and (k,)
        The batch's weighted per-centre sums and weights (:func:`partial_stats` of the batch).
    spherical : bool, default=False
        Spherical k-means: every moved centre is L2-normalised (a zero mean keeps the old one).

    Returns
    -------
    centers : ndarray of shape (k, d), dtype float64
    weight_sums : ndarray of shape (k,), dtype float64

    Notes
    -----
    Complexity: O(k d).
    """
    before = np.asarray(weight_sums, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    old = np.asarray(centers, dtype=np.float64)
    moved = counts > 0
    W = before + counts
    # the M-step of the centre's absorbed weight plus the batch: (c W + sums) / (W + counts)
    pooled = np.where(moved[:, None], old * before[:, None] + np.asarray(sums, dtype=np.float64), 0.0)
    out, _ = centers_from_stats(pooled, np.where(moved, W, 0.0), old, spherical=spherical)
    return out, W


def repair_empty(centers, empty, far_points, far_d2):
    """Re-seed empty clusters with the farthest points.

    Empty centres are processed in index order; each one takes the next far
    point (farthest first, by ``far_d2``; stable for ties) that does not
    coincide exactly with any current centre: the non-empty centres and the
    ones already repaired (so two empty clusters never get the same point).
    The old value of an empty centre is not an obstacle (it is replaced).

    Prior validation of data is assumed: ``far_points`` are rows of the data
    (e.g. ``PartialStats.far_points`` merged over all blocks) with the same
    number of columns as ``centers``.

    Parameters
    ----------
    centers : ndarray of shape (k, d)
        Centres from :func:`centers_from_stats`.
    empty : ndarray of shape (k,), dtype bool
        Empty clusters.
    far_points : ndarray of shape (m, d)
    far_d2 : ndarray of shape (m,)
        Squared distance of each far point to its (old) nearest centre.

    Returns
    -------
    centers : ndarray of shape (k, d), dtype float64
        A new array.
    n_repaired : int
        Number of empty centres replaced. Less than ``empty.sum()`` when
        there are not enough distinct far points; the remaining empty centres
        keep their value and the caller should warn (or retry with more far
        points).

    Notes
    -----
    Complexity: O(m k d) time in the worst case (m far points each compared
    with all centres); a Python loop over the empty clusters and the far
    points, not over the data.
    """
    centers = np.array(centers, dtype=np.float64, copy=True)
    empty = np.asarray(empty, dtype=bool)
    far_points = np.asarray(far_points, dtype=np.float64)
    far_d2 = np.asarray(far_d2, dtype=np.float64)
    empty_idx = np.flatnonzero(empty)
    if empty_idx.size == 0 or far_points.shape[0] == 0:
        return centers, 0
    order = np.argsort(-far_d2, kind="stable")
    occupied = ~empty
    j = 0
    repaired = 0
    for e in empty_idx:
        while j < order.shape[0]:
            p = far_points[order[j]]
            j += 1
            if not np.any(np.all(centers[occupied] == p, axis=1)):
                centers[e] = p
                occupied[e] = True
                repaired += 1
                break
        else:
            break
    return centers, repaired


# --------------------------------------------------------------------------- seeding


def _weighted_draw(rng, p: np.ndarray, w: np.ndarray, size: int) -> np.ndarray:
    """``size`` indices drawn with probability proportional to ``p >= 0`` (by the weights ``w``
    when ``p`` sums to 0: fewer distinct points than k)."""
    cum = np.cumsum(p)
    if not cum[-1] > 0:
        cum = np.cumsum(w)
    r = rng.random(size) * cum[-1]
    # side="right": the first i with cum[i] > r, so p[i] > 0 (an entry with p == 0 does not
    # increase cum and is never selected).
    ids = np.searchsorted(cum, r, side="right")
    if ids.max() >= len(cum):  # r rounded up to the total
        last = np.flatnonzero(np.diff(cum, prepend=0.0) > 0)[-1]
        ids = np.minimum(ids, last)
    return ids


def kmeans_plusplus(X, k, weights=None, x_sq=None, random_state=None, n_local_trials=None):
    """Greedy k-means++ seeding with sample weights.

    Same algorithm as ``sklearn.cluster.kmeans_plusplus``: the first centre
    is drawn with probability proportional to ``w``; each next centre is the
    best of ``n_local_trials`` candidates drawn with probability proportional
    to ``w * D^2`` (``D`` the distance to the closest centre chosen so far),
    the best being the one with the smallest potential ``sum(w * min D^2)``.
    With integer weights this is distributionally the same as running it on
    the rows repeated ``w`` times.

    Distances use the expansion of :func:`nearest`, except that values below
    its round-off bound are recomputed exactly, so rows identical to a chosen
    centre have ``D^2 == 0`` exactly and are never drawn again: as long as
    there are at least ``k`` distinct rows with a positive weight, the ``k``
    centres are distinct. With fewer distinct (positive-weight) rows than
    ``k``, the potential reaches 0; the remaining centres are then drawn with
    probability proportional to ``w`` and are duplicates of chosen ones (``k``
    centres are always returned). Rows with weight 0 are never chosen.

    Prior validation of data is assumed: ``X`` is finite, 2-D, with at least
    one row; ``weights`` (if given) are finite, ``>= 0`` and not all 0;
    ``k >= 1``.

    Parameters
    ----------
    X : ndarray of shape (n, d), dtype float32 or float64
    k : int
        Number of centres.
    weights : ndarray of shape (n,) or None, default=None
        Row weights; ``None`` means all ones.
    x_sq : ndarray of shape (n,), dtype float64, default=None
        ``row_sq_norms(X)``; computed when ``None``.
    random_state : None, int, np.random.Generator or np.random.RandomState
        An int / None seeds ``np.random.default_rng``.
    n_local_trials : int, default=None
        Candidates per centre after the first; ``2 + int(log(k))`` when
        ``None`` (as scikit-learn).

    Returns
    -------
    centers : ndarray of shape (k, d), dtype float64
        ``X[indices]``.
    indices : ndarray of shape (k,), dtype int64

    Notes
    -----
    Complexity: O(k t n d) time (``t = n_local_trials``, one GEMM per
    centre), O(n t) extra memory.

    ``D^2`` of the candidates is only used for their potentials; only the
    column of the chosen candidate is made exact near 0 (O(n) per centre).
    """
    X = _as_float(X)
    n, d = X.shape
    k = int(k)
    w = np.ones(n, dtype=np.float64) if weights is None else _as_weights(weights, n)
    if x_sq is None:
        x_sq = row_sq_norms(X)
    rng = _check_random_state(random_state)
    if n_local_trials is None:
        n_local_trials = 2 + int(np.log(k))
    n_local_trials = max(1, int(n_local_trials))

    def draw(p, size):
        return _weighted_draw(rng, p, w, size)

    indices = np.empty(k, dtype=np.int64)
    indices[0] = draw(w, 1)[0]
    first = np.asarray(X[indices[0]], dtype=np.float64)
    closest = _expanded_sq_dist(X, x_sq, first[None, :], np.empty((n, 1)))[:, 0]
    closest = _fix_small_sq_dist(X, x_sq, first, closest)
    D = np.empty((n, n_local_trials), dtype=np.float64)
    for c in range(1, k):
        cand = draw(w * closest, n_local_trials)
        Y = np.asarray(X[cand], dtype=np.float64)
        _expanded_sq_dist(X, x_sq, Y, D)
        np.minimum(D, closest[:, None], out=D)
        pots = w @ D
        best = int(np.argmin(pots))
        closest = _fix_small_sq_dist(X, x_sq, Y[best], D[:, best].copy(), floor=closest)
        indices[c] = cand[best]
    centers = np.asarray(X[indices], dtype=np.float64)
    return centers, indices


# --------------------------------------------------------------------------- Lloyd


def tolerance(X, tol, weights=None):
    """Absolute centre-shift tolerance of Lloyd's algorithm.

    scikit-learn's ``_tolerance`` generalised to sample weights:
    ``tol * mean_j(var_w(X[:, j]))`` with the weighted (population) variance
    ``sum(w (x - mean_w)^2) / sum(w)``; with unit weights this is exactly
    ``tol * np.mean(np.var(X, axis=0))``. Integer weights give the tolerance
    of the rows repeated ``w`` times.

    Prior validation of data is assumed: ``X`` is finite and 2-D,
    ``weights`` (if given) are ``>= 0`` with a positive sum.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    tol : float
        Relative tolerance; 0 gives 0 (only strict convergence).
    weights : ndarray of shape (n,) or None, default=None

    Returns
    -------
    tol_abs : float

    Notes
    -----
    Complexity: O(n d) time (two passes, float64 accumulation), O(min(n,
    65536) d) extra memory.
    """
    if tol == 0:
        return 0.0
    X = _as_float(X)
    n, d = X.shape
    w = _as_weights(weights, n)
    total = float(n) if w is None else float(w.sum())
    s = np.zeros(d, dtype=np.float64)
    for start in range(0, n, _AUX_BLOCK_ROWS):
        G = np.asarray(X[start:start + _AUX_BLOCK_ROWS], dtype=np.float64)
        s += G.sum(axis=0) if w is None else w[start:start + _AUX_BLOCK_ROWS] @ G
    mean = s / total
    ss = np.zeros(d, dtype=np.float64)
    for start in range(0, n, _AUX_BLOCK_ROWS):
        G = np.asarray(X[start:start + _AUX_BLOCK_ROWS], dtype=np.float64) - mean
        G *= G
        ss += G.sum(axis=0) if w is None else w[start:start + _AUX_BLOCK_ROWS] @ G
    return float(np.mean(ss / total) * tol)


def center_shift_sq(old, new):
    """Sum over the centres of the squared shift ``||old_j - new_j||^2``.

    Parameters
    ----------
    old, new : ndarray of shape (k, d)

    Returns
    -------
    shift : float

    Notes
    -----
    Complexity: O(k d).
    """
    diff = np.asarray(old, dtype=np.float64) - np.asarray(new, dtype=np.float64)
    return float(np.einsum("ij,ij->", diff, diff))


def _exact_inertia(X, C, labels, w):
    """``sum(w * ||x - C[labels]||^2)`` from explicit differences, float64."""
    n = X.shape[0]
    total = 0.0
    for start in range(0, n, _AUX_BLOCK_ROWS):
        stop = min(start + _AUX_BLOCK_ROWS, n)
        diff = np.asarray(X[start:stop], dtype=np.float64) - C[labels[start:stop]]
        sq = np.einsum("ij,ij->i", diff, diff)
        total += float(sq.sum() if w is None else sq @ w[start:stop])
    return total


def _reseed_empty(X, C, C_new, empty, ps, w, x_sq, n_far, warn):
    """:func:`repair_empty` of ``C_new``'s ``empty`` clusters with the iteration's far rows, or
    with every row when those are not enough distinct points; ``(centres, re-seeded)``. Warns
    (if ``warn``) when some cluster stays empty: the data has fewer distinct points than k."""
    n, k, n_empty = X.shape[0], C.shape[0], int(empty.sum())
    C_rep, r = repair_empty(C_new, empty, ps.far_points, ps.far_d2)
    if r < n_empty and n_far < n:
        ps_all = partial_stats(X, C, w, x_sq=x_sq, n_far=n)
        C_rep, r = repair_empty(C_new, empty, ps_all.far_points, ps_all.far_d2)
    if r < n_empty and warn:
        warnings.warn("lloyd: %d empty cluster(s) could not be re-seeded: the data has "
                      "fewer distinct points than k=%d" % (n_empty - r, k), UserWarning, stacklevel=3)
    return C_rep, r


def lloyd(X, init, weights=None, max_iter=300, tol=1e-4, spherical=False, n_far=None):
    """Single-process (weighted) Lloyd k-means: the reference of the engine.

    Each iteration is :func:`partial_stats` (assignment to the current
    centres + statistics), :func:`centers_from_stats` and, if some clusters
    are empty, :func:`repair_empty` with the farthest rows. Convergence as in
    scikit-learn's ``_kmeans_single_lloyd``: stop when the labels did not
    change since the previous iteration (strict convergence), or when
    :func:`center_shift_sq` of the update is ``<= tolerance(X, tol,
    weights)``, or after ``max_iter`` iterations. A final assignment to the
    returned centres gives ``labels`` and ``inertia`` (computed exactly from
    the differences, in float64). With ``init`` equal, this reproduces
    ``KMeans(init=init, n_init=1, algorithm="lloyd")`` up to round-off (as
    long as no cluster gets empty: scikit-learn also removes the relocated
    point from its old cluster, this implementation only moves the centre).

    Empty clusters are re-seeded in every iteration; if the ``n_far``
    farthest rows are not enough distinct points, the repair is retried with
    all rows, and a ``UserWarning`` is emitted only when the data has fewer
    distinct (positive-weight) points than ``k``.

    Prior validation of data is assumed: ``X`` and ``init`` are finite, 2-D,
    with the same number of columns; ``weights`` (if given) are ``>= 0``
    with a positive sum. For ``spherical=True`` the rows of ``X`` (and
    ideally ``init``) are L2-normalised by the caller (:func:`normalize_rows`).

    Parameters
    ----------
    X : ndarray of shape (n, d), dtype float32 or float64
    init : ndarray of shape (k, d)
        Initial centres.
    weights : ndarray of shape (n,) or None, default=None
    max_iter : int, default=300
    tol : float, default=1e-4
        Relative tolerance, see :func:`tolerance`; 0 means strict convergence
        only.
    spherical : bool, default=False
        Spherical k-means: centres are L2-normalised after every update.
    n_far : int, default=None
        Far rows collected per iteration for the repair; ``k`` when ``None``.

    Returns
    -------
    result : LloydResult

    Notes
    -----
    Complexity: O(n_iter n k d) time; O(n (d + 1)) extra memory at most
    (float64 norms, labels, distances).
    """
    X = _as_float(X)
    n, d = X.shape
    C = np.array(init, dtype=np.float64, copy=True)
    k = C.shape[0]
    w = _as_weights(weights, n)
    n_far = k if n_far is None else int(n_far)
    x_sq = row_sq_norms(X)
    tol_abs = tolerance(X, tol, w)

    labels = np.empty(n, dtype=np.int32)
    labels_old = np.full(n, -1, dtype=np.int32)
    n_repaired = 0
    n_iter = 0
    warned = False
    for i in range(max_iter):
        n_iter = i + 1
        ps = partial_stats(X, C, w, x_sq=x_sq, n_far=n_far, out_labels=labels)
        C_new, empty = centers_from_stats(ps.sums, ps.counts, C, spherical=spherical)
        n_empty = int(empty.sum())
        if n_empty:
            C_new, r = _reseed_empty(X, C, C_new, empty, ps, w, x_sq, n_far, warn=not warned)
            warned = warned or r < n_empty
            n_repaired += r
        shift = center_shift_sq(C, C_new)
        C = C_new
        if not n_empty and np.array_equal(labels, labels_old):
            break  # strict convergence
        if shift <= tol_abs:
            break
        labels_old[:] = labels

    final_labels, _ = nearest(X, C, x_sq=x_sq)
    inertia = _exact_inertia(X, C, final_labels, w)
    return LloydResult(centers=C, labels=final_labels, inertia=inertia,
                       n_iter=n_iter, n_repaired=n_repaired)


# --------------------------------------------------------------------------- k-means||


def kmeans_parallel_sample(X, d2, weights, l, phi, rng):
    """One k-means|| oversampling round on a block of rows.

    Every row is kept independently with probability
    ``min(1, l * w * d2 / phi)`` (Bahmani et al. 2012, with sample weights),
    where ``d2`` is its squared distance to the closest current candidate and
    ``phi`` the global (all blocks) weighted potential ``sum(w * d2)``.

    Prior validation of data is assumed: ``d2`` and ``weights`` are finite
    and ``>= 0``, ``l > 0``, ``phi >= 0``. ``phi == 0`` (every row coincides
    with a candidate) selects nothing.

    Parameters
    ----------
    X : ndarray of shape (n, d)
        The block (only its length is used; the caller gathers
        ``X[indices]``).
    d2 : ndarray of shape (n,)
        Squared distance of each row to its closest candidate.
    weights : ndarray of shape (n,) or None
        Row weights; ``None`` means all ones.
    l : float
        Oversampling factor (expected number of rows selected over all
        blocks, per round).
    phi : float
        Global weighted potential.
    rng : np.random.Generator
        Source of the uniforms (one per row).

    Returns
    -------
    indices : ndarray of shape (m,), dtype int64
        Selected rows, sorted.

    Notes
    -----
    Complexity: O(n) time and memory.
    """
    n = np.shape(X)[0]
    d2 = np.asarray(d2, dtype=np.float64).reshape(n)
    if not phi > 0:
        return np.empty(0, dtype=np.int64)
    p = d2 * (float(l) / float(phi))
    if weights is not None:
        p *= np.asarray(weights, dtype=np.float64).reshape(n)
    u = rng.random(n)
    # u in [0, 1): p >= 1 always selects, p == 0 never does.
    return np.flatnonzero(u < p).astype(np.int64, copy=False)


def candidate_weights(X, candidates, weights=None, x_sq=None):
    """Weight of every k-means|| candidate: total weight of the rows nearest to it.

    Partial results of disjoint blocks are simply added; the sum over all
    blocks is the weight vector of the weighted k-means++ recluster of the
    candidates (:func:`kmeans_plusplus` then :func:`lloyd` with
    ``weights``).

    Prior validation of data is assumed, as in :func:`nearest`.

    Parameters
    ----------
    X : ndarray of shape (n, d), dtype float32 or float64
    candidates : ndarray of shape (m, d)
    weights : ndarray of shape (n,) or None, default=None
    x_sq : ndarray of shape (n,), dtype float64, default=None
        ``row_sq_norms(X)``; computed when ``None``.

    Returns
    -------
    cand_w : ndarray of shape (m,), dtype float64
        Sums to ``sum(weights)`` (``n`` when unweighted). Ties go to the
        lowest candidate index.

    Notes
    -----
    Complexity: O(n m d) time, as :func:`nearest`.
    """
    X = _as_float(X)
    candidates = np.asarray(candidates, dtype=np.float64)
    m = candidates.shape[0]
    n = X.shape[0]
    if n == 0:
        return np.zeros(m, dtype=np.float64)
    if x_sq is None:
        # The distances themselves are not needed, only the ranking.
        x_sq = np.zeros(n, dtype=np.float64)
    labels, _ = nearest(X, candidates, x_sq=x_sq)
    w = _as_weights(weights, n)
    return np.bincount(labels, weights=w, minlength=m).astype(np.float64, copy=False)


def normalize_rows(X):
    """L2-normalise every row (for cosine distance / spherical k-means).

    Norms are computed in float64 (rows whose squared norm underflows or
    overflows are rescaled by their largest entry first); the result has the
    dtype of ``X``. Rows of norm 0 stay 0.

    Prior validation of data is assumed: ``X`` is finite and 2-D.

    Parameters
    ----------
    X : ndarray of shape (n, d), dtype float32 or float64

    Returns
    -------
    Xn : ndarray of shape (n, d)
        A new array.

    Notes
    -----
    Complexity: O(n d) time, O(n d) memory for the output.
    """
    X = _as_float(X)
    x_sq = row_sq_norms(X)
    norms = np.sqrt(x_sq)
    # Squares of float64 values can underflow / overflow: recompute those
    # rows' norms with a max-abs scaling (float32 values cannot, in float64).
    bad = np.flatnonzero((x_sq < 1e-280) | ~np.isfinite(x_sq))
    if bad.size:
        sub = np.asarray(X[bad], dtype=np.float64)
        mx = np.max(np.abs(sub), axis=1)
        mx[mx == 0] = 1.0
        sub /= mx[:, None]
        norms[bad] = mx * np.sqrt(np.einsum("ij,ij->i", sub, sub))
    scale = np.ones_like(norms)
    nz = norms > 0
    scale[nz] = 1.0 / norms[nz]
    return X * scale.astype(X.dtype)[:, None]
