"""Choose K-means' k automatically on a driver-side sample (``kmeans.k: auto``, issue 6).

:func:`choose_k` works on a numpy sample ``Z`` of the model space (float64 ``(n, p)``, rows in
random order, so every prefix is a uniform sample) with the project's kernels
(:mod:`clusterlake.kernels.kmeans`): k-means++ seeding and Lloyd, no scikit-learn KMeans.

Criteria
--------
``silhouette`` (highest), ``calinski_harabasz`` (highest), ``davies_bouldin`` (lowest), ``elbow``
(knee of the inertia curve, :func:`elbow`)
    A sweep: every k in ``[min_k, min(max_k, n - 1)]`` is fitted once (k-means++ seeded with
    ``(seed, k)``, so a k's fit does not depend on the range swept, then Lloyd) and scored.
``dynamic``
    k grows from 1. The first centre is, among ``n_first`` random rows, the one with the lowest
    1-centre inertia; since ``sum ||x - c||^2 = sum ||x - mean||^2 + n ||c - mean||^2`` that is
    the candidate nearest the mean (Lloyd then moves it to the mean: the choice only makes the
    start a data row, it cannot change the k = 1 solution). Every further centre is the row at
    the ``percentile`` of the distances to the nearest current centre (the farthest row within
    that percentile, so a handful of outliers is never seeded as a centre), followed by Lloyd
    from the current centres plus that row. (Lloyd itself can still isolate a far outlier once k
    exceeds the real clusters, where that is the k-means optimum; the tiny share then stops the
    growth.) Growth stops at the first k >= ``min_k`` whose smallest
    cluster holds less than ``min_cluster_share`` of the rows, or at ``min(max_k, n - 1)``; the
    chosen k is the last one whose smallest share was >= ``min_cluster_share`` (at least
    ``min_k``: when even ``min_k`` fails, ``min_k`` is chosen with a warning). Note that this is
    a granularity rule, not a structure detector: splitting one of k equal clusters gives two
    halves of share ``1 / (2k)``, so on k equal-size clusters it stops at k only when
    ``1 / (2k) < min_cluster_share <= 1 / k``.

Scores of every candidate (every k of the sweep; every k >= 2 visited by ``dynamic``)
--------------------------------------------------------------------------------------
``inertia`` (all ``n`` rows, from Lloyd), ``calinski_harabasz`` and ``davies_bouldin`` (all ``n``
rows, scikit-learn's definitions through :mod:`clusterlake.kernels.metrics`), ``silhouette``
(scikit-learn's Euclidean definition on the first ``silhouette_size`` rows, computed here for all
candidates at once: one pass of pairwise distances, one GEMM with the stacked one-hot labels,
instead of scikit-learn's per-row loop; it agrees with ``sklearn.metrics.silhouette_score`` to
round-off) and, for ``dynamic``, ``min_cluster_share``. An undefined score (fewer than 2 non-empty
clusters) is NaN. With ``spherical=True`` (rows are unit vectors, cosine distance) Lloyd is
spherical; the scores stay Euclidean, which on unit vectors ranks like the cosine distance.

Stability
---------
At the chosen k the sample is fitted twice more (k-means++ seeded ``seed + 1`` and ``seed + 2``,
then Lloyd) and the adjusted Rand index between the two labelings is reported (a warning below
0.8: the chosen k is not a stable partition of this data).

Cost: the sweep is ``O(sum_k n_iter n k p)``; the silhouette ``O(m^2 (p + sum_k k))`` for
``m = min(silhouette_size, n)`` rows, in blocks of at most ~64 MB.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from clusterlake.kernels.kmeans import kmeans_plusplus, lloyd, nearest, row_sq_norms
from clusterlake.kernels.metrics import calinski_harabasz_from_stats, davies_bouldin_from_stats
from clusterlake.kernels.silhouette import silhouette_scores
from clusterlake.io.contract.metrics import Metric

log = logging.getLogger(__name__)

__all__ = ["AutoK", "choose_k", "elbow", "silhouette_scores", "CRITERIA"]

CRITERIA = ("silhouette", "calinski_harabasz", "davies_bouldin", "elbow", "dynamic")
SCORES = ("inertia", "silhouette", "calinski_harabasz", "davies_bouldin")
STABILITY_WARN = 0.8



@dataclass
class AutoK:
    """Result of :func:`choose_k`.

    Attributes
    ----------
    k : int
        The chosen number of clusters.
    criterion : str
    metrics : list of Metric
        Every candidate's scores (scope ``auto_k``, algorithm ``kmeans``, ``k`` = the candidate):
        ``inertia``, ``silhouette``, ``calinski_harabasz``, ``davies_bouldin`` (and
        ``min_cluster_share`` for ``dynamic``), then one
        ``Metric("sample", "stability_ari", ari, n, "kmeans", k=chosen)``.
    stability_ari : float
        ARI between two more fits at the chosen k (seeds ``seed + 1`` and ``seed + 2``).
    seconds : float
        Wall time of :func:`choose_k`.
    """

    k: int
    criterion: str
    metrics: list[Metric] = field(default_factory=list)
    stability_ari: float = float("nan")
    seconds: float = 0.0


@dataclass
class _Candidate:
    k: int
    labels: np.ndarray
    inertia: float
    min_share: float
    calinski_harabasz: float = float("nan")
    davies_bouldin: float = float("nan")
    silhouette: float = float("nan")


# ---------------------------------------------------------------------------------------- knee


def elbow(ks, inertias) -> int:
    """The knee of a decreasing inertia curve.

    Both axes are scaled to [0, 1] (k by its range, inertia by its min and max); the knee is the
    k whose point lies farthest below the chord between the curve's two ends (vertical gap, which
    ranks like the perpendicular distance since the chord is fixed). Ties go to the smallest k.
    When no point lies below the chord (fewer than 3 points, a straight or concave curve, or a
    flat one), the smallest k is returned.

    Parameters
    ----------
    ks : sequence of int
        Strictly increasing.
    inertias : sequence of float
        Same length, finite.

    Returns
    -------
    k : int
    """
    x = np.asarray(ks, dtype=np.float64)
    y = np.asarray(inertias, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError(f"elbow needs two 1-D sequences of the same, non-zero length "
                         f"(got {x.shape} ks and {y.shape} inertias)")
    if x.size > 1 and not np.all(np.diff(x) > 0):
        raise ValueError(f"elbow needs strictly increasing ks, got {list(ks)}")
    if not np.all(np.isfinite(y)):
        raise ValueError("elbow needs finite inertias")
    if x.size < 3:
        return int(ks[0])
    span_y = y.max() - y.min()
    if not span_y > 0:
        return int(ks[0])
    xs = (x - x[0]) / (x[-1] - x[0])
    ys = (y - y.min()) / span_y
    chord = ys[0] + (ys[-1] - ys[0]) * xs
    gap = chord - ys
    i = int(np.argmax(gap))  # first maximum: smallest k among ties
    if not gap[i] > 1e-12:  # round-off of a straight line is no knee
        return int(ks[0])
    return int(ks[i])


# ---------------------------------------------------------------------------------------- scores


def _ch_db(Z: np.ndarray, labels: np.ndarray, k: int) -> tuple[float, float]:
    """Calinski-Harabasz and Davies-Bouldin of a labeling of all rows (NaN when undefined)."""
    n, p = Z.shape
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    nonempty = counts > 0
    if not 2 <= int(nonempty.sum()) <= n - 1:
        return float("nan"), float("nan")
    sums = np.empty((k, p))
    for j in range(p):  # loop over columns, not rows
        sums[:, j] = np.bincount(labels, weights=Z[:, j], minlength=k)
    means = np.zeros((k, p))
    means[nonempty] = sums[nonempty] / counts[nonempty, None]
    diff = Z - means[labels]
    d2 = np.einsum("ij,ij->i", diff, diff)
    within = float(d2.sum())
    ch = calinski_harabasz_from_stats(counts, means, Z.mean(axis=0), within)
    mean_dist = np.bincount(labels, weights=np.sqrt(d2), minlength=k)[nonempty] / counts[nonempty]
    db = davies_bouldin_from_stats(means[nonempty], mean_dist)
    return float(ch), float(db)


def sample_fit(Z, x_sq, k, random_state, max_iter, tol, spherical):
    init, _ = kmeans_plusplus(Z, k, x_sq=x_sq, random_state=random_state)
    return lloyd(Z, init, max_iter=max_iter, tol=tol, spherical=spherical)


def _min_share(labels: np.ndarray, k: int) -> float:
    return float(np.bincount(labels, minlength=k).min() / labels.shape[0])


def _score(Z, cands: list[_Candidate], silhouette_size: int) -> None:
    for c in cands:
        c.calinski_harabasz, c.davies_bouldin = _ch_db(Z, c.labels, c.k)
    m = min(int(silhouette_size), Z.shape[0])
    sil = silhouette_scores(Z[:m], [c.labels[:m] for c in cands])
    for c, s in zip(cands, sil):
        c.silhouette = float(s)


# ---------------------------------------------------------------------------------------- search


def _check(Z, min_k, max_k, criterion, silhouette_size, min_cluster_share, percentile, n_first):
    Z = np.asarray(Z)
    if Z.ndim != 2:
        raise ValueError(f"choose_k needs a 2-D sample (rows x features), got an array of shape {Z.shape}")
    Z = np.ascontiguousarray(Z, dtype=np.float64)
    n = Z.shape[0]
    if criterion not in CRITERIA:
        raise ValueError(f"unknown auto-k criterion {criterion!r}: expected one of {', '.join(CRITERIA)}")
    if int(min_k) != min_k or int(max_k) != max_k:
        raise ValueError(f"min_k and max_k must be integers (got {min_k!r}, {max_k!r})")
    if min_k < 2:
        raise ValueError(f"min_k={min_k} must be at least 2")
    if min_k > max_k:
        raise ValueError(f"min_k={min_k} is larger than max_k={max_k}")
    if n < min_k + 1:
        raise ValueError(f"the sample has {n} rows: choosing k in [{min_k}, {max_k}] needs at least "
                         f"min_k + 1 = {min_k + 1} rows")
    if not np.all(np.isfinite(Z)):
        raise ValueError("the sample contains NaN or infinite values")
    if silhouette_size < 3:
        raise ValueError(f"silhouette_size={silhouette_size} must be at least 3")
    if not 0.0 < min_cluster_share < 1.0:
        raise ValueError(f"min_cluster_share={min_cluster_share} must be in (0, 1)")
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile={percentile} must be in (0, 100]")
    if n_first < 1:
        raise ValueError(f"n_first={n_first} must be at least 1")
    return Z


def _sweep(Z, x_sq, ks, seed, max_iter, tol, spherical) -> list[_Candidate]:
    out = []
    for k in ks:
        res = sample_fit(Z, x_sq, k, np.random.default_rng([seed, k]), max_iter, tol, spherical)
        out.append(_Candidate(k, res.labels, float(res.inertia), _min_share(res.labels, k)))
    return out


def _dynamic(Z, x_sq, k_cap, min_k, seed, max_iter, tol, spherical, min_cluster_share, percentile,
             n_first) -> tuple[list[_Candidate], int]:
    n = Z.shape[0]
    rng = np.random.default_rng(seed)
    cand = rng.choice(n, size=min(int(n_first), n), replace=False)
    # Lowest 1-centre inertia = nearest the mean (see the module docstring).
    diff = Z[cand] - Z.mean(axis=0)
    first = int(cand[np.argmin(np.einsum("ij,ij->i", diff, diff))])
    res = lloyd(Z, Z[first][None, :], max_iter=max_iter, tol=tol, spherical=spherical)
    pos = int(math.floor(percentile / 100.0 * (n - 1)))
    visited: list[_Candidate] = []
    k = 1
    while k < k_cap:
        _, d2 = nearest(Z, res.centers, x_sq=x_sq)
        row = int(np.argpartition(d2, pos)[pos])
        res = lloyd(Z, np.vstack([res.centers, Z[row]]), max_iter=max_iter, tol=tol, spherical=spherical)
        k += 1
        share = _min_share(res.labels, k)
        visited.append(_Candidate(k, res.labels, float(res.inertia), share))
        if k >= min_k and share < min_cluster_share:
            break
    passing = [c.k for c in visited if c.k >= min_k and c.min_share >= min_cluster_share]
    if visited[-1].min_share >= min_cluster_share or visited[-1].k < min_k:
        chosen = visited[-1].k  # reached the cap without a failure
    elif visited[-1].k - 1 >= min_k:
        chosen = visited[-1].k - 1
    else:
        chosen = min_k
    if chosen not in passing:
        log.warning("auto-k dynamic: already at min_k=%d the smallest cluster holds %.4f of the rows "
                    "(< min_cluster_share=%.4f); choosing k=%d", min_k,
                    next(c.min_share for c in visited if c.k == min_k), min_cluster_share, min_k)
    return visited, chosen


def _pick(cands: list[_Candidate], criterion: str) -> int:
    ks = [c.k for c in cands]
    if criterion == "elbow":
        return elbow(ks, [c.inertia for c in cands])
    vals = np.array([getattr(c, criterion) for c in cands])
    if np.all(np.isnan(vals)):
        log.warning("auto-k: %s is undefined for every candidate k; choosing k=%d", criterion, ks[0])
        return ks[0]
    i = np.nanargmin(vals) if criterion == "davies_bouldin" else np.nanargmax(vals)
    return ks[int(i)]


def choose_k(Z, min_k=2, max_k=20, criterion="silhouette", seed=42, max_iter=100, tol=1e-4,
             silhouette_size=10_000, min_cluster_share=0.02, percentile=95.0, n_first=5,
             spherical=False) -> AutoK:
    """Choose K-means' k on the driver-side sample ``Z``.

    Parameters
    ----------
    Z : ndarray of shape (n, p)
        The sample in the model space (float64, finite, rows in random order; unit rows when
        ``spherical``).
    min_k, max_k : int
        The range of k (``max_k`` is capped at ``n - 1``); ``2 <= min_k <= max_k``.
    criterion : {"silhouette", "calinski_harabasz", "davies_bouldin", "elbow", "dynamic"}
    seed : int
        Seeds the sweep's k-means++ (``(seed, k)``), ``dynamic``'s first-centre candidates and the
        stability fits (``seed + 1``, ``seed + 2``).
    max_iter, tol
        Lloyd's limits (``tol`` relative, see :func:`clusterlake.kernels.kmeans.tolerance`).
    silhouette_size : int
        The silhouette is computed on the first ``silhouette_size`` rows.
    min_cluster_share, percentile, n_first
        ``dynamic`` only (module docstring).
    spherical : bool
        Spherical Lloyd (cosine distance).

    Returns
    -------
    AutoK

    Raises
    ------
    ValueError
        On an unknown criterion, ``min_k < 2``, ``min_k > max_k``, fewer than ``min_k + 1`` rows,
        non-finite values or an out-of-range option.
    """
    t0 = time.perf_counter()
    Z = _check(Z, min_k, max_k, criterion, silhouette_size, min_cluster_share, percentile, n_first)
    min_k, max_k = int(min_k), int(max_k)
    n = Z.shape[0]
    k_cap = min(max_k, n - 1)
    x_sq = row_sq_norms(Z)
    log.info("auto-k: %s on %d sampled rows x %d features, k in [%d, %d]%s", criterion, n, Z.shape[1],
             min_k, k_cap, " (spherical)" if spherical else "")
    if criterion == "dynamic":
        cands, chosen = _dynamic(Z, x_sq, k_cap, min_k, seed, max_iter, tol, spherical,
                                 float(min_cluster_share), float(percentile), n_first)
    else:
        cands = _sweep(Z, x_sq, range(min_k, k_cap + 1), seed, max_iter, tol, spherical)
        chosen = None
    _score(Z, cands, silhouette_size)
    metrics = _candidate_metrics(cands, n, min(int(silhouette_size), n), criterion == "dynamic")
    if chosen is None:
        chosen = _pick(cands, criterion)
    ari = _stability(Z, x_sq, chosen, seed, max_iter, tol, spherical)
    return conclude(chosen, criterion, metrics, ari, n, len(cands), t0)


def conclude(chosen: int, criterion: str, metrics: list, ari: float, n: int, candidates: int, t0: float) -> AutoK:
    """The :class:`AutoK` of a choice (K-means' here, a mixture's in ``auto_mixture``): the
    stability ARI appended to the candidates' metrics, the choice logged."""
    metrics.append(Metric("sample", "stability_ari", ari, n, "kmeans", chosen))
    seconds = time.perf_counter() - t0
    log.info("auto-k: chose k=%d by %s (stability ARI %.3f, %d candidates, %.1f s)", chosen, criterion, ari,
             candidates, seconds)
    return AutoK(k=int(chosen), criterion=criterion, metrics=metrics, stability_ari=ari, seconds=seconds)


