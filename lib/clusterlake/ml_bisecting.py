"""``clusterlake.ml.BisectingKMeans``: a drop-in for ``pyspark.ml.clustering.BisectingKMeans`` on
clusterlake's engine (:func:`clusterlake.algorithms.kmeans_engine.bisecting`).

>>> from clusterlake.ml import BisectingKMeans
>>> model = BisectingKMeans(k=8, seed=1).fit(df)
>>> model.clusterCenters(); model.parents(); model.summary.trainingCost; model.transform(df)

Spark's params, names, docs and defaults (``k=4, maxIter=20, seed, minDivisibleClusterSize=1.0,
distanceMeasure, weightCol, featuresCol, predictionCol``), setters and getters; the model
(:class:`BisectingKMeansModel`: ``clusterCenters, predict, computeCost, numFeatures, summary``)
keeps the estimator's uid. Ours on top: ``tol``, ``numTasks`` and ``model.parents()`` (the split
tree). Where we deliberately differ from Spark:

* the engine splits one leaf at a time, the one with the largest sum of squared distances
  (scikit-learn's ``bisecting_strategy="biggest_inertia"``); Spark bisects every divisible leaf of
  the bottom level together (the larger first when that would pass ``k``). Both stop at ``k``
  leaves or when no leaf is divisible;
* each split is 2-means++ on a sample of the leaf, then Lloyd until the relative ``tol`` (ours,
  as :class:`~clusterlake.ml.KMeans`') or ``maxIter`` iterations; Spark's runs ``maxIter``;
* a row's cluster is its nearest leaf centre -- in ``transform``, ``predict``, ``computeCost`` and
  the summary alike; Spark's descends the tree, which can put a row in a leaf that is not its
  nearest (so our costs are lower or equal on the same centres);
* ``minDivisibleClusterSize`` is honoured: a leaf of fewer rows (``< 1.0``: that share of all the
  rows, rounded up) is never split; with a ``weightCol``, a leaf's size is its total weight
  (Spark counts its rows). A leaf of one row, or of identical rows, is never divisible (as in Spark);
* ``summary.numIter`` is ``maxIter``, as Spark reports it; ``summary.lloydIterations`` (ours) the
  Lloyd iterations of all the splits;
* the centres come back in lexicographic order; ``parents()`` gives each one's split-tree node;
* the rest as :mod:`clusterlake.ml` (seed 42 by default, costs under cosine, shipping clusterlake
  to the workers).
"""

import dataclasses
import logging
import math
import time
import warnings

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Estimator
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (HasDistanceMeasure, HasFeaturesCol, HasMaxIter, HasPredictionCol, HasSeed,
                                     HasWeightCol)
from pyspark.ml.util import DefaultParamsWriter, MLReadable, MLReader, MLWritable, MLWriter

from clusterlake.algorithms.kmeans_engine import EngineFit, KMeansStage, bisecting, data_info
from clusterlake.ml import (DEFAULT_SEED, ClusteringSummary, ParamsReader, _CentersModel, _check_common,
                            _EstimatorSetters, _nearest_column, engine_input, lexicographic, on_workers)

log = logging.getLogger(__name__)


class _BisectingKMeansParams(HasMaxIter, HasFeaturesCol, HasSeed, HasPredictionCol, HasDistanceMeasure, HasWeightCol):
    """Params of :class:`BisectingKMeans` and :class:`BisectingKMeansModel`: Spark's, plus ``tol`` and ``numTasks``."""

    k = Param(Params._dummy(), "k", "The desired number of leaf clusters. Must be > 1.",
              typeConverter=TypeConverters.toInt)
    minDivisibleClusterSize = Param(Params._dummy(), "minDivisibleClusterSize",
                                    "The minimum number of points (if >= 1.0) or the minimum proportion of points "
                                    "(if < 1.0) of a divisible cluster.", typeConverter=TypeConverters.toFloat)
    tol = Param(Params._dummy(), "tol", "clusterlake: each split's Lloyd iterations stop when the summed squared "
                "centre shift is at most tol times the mean feature variance (>= 0; Spark's run maxIter)",
                typeConverter=TypeConverters.toFloat)
    numTasks = Param(Params._dummy(), "numTasks", "clusterlake: barrier tasks (0 = all free task slots)",
                     typeConverter=TypeConverters.toInt)

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(maxIter=20, k=4, minDivisibleClusterSize=1.0, tol=1e-4, numTasks=0, seed=DEFAULT_SEED)

    def getK(self) -> int:
        """Gets the value of `k` or its default value."""
        return self.getOrDefault(self.k)

    def getMinDivisibleClusterSize(self) -> float:
        """Gets the value of `minDivisibleClusterSize` or its default value."""
        return self.getOrDefault(self.minDivisibleClusterSize)

    def getTol(self) -> float:
        return self.getOrDefault(self.tol)

    def getNumTasks(self) -> int:
        return self.getOrDefault(self.numTasks)


class BisectingKMeansSummary(ClusteringSummary):
    """Bisecting KMeans clustering results (see :class:`~clusterlake.ml.ClusteringSummary`):
    ``numIter`` is ``maxIter`` (as Spark reports it), ``lloydIterations`` (ours) counts the
    iterations of every split, ``trainingCost`` is the cost of the nearest-leaf assignment."""

    lloydIterations: int = 0


