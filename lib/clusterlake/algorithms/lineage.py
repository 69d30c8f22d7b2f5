"""Stable cluster ids across nightly runs, cluster lineage, drift metrics and mini-batch updates.

Every night K-means returns its centroids ``C`` (``k x p``, in model space: after scaling and
PCA) in an arbitrary internal order. This module gives them *stable* ids by matching them to the
previous run's centroids (already mapped into tonight's model space), describes what happened to
every cluster (:func:`lineage_rows`) and summarises the drift as rows of the metrics table
(:func:`drift_metrics`). It runs on the driver over small ``k x k`` statistics: numpy and scipy
only, no Spark.

Units
-----
Distances between a tonight's centroid ``C_i`` and a previous centroid ``prev_C_j`` are given in
*radius units* of the previous cluster: ``||C_i - prev_C_j|| / prev_radius_j``, where
``prev_radius_j`` is the rms distance of cluster ``j``'s rows to its centroid (a radius ``<= 0``
is replaced by the median of the positive radii, or ``1e-12`` when none is positive, see
:func:`centroid_distances`). A shift of 0.5 means "half the cluster's typical spread".

Matching (:func:`match_clusters`)
---------------------------------
A pair ``(i, j)`` is *allowed* iff ``||C_i - prev_C_j|| <= max_distance * prev_radius_j``. The
Hungarian method (:func:`scipy.optimize.linear_sum_assignment`) is solved on the cost
``distance / prev_radius`` with every disallowed pair set to one constant penalty larger than any
possible total of allowed costs, so the solution first maximises the number of allowed pairs and
then minimises their total cost; chosen pairs that are disallowed are dropped. Matched clusters
keep the previous id; unmatched clusters get fresh ids ``next_id, next_id + 1, ...`` in order of
tonight's position; unmatched previous clusters are retired.

Typical nightly use::

    D = centroid_distances(C, prev_C, prev_radius)            # (k, m) radius units
    m = match_clusters(C, prev_C, prev_ids, prev_radius, max_distance=3.0, next_id=next_id)
    rows = lineage_rows(m, prev_ids, sizes, prev_sizes, overlap=overlap, centroid_dist=D)
    metrics = drift_metrics(m, sizes, prev_sizes, prev_ids, overlap=overlap,
                            quality=quality, prev_quality=prev_quality)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from clusterlake.quality.metrics import Metric

log = logging.getLogger(__name__)

__all__ = [
    "Matching",
    "centroid_distances",
    "match_clusters",
    "lineage_rows",
    "psi",
    "drift_metrics",
    "minibatch_update",
    "QUALITY_CHANGES",
]

#: Quality metrics whose night-over-night change :func:`drift_metrics` reports (``<name>_change``).
QUALITY_CHANGES = ("silhouette", "davies_bouldin", "calinski_harabasz")

_RADIUS_FLOOR_NONE_POSITIVE = 1e-12


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------

def _as_matrix(name: str, a, p: Optional[int] = None) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1 and a.size == 0:
        a = a.reshape(0, 0 if p is None else p)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array (clusters x features), got shape {a.shape}")
    if p is not None and a.shape[0] > 0 and a.shape[1] != p:
        raise ValueError(f"{name} has {a.shape[1]} features but tonight's centroids have {p}: "
                         "map the previous centroids into tonight's model space first")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values: drop or repair those centroids")
    return a


def _as_vector(name: str, a, n: int, *, nonneg: bool = False) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {np.shape(a)}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if nonneg and np.any(a < 0):
        raise ValueError(f"{name} must be >= 0, got a minimum of {a.min()}")
    return a


def _as_ids(name: str, ids, n: Optional[int] = None) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 1 or (n is not None and a.shape[0] != n):
        want = f"({n},)" if n is not None else "1-d"
        raise ValueError(f"{name} must have shape {want}, got {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        af = a.astype(np.float64)
        if not np.all(np.isfinite(af)) or np.any(af != np.round(af)):
            raise ValueError(f"{name} must hold integer cluster ids, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if np.unique(a).size != a.size:
        raise ValueError(f"{name} holds duplicate ids: every cluster needs its own stable id")
    return a


def _floored_radius(prev_radius, m: int) -> np.ndarray:
    r = _as_vector("prev_radius", prev_radius, m)
    if np.any(r < 0):
        raise ValueError(f"prev_radius must be >= 0 (rms radius of each previous cluster), "
                         f"got a minimum of {r.min()}")
    bad = r <= 0
    if bad.any():
        pos = r[~bad]
        if pos.size:
            floor = float(np.median(pos))
        else:
            floor = _RADIUS_FLOOR_NONE_POSITIVE
            log.warning("every previous cluster has radius 0: distances in radius units use %g, so "
                        "only identical centroids can match", floor)
        r = np.where(bad, floor, r)
    return r


def _check_matching(matching: "Matching", m: int) -> None:
    if matching.prev_index.size and matching.prev_index.max() >= m:
        raise ValueError(f"matching refers to previous position {int(matching.prev_index.max())} but "
                         f"only {m} previous clusters were given: pass the prev_ids/prev_sizes "
                         "used for match_clusters")
    if matching.retired.size and matching.retired.max() >= m:
        raise ValueError(f"matching retires previous position {int(matching.retired.max())} but only "
                         f"{m} previous clusters were given")


# --------------------------------------------------------------------------------------------
# matching
# --------------------------------------------------------------------------------------------

@dataclass
class Matching:
    """Result of :func:`match_clusters`.

    Attributes
    ----------
    ids : ndarray of int64, shape (k,)
        Stable id of each of tonight's centroid positions: the previous id when matched, else a
        fresh id (``next_id, next_id + 1, ...`` in order of position).
    prev_index : ndarray of int64, shape (k,)
        Previous position matched to each of tonight's positions, ``-1`` when unmatched.
    distance : ndarray of float64, shape (k,)
        Distance to the matched previous centroid in radius units of the previous cluster, NaN
        when unmatched.
    retired : ndarray of int64
        Previous positions (ascending) matched to none of tonight's centroids.
    next_id : int
        Smallest id still unused after allocating the fresh ids.
    """

    ids: np.ndarray
    prev_index: np.ndarray
    distance: np.ndarray
    retired: np.ndarray
    next_id: int

    @property
    def matched(self) -> np.ndarray:
        """Boolean mask ``(k,)`` of tonight's positions that were matched."""
        return self.prev_index >= 0

    @property
    def n_matched(self) -> int:
        """Number of matched pairs."""
        return int(np.count_nonzero(self.prev_index >= 0))

    @property
    def new(self) -> np.ndarray:
        """Tonight's positions (ascending) that got a fresh id."""
        return np.flatnonzero(self.prev_index < 0)


