"""``pyspark.ml`` estimators on clusterlake's engine: drop-in for ``pyspark.ml.clustering.KMeans``.

>>> from clusterlake.ml import KMeans
>>> model = KMeans(k=20, seed=1).fit(df)            # df has a `features` vector (or array) column
>>> model.clusterCenters(); model.summary.trainingCost
>>> model.transform(df)                             # adds `prediction`
>>> model.write().overwrite().save(path); KMeansModel.load(path)

Same parameter names as Spark's (``k, maxIter, tol, seed, initMode, initSteps, distanceMeasure,
weightCol, featuresCol, predictionCol``) plus ``initialCenters`` (warm start) and ``numTasks``;
:class:`BisectingKMeans` adds the split tree (``model.parents()``). Works inside a
``pyspark.ml.Pipeline``. ``tol`` follows scikit-learn (relative to the mean feature variance),
not MLlib (absolute centre movement). Persistence writes the params as Spark's metadata JSON and
the centres as a parquet table: no pickle.

:class:`KMedoids` (:mod:`clusterlake.ml_kmedoids`): k-medoids under a named distance or a
vectorised callable of your own. :class:`GaussianMixture` (:mod:`clusterlake.ml_gmm`): a drop-in
for Spark's, EM on the engine.
"""

import logging
from typing import TYPE_CHECKING, Optional

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasFeaturesCol, HasMaxIter, HasPredictionCol, HasSeed, HasTol, HasWeightCol
from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReadable, MLReader, MLWritable, MLWriter

from clusterlake.algorithms.kmeans_engine import EngineFit, fit
from clusterlake.engine.blocks import BlockSource

if TYPE_CHECKING:
    from clusterlake.kernels.assignment import Assignment

log = logging.getLogger(__name__)


class _KMeansParams(HasFeaturesCol, HasPredictionCol, HasMaxIter, HasTol, HasSeed, HasWeightCol):
    k = Param(Params._dummy(), "k", "number of clusters (> 1)", typeConverter=TypeConverters.toInt)
    initMode = Param(Params._dummy(), "initMode", "k-means|| | k-means++ | random",
                     typeConverter=TypeConverters.toString)
    initSteps = Param(Params._dummy(), "initSteps", "rounds of k-means|| (> 0)", typeConverter=TypeConverters.toInt)
    distanceMeasure = Param(Params._dummy(), "distanceMeasure", "euclidean | cosine",
                            typeConverter=TypeConverters.toString)
    initialCenters = Param(Params._dummy(), "initialCenters",
                           "warm start: k starting centres (overrides initMode)",
                           typeConverter=TypeConverters.toListListFloat)
    numTasks = Param(Params._dummy(), "numTasks", "barrier tasks (0 = all free task slots)",
                     typeConverter=TypeConverters.toInt)

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(k=2, maxIter=20, tol=1e-4, initMode="k-means||", initSteps=2,
                         distanceMeasure="euclidean", numTasks=0, featuresCol="features", predictionCol="prediction")

    def getK(self) -> int:
        return self.getOrDefault(self.k)

    def getInitMode(self) -> str:
        return self.getOrDefault(self.initMode)

    def getDistanceMeasure(self) -> str:
        return self.getOrDefault(self.distanceMeasure)


_INIT = {"k-means||": "kmeans||", "k-means++": "kmeans++", "random": "random"}


class KMeansSummary:
    """Training summary: ``trainingCost`` (inertia), ``numIter``, ``clusterSizes``, timings."""

    def __init__(self, fit: "EngineFit", k: int):
        self.k = k
        self.trainingCost = float(fit.inertia)
        self.numIter = int(fit.n_iter)
        self.clusterSizes = [int(round(c)) for c in fit.counts]
        self.converged = bool(fit.converged)
        self.initSeconds = float(fit.init_seconds)
        self.loadSeconds = float(fit.load_seconds)
        self.fitSeconds = float(fit.fit_seconds)
        self.iterationSeconds = list(fit.iter_seconds)
        self.numTasks = int(fit.n_tasks)
        self.taskPeakRssMb = float(fit.task_peak_rss_mb)


