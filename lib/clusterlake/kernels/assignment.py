"""The one assignment rule: what the ``assignments`` table says about a model-space row (pure numpy).

Every consumer goes through :class:`AssignmentRule` (or :func:`assign_points`): the batch pass
(``algorithms.passes.assign_rows``, which the nightly job, the update job and the stream call),
the serving ``Assigner`` and the ``ml.KMeansModel`` estimator's ``transform``/``predict``. So a
row gets the same cluster, distance, second cluster, margin and pass labels wherever it is
assigned; only the Arrow/JSON encoding differs, and both encode "none" as null.

The rule, with its answer at every edge:

* **nearest centroid** (:func:`clusterlake.kernels.distance.assign`): candidates ranked by the
  GEMM expansion, the best two re-ranked on exact distances ``sqrt(sum((z - c)^2))``. ``distance``
  is that exact distance (a row on a centroid: exactly 0.0). Under another distance (a k-medoids
  model: ``metric``), the nearest medoid by that distance, computed exactly
  (:func:`clusterlake.kernels.distances.nearest`), and ``distance`` / ``margin`` in its units.
* **most probable component** (a Gaussian mixture: ``mixture``): the component of the largest
  posterior (log-sum-exp, :func:`clusterlake.kernels.gmm.log_prob`), ties to the lowest index;
  ``second`` the runner-up by posterior; ``probability`` the assigned component's posterior;
  ``margin`` the log posterior ratio ``log p_first - log p_second`` (>= 0; NaN when k == 1);
  ``distance`` the exact Euclidean distance to the component's mean; ``log_likelihood`` the row's
  log density under the mixture (low: an unusual row). ``probability`` and ``log_likelihood`` are
  None for every other model; ``posterior`` (n, k) only when the call asks for it.
* **ties**: an exact tie goes to the lowest centroid index (``index`` = row of ``centroids``;
  ``cluster_id = cluster_ids[index]``); the tied centroid is then the second, with margin 0.0.
* **k == 1** (no second centroid): ``second_index`` and ``second_cluster_id`` are
  :data:`NO_CLUSTER` (-1) and ``margin`` is NaN; :attr:`Assignment.has_second` is False. Encoded
  as null in Arrow (``io.contract.assignments``) and in JSON (``serving``), never as -1/NaN.
  Cluster ids are >= 0, so -1 never names a real cluster.
* **density pass** (:func:`density_labels`): the label of the nearest core point of the sample
  when the row lies within that point's reach (``reach * (1 + 1e-12)``: round-off at the
  boundary counts as inside), else -1 (noise); ``is_outlier = density_label == -1``;
  ``density_distance`` = exact distance to the nearest core point (``inf`` when the pass found no
  core point: every row is noise). Pass off: the three are None (null in the table).
* **hierarchical pass**: at every level, the label of the nearest sampled point
  (:func:`clusterlake.kernels.hierarchy.extend`). Pass off: None.
* **no rows**: empty arrays of the right dtypes.

Serving-only policy (the ``radius`` outlier rule) is applied by the serving layer on top of this
result (``dataclasses.replace(result, is_outlier=...)``); it is not part of the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

from clusterlake.kernels import density as _density
from clusterlake.kernels import hierarchy as _hierarchy
from clusterlake.kernels.distance import assign
from clusterlake.kernels.distances import Metric, nearest

__all__ = ["NO_CLUSTER", "Assignment", "AssignmentRule", "assign_points", "density_labels"]

NO_CLUSTER = -1
"""``second_index`` / ``second_cluster_id`` of a row that has no second cluster (k == 1)."""

_SMALL_DENSITY = 2_000_000  # rows x core points x dims up to which one GEMM beats the pruned index


@dataclass
class Assignment:
    """The assignment of n rows: arrays of length n (pass fields None when the pass is off)."""

    index: np.ndarray  # int32: row of ``centroids``
    cluster_id: np.ndarray  # int32: ``cluster_ids[index]``, the stable id
    distance: np.ndarray  # float64: exact Euclidean distance to the centroid (model space)
    second_index: np.ndarray  # int32: row of the second-nearest centroid, NO_CLUSTER when k == 1
    second_cluster_id: np.ndarray  # int32: its id, NO_CLUSTER when k == 1
    margin: np.ndarray  # float64: distance to the second centroid minus ``distance``; NaN when k == 1
    density_label: Optional[np.ndarray] = None  # int32, -1 = noise
    is_outlier: Optional[np.ndarray] = None  # bool: density_label == -1 (serving may apply its own policy)
    density_distance: Optional[np.ndarray] = None  # float64: to the nearest core point
    hierarchy: Optional[dict[int, np.ndarray]] = None  # level (number of clusters) -> int32 labels
    probability: Optional[np.ndarray] = None  # float64: a mixture's posterior of the assigned component
    posterior: Optional[np.ndarray] = None  # float64 (n, k): a mixture's every posterior (on request)
    log_likelihood: Optional[np.ndarray] = None  # float64: a mixture's log density of the row, log p(x)

    def __len__(self) -> int:
        return len(self.cluster_id)

    @property
    def has_second(self) -> np.ndarray:
        """bool per row: there is a second cluster (False exactly when k == 1)."""
        return self.second_index != NO_CLUSTER


class AssignmentRule:
    """The rule prepared once for one model (centroids, stable ids, pass models), applied to any
    number of row blocks. It keeps no per-call state: once the pass models' search indexes are
    built (on their first use, or ahead with ``density.nearest_core``), threads may share it.

    Parameters
    ----------
    centroids : ndarray (k, p)
        Model-space centroids, k >= 1.
    cluster_ids : ndarray (k,), optional
        Stable id of each centroid row (default: the row index).
    density : DensityModel, optional
        The density pass (:mod:`clusterlake.kernels.density`); None = pass off.
    hierarchy : HierarchyModel, optional
        The hierarchical pass (:mod:`clusterlake.kernels.hierarchy`); None = pass off.
    small_search : bool
        Serving's latency option: find the nearest core point of small blocks by one GEMM instead
        of the pruned index (:func:`density_labels`). The two agree except on exact ties between
        core points; the batch job (and so the ``assignments`` table) always uses the index.
    metric : Metric, optional
        The model's distance (:mod:`clusterlake.kernels.distances`) when it is not Euclidean (a
        k-medoids model); None or euclidean: the Euclidean rule above.
    mixture : clusterlake.kernels.gmm.Mixture, optional
        A Gaussian mixture model: rows go to their most probable component. Its means are the
        centroids: ``centroids`` may be None, and must equal them when given.
    """

    def __init__(self, centroids: Optional[np.ndarray], cluster_ids: Optional[np.ndarray] = None, density=None,
                 hierarchy=None, small_search: bool = False, metric: Optional[Metric] = None, mixture=None):
        if mixture is not None:
            if metric is not None and metric.name != "euclidean":
                raise ValueError("a mixture assigns by posterior: it takes no distance")
            if centroids is not None and not np.array_equal(np.asarray(centroids, np.float64), mixture.means):
                raise ValueError("the centroids of a mixture's rule are its means: pass None or the means")
            centroids = mixture.means
        self.mixture = mixture
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float64)
        k = self.centroids.shape[0]
        if k < 1:
            raise ValueError("the assignment rule needs at least one centroid")
        ids = np.arange(k) if cluster_ids is None else np.asarray(cluster_ids)
        if ids.shape != (k,):
            raise ValueError(f"{len(ids)} cluster ids for {k} centroids")
        self.cluster_ids = ids.astype(np.int32)
        self.density = density
        self.hierarchy = hierarchy
        self.metric = None if metric is None or metric.name == "euclidean" else metric
        self._core = _core_norms(density) if small_search else None

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def __call__(self, Z: np.ndarray, posterior: bool = False) -> Assignment:
        """Assign the model-space rows ``Z`` (n, p): see the module docstring. ``posterior``: a
        mixture's rows also get every component's posterior (:attr:`Assignment.posterior`)."""
        return self.with_passes(Z, self.partition(Z, posterior))

    def partition(self, Z: np.ndarray, posterior: bool = False) -> Assignment:
        """The partition's columns of ``Z``'s assignment (cluster, distance, second, margin, a
        mixture's probability and log-likelihood, and its posteriors if asked), without the passes."""
        if self.mixture is not None:
            return self._most_probable(Z, posterior)
        lab, dist, sec, sdist = assign(Z, self.centroids) if self.metric is None else self._nearest(Z)
        return self.named(lab, dist, sec, sdist - dist)  # margin NaN where there is no second (sdist NaN)

    def named(self, index: np.ndarray, distance: np.ndarray, second_index: np.ndarray, margin: np.ndarray,
              probability: Optional[np.ndarray] = None, log_likelihood: Optional[np.ndarray] = None) -> Assignment:
        """The partition's :class:`Assignment` of rows whose centroid positions are known (from
        :meth:`partition`, kept by the caller), named by this rule's cluster ids."""
        return Assignment(
            index=index, cluster_id=self.cluster_ids[index], distance=distance, second_index=second_index,
            # k == 1: second_index is NO_CLUSTER everywhere, and so is the id
            second_cluster_id=self.cluster_ids[second_index] if self.k > 1 else second_index.copy(),
            margin=margin, probability=probability, log_likelihood=log_likelihood)

    def with_passes(self, Z: np.ndarray, out: Assignment) -> Assignment:
        """``out`` (the partition's columns of ``Z``) with the passes' columns added."""
        if self.density is not None:
            out.density_label, out.density_distance = density_labels(Z, self.density, self._core)
            out.is_outlier = out.density_label < 0
        if self.hierarchy is not None:
            out.hierarchy = _hierarchy.extend(Z, self.hierarchy)
        return out

    def _most_probable(self, Z: np.ndarray, posterior: bool = False) -> Assignment:
        """The mixture's rule (module docstring): argmax of the posterior, the runner-up, the log ratio."""
        from clusterlake.kernels.gmm import log_posterior

        Z = np.asarray(Z, dtype=np.float64)
        n, k = len(Z), self.k
        ll, lpost = log_posterior(Z, self.mixture)  # (n,), (n, k)
        rows = np.arange(n)
        lab = np.argmax(lpost, axis=1).astype(np.int32) if n else np.zeros(0, np.int32)  # ties: the lowest index
        first = lpost[rows, lab]
        if k > 1:
            rest = lpost.copy()
            rest[rows, lab] = -np.inf
            sec = np.argmax(rest, axis=1).astype(np.int32) if n else np.zeros(0, np.int32)
            margin = first - rest[rows, sec]
        else:
            sec, margin = np.full(n, NO_CLUSTER, np.int32), np.full(n, np.nan)
        diff = Z - self.centroids[lab]
        out = self.named(lab, np.sqrt(np.einsum("ij,ij->i", diff, diff)), sec, margin, np.exp(first), ll)
        out.posterior = np.exp(lpost) if posterior else None
        return out

    def _nearest(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``assign``'s four arrays under :attr:`metric` (no second: index -1, distance NaN)."""
        i1, d1, i2, d2 = nearest(Z, self.centroids, self.metric)
        if self.k == 1:
            d2 = np.full(len(d1), np.nan)
        return i1.astype(np.int32), d1, i2.astype(np.int32), d2


def assign_points(Z: np.ndarray, centroids: np.ndarray, cluster_ids: Optional[np.ndarray] = None, density=None,
                  hierarchy=None) -> Assignment:
    """One-shot :class:`AssignmentRule` ``(centroids, cluster_ids, density, hierarchy)(Z)``."""
    return AssignmentRule(centroids, cluster_ids, density, hierarchy)(Z)


class _CoreNorms(NamedTuple):
    """The density model's core points' squared norms and their maximum (the small search's
    round-off allowance), computed once per model by :class:`AssignmentRule`."""

    sq: np.ndarray
    sq_max: float


def _core_norms(density) -> Optional[_CoreNorms]:
    if density is None or len(density.core_points) == 0:
        return None
    P = density.core_points
    sq = np.einsum("ij,ij->i", P, P)
    return _CoreNorms(sq, float(sq.max()))


def density_labels(Z: np.ndarray, model, _core: Optional[_CoreNorms] = None) -> tuple[np.ndarray, np.ndarray]:
    """The density pass's label of every row (-1 = noise) and its distance to the nearest core
    point, by the rule in the module docstring.

    The model's pruned exact index (:func:`clusterlake.kernels.density.extend`) finds the nearest
    core point. With ``_core`` (serving: ``AssignmentRule(small_search=True)``) and up to ``rows x
    core points x dims`` = 2e6 (a serving request), one GEMM ranks every core point instead and the
    candidates within round-off of the best are measured exactly (lowest index on an exact tie):
    the index's per-query set-up would dominate there. Both recompute the winner's distance as
    ``sqrt(sum((z - p)^2))``, so they agree up to exact ties between core points (whose winner
    the index does not define: a deterministic tie rule in the index is open work). Under another
    distance (``model.metric``) the small search is :func:`clusterlake.kernels.distances.nearest`
    (exact, ties to the lowest index, as the pivot search under that distance; the Euclidean
    index that serves mahalanobis and cosine leaves exact ties to any tied point).
    """
    Z = np.asarray(Z, dtype=np.float64)
    P = model.core_points
    if _core is None or len(Z) == 0 or len(P) == 0 or len(Z) * P.size > _SMALL_DENSITY:
        return _density.extend(Z, model)
    if model.metric is not None:  # another distance: brute force, exact, ties to the lowest (as the index)
        from clusterlake.kernels.distances import nearest

        j, dist, _, _ = nearest(Z, P, model.metric)
    else:
        j, dist = _nearest_core_small(Z, P, _core)
    return np.where(_density.within_reach(model, j, dist), model.core_labels[j], -1).astype(np.int32), dist


def _nearest_core_small(Z: np.ndarray, P: np.ndarray, core: _CoreNorms) -> tuple[np.ndarray, np.ndarray]:
    """Nearest row of ``P`` for every row of ``Z`` by brute force: the expansion selects the
    candidates within its round-off of the best, their exact distances decide (vectorised over
    the (row, candidate) pairs; about one pair per row)."""
    m = len(P)
    z_sq = np.einsum("ij,ij->i", Z, Z)
    d2 = (core.sq[:, None] - 2.0 * (P @ Z.T)).T + z_sq[:, None]  # (n, m)
    tol = 1e-9 * (z_sq + core.sq_max) + 1e-12
    rows, cand = np.divmod(np.flatnonzero(d2 <= (d2.min(axis=1) + tol)[:, None]), m)  # every row at least once
    diff = P[cand] - Z[rows]
    dist = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    if len(rows) == len(Z):  # one candidate per row (the usual case): it is the nearest
        return cand, dist
    order = np.lexsort((cand, dist, rows))  # per row: nearest first, then the lowest index
    first = order[np.concatenate(([0], np.flatnonzero(np.diff(rows[order])) + 1))]
    return cand[first], dist[first]