def centroid_distances(C, prev_C, prev_radius) -> np.ndarray:
    """Distances from tonight's centroids to the previous ones, in radius units of the previous.

    Parameters
    ----------
    C : array_like, shape (k, p)
        Tonight's centroids (model space).
    prev_C : array_like, shape (m, p)
        Previous centroids mapped into tonight's model space (``m`` may be 0).
    prev_radius : array_like, shape (m,)
        Rms radius of each previous cluster in model space. Values ``<= 0`` are replaced by the
        median of the positive radii (``1e-12`` when none is positive).

    Returns
    -------
    ndarray of float64, shape (k, m)
        ``||C_i - prev_C_j|| / prev_radius_j``.
    """
    C = _as_matrix("C", C)
    prev_C = _as_matrix("prev_C", prev_C, C.shape[1])
    r = _floored_radius(prev_radius, prev_C.shape[0])
    k, m = C.shape[0], prev_C.shape[0]
    if k == 0 or m == 0:
        return np.zeros((k, m))
    return cdist(C, prev_C) / r[None, :]


def match_clusters(C, prev_C, prev_ids, prev_radius, max_distance: float, next_id: int) -> Matching:
    """Give tonight's centroids stable ids by matching them to the previous run's centroids.

    Parameters
    ----------
    C : array_like, shape (k, p)
        Tonight's centroids (positions ``0..k-1``, K-means' internal order).
    prev_C : array_like, shape (m, p)
        Previous centroids, already mapped into tonight's model space. ``m = 0`` (no previous
        run, e.g. ``np.empty((0, p))``) makes every cluster new.
    prev_ids : array_like of int, shape (m,)
        Stable ids of the previous clusters (distinct).
    prev_radius : array_like, shape (m,)
        Rms radius of each previous cluster in model space (``> 0``; values ``<= 0`` are replaced
        by the median of the positive radii, or ``1e-12`` when none is positive).
    max_distance : float
        A pair is allowed only if ``||C_i - prev_C_j|| <= max_distance * prev_radius_j``
        (``> 0``; ``inf`` allows every pair).
    next_id : int
        Smallest id never used before (must exceed every id in ``prev_ids``).

    Returns
    -------
    Matching
        Ids, matched previous positions, distances (radius units), retired previous positions
        and the next unused id.

    Notes
    -----
    The Hungarian method (:func:`scipy.optimize.linear_sum_assignment`, rectangular allowed)
    runs on ``cost_ij = ||C_i - prev_C_j|| / prev_radius_j``, with every disallowed pair set to
    one constant ``P > min(k, m) * max(allowed cost)``. Since the solver always assigns
    ``min(k, m)`` pairs, its objective is ``P * (#disallowed) + (total allowed cost)``: it
    maximises the number of allowed pairs first and minimises their total cost second (a
    constant penalty, not ``P + cost``, so the cost of pairs that are dropped anyway cannot bias
    the choice among the allowed ones). Disallowed pairs in the solution are dropped.
    Ties between equal-cost solutions are broken by the solver (deterministically).
    """
    C = _as_matrix("C", C)
    k, p = C.shape
    prev_C = _as_matrix("prev_C", prev_C, p)
    m = prev_C.shape[0]
    prev_ids = _as_ids("prev_ids", prev_ids, m)
    r = _floored_radius(prev_radius, m)
    max_distance = float(max_distance)
    if not (max_distance > 0):
        raise ValueError(f"max_distance must be > 0 (in radius units of the previous cluster), "
                         f"got {max_distance}")
    if int(next_id) != next_id or next_id < 0:
        raise ValueError(f"next_id must be a non-negative integer, got {next_id!r}")
    next_id = int(next_id)
    if m and next_id <= int(prev_ids.max()):
        raise ValueError(f"next_id={next_id} is not above the largest previous id "
                         f"{int(prev_ids.max())}: pass the smallest id never used (e.g. the stored "
                         "largest id + 1), or fresh ids would collide with old ones")

    prev_index = np.full(k, -1, dtype=np.int64)
    distance = np.full(k, np.nan)
    if k and m:
        # one (k, m) float matrix and one boolean mask, updated in place (k, m up to ~10,000)
        cost = cdist(C, prev_C)
        allowed = cost <= max_distance * r[None, :]
        cost /= r[None, :]
        if allowed.any():
            max_allowed = float(np.max(cost, where=allowed, initial=0.0))
            penalty = (min(k, m) + 1) * max(max_allowed, 1.0) + 1.0
            np.logical_not(allowed, out=allowed)
            np.copyto(cost, penalty, where=allowed)
            del allowed
            rows, cols = linear_sum_assignment(cost)
            keep = cost[rows, cols] < penalty
            rows, cols = rows[keep], cols[keep]
            prev_index[rows] = cols
            distance[rows] = cost[rows, cols]
    matched = prev_index >= 0
    ids = np.empty(k, dtype=np.int64)
    ids[matched] = prev_ids[prev_index[matched]]
    n_new = int(k - matched.sum())
    ids[~matched] = next_id + np.arange(n_new, dtype=np.int64)
    taken = np.zeros(m, dtype=bool)
    taken[prev_index[matched]] = True
    retired = np.flatnonzero(~taken).astype(np.int64)
    return Matching(ids=ids, prev_index=prev_index, distance=distance, retired=retired,
                    next_id=next_id + n_new)


