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

Lineage events (:func:`lineage_rows`)
-------------------------------------
For tonight's position ``i`` and previous position ``j`` (pairs are written (tonight, previous)
throughout), with ``overlap[i, j]`` the number of ids in both tonight's cluster ``i`` and previous
cluster ``j``:

* ``overlap_previous[i, j] = overlap[i, j] / sum_i' overlap[i', j]``: share of previous
  cluster ``j``'s joinable rows that landed in tonight's cluster ``i``;
* ``overlap_current[i, j] = overlap[i, j] / sum_j' overlap[i, j']``: share of tonight's
  cluster ``i``'s joinable rows that came from previous cluster ``j``.

Rules (exactly as implemented):

1. A matched pair ``(i, j)`` is ``persist``, with the matching distance and, when
   ``overlap`` is given, both overlaps; ``basis='match'``.
2. An unmatched tonight's cluster ``i`` takes its *source* ``j``: with ids, the previous
   cluster with the largest ``overlap_previous[i, j]`` among those with
   ``overlap_previous[i, j] >= min_overlap`` (and ``> 0``); with centroids, the previous cluster
   with the smallest ``centroid_dist[i, j]`` among those with ``centroid_dist[i, j] <=
   split_distance``. If the source ``j`` is matched (necessarily to another of tonight's
   clusters) the row is ``split`` with ``previous_cluster_id`` = ``j``'s id; otherwise it is
   ``new``, with ``previous_cluster_id`` = ``j``'s id when a source exists (for
   information) and ``None`` when none does.
3. An unmatched previous cluster ``j`` takes its *destination* ``i``: with ids, tonight's
   cluster with the largest ``overlap_previous[i, j]`` among those with
   ``overlap_previous[i, j] >= min_overlap`` (and ``> 0``); with centroids, tonight's cluster
   with the smallest ``centroid_dist[i, j]`` among those with ``centroid_dist[i, j] <=
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

Drift metrics (:func:`drift_metrics`)
-------------------------------------
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

from clusterlake.io.contract.metrics import Metric

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


def _distances(C: np.ndarray, prev_C: np.ndarray, metric=None) -> np.ndarray:
    """``(k, m)`` distances between centroids: Euclidean, or the model's distance (k-medoids:
    its radii are in that distance's units, so its shifts must be too)."""
    if metric is None:
        return cdist(C, prev_C)
    from clusterlake.kernels.distances import exact

    return exact(C, prev_C, metric)


