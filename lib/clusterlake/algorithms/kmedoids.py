"""k-medoids in the nightly job (issue 23): the medoids chosen on a sample, under any distance.

``kmeans.algorithm: kmedoids``: the first ``kmeans.kmedoids.sample_size`` rows of the run's one
uniform draw (model space), their pairwise distances under ``kmeans.distance``
(:mod:`clusterlake.kernels.distances`), k-medoids++ and FasterPAM
(:mod:`clusterlake.kernels.kmedoids`); with ``kmeans.k: auto`` every candidate k on the same
matrix, the best mean silhouette under the distance wins. The medoids are rows of the data; the
rest of the run treats their model-space coordinates as the centroids, and the one assignment
rule (:class:`~clusterlake.kernels.assignment.AssignmentRule` with the model's metric) assigns
every row to its nearest medoid under the distance, in the engine's tasks.

Runs on the driver; numpy only (the sample is already here).
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np

from clusterlake.algorithms.auto_k import AutoK
from clusterlake.algorithms.kmeans import KMeansFit
from clusterlake.algorithms.model_distance import distance_named
from clusterlake.errors import ConfigError, InputDataError
from clusterlake.io.contract.metrics import Metric
from clusterlake.kernels import kmedoids as K
from clusterlake.kernels.distances import Metric as Distance
from clusterlake.kernels.distances import pairwise

log = logging.getLogger(__name__)

_FLOAT32_ABOVE = 20_000  # sample rows above which the distances are kept as float32


def distance_of(kcfg, moments=None, prep=None) -> Distance:
    """The :class:`~clusterlake.kernels.distances.Metric` of ``kmeans.distance`` (mahalanobis:
    with the inverse of the model space's covariance over every row)."""
    return distance_named(kcfg.distance, kcfg.minkowski_p, moments, prep, "kmeans.distance")


def sample_distances(S: np.ndarray, dist: Distance, budget: tuple[int, str]) -> np.ndarray:
    """The sample's pairwise distances, refused when they would not fit the driver's budget."""
    n = len(S)
    dtype = np.float32 if n > _FLOAT32_ABOVE else np.float64
    need = n * n * np.dtype(dtype).itemsize + (64 << 20)
    limit, where = budget
    if need > limit:
        raise ConfigError(f"k-medoids on {n:,} sampled rows holds their pairwise distances: {need / 2**30:.1f} GiB, "
                          f"more than the driver's {limit / 2**30:.1f} GiB ({where}); lower "
                          "kmeans.kmedoids.sample_size or raise job.driver_memory_gb")
    try:
        return pairwise(S, S, dist, dtype=dtype)
    except ValueError as exc:  # jaccard on values that are not 0/1
        raise InputDataError(f"kmeans.distance={dist.name}: {exc}; the sampled rows hold other values") from None


def fit_kmedoids(S: np.ndarray, kcfg, dist: Distance, budget: tuple[int, str]
                 ) -> tuple[KMeansFit, Optional[AutoK], np.ndarray]:
    """k-medoids on the model-space sample ``S``: the fit (``centroids`` = the medoids' rows of
    ``S``; ``training_cost`` = the sample's loss, the sum of distances), with ``k: auto`` the
    choice of k, and the sample's distance matrix (the silhouette's, afterwards)."""
    t0 = time.time()
    if len(S) < 2:
        raise ConfigError(f"k-medoids needs at least 2 sampled rows, the input has {len(S)}")
    D = sample_distances(S, dist, budget)
    t_dist = time.time() - t0
    auto = None
    if kcfg.k == "auto":
        ks = [k for k in range(kcfg.auto.min_k, kcfg.auto.max_k + 1) if k < len(S)]
        k, scores, fits = K.choose_k(D, ks, kcfg.seed, kcfg.max_iter)
        f = fits[k]
        # scope auto_k, algorithm "kmeans": the metrics contract's name of the run's partition
        auto = AutoK(k, "silhouette", [Metric("auto_k", "silhouette", float(v), len(S), "kmeans", kk)
                                       for kk, v in scores.items()] +
                     [Metric("auto_k", "loss", fits[kk].loss, len(S), "kmeans", kk) for kk in fits],
                     seconds=time.time() - t0)
        log.info("k-medoids: k=%d by the silhouette (%s) on %d sampled rows: %s", k, dist.describe(), len(S),
                 ", ".join(f"{kk}: {v:.4f}" for kk, v in scores.items()))
    else:
        k = int(kcfg.k)
        if k > len(S):
            raise ConfigError(f"kmeans.k={k} medoids need at least {k} sampled rows; the sample has {len(S)}")
        f = K.fit(D, k, kcfg.seed, kcfg.max_iter)
    log.info("k-medoids: %d medoids of %d sampled rows (%s): loss %.6g, %d swaps in %d passes, distances %.1f s, "
             "fit %.1f s", len(f.medoids), len(S), dist.describe(), f.loss, f.n_swap, f.n_iter, t_dist,
             time.time() - t0 - t_dist)
    fit = KMeansFit(centroids=np.ascontiguousarray(S[f.medoids], dtype=np.float64), k_requested=len(f.medoids),
                    n_iter=f.n_iter, seconds=time.time() - t0, engine="clusterlake", training_cost=float(f.loss),
                    init="k-medoids++", converged=f.converged,
                    timings={"distances": round(t_dist, 3), "swaps": f.n_swap})
    return fit, auto, D


def sample_silhouette(S: np.ndarray, labels: np.ndarray, dist: Distance, budget: tuple[int, str],
                      D: Optional[np.ndarray] = None) -> float:
    """The mean silhouette of ``labels`` on the rows ``S`` under the model's distance; ``D``: the
    fit's distance matrix of a sample whose first ``len(S)`` rows are ``S`` (reused, not redone)."""
    if D is not None and len(D) >= len(S):
        return K.silhouette(D[:len(S), :len(S)], labels)
    return K.silhouette(sample_distances(S, dist, budget), labels)
