"""Fitting K-means on all rows: the seam between the job and the engines.

:func:`fit_kmeans` takes the validated input and the fitted preprocessor and returns model-space
centroids. ``kmeans.engine: clusterlake`` (the default) runs our engine
(:mod:`clusterlake.algorithms.kmeans_engine`: k-means||/k-means++/random/warm start, Lloyd or
bisecting, euclidean or cosine, weights); ``spark-mllib`` runs Spark MLlib's ``KMeans`` for
comparison.
Runs on the driver; the fit is distributed; collected: k x p centroids and per-pass statistics.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from clusterlake.algorithms.kmeans_engine import FewerClustersWarning
from clusterlake.algorithms.passes import model_space
from clusterlake.config import KMeansSection
from clusterlake.prep.transform import Preprocessor

log = logging.getLogger(__name__)

__all__ = ["FewerClustersWarning", "KMeansFit", "fit_kmeans", "warm_start_centers"]


@dataclass
class KMeansFit:
    centroids: np.ndarray  # (k_found, p) model space
    k_requested: int
    n_iter: int
    seconds: float
    engine: str
    training_cost: float
    parent_ids: Optional[np.ndarray] = None  # bisecting: parent node id of each centroid (ids >= k are inner nodes)
    tree: Optional[dict] = None  # bisecting: {"node_ids", "parent_ids", "centers"} of every node
    init: str = ""
    converged: bool = True
    timings: dict = field(default_factory=dict)


def warm_start_centers(previous, prep: Preprocessor, k: int) -> Optional[np.ndarray]:
    """The last run's centroids in this run's model space, or None when there is no previous
    model (the first run: logged, not a warning) or it does not fit (other features, other k).

    ``previous`` is :class:`clusterlake.algorithms.history.Previous` (or None): its centroids were
    mapped back to input units through the previous preprocessor and forward through this run's
    one, so a refitted scaling/PCA does not break the warm start.
    """
    if previous is None:
        log.info("kmeans.init=previous: no previous model (first run); using kmeans||")
        return None
    if not previous.comparable:
        log.warning("kmeans.init=previous: %s; using kmeans||", previous.reason)
        return None
    if len(previous.centroids) != k:
        log.warning("kmeans.init=previous: the previous model (run %s) has k=%d, this run k=%d; using kmeans||",
                    previous.run_id, len(previous.centroids), k)
        return None
    log.info("kmeans.init=previous: warm start from run %s", previous.run_id)
    return previous.centroids.copy()


def _distinct(centers: np.ndarray, k: int) -> np.ndarray:
    """Drop duplicate centres (MLlib keeps stale copies when there are fewer distinct points than
    k) and warn when fewer than k remain: a degraded but valid result, like scikit-learn's
    ConvergenceWarning."""
    uniq, first = np.unique(centers, axis=0, return_index=True)
    if len(uniq) < len(centers):
        centers = centers[np.sort(first)]
    if len(centers) < k:
        msg = (f"K-means found {len(centers)} distinct clusters, fewer than kmeans.k={k}: "
               "the input has too few distinct points")
        warnings.warn(msg, FewerClustersWarning, stacklevel=4)
        log.warning(msg)
    return centers


def fit_kmeans(df, prep: Preprocessor, cfg: KMeansSection, weight_col: Optional[str] = None,
               initial_centers: Optional[np.ndarray] = None, stage=None) -> KMeansFit:
    """Fit K-means with ``cfg.k`` clusters on every row of ``df`` in the model space.

    ``stage``: a :class:`~clusterlake.algorithms.kmeans_engine.KMeansStage` already holding the
    rows in the model space (the nightly job's resident rows); our engine then fits on it
    instead of loading ``df`` again.

    Returns fewer than k centroids only when the data has fewer than k distinct points; that is a
    :class:`FewerClustersWarning`, and the job carries on with what was found.
    """
    if cfg.engine == "spark-mllib":
        return _fit_mllib(df, prep, cfg, weight_col)
    return _fit_engine(df, prep, cfg, weight_col, initial_centers, stage)


def _fit_engine(df, prep, cfg, weight_col, initial_centers, stage=None) -> KMeansFit:
    from clusterlake.algorithms.kmeans_engine import fit, fit_on
    from clusterlake.engine.blocks import BlockSource

    k = int(cfg.k)
    t0 = time.time()
    seeding = "kmeans||" if cfg.init == "previous" else cfg.init  # previous without a usable model
    init = "previous" if initial_centers is not None else seeding
    params = dict(algorithm=cfg.algorithm, init=seeding, initial_centers=initial_centers, max_iter=cfg.max_iter,
                  tol=cfg.tol, seed=cfg.seed, init_steps=cfg.init_steps, batch_size=cfg.batch_size)
    with warnings.catch_warnings():  # the engine's own warning is replaced by the job's below
        warnings.simplefilter("ignore", FewerClustersWarning)
        if stage is not None:
            res = fit_on(stage, k, spherical=cfg.distance == "cosine", **params)
        else:
            source = BlockSource(columns=tuple(prep.feature_names), weight_column=weight_col, center=prep.center,
                                 scale=prep.scale, components=prep.components, normalize=cfg.distance == "cosine")
            res = fit(df.sparkSession, df, source, k, num_tasks=cfg.num_tasks,
                      recovery_wait=cfg.recovery_wait_seconds, **params)
    centers = _distinct(res.centers, k)
    parent_ids = tree = None
    if res.tree_centers is not None:
        # leaves become clusters 0..k-1 (in centroid order); inner nodes get ids k, k+1, ... (root = k)
        leaf_nodes = [int(v) for v in res.leaf_nodes]
        inner = [n for n in range(len(res.tree_centers)) if n not in set(leaf_nodes)]
        ids = {n: i for i, n in enumerate(leaf_nodes)}
        ids.update({n: len(leaf_nodes) + j for j, n in enumerate(inner)})
        order = sorted(ids, key=ids.get)
        tp = res.tree_parents
        parent_ids = np.array([ids[int(tp[n])] if tp[n] >= 0 else -1 for n in leaf_nodes], dtype=np.int64)
        tree = {"node_ids": np.array([ids[n] for n in order], dtype=np.int64),
                "parent_ids": np.array([ids[int(tp[n])] if tp[n] >= 0 else -1 for n in order], dtype=np.int64),
                "centers": np.asarray(res.tree_centers)[order]}
    timings = {"load": round(res.load_seconds, 3), "init": round(res.init_seconds, 3),
               "iteration_median": round(float(np.median(res.iter_seconds)), 4) if res.iter_seconds else None,
               "tasks": res.n_tasks, "recoveries": res.recoveries}
    return KMeansFit(
        centroids=centers, k_requested=k, n_iter=res.n_iter, seconds=time.time() - t0, engine="clusterlake",
        training_cost=float(res.inertia), parent_ids=parent_ids, tree=tree, init=init,
        converged=res.converged, timings=timings,
    )


def _fit_mllib(df, prep: Preprocessor, cfg: KMeansSection, weight_col: Optional[str] = None) -> KMeansFit:
    from pyspark import StorageLevel
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.functions import array_to_vector

    from clusterlake.io.columns import col

    k = int(cfg.k)
    t0 = time.time()
    # the weight under a fixed name: MLlib parses weightCol (a dot would be a struct field)
    vecs = model_space(df, prep, weight_col).select(
        array_to_vector("z").alias("features"), *([col(weight_col).alias("__weight")] if weight_col else [])
    ).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        est = KMeans(
            k=k, seed=cfg.seed, maxIter=cfg.max_iter, tol=cfg.tol,
            initMode="k-means||" if cfg.init == "kmeans||" else "random",
            featuresCol="features",
            # not solver="block": Spark 4.0.5's block solver throws ArrayIndexOutOfBoundsException when
            # the data has fewer distinct points than k (k-means|| returns fewer centres)
        )
        if weight_col:
            est = est.setWeightCol("__weight")
        model = est.fit(vecs)
    finally:
        vecs.unpersist()
    centers = np.asarray([np.asarray(c, dtype=np.float64) for c in model.clusterCenters()])
    centers = _distinct(centers, k)
    summary = model.summary
    return KMeansFit(
        centroids=centers, k_requested=k, n_iter=int(summary.numIter), seconds=time.time() - t0,
        engine="spark-mllib", training_cost=float(summary.trainingCost), init=cfg.init,
    )