def centroid_distances(C, prev_C, prev_radius, metric=None) -> np.ndarray:
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
        ``||C_i - prev_C_j|| / prev_radius_j`` (``metric``: under the model's distance).
    """
    C = _as_matrix("C", C)
    prev_C = _as_matrix("prev_C", prev_C, C.shape[1])
    r = _floored_radius(prev_radius, prev_C.shape[0])
    k, m = C.shape[0], prev_C.shape[0]
    if k == 0 or m == 0:
        return np.zeros((k, m))
    return _distances(C, prev_C, metric) / r[None, :]


def match_clusters(C, prev_C, prev_ids, prev_radius, max_distance: float, next_id: int,
                   metric=None) -> Matching:
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
        and the next unused id. The method is :func:`_hungarian`'s; see the module doc.
    """
    C = _as_matrix("C", C)
    prev_C = _as_matrix("prev_C", prev_C, C.shape[1])
    m = prev_C.shape[0]
    prev_ids = _as_ids("prev_ids", prev_ids, m)
    r = _floored_radius(prev_radius, m)
    max_distance, next_id = _checked_match_limits(max_distance, next_id, prev_ids)
    prev_index, distance = _hungarian(C, prev_C, r, max_distance, metric)
    return _allocate_ids(prev_index, distance, prev_ids, next_id)


def _checked_match_limits(max_distance, next_id, prev_ids: np.ndarray) -> tuple[float, int]:
    """``max_distance`` as a positive float and ``next_id`` as an int above every previous id:
    a fresh id equal to an old one would silently merge two clusters' histories."""
    max_distance = float(max_distance)
    if not (max_distance > 0):
        raise ValueError(f"max_distance must be > 0 (in radius units of the previous cluster), "
                         f"got {max_distance}")
    if int(next_id) != next_id or next_id < 0:
        raise ValueError(f"next_id must be a non-negative integer, got {next_id!r}")
    next_id = int(next_id)
    if prev_ids.size and next_id <= int(prev_ids.max()):
        raise ValueError(f"next_id={next_id} is not above the largest previous id "
                         f"{int(prev_ids.max())}: pass the smallest id never used (e.g. the stored "
                         "largest id + 1), or fresh ids would collide with old ones")
    return max_distance, next_id


def _hungarian(C: np.ndarray, prev_C: np.ndarray, r: np.ndarray,
               max_distance: float, metric=None) -> tuple[np.ndarray, np.ndarray]:
    """Matched previous position (``-1`` when none) and distance (radius units, NaN when none) of
    each of tonight's positions.

    The Hungarian method (:func:`scipy.optimize.linear_sum_assignment`, rectangular allowed)
    runs on ``cost_ij = ||C_i - prev_C_j|| / prev_radius_j``, with every disallowed pair set to
    one constant ``P > min(k, m) * max(allowed cost)``. Since the solver always assigns
    ``min(k, m)`` pairs, its objective is ``P * (#disallowed) + (total allowed cost)``: it
    maximises the number of allowed pairs first and minimises their total cost second (a
    constant penalty, not ``P + cost``, so the cost of pairs that are dropped anyway cannot bias
    the choice among the allowed ones). Disallowed pairs in the solution are dropped.
    Ties between equal-cost solutions are broken by the solver (deterministically).
    """
    k, m = C.shape[0], prev_C.shape[0]
    prev_index = np.full(k, -1, dtype=np.int64)
    distance = np.full(k, np.nan)
    if not (k and m):
        return prev_index, distance
    # one (k, m) float matrix and one boolean mask, updated in place (k, m up to ~10,000)
    cost = _distances(C, prev_C, metric)
    allowed = cost <= max_distance * r[None, :]
    cost /= r[None, :]
    if not allowed.any():
        return prev_index, distance
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
    return prev_index, distance


def _allocate_ids(prev_index: np.ndarray, distance: np.ndarray, prev_ids: np.ndarray,
                  next_id: int) -> Matching:
    """Matched positions keep the previous id, the others get ``next_id, next_id + 1, ...`` in
    order of position; previous positions nobody matched are retired."""
    k, m = prev_index.shape[0], prev_ids.shape[0]
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


def _opt_float(x) -> Optional[float]:
    return None if x is None or not np.isfinite(x) else float(x)


def _checked_overlap(overlap, k: int, m: int) -> Optional[np.ndarray]:
    """``overlap`` as a ``(k, m)`` float array of non-negative counts (None stays None)."""
    if overlap is None:
        return None
    ov = np.asarray(overlap, dtype=np.float64)
    if ov.shape != (k, m):
        raise ValueError(f"overlap must have shape (k, m) = ({k}, {m}) (rows: tonight's "
                         f"positions, columns: previous positions), got {ov.shape}")
    if not np.all(np.isfinite(ov)) or np.any(ov < 0):
        raise ValueError("overlap must hold non-negative finite counts")
    return ov


def _lineage_distances(centroid_dist, C, prev_C, prev_radius, k: int, m: int) -> Optional[np.ndarray]:
    """The ``(k, m)`` centroid distances in radius units, given directly or computed from
    ``C``/``prev_C``/``prev_radius`` (the two ways exclude each other); None when neither."""
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
    if centroid_dist is None:
        return None
    cd = np.asarray(centroid_dist, dtype=np.float64)
    if cd.shape != (k, m):
        raise ValueError(f"centroid_dist must have shape (k, m) = ({k}, {m}), got {cd.shape}: "
                         "use centroid_distances(C, prev_C, prev_radius)")
    if np.any(np.isnan(cd)) or np.any(cd < 0):
        raise ValueError("centroid_dist must hold non-negative distances (no NaN)")
    return cd


def _best(scores_ok: np.ndarray, scores: np.ndarray, larger: bool) -> Optional[int]:
    """Position of the best allowed score (first on ties), None when none is allowed."""
    if not scores_ok.any():
        return None
    s = np.where(scores_ok, scores, -np.inf if larger else np.inf)
    return int(np.argmax(s) if larger else np.argmin(s))


@dataclass
class _LineageInputs:
    """Both nights' clusters as :func:`lineage_rows` sees them, so that the per-event helpers
    share one validated view instead of a dozen arguments."""

    matching: Matching
    ids: np.ndarray
    prev_ids: np.ndarray
    sizes: np.ndarray
    prev_sizes: np.ndarray
    ov: Optional[np.ndarray]  # (k, m) joined-id counts
    cd: Optional[np.ndarray]  # (k, m) centroid distances, radius units
    min_overlap: float
    split_distance: float

    def __post_init__(self) -> None:
        k, m = self.ids.shape[0], self.prev_ids.shape[0]
        self.col = np.zeros(m) if self.ov is None else self.ov.sum(axis=0)  # joinable rows per previous
        self.row = np.zeros(k) if self.ov is None else self.ov.sum(axis=1)  # joinable rows per tonight's
        self.col_has, self.row_has = self.col > 0, self.row > 0
        self.col_div = np.where(self.col_has, self.col, 1.0)
        self.matched = self.matching.prev_index >= 0
        self.prev_matched = np.zeros(m, dtype=bool)
        self.prev_matched[self.matching.prev_index[self.matched]] = True

    def row_of(self, i: Optional[int], j: Optional[int], event: str, basis: str,
               distance: Optional[float] = None) -> dict:
        """The lineage row of the pair (tonight ``i``, previous ``j``), either side may be None."""
        have_pair = i is not None and j is not None
        if distance is None and have_pair and self.cd is not None:
            distance = self.cd[i, j]
        ov = self.ov
        return {
            "cluster_id": None if i is None else int(self.ids[i]),
            "previous_cluster_id": None if j is None else int(self.prev_ids[j]),
            "event": event,
            "distance": _opt_float(distance),
            "overlap_previous": (float(ov[i, j] / self.col[j]) if have_pair and ov is not None
                                 and self.col_has[j] else None),
            "overlap_current": (float(ov[i, j] / self.row[i]) if have_pair and ov is not None
                                and self.row_has[i] else None),
            "size": None if i is None else int(round(self.sizes[i])),
            "previous_size": None if j is None else int(round(self.prev_sizes[j])),
            "basis": basis,
        }

    def source(self, i: int) -> tuple[Optional[int], str]:
        """Rule 2's source of unmatched tonight's cluster ``i`` and the basis of the choice."""
        if self.ov is not None and self.row_has[i]:
            v = self.ov[i] / self.col_div  # overlap_previous[i, :], 0 where a previous cluster has no row
            return _best((v >= self.min_overlap) & (v > 0), v, larger=True), "ids"
        if self.cd is not None and self.prev_ids.shape[0]:
            return _best(self.cd[i] <= self.split_distance, self.cd[i], larger=False), "centroids"
        return None, "centroids"

    def destination(self, j: int) -> tuple[Optional[int], str]:
        """Rule 3's destination of unmatched previous cluster ``j`` and the basis of the choice."""
        if self.ov is not None and self.col_has[j]:
            v = self.ov[:, j] / self.col[j]  # overlap_previous[:, j]
            return _best((v >= self.min_overlap) & (v > 0), v, larger=True), "ids"
        if self.cd is not None and self.ids.shape[0]:
            return _best(self.cd[:, j] <= self.split_distance, self.cd[:, j], larger=False), "centroids"
        return None, "centroids"

    def current_rows(self) -> list[dict]:
        """``persist``, ``split`` and ``new`` rows, by tonight's stable id."""
        out = []
        for i in range(self.ids.shape[0]):
            j = int(self.matching.prev_index[i])
            if j >= 0:
                out.append(self.row_of(i, j, "persist", "match", self.matching.distance[i]))
                continue
            src, basis = self.source(i)
            event = "split" if src is not None and self.prev_matched[src] else "new"
            out.append(self.row_of(i, src, event, basis))
        out.sort(key=lambda r: r["cluster_id"])
        return out

    def previous_rows(self) -> list[dict]:
        """``merge`` and ``retired`` rows, by previous stable id."""
        out = []
        for j in np.flatnonzero(~self.prev_matched):
            dst, basis = self.destination(int(j))
            event = "merge" if dst is not None and self.matched[dst] else "retired"
            out.append(self.row_of(dst, int(j), event, basis))
        out.sort(key=lambda r: r["previous_cluster_id"])
        return out


def lineage_rows(matching: Matching, prev_ids, sizes, prev_sizes, overlap=None,
                 min_overlap: float = 0.2, centroid_dist=None,
                 split_distance: float = 2.0, *, C=None, prev_C=None,
                 prev_radius=None) -> list[dict]:
    """One row per lineage event between the previous run and tonight (rules: the module doc).

    Parameters
    ----------
    matching : Matching
        Result of :func:`match_clusters` for tonight's ``k`` and the previous ``m`` clusters.
    prev_ids : array_like of int, shape (m,)
        Stable ids of the previous clusters (as passed to :func:`match_clusters`).
    sizes, prev_sizes : array_like, shape (k,) and (m,)
        Rows per tonight's / previous cluster position.
    overlap : array_like, shape (k, m), optional
        ``overlap[i, j]`` = number of ids (rows joined on the id column) in tonight's cluster
        ``i`` and previous cluster ``j``. Give it when the ids are joinable: decisions then use
        the ids (``basis='ids'``).
    min_overlap : float, default 0.2
        Smallest ``overlap_previous`` for a previous cluster to count as a source/destination.
    centroid_dist : array_like, shape (k, m), optional
        :func:`centroid_distances` (radius units). Used for the decisions when ``overlap`` is
        None (``basis='centroids'``), and as the per-cluster fallback when ``overlap`` is given
        but the cluster concerned has no joined row; also fills ``distance`` of non-persist rows.
    split_distance : float, default 2.0
        Without overlap, the largest centroid distance (radius units) for a source/destination.
    C, prev_C, prev_radius : array_like, optional (keyword only)
        Instead of ``centroid_dist`` (the three go together and exclude it): tonight's
        centroids, the previous ones in tonight's model space and their radii.

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
    """
    ids, prev_ids, sizes, prev_sizes = _checked_sides(matching, prev_ids, sizes, prev_sizes)
    k, m = ids.shape[0], prev_ids.shape[0]
    if not (0 <= min_overlap <= 1):
        raise ValueError(f"min_overlap is a share of the previous cluster's rows, in [0, 1]; "
                         f"got {min_overlap}")
    ov = _checked_overlap(overlap, k, m)
    cd = _lineage_distances(centroid_dist, C, prev_C, prev_radius, k, m)
    view = _LineageInputs(matching, ids, prev_ids, sizes, prev_sizes, ov, cd, min_overlap, split_distance)
    if k and m and ov is None and cd is None and (
            (~view.matched).any() or (~view.prev_matched).any()):
        raise ValueError("lineage_rows needs overlap= (counts of joined ids, when the ids are "
                         "joinable) or centroid_dist= centroid_distances(C, prev_C, prev_radius) "
                         "to explain the unmatched clusters")
    return view.current_rows() + view.previous_rows()


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
        Per matched cluster, then run level: the list and definitions are in the module doc
        ("Drift metrics"), in the order they are returned.
    """
    ids, prev_ids, sizes, prev_sizes = _checked_sides(matching, prev_ids, sizes, prev_sizes)
    metric = _DriftMetric(ids.shape[0] if k is None else int(k))
    n_tonight = int(round(sizes.sum()))
    out = _shift_metrics(metric, matching, ids, sizes, prev_sizes)
    out += _share_metrics(metric, matching, ids, prev_ids, sizes, prev_sizes, n_tonight)
    if overlap is not None:
        out += _overlap_metrics(metric, overlap, ids, prev_ids)
    if quality is not None and prev_quality is not None:
        out += _quality_changes(metric, quality, prev_quality, n_tonight)
    return out


@dataclass
class _DriftMetric:
    """Builds one ``scope='drift'`` row of the metrics table with the run's ``k``."""

    k: int

    def __call__(self, name: str, value: float, n: int, cluster_id: Optional[int] = None) -> Metric:
        kw = dict(scope="drift", metric=name, value=float(value), sample_size=int(n),
                  algorithm="kmeans", k=self.k)
        if cluster_id is not None:
            kw["cluster_id"] = int(cluster_id)
        return Metric(**kw)


def _shift_metrics(metric: _DriftMetric, matching: Matching, ids: np.ndarray, sizes: np.ndarray,
                   prev_sizes: np.ndarray) -> list[Metric]:
    """Per matched cluster ``centroid_shift`` and ``size_change``, then the run's max and
    size-weighted mean shift (nothing run-level when no cluster matched)."""
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
    return out


def _share_metrics(metric: _DriftMetric, matching: Matching, ids: np.ndarray, prev_ids: np.ndarray,
                   sizes: np.ndarray, prev_sizes: np.ndarray, n_tonight: int) -> list[Metric]:
    """``psi`` of the shares by stable id (when both nights have rows) and the counts of matched,
    new and retired clusters."""
    out: list[Metric] = []
    if sizes.sum() > 0 and prev_sizes.sum() > 0:
        union = np.union1d(ids, prev_ids)
        q = np.zeros(union.size)
        p = np.zeros(union.size)
        q[np.searchsorted(union, ids)] = sizes
        p[np.searchsorted(union, prev_ids)] = prev_sizes
        out.append(metric("psi", psi(p, q), n_tonight))
    n_matched = int(np.count_nonzero(matching.prev_index >= 0))
    out.append(metric("matched_clusters", n_matched, n_tonight))
    out.append(metric("new_clusters", ids.shape[0] - n_matched, n_tonight))
    out.append(metric("retired_clusters", matching.retired.size, n_tonight))
    return out


def _overlap_metrics(metric: _DriftMetric, overlap, ids: np.ndarray, prev_ids: np.ndarray) -> list[Metric]:
    """``changed_share`` (when some ids joined) and ``joined_rows`` from the joined-id counts."""
    k, m = ids.shape[0], prev_ids.shape[0]
    ov = np.asarray(overlap, dtype=np.float64)
    if ov.shape != (k, m):
        raise ValueError(f"overlap must have shape (k, m) = ({k}, {m}), got {ov.shape}")
    if not np.all(np.isfinite(ov)) or np.any(ov < 0):
        raise ValueError("overlap must hold non-negative finite counts")
    joined = float(ov.sum())
    n_joined = int(round(joined))
    out: list[Metric] = []
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
    return out


def _quality_changes(metric: _DriftMetric, quality: Mapping[str, Optional[float]],
                     prev_quality: Mapping[str, Optional[float]], n_tonight: int) -> list[Metric]:
    """``<name>_change`` = tonight - previous for every :data:`QUALITY_CHANGES` score both runs have."""
    out: list[Metric] = []
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