class KMeansModel(Model, _KMeansParams, MLWritable, MLReadable):
    """A fitted model: ``clusterCenters()``, ``transform`` (nearest centre), ``predict(vector)``."""

    def __init__(self, centers: Optional[np.ndarray] = None, parents: Optional[np.ndarray] = None):
        super().__init__()
        self._centers = None if centers is None else np.asarray(centers, dtype=np.float64)
        self._parents = None if parents is None else np.asarray(parents, dtype=np.int64)
        self._summary: Optional[KMeansSummary] = None

    def clusterCenters(self) -> list[np.ndarray]:
        return [c.copy() for c in self._centers]

    def parents(self) -> Optional[list[int]]:
        """Bisecting only: the split-tree node each centre was split from (-1: none)."""
        return None if self._parents is None else [int(p) for p in self._parents]

    @property
    def hasSummary(self) -> bool:
        return self._summary is not None

    @property
    def summary(self) -> KMeansSummary:
        if self._summary is None:
            raise RuntimeError("No training summary available for this KMeansModel (it was loaded)")
        return self._summary

    def assign(self, vectors) -> "Assignment":
        """The full assignment of local rows (n, d) or one row (d,), by the one assignment rule
        (:mod:`clusterlake.kernels.assignment`, as the nightly job and the serving layer apply it):
        ``cluster_id`` (= the centre's index, what ``transform`` puts in the prediction column),
        ``distance``, ``second_cluster_id``, ``margin`` (none when there is one centre). Cosine:
        the rows are L2-normalised first, as in ``transform`` and ``predict``."""
        from clusterlake.kernels.assignment import assign_points

        X = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
        return assign_points(_prepared(X, self.getDistanceMeasure() == "cosine"), self._centers)

    def predict(self, value) -> int:
        x = np.asarray(value.toArray() if hasattr(value, "toArray") else value, dtype=np.float64)[None, :]
        return int(self.assign(x).cluster_id[0])

    def _transform(self, dataset):
        import pandas as pd
        from pyspark.sql.functions import pandas_udf

        C = self._centers
        cosine = self.getDistanceMeasure() == "cosine"

        @pandas_udf("int")
        def nearest_centre(vecs: pd.Series) -> pd.Series:
            from clusterlake.kernels.assignment import assign_points

            if len(vecs) == 0:
                return pd.Series([], dtype="int32")
            X = np.vstack(vecs.to_numpy()).astype(np.float64)
            return pd.Series(assign_points(_prepared(X, cosine), C).cluster_id)

        return dataset.withColumn(self.getPredictionCol(), nearest_centre(_as_array(dataset, self.getFeaturesCol())))

    def write(self) -> MLWriter:
        from clusterlake.ml_tables import TableWriter

        parents = self._parents if self._parents is not None else np.full(len(self._centers), -2)
        rows = [(i, [float(v) for v in c], int(p)) for i, (c, p) in enumerate(zip(self._centers, parents))]
        return TableWriter(self, rows, "cluster_index int, center array<double>, parent long")

    @classmethod
    def read(cls) -> MLReader:
        from clusterlake.ml_tables import TableReader

        def build(_meta, rows):
            parents = np.asarray([r["parent"] for r in rows], dtype=np.int64)
            return KMeansModel(np.asarray([r["center"] for r in rows], dtype=np.float64),
                               None if (parents == -2).all() else parents)

        return TableReader(build, "cluster_index")


def _prepared(X: np.ndarray, cosine: bool) -> np.ndarray:
    """The rows as the centres see them: L2-normalised under the cosine distance."""
    if not cosine:
        return X
    from clusterlake.kernels.kmeans import normalize_rows

    return normalize_rows(X)


def _fit_input(dataset, fcol: str, wcol, cosine: bool):
    """What the engine loads for a fit, and how: the parquet files themselves, read by its tasks,
    when ``dataset`` is a plain scan of local files with an ``array<float|double>`` features column
    (:func:`~clusterlake.io.input_files.frame_file_scan`: the rows never enter the JVM); else the
    features as an array column (and the weight as double) through Spark."""
    from pyspark.sql.types import ArrayType, DoubleType, FloatType

    from clusterlake.io.input_files import frame_file_scan

    dtype = dataset.schema[fcol].dataType
    if isinstance(dtype, ArrayType) and isinstance(dtype.elementType, (FloatType, DoubleType)):
        scan = frame_file_scan(dataset, [fcol] + ([wcol] if wcol else []))
        if scan is not None:
            log.info("the engine's tasks read the %d parquet files themselves", len(scan.files))
            return scan, BlockSource(array_column=fcol, weight_column=wcol, normalize=cosine)
    cols = [_as_array(dataset, fcol).alias("__features")]
    if wcol:
        from clusterlake.io.columns import col

        cols.append(col(wcol).cast("double").alias("__weight"))
    return dataset.select(*cols), BlockSource(array_column="__features", weight_column="__weight" if wcol else None,
                                              normalize=cosine)