class BisectingKMeansModel(_CentersModel, _BisectingKMeansParams):
    """Model fitted by BisectingKMeans: the leaf centres (``clusterCenters``), the split tree
    (``parents``), ``transform``/``predict`` (the nearest leaf centre), ``computeCost``."""

    def computeCost(self, dataset) -> float:
        """The sum of squared distances between the rows of ``dataset`` and their nearest centre
        (unweighted, as Spark's). Deprecated in Spark 3.0.0: use the summary's ``trainingCost`` or
        ``ClusteringEvaluator``."""
        from pyspark.sql import functions as F

        warnings.warn("Deprecated in 3.0.0. It will be removed in future versions. Use ClusteringEvaluator instead. "
                      "You can also get the cost on the training dataset in the summary.", FutureWarning)
        total = dataset.select(F.sum(_nearest_column(self, dataset, "double"))).first()[0]
        return float(total or 0.0)


class _MinDivisible:
    """The stage as :func:`~clusterlake.algorithms.kmeans_engine.bisecting` sees it, with Spark's
    ``minDivisibleClusterSize``: a leaf of fewer than ``min_size`` (weighted) rows is reported with
    no spread (a cost of 0), which bisecting never splits. Every other call goes to the stage."""

    def __init__(self, stage: KMeansStage, min_size: float):
        self._stage, self._min = stage, min_size

    def __getattr__(self, name: str):
        return getattr(self._stage, name)

    def stats(self, C, n_far: int = 0, op: str = "stats", **params):
        ps = self._stage.stats(C, n_far=n_far, op=op, **params)
        if op == "bisect_stats" and len(C) == 1 and ps.counts[0] < self._min:
            return dataclasses.replace(ps, inertia=0.0)
        return ps


def fit_bisecting(spark, df, source, k: int, *, max_iter: int, tol: float, seed: int, min_divisible: float,
                  num_tasks=None):
    """Bisecting K-means on the engine, then one pass assigning every row to its nearest leaf:
    ``(EngineFit, PartialStats of that pass)`` (the pass's counts and cost are the summary's)."""
    t0 = time.time()
    bc = KMeansStage(spark, df, source, num_tasks=num_tasks)
    with bc:
        info = data_info(bc)
        if info.n < k:
            raise ValueError(f"n_samples={info.n} should be >= k={k}")
        # a leaf's size is its total weight (every row 1 without a weightCol), and so is the share's whole
        min_size = min_divisible if min_divisible >= 1.0 else min_divisible * info.sum_w
        if source.weight_column is None:
            min_size = math.ceil(min_size)
        tol_abs = float(tol * info.var.mean()) if tol > 0 else 0.0
        b = bisecting(_MinDivisible(bc, min_size), k, info, max_iter, tol_abs, seed, source.normalize)
        final = bc.stats(b.centers)
    res = EngineFit(b.centers, final.counts, float(final.inertia), b.n_iter, True, 0.0, bc.load_seconds,
                    time.time() - t0, [], bc.n_tasks, b.parents, b.tree_centers, b.tree_parents, b.leaf_nodes,
                    task_peak_rss_mb=bc.task_peak_rss_mb, recoveries=bc.recoveries)
    return res, final


class BisectingKMeans(_EstimatorSetters, Estimator, _BisectingKMeansParams, MLWritable, MLReadable):
    """A bisecting k-means algorithm: starts from one cluster of every row and bisects a leaf with
    2-means until there are ``k`` leaves or no leaf is divisible, on clusterlake's engine.

    A drop-in for ``pyspark.ml.clustering.BisectingKMeans``. Deliberate differences (the module,
    ``docs/ml.md``): the leaf split next is the one with the largest cost (Spark: a whole level at
    once); each split's Lloyd stops at the relative ``tol`` (ours; Spark's runs ``maxIter``); rows go
    to their nearest leaf centre (Spark's descend the tree); the centres come back in lexicographic
    order; ``minDivisibleClusterSize`` compares a leaf's total weight when there is a ``weightCol``.
    """

    @keyword_only
    def __init__(self, *, featuresCol="features", predictionCol="prediction", maxIter=20, seed=None, k=4,
                 minDivisibleClusterSize=1.0, distanceMeasure="euclidean", weightCol=None, tol=1e-4, numTasks=0):
        super().__init__()
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, featuresCol="features", predictionCol="prediction", maxIter=20, seed=None, k=4,
                  minDivisibleClusterSize=1.0, distanceMeasure="euclidean", weightCol=None, tol=1e-4, numTasks=0):
        """Sets params for BisectingKMeans."""
        return self._set(**self._input_kwargs)

    def setMinDivisibleClusterSize(self, value: float):
        """Sets the value of :py:attr:`minDivisibleClusterSize`."""
        return self._set(minDivisibleClusterSize=value)

    def _check(self) -> None:
        if self.getK() < 2:
            raise ValueError(f"The 'k' parameter of BisectingKMeans must be an int >= 2. Got {self.getK()} instead.")
        _check_common(self)
        for name, ok, rule in (("minDivisibleClusterSize", self.getMinDivisibleClusterSize() > 0, "> 0"),
                               ("tol", self.getTol() >= 0, ">= 0")):
            if not ok:
                raise ValueError(f"The {name!r} parameter must be {rule}. Got {self.getOrDefault(name)!r} instead.")

    def _fit(self, dataset):
        self._check()
        spark, df, source = engine_input(self, dataset)
        res, final = on_workers(spark, lambda: fit_bisecting(
            spark, df, source, self.getK(), max_iter=self.getMaxIter(), tol=self.getTol(),
            seed=self.getSeed() % (1 << 64), min_divisible=self.getMinDivisibleClusterSize(),
            num_tasks=self.getNumTasks() or None))
        order = lexicographic(res.centers)
        model = self._copyValues(BisectingKMeansModel(res.centers[order], res.parents[order])._resetUid(self.uid))
        summary = BisectingKMeansSummary(model, dataset, res, self.getMaxIter(), final.counts[order], final.inertia)
        summary.lloydIterations = int(res.n_iter)
        model._summary = summary
        return model

    def write(self) -> MLWriter:
        return DefaultParamsWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return ParamsReader(cls)