# --------------------------------------------------------------------------------------------
# lineage
# --------------------------------------------------------------------------------------------

def _checked_sides(matching: "Matching", prev_ids, sizes, prev_sizes):
    """Tonight's ids and the previous ids, with both nights' sizes, validated against ``matching``."""
    ids = np.asarray(matching.ids, dtype=np.int64)
    prev_ids = _as_ids("prev_ids", prev_ids)
    _check_matching(matching, prev_ids.shape[0])
    sizes = _as_vector("sizes", sizes, ids.shape[0], nonneg=True)
    prev_sizes = _as_vector("prev_sizes", prev_sizes, prev_ids.shape[0], nonneg=True)
    return ids, prev_ids, sizes, prev_sizes


def _opt_int(x) -> Optional[int]:
    return None if x is None else int(x)


def _opt_float(x) -> Optional[float]:
    return None if x is None or not np.isfinite(x) else float(x)


def lineage_rows(matching: Matching, prev_ids, sizes, prev_sizes, overlap=None,
                 min_overlap: float = 0.2, centroid_dist=None,
                 split_distance: float = 2.0, *, C=None, prev_C=None,
                 prev_radius=None) -> list[dict]:
    """One row per lineage event between the previous run and tonight.

    Parameters
    ----------
    matching : Matching
        Result of :func:`match_clusters` for tonight's ``k`` and the previous ``m`` clusters.
    prev_ids : array_like of int, shape (m,)
        Stable ids of the previous clusters (as passed to :func:`match_clusters`).
    sizes : array_like, shape (k,)
        Rows per tonight's cluster position.
    prev_sizes : array_like, shape (m,)
        Rows per previous cluster position.
    overlap : array_like, shape (k, m), optional
        ``overlap[i, j]`` = number of ids (rows joined on the id column) in tonight's cluster
        ``i`` and previous cluster ``j``. Give it when the ids are joinable: decisions then use
        the ids (``basis='ids'``).
    min_overlap : float, default 0.2
        Smallest ``overlap_previous`` for a previous cluster to count as a source/destination.
    centroid_dist : array_like, shape (k, m), optional
        Distances in radius units of the previous cluster, as returned by
        :func:`centroid_distances(C, prev_C, prev_radius) <centroid_distances>`. Used for the
        decisions when ``overlap`` is None (``basis='centroids'``), and as the per-cluster
        fallback when ``overlap`` is given but the cluster concerned has no joined row; also
        fills ``distance`` of non-persist rows when given.
    split_distance : float, default 2.0
        Without overlap, the largest centroid distance (radius units) for a source/destination.
    C, prev_C, prev_radius : array_like, optional (keyword only)
        Instead of ``centroid_dist``: tonight's centroids ``(k, p)``, the previous centroids
        ``(m, p)`` in tonight's model space and their radii ``(m,)``, from which
        ``centroid_dist = centroid_distances(C, prev_C, prev_radius)`` is computed here. The
        three go together, and exclude ``centroid_dist``.

    Returns
    -------
    list of dict
        Keys ``cluster_id``, ``previous_cluster_id``, ``event``, ``distance``,
        ``overlap_previous``, ``overlap_current``, ``size``, ``previous_size``, ``basis`` (Python
        ``int``/``float``/``str`` or ``None``). ``persist``, ``split`` and ``new`` rows come first,
        ordered by tonight's stable id, then ``merge`` and ``retired`` rows ordered by previous id.

    Raises
    ------
    ValueError
        On inconsistent shapes, or when neither ``overlap`` nor ``centroid_dist`` is given while
        there is an unmatched cluster to explain and both runs have clusters.

    Notes
    -----
    Definitions, for tonight's position ``i`` and previous position ``j`` (pairs are written
    (tonight, previous) throughout):

    * ``overlap_previous[i, j] = overlap[i, j] / sum_i' overlap[i', j]``: share of previous
      cluster ``j``'s joinable rows that landed in tonight's cluster ``i``;
    * ``overlap_current[i, j] = overlap[i, j] / sum_j' overlap[i, j']``: share of tonight's
      cluster ``i``'s joinable rows that came from previous cluster ``j``.

    Rules (exactly as implemented):

    1. A matched pair ``(i, j)`` is ``persist``, with the matching distance and, when
       ``overlap`` is given, both overlaps; ``basis='match'``.
    2. An unmatched tonight's cluster ``i`` takes its *source* ``j``: with ids, the previous
       cluster with the largest ``overlap_previous[i, j]`` among those with
       ``overlap_previous[i, j] >= min_overlap`` (and ``> 0``); with centroids, the previous cluster with the
       smallest ``centroid_dist[i, j]`` among those with ``centroid_dist[i, j] <=
       split_distance``. If the source ``j`` is matched (necessarily to another of tonight's
       clusters) the row is ``split`` with ``previous_cluster_id`` = ``j``'s id; otherwise it is
       ``new``, with ``previous_cluster_id`` = ``j``'s id when a source exists (for
       information) and ``None`` when none does.
    3. An unmatched previous cluster ``j`` takes its *destination* ``i``: with ids, tonight's
       cluster with the largest ``overlap_previous[i, j]`` among those with
       ``overlap_previous[i, j] >= min_overlap`` (and ``> 0``); with centroids, tonight's cluster with the
       smallest ``centroid_dist[i, j]`` among those with ``centroid_dist[i, j] <=
       split_distance``. If the destination ``i`` is matched (necessarily to another previous
       cluster) the row is ``merge`` with ``cluster_id`` = ``i``'s id; otherwise it is
       ``retired``, with ``cluster_id`` = ``i``'s id when a destination exists and ``None``
       when none does.
    4. Basis of rules 2-3: the ids (``basis='ids'``) when ``overlap`` is given and the cluster
       being explained has at least one joined row (tonight's ``i``: ``sum_j overlap[i, j] >
       0``; previous ``j``: ``sum_i overlap[i, j] > 0``); otherwise the centroids
       (``basis='centroids'``; with neither ``overlap`` nor ``centroid_dist`` this only happens
       when the other run has no cluster, so no source/destination exists). When the ids are
       the basis and no candidate reaches ``min_overlap``, there is no source/destination (no
       fall back to the centroids).
    5. Ties (equal overlap or distance) go to the lowest position.

    ``distance`` is the matching distance for ``persist`` and ``centroid_dist`` of the pair
    otherwise (``None`` without ``centroid_dist`` or without a pair); ``overlap_previous`` /
    ``overlap_current`` are those of the pair when ``overlap`` is given (``None`` when undefined);
    ``size`` / ``previous_size`` are the sizes of the clusters named by ``cluster_id`` /
    ``previous_cluster_id``.
    """
    ids, prev_ids, sizes, prev_sizes = _checked_sides(matching, prev_ids, sizes, prev_sizes)
    k, m = ids.shape[0], prev_ids.shape[0]
    if not (0 <= min_overlap <= 1):
        raise ValueError(f"min_overlap is a share of the previous cluster's rows, in [0, 1]; "
                         f"got {min_overlap}")

    ov = None
    row = np.zeros(k)
    col = np.zeros(m)
    if overlap is not None:
        ov = np.asarray(overlap, dtype=np.float64)
        if ov.shape != (k, m):
            raise ValueError(f"overlap must have shape (k, m) = ({k}, {m}) (rows: tonight's "
                             f"positions, columns: previous positions), got {ov.shape}")
        if not np.all(np.isfinite(ov)) or np.any(ov < 0):
            raise ValueError("overlap must hold non-negative finite counts")
        col = ov.sum(axis=0)  # joinable rows of each previous cluster
        row = ov.sum(axis=1)  # joinable rows of each tonight's cluster
    col_has, row_has = col > 0, row > 0
    col_div = np.where(col_has, col, 1.0)
    given = {"C": C is not None, "prev_C": prev_C is not None, "prev_radius": prev_radius is not None}
    if any(given.values()):
        if not all(given.values()):
            missing = ", ".join(name for name, g in given.items() if not g)
            raise ValueError(f"lineage_rows: C, prev_C and prev_radius go together, but {missing} "
                             "is None: pass tonight's centroids, the previous centroids and radii, "
                             "or centroid_dist=centroid_distances(C, prev_C, prev_radius)")
        if centroid_dist is not None:
            raise ValueError("lineage_rows: pass either centroid_dist or C/prev_C/prev_radius, "
                             "not both")
        centroid_dist = centroid_distances(C, prev_C, prev_radius)
    cd = None
    if centroid_dist is not None:
        cd = np.asarray(centroid_dist, dtype=np.float64)
        if cd.shape != (k, m):
            raise ValueError(f"centroid_dist must have shape (k, m) = ({k}, {m}), got {cd.shape}: "
                             "use centroid_distances(C, prev_C, prev_radius)")
        if np.any(np.isnan(cd)) or np.any(cd < 0):
            raise ValueError("centroid_dist must hold non-negative distances (no NaN)")

    matched = matching.prev_index >= 0
    prev_matched = np.zeros(m, dtype=bool)
    prev_matched[matching.prev_index[matched]] = True
    cur_of_prev = np.full(m, -1, dtype=np.int64)
    cur_of_prev[matching.prev_index[matched]] = np.flatnonzero(matched)
    if k and m and overlap is None and cd is None and (
            (~matched).any() or (~prev_matched).any()):
        raise ValueError("lineage_rows needs overlap= (counts of joined ids, when the ids are "
                         "joinable) or centroid_dist= centroid_distances(C, prev_C, prev_radius) "
                         "to explain the unmatched clusters")

    def pair_row(i: Optional[int], j: Optional[int], event: str, basis: str,
                 distance: Optional[float] = None) -> dict:
        have_pair = i is not None and j is not None
        if distance is None and have_pair and cd is not None:
            distance = cd[i, j]
        return {
            "cluster_id": None if i is None else int(ids[i]),
            "previous_cluster_id": None if j is None else int(prev_ids[j]),
            "event": event,
            "distance": _opt_float(distance),
            "overlap_previous": (float(ov[i, j] / col[j]) if have_pair and ov is not None
                                 and col_has[j] else None),
            "overlap_current": (float(ov[i, j] / row[i]) if have_pair and ov is not None
                                and row_has[i] else None),
            "size": None if i is None else int(round(sizes[i])),
            "previous_size": None if j is None else int(round(prev_sizes[j])),
            "basis": basis,
        }

    def best(scores_ok: np.ndarray, scores: np.ndarray, larger: bool) -> Optional[int]:
        if not scores_ok.any():
            return None
        s = np.where(scores_ok, scores, -np.inf if larger else np.inf)
        return int(np.argmax(s) if larger else np.argmin(s))

    current: list[dict] = []
    previous: list[dict] = []
    for i in range(k):
        j = int(matching.prev_index[i])
        if j >= 0:
            current.append(pair_row(i, j, "persist", "match", matching.distance[i]))
            continue
        src: Optional[int] = None
        if ov is not None and row_has[i]:
            basis = "ids"
            v = ov[i] / col_div  # overlap_previous[i, :], 0 where a previous cluster has no row
            src = best((v >= min_overlap) & (v > 0), v, larger=True)
        else:
            basis = "centroids"
            if cd is not None and m:
                src = best(cd[i] <= split_distance, cd[i], larger=False)
        event = "split" if src is not None and prev_matched[src] else "new"
        current.append(pair_row(i, src, event, basis))
    for j in range(m):
        if prev_matched[j]:
            continue
        dst: Optional[int] = None
        if ov is not None and col_has[j]:
            basis = "ids"
            v = ov[:, j] / col[j]  # overlap_previous[:, j]
            dst = best((v >= min_overlap) & (v > 0), v, larger=True)
        else:
            basis = "centroids"
            if cd is not None and k:
                dst = best(cd[:, j] <= split_distance, cd[:, j], larger=False)
        event = "merge" if dst is not None and matched[dst] else "retired"
        previous.append(pair_row(dst, j, event, basis))
    current.sort(key=lambda r: r["cluster_id"])
    previous.sort(key=lambda r: r["previous_cluster_id"])
    return current + previous