def _as_array(df, col: str):
    """The features column as ``array<float>`` (kept: the engine holds float32, and a cast to
    double would double the bytes Spark converts) or ``array<double>`` (Spark ML vectors and other
    arrays are converted)."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql.types import ArrayType, FloatType

    from clusterlake.io.columns import col as column

    dtype = df.schema[col].dataType  # (a schema looks names up literally)
    if isinstance(dtype, VectorUDT):
        return vector_to_array(column(col), "float64")
    if isinstance(dtype, ArrayType) and isinstance(dtype.elementType, FloatType):
        return column(col)
    return column(col).cast("array<double>")


class KMeans(Estimator, _KMeansParams, MLWritable, MLReadable):
    """K-means on clusterlake's engine (k-means|| init, Lloyd iterations near the BLAS limit)."""

    _algorithm = "kmeans"

    @keyword_only
    def __init__(self, *, featuresCol="features", predictionCol="prediction", k=2, initMode="k-means||",
                 initSteps=2, tol=1e-4, maxIter=20, seed=None, distanceMeasure="euclidean", weightCol=None,
                 initialCenters=None, numTasks=0):
        super().__init__()
        kwargs = self._input_kwargs
        self._set(**{k_: v for k_, v in kwargs.items() if v is not None})

    @keyword_only
    def setParams(self, **kwargs):
        return self._set(**{k_: v for k_, v in self._input_kwargs.items() if v is not None})

    def setK(self, value: int):
        return self._set(k=value)

    def setSeed(self, value: int):
        return self._set(seed=value)

    def setMaxIter(self, value: int):
        return self._set(maxIter=value)

    def setInitialCenters(self, centers):
        return self._set(initialCenters=[[float(v) for v in c] for c in centers])

    def setWeightCol(self, value: str):
        return self._set(weightCol=value)

    def _check(self) -> None:
        k = self.getK()
        if k < 2:
            raise ValueError(f"The 'k' parameter of {type(self).__name__} must be an int >= 2. Got {k} instead.")
        if self.getInitMode() not in _INIT:
            raise ValueError(f"The 'initMode' parameter must be one of {sorted(_INIT)}. Got {self.getInitMode()!r} instead.")
        if self.getDistanceMeasure() not in ("euclidean", "cosine"):
            raise ValueError(f"The 'distanceMeasure' parameter must be 'euclidean' or 'cosine'. Got {self.getDistanceMeasure()!r}.")
        if self.getMaxIter() < 1:
            raise ValueError(f"The 'maxIter' parameter must be >= 1. Got {self.getMaxIter()} instead.")
        init_c = self.getOrDefault(self.initialCenters) if self.isDefined(self.initialCenters) else None
        if init_c:
            lens = sorted({len(c) for c in init_c})
            if len(init_c) != k or len(lens) != 1 or not lens[0]:
                raise ValueError(f"The 'initialCenters' parameter must have shape (k={k}, n_features). "
                                 f"Got {len(init_c)} centres of lengths {lens} instead.")
            if not np.isfinite(np.asarray(init_c, dtype=np.float64)).all():
                raise ValueError("The 'initialCenters' parameter has NaN or infinite values.")

    def _fit(self, dataset):
        from pyspark.sql import SparkSession

        self._check()
        spark = SparkSession.getActiveSession() or dataset.sparkSession
        fcol = self.getFeaturesCol()
        wcol = self.getOrDefault(self.weightCol) if self.isDefined(self.weightCol) and self.getOrDefault(self.weightCol) else None
        df, source = _fit_input(dataset, fcol, wcol, self.getDistanceMeasure() == "cosine")
        init_c = self.getOrDefault(self.initialCenters) if self.isDefined(self.initialCenters) else None
        # (the seed is any long, as in Spark -- pyspark's default, hash(class name), is negative half
        # the time -- while numpy's generators need a non-negative one: taken modulo 2**64 below)
        res = fit(
            spark, df, source, self.getK(), algorithm=self._algorithm, init=_INIT[self.getInitMode()],
            initial_centers=None if not init_c else np.asarray(init_c), max_iter=self.getMaxIter(),
            tol=self.getTol(), seed=self.getSeed() % (1 << 64), init_steps=self.getOrDefault(self.initSteps),
            num_tasks=self.getOrDefault(self.numTasks) or None,
        )
        model = KMeansModel(res.centers, res.parents)
        model._summary = KMeansSummary(res, len(res.centers))
        return self._copyValues(model)

    def write(self) -> MLWriter:
        return DefaultParamsWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return DefaultParamsReader(cls)


class BisectingKMeans(KMeans):
    """Bisecting K-means on the same engine: ``model.parents()`` gives the split tree."""

    _algorithm = "bisecting"


from clusterlake.ml_gmm import GaussianMixture, GaussianMixtureModel, GaussianMixtureSummary  # noqa: E402,F401
from clusterlake.ml_kmedoids import KMedoids, KMedoidsModel, KMedoidsSummary  # noqa: E402,F401  (the package's API)
