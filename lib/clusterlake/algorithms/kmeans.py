"""Fitting K-means on all rows: the seam between the job and the engine.

:func:`fit_kmeans` takes the validated input and the fitted preprocessor and returns model-space
centroids. This version delegates to Spark MLlib's ``KMeans`` (k-means|| or random init);
clusterlake's own engine replaces it behind the same function. Runs on the driver; the fit is
distributed; collected: k x p centroids.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import numpy as np

from clusterlake.algorithms.passes import model_space
from clusterlake.config import KMeansSection
from clusterlake.prep.transform import Preprocessor

log = logging.getLogger(__name__)


class FewerClustersWarning(UserWarning):
    """The fit found fewer distinct centroids than k (too few distinct points)."""


@dataclass
class KMeansFit:
    centroids: np.ndarray  # (k_found, p) model space
    k_requested: int
    n_iter: int
    seconds: float
    engine: str
    training_cost: float


def fit_kmeans(df, prep: Preprocessor, cfg: KMeansSection, weight_col: str | None = None) -> KMeansFit:
    """Fit K-means with ``cfg.k`` clusters on every row of ``df`` in the model space.

    Returns fewer than k centroids only when the data has fewer than k distinct points; that is a
    :class:`FewerClustersWarning`, and the job carries on with what was found.
    """
    from pyspark import StorageLevel
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.functions import array_to_vector

    k = int(cfg.k)
    t0 = time.time()
    vecs = model_space(df, prep, weight_col).select(
        array_to_vector("z").alias("features"), *([weight_col] if weight_col else [])
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
            est = est.setWeightCol(weight_col)
        model = est.fit(vecs)
    finally:
        vecs.unpersist()
    centers = np.asarray([np.asarray(c, dtype=np.float64) for c in model.clusterCenters()])
    # MLlib can keep duplicate (stale) centres when there are fewer distinct points than k
    uniq, first = np.unique(centers, axis=0, return_index=True)
    if len(uniq) < len(centers):
        centers = centers[np.sort(first)]
    if len(centers) < k:
        msg = f"K-means found {len(centers)} distinct clusters, fewer than kmeans.k={k}: the input has too few distinct points"
        warnings.warn(msg, FewerClustersWarning, stacklevel=2)
        log.warning(msg)
    summary = model.summary
    return KMeansFit(
        centroids=centers, k_requested=k, n_iter=int(summary.numIter), seconds=time.time() - t0,
        engine="spark-mllib", training_cost=float(summary.trainingCost),
    )