# --------------------------------------------------------------------------------------------
# drift
# --------------------------------------------------------------------------------------------

def psi(p, q, floor: float = 1e-4) -> float:
    """Population stability index of two share vectors.

    Parameters
    ----------
    p, q : array_like, shape (n,)
        Shares (or counts) of the same categories in the reference (previous) and current
        population. Each is normalised to sum 1, then floored at ``floor``.
    floor : float, default 1e-4
        Smallest share used, so that a category empty on one side gives a finite term.

    Returns
    -------
    float
        ``sum((q - p) * ln(q / p))`` over the floored shares; ``>= 0`` and symmetric in ``p``,
        ``q``. Usual reading: ``< 0.1`` stable, ``0.1-0.25`` some change, ``> 0.25`` major shift.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.ndim != 1 or p.shape != q.shape:
        raise ValueError(f"psi needs two 1-d share vectors of the same length, got shapes "
                         f"{p.shape} and {q.shape}")
    if not (floor > 0):
        raise ValueError(f"floor must be > 0, got {floor}")
    for name, a in (("p", p), ("q", q)):
        if not np.all(np.isfinite(a)) or np.any(a < 0) or a.sum() <= 0:
            raise ValueError(f"psi: {name} must hold non-negative finite shares with a positive sum")
    p = np.maximum(p / p.sum(), floor)
    q = np.maximum(q / q.sum(), floor)
    return float(np.sum((q - p) * np.log(q / p)))


def drift_metrics(matching: Matching, sizes, prev_sizes, prev_ids, overlap=None,
                  quality: Optional[Mapping[str, Optional[float]]] = None,
                  prev_quality: Optional[Mapping[str, Optional[float]]] = None,
                  k: Optional[int] = None) -> list[Metric]:
    """Drift between the previous run and tonight as rows of the metrics table.

    Parameters
    ----------
    matching : Matching
        Result of :func:`match_clusters`.
    sizes : array_like, shape (k,)
        Rows per tonight's cluster position.
    prev_sizes : array_like, shape (m,)
        Rows per previous cluster position.
    prev_ids : array_like of int, shape (m,)
        Stable ids of the previous clusters.
    overlap : array_like, shape (k, m), optional
        Joined-id counts (tonight's position x previous position), see :func:`lineage_rows`.
    quality, prev_quality : mapping of str to float or None, optional
        Tonight's / the previous run's quality metrics by name (e.g. ``{"silhouette": 0.41}``).
    k : int, optional
        Value of the ``k`` column; default tonight's number of centroids.

    Returns
    -------
    list of Metric
        ``scope='drift'``, ``algorithm='kmeans'``, ``k`` = tonight's k:

        * per matched cluster (``cluster_id`` = stable id, ``sample_size`` = tonight's size):
          ``centroid_shift`` (radius units of the previous cluster) and ``size_change``
          (``(size - prev_size) / prev_size``, skipped when ``prev_size == 0``);
        * run level (no ``cluster_id``): ``centroid_shift_max`` and ``centroid_shift_mean``
          (weighted by tonight's sizes; unweighted if those are all 0), ``sample_size`` = rows
          of the matched clusters tonight, both skipped when nothing matched; ``psi`` of the
          shares by stable id over the union of both nights' ids (a new id has previous share
          0, a retired one share 0 tonight; skipped when a night has no row);
          ``matched_clusters``, ``new_clusters``, ``retired_clusters``; with ``overlap``:
          ``joined_rows`` (sum of ``overlap``) and ``changed_share`` (share of the joined ids
          whose stable cluster id differs: an id in previous ``j`` and tonight's ``i`` is
          unchanged iff ``ids[i] == prev_ids[j]``; ``sample_size`` = joined rows, skipped when
          there is none); with both quality mappings: ``<name>_change`` = tonight - previous for
          each of ``silhouette``, ``davies_bouldin``, ``calinski_harabasz`` present and not None
          in both. Unless stated, ``sample_size`` is tonight's total rows.
    """
    ids, prev_ids, sizes, prev_sizes = _checked_sides(matching, prev_ids, sizes, prev_sizes)
    kk, m = ids.shape[0], prev_ids.shape[0]
    k_col = kk if k is None else int(k)
    n_tonight = int(round(sizes.sum()))

    def metric(name: str, value: float, n: int, cluster_id: Optional[int] = None) -> Metric:
        kw = dict(scope="drift", metric=name, value=float(value), sample_size=int(n),
                  algorithm="kmeans", k=k_col)
        if cluster_id is not None:
            kw["cluster_id"] = int(cluster_id)
        return Metric(**kw)

    out: list[Metric] = []
    matched = np.flatnonzero(matching.prev_index >= 0)
    pj = matching.prev_index[matched]
    shift = np.asarray(matching.distance, dtype=np.float64)[matched]
    for i, j, s in zip(matched, pj, shift):
        out.append(metric("centroid_shift", s, round(sizes[i]), ids[i]))
        if prev_sizes[j] > 0:
            out.append(metric("size_change", (sizes[i] - prev_sizes[j]) / prev_sizes[j],
                              round(sizes[i]), ids[i]))
    if matched.size:
        w = sizes[matched]
        n_matched_rows = int(round(w.sum()))
        mean = float(np.average(shift, weights=w)) if w.sum() > 0 else float(shift.mean())
        out.append(metric("centroid_shift_max", shift.max(), n_matched_rows))
        out.append(metric("centroid_shift_mean", mean, n_matched_rows))

    if sizes.sum() > 0 and prev_sizes.sum() > 0:
        union = np.union1d(ids, prev_ids)
        q = np.zeros(union.size)
        p = np.zeros(union.size)
        q[np.searchsorted(union, ids)] = sizes
        p[np.searchsorted(union, prev_ids)] = prev_sizes
        out.append(metric("psi", psi(p, q), n_tonight))
    out.append(metric("matched_clusters", matched.size, n_tonight))
    out.append(metric("new_clusters", kk - matched.size, n_tonight))
    out.append(metric("retired_clusters", matching.retired.size, n_tonight))

    if overlap is not None:
        ov = np.asarray(overlap, dtype=np.float64)
        if ov.shape != (kk, m):
            raise ValueError(f"overlap must have shape (k, m) = ({kk}, {m}), got {ov.shape}")
        if not np.all(np.isfinite(ov)) or np.any(ov < 0):
            raise ValueError("overlap must hold non-negative finite counts")
        joined = float(ov.sum())
        n_joined = int(round(joined))
        if joined > 0:
            unchanged = 0.0
            if m:
                # the previous position holding each tonight's stable id, if any (ids are distinct)
                order = np.argsort(prev_ids)
                sorted_ids = prev_ids[order]
                pos = np.minimum(np.searchsorted(sorted_ids, ids), m - 1)
                same = sorted_ids[pos] == ids
                unchanged = float(ov[np.flatnonzero(same), order[pos][same]].sum())
            out.append(metric("changed_share", 1.0 - unchanged / joined, n_joined))
        out.append(metric("joined_rows", joined, n_joined))

    if quality is not None and prev_quality is not None:
        for name in QUALITY_CHANGES:
            a, b = quality.get(name), prev_quality.get(name)
            if a is None or b is None or not np.isfinite(a) or not np.isfinite(b):
                continue
            out.append(metric(f"{name}_change", float(a) - float(b), n_tonight))
    return out


# --------------------------------------------------------------------------------------------
# mini-batch K-means
# --------------------------------------------------------------------------------------------

def minibatch_update(C, counts, batch_counts, batch_sums,
                     spherical: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One mini-batch K-means step (Sculley 2010) from a batch's per-centre statistics.

    With the per-centre learning rate ``1 / count``, feeding a whole batch already assigned with
    the old centres amounts to ``c_j' = (N_j c_j + s_j) / (N_j + n_j)`` and ``N_j' = N_j + n_j``
    (scikit-learn's ``MiniBatchKMeans`` update, without its random reassignment of small
    centres). Centres with ``n_j = 0`` are unchanged; with ``N_j = 0`` the centre becomes the
    batch mean.

    Parameters
    ----------
    C : array_like, shape (k, p)
        Current centres (the ones the batch was assigned with).
    counts : array_like, shape (k,)
        Rows (or weights) seen so far per centre, ``N``.
    batch_counts : array_like, shape (k,)
        Rows (or weights) of the batch assigned to each centre, ``n``.
    batch_sums : array_like, shape (k, p)
        Sum of the batch's rows assigned to each centre, ``s``.
    spherical : bool, default False
        Re-normalise every updated centre to unit length (spherical K-means, cosine distance).
        An updated centre of norm 0 keeps its previous value.

    Returns
    -------
    C_new : ndarray of float64, shape (k, p)
    counts_new : ndarray of float64, shape (k,)
        New arrays; the inputs are not modified.
    """
    C = np.asarray(C, dtype=np.float64)
    if C.ndim != 2:
        raise ValueError(f"C must be a 2-d array (centres x features), got shape {C.shape}")
    k, p = C.shape
    counts = _as_vector("counts", counts, k, nonneg=True)
    batch_counts = _as_vector("batch_counts", batch_counts, k, nonneg=True)
    batch_sums = np.asarray(batch_sums, dtype=np.float64)
    if batch_sums.shape != (k, p):
        raise ValueError(f"batch_sums must have the centres' shape ({k}, {p}), got "
                         f"{batch_sums.shape}")
    if not np.all(np.isfinite(C)) or not np.all(np.isfinite(batch_sums)):
        raise ValueError("C and batch_sums must be finite")
    upd = batch_counts > 0
    total = counts + batch_counts
    C_new = C.copy()
    C_new[upd] = (counts[upd, None] * C[upd] + batch_sums[upd]) / total[upd, None]
    if spherical:
        norms = np.linalg.norm(C_new, axis=1)
        ok = upd & (norms > 0)
        C_new[ok] /= norms[ok, None]
        C_new[upd & ~ok] = C[upd & ~ok]
    return C_new, total