def _candidate_metrics(cands: list[_Candidate], n: int, n_sil: int, dynamic: bool) -> list[Metric]:
    """Every candidate's scores as ``auto_k`` rows (the curve the report plots), each logged."""
    metrics: list[Metric] = []
    for c in cands:
        extra = ""
        metrics += [
            Metric("auto_k", "inertia", c.inertia, n, "kmeans", c.k),
            Metric("auto_k", "silhouette", c.silhouette, n_sil, "kmeans", c.k),
            Metric("auto_k", "calinski_harabasz", c.calinski_harabasz, n, "kmeans", c.k),
            Metric("auto_k", "davies_bouldin", c.davies_bouldin, n, "kmeans", c.k),
        ]
        if dynamic:
            metrics.append(Metric("auto_k", "min_cluster_share", c.min_share, n, "kmeans", c.k))
            extra = " min_cluster_share=%.4f" % c.min_share
        log.info("auto-k: k=%d inertia=%.6g silhouette=%.4f calinski_harabasz=%.6g davies_bouldin=%.4f%s",
                 c.k, c.inertia, c.silhouette, c.calinski_harabasz, c.davies_bouldin, extra)
    return metrics


def _stability(Z, x_sq, k: int, seed: int, max_iter, tol, spherical) -> float:
    """ARI between two more fits at ``k`` (k-means++ seeded ``seed + 1`` and ``seed + 2``): a
    chosen k that two seeds split differently is not a stable partition of the data (warned)."""
    from sklearn.metrics import adjusted_rand_score

    a = sample_fit(Z, x_sq, k, seed + 1, max_iter, tol, spherical)
    b = sample_fit(Z, x_sq, k, seed + 2, max_iter, tol, spherical)
    ari = float(adjusted_rand_score(a.labels, b.labels))
    if ari < STABILITY_WARN:
        log.warning("auto-k: k=%d is unstable on the sample: two k-means++ fits (seeds %d, %d) agree with "
                    "ARI %.3f < %.1f", k, seed + 1, seed + 2, ari, STABILITY_WARN)
    return ari
