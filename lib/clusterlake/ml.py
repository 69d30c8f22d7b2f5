"""``pyspark.ml`` estimators on clusterlake's engine: drop-ins for ``pyspark.ml.clustering.KMeans``
and ``BisectingKMeans`` (``docs/ml.md``: what is the same, what differs and why).

>>> from clusterlake.ml import KMeans
>>> model = KMeans(k=20, seed=1).fit(df)            # df has a `features` vector (or array) column
>>> model.clusterCenters(); model.summary.trainingCost
>>> model.transform(df)                             # adds `prediction`
>>> model.write().overwrite().save(path); KMeansModel.load(path)
>>> model.write().format("pmml").save(path)         # PMML 4.4, as Spark's KMeansModel writes it

Spark's params, names, docs and defaults (``k, maxIter, tol, seed, initMode, initSteps,
distanceMeasure, weightCol, featuresCol, predictionCol, solver, maxBlockSizeInMB``), setters and
getters; the model keeps the estimator's uid (a loaded one its saved uid), has Spark's
``clusterCenters, predict, numFeatures, hasSummary, summary`` and Spark's summary fields. Ours on
top: ``initialCenters`` (warm start), ``numTasks``, ``initMode="k-means++"``, :meth:`KMeansModel.assign`
and the engine's timings in the summary. :class:`BisectingKMeans` (:mod:`clusterlake.ml_bisecting`)
adds the split tree (``model.parents()``). Works inside a ``pyspark.ml.Pipeline``. Persistence
writes the params as Spark's metadata JSON and the centres as a parquet table: no pickle.

Where we deliberately differ from Spark (each said again where it applies):

* ``tol`` is relative, as scikit-learn's: the fit stops when the summed squared centre shift is at
  most ``tol`` times the mean feature variance (Spark: every centre moved less than ``tol``, absolute);
* k-means|| reclusters its candidates ten times and keeps the best, so the fit usually lands in a
  lower-cost optimum than Spark's, often in fewer iterations (``numIter`` can differ);
* the centres come back in lexicographic order (unless ``initialCenters`` fixes the order), so the
  cluster ids do not depend on which random row the init drew first;
* the default seed is fixed (42), so two unseeded fits give the same model; pyspark's default,
  ``hash(class name)``, changes with every Python process (``PYTHONHASHSEED``);
* ``maxIter`` is the limit on Lloyd iterations; ``solver`` and ``maxBlockSizeInMB`` are accepted,
  saved and ignored (the engine holds the rows as float32 blocks in its tasks, whatever they say);
* under ``distanceMeasure="cosine"`` costs are squared Euclidean distances between L2-normalised
  rows and centres: ``2 (1 - cos)``, twice Spark's ``1 - cos``.

Spark's workers run clusterlake's code: when their Python cannot import it, the fit ships the
package to them (``SparkContext.addPyFile`` of a zip of it, once per application) and tries again;
when that is not enough (their Python lacks numpy, pandas, pyarrow...), it raises
:class:`WorkerImportError` saying what to set (``PYSPARK_PYTHON`` / ``spark.pyspark.python``).

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
from pyspark.ml.param.shared import (HasDistanceMeasure, HasFeaturesCol, HasMaxBlockSizeInMB, HasMaxIter,
                                     HasPredictionCol, HasSeed, HasSolver, HasTol, HasWeightCol)
from pyspark.ml.util import (DefaultParamsReader, DefaultParamsWriter, GeneralMLWriter, MLReadable, MLReader,
                             MLWritable, MLWriter)

from clusterlake.algorithms.kmeans_engine import EngineFit, fit
from clusterlake.engine.blocks import BlockSource
from clusterlake.ml_summary import PredictionsSummary
from clusterlake.ml_tables import TableWriter
from clusterlake.ml_workers import WorkerImportError, on_workers  # noqa: F401 (WorkerImportError: the API)

if TYPE_CHECKING:
    from clusterlake.kernels.assignment import Assignment

log = logging.getLogger(__name__)

DEFAULT_SEED = 42
"""The seed of an unseeded fit (pyspark's default, ``hash(class name)``, changes with every process)."""


# ----------------------------------------------------------------------------------------------
# params


class _KMeansParams(HasMaxIter, HasFeaturesCol, HasSeed, HasPredictionCol, HasTol, HasDistanceMeasure, HasWeightCol,
                    HasSolver, HasMaxBlockSizeInMB):
    """Params of :class:`KMeans` and :class:`KMeansModel`: Spark's, plus ``initialCenters`` and ``numTasks``."""

    k = Param(Params._dummy(), "k", "The number of clusters to create. Must be > 1.",
              typeConverter=TypeConverters.toInt)
    initMode = Param(Params._dummy(), "initMode",
                     'The initialization algorithm. This can be either "random" to choose random points as initial '
                     'cluster centers, or "k-means||" to use a parallel variant of k-means++',
                     typeConverter=TypeConverters.toString)  # (ours: also "k-means++", greedy on a sample)
    initSteps = Param(Params._dummy(), "initSteps", "The number of steps for k-means|| initialization mode. "
                      "Must be > 0.", typeConverter=TypeConverters.toInt)
    solver = Param(Params._dummy(), "solver", "The solver algorithm for optimization. Supported options: auto, row, "
                   "block.", typeConverter=TypeConverters.toString)  # (accepted and ignored by the engine)
    initialCenters = Param(Params._dummy(), "initialCenters",
                           "clusterlake: warm start, k starting centres (overrides initMode; their order is kept)",
                           typeConverter=TypeConverters.toListListFloat)
    numTasks = Param(Params._dummy(), "numTasks", "clusterlake: barrier tasks (0 = all free task slots)",
                     typeConverter=TypeConverters.toInt)

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(k=2, initMode="k-means||", initSteps=2, tol=1e-4, maxIter=20, distanceMeasure="euclidean",
                         solver="auto", maxBlockSizeInMB=0.0, numTasks=0, seed=DEFAULT_SEED)

    def getK(self) -> int:
        """Gets the value of `k`"""
        return self.getOrDefault(self.k)

    def getInitMode(self) -> str:
        """Gets the value of `initMode`"""
        return self.getOrDefault(self.initMode)

    def getInitSteps(self) -> int:
        """Gets the value of `initSteps`"""
        return self.getOrDefault(self.initSteps)

    def getInitialCenters(self) -> Optional[list]:
        """The warm-start centres, or None."""
        return self.getOrDefault(self.initialCenters) if self.isDefined(self.initialCenters) else None

    def getNumTasks(self) -> int:
        return self.getOrDefault(self.numTasks)


def _weight_col(params: Params) -> Optional[str]:
    """The weight column's name, or None (unset or empty: every row weighs 1, as in Spark)."""
    return (params.getOrDefault(params.weightCol) or None) if params.isDefined(params.weightCol) else None


# ----------------------------------------------------------------------------------------------
# the training summary


class ClusteringSummary(PredictionsSummary):
    """Spark's ``ClusteringSummary`` fields: ``predictionCol``, ``predictions`` (the model's
    ``transform`` of the training data, lazy), ``featuresCol``, ``k`` (the model's number of
    centres), ``cluster`` (the prediction column), ``clusterSizes`` (rows per cluster, counted from
    ``predictions`` on first use, as Spark does) and ``numIter``; ``trainingCost`` (the weighted sum
    of squared distances to the nearest centre: scikit-learn's inertia). Ours: ``clusterWeights``
    (the weighted sizes, from the fit's last pass), ``converged``, ``numTasks``, the fit's timings
    (``initSeconds, loadSeconds, fitSeconds, iterationSeconds``) and ``taskPeakRssMb``."""

    def __init__(self, model: "_CentersModel", dataset, fit_: EngineFit, num_iter: int, counts, cost: float):
        self.predictionCol, self.featuresCol = model.getPredictionCol(), model.getFeaturesCol()
        self.k = len(model.clusterCenters())
        self.predictions = model.transform(dataset)
        self.numIter = int(num_iter)
        self.trainingCost = float(cost)
        self.clusterWeights = [float(c) for c in counts]
        self.converged = bool(fit_.converged)
        self.initSeconds, self.loadSeconds = float(fit_.init_seconds), float(fit_.load_seconds)
        self.fitSeconds, self.iterationSeconds = float(fit_.fit_seconds), list(fit_.iter_seconds)
        self.numTasks, self.taskPeakRssMb = int(fit_.n_tasks), float(fit_.task_peak_rss_mb)


class KMeansSummary(ClusteringSummary):
    """Summary of KMeans (see :class:`ClusteringSummary`)."""


# ----------------------------------------------------------------------------------------------
# the fitted model


class _CentersModel(Model, MLWritable, MLReadable):
    """A model of centres (:class:`KMeansModel`, :class:`~clusterlake.ml_bisecting.BisectingKMeansModel`):
    ``clusterCenters()``, ``transform`` and ``predict`` (the nearest centre), ``summary``."""

    def __init__(self, centers: Optional[np.ndarray] = None, parents: Optional[np.ndarray] = None):
        super().__init__()
        self._centers = None if centers is None else np.asarray(centers, dtype=np.float64)
        self._parents = None if parents is None else np.asarray(parents, dtype=np.int64)
        self._summary: Optional[ClusteringSummary] = None

    def __repr__(self) -> str:  # as Spark's model's toString (its uid is the estimator's)
        return (f"{type(self).__name__}: uid={self.uid}, k={len(self._centers)}, "
                f"distanceMeasure={self.getDistanceMeasure()}, numFeatures={self.numFeatures}")

    def setFeaturesCol(self, value: str):
        """Sets the value of :py:attr:`featuresCol`."""
        return self._set(featuresCol=value)

    def setPredictionCol(self, value: str):
        """Sets the value of :py:attr:`predictionCol`."""
        return self._set(predictionCol=value)

    def clusterCenters(self) -> list[np.ndarray]:
        """Get the cluster centers, represented as a list of NumPy arrays."""
        return [c.copy() for c in self._centers]

    @property
    def numFeatures(self) -> int:
        """The number of features the model was trained on."""
        return int(self._centers.shape[1])

    def parents(self) -> Optional[list[int]]:
        """Bisecting only: the split-tree node each centre was split from (-1: none)."""
        return None if self._parents is None else [int(p) for p in self._parents]

    @property
    def hasSummary(self) -> bool:
        """Whether a training summary exists (not for a loaded model)."""
        return self._summary is not None

    @property
    def summary(self):
        """Gets summary (cluster assignments, cluster sizes) of the model trained on the training set.
        An exception is thrown if no summary exists."""
        if self._summary is None:
            raise RuntimeError(f"No training summary available for this {type(self).__name__}")
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
        """Predict label for the given features (the nearest centre)."""
        x = np.asarray(value.toArray() if hasattr(value, "toArray") else value, dtype=np.float64)[None, :]
        return int(self.assign(x).cluster_id[0])

    def _transform(self, dataset):
        return dataset.withColumn(self.getPredictionCol(), _nearest_column(self, dataset, "int"))

    def write(self) -> "CentersWriter":
        """Spark's layout (``format("internal")``, the default: params metadata and a parquet table
        of centres) or ``format("pmml")`` (a PMML 4.4 ClusteringModel, :mod:`clusterlake.ml_pmml`)."""
        parents = self._parents if self._parents is not None else np.full(len(self._centers), -2)
        rows = [(i, [float(v) for v in c], int(p)) for i, (c, p) in enumerate(zip(self._centers, parents))]
        return CentersWriter(self, rows, "cluster_index int, center array<double>, parent long")

    @classmethod
    def read(cls) -> MLReader:
        return CentersReader(cls)


def _nearest_column(model: _CentersModel, dataset, kind: str):
    """A column of every row's nearest centre (``kind="int"``) or its squared distance to it
    (``"double"``, summed from the differences to the centre, so no cancellation), computed in the
    tasks (a pandas UDF; cosine: on the L2-normalised rows)."""
    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    C = model._centers
    cosine = model.getDistanceMeasure() == "cosine"

    @pandas_udf(kind)
    def nearest(vecs: pd.Series) -> pd.Series:
        from clusterlake.kernels.assignment import assign_points

        if len(vecs) == 0:
            return pd.Series([], dtype="int32" if kind == "int" else "float64")
        X = _prepared(np.vstack(vecs.to_numpy()).astype(np.float64), cosine)
        label = assign_points(X, C).cluster_id
        return pd.Series(label if kind == "int" else np.square(X - C[label]).sum(axis=1))

    return nearest(_as_array(dataset, model.getFeaturesCol()))


class KMeansModel(_CentersModel, _KMeansParams):
    """Model fitted by KMeans: ``clusterCenters()``, ``transform`` (nearest centre), ``predict(vector)``."""


# ----------------------------------------------------------------------------------------------
# persistence


class CentersWriter(TableWriter, GeneralMLWriter):
    """Saves a centres model: ``format("internal")`` (the default) writes Spark's params metadata
    and a parquet table of the centres (:class:`~clusterlake.ml_tables.TableWriter`);
    ``format("pmml")`` a PMML 4.4 ClusteringModel, as Spark's ``KMeansModel`` does;
    ``format("spark")`` Spark's own ``KMeansModel`` layout, which ``pyspark.ml.clustering.KMeansModel.load``
    reads (:mod:`clusterlake.ml_spark_layout`)."""

    def __init__(self, instance, rows: list, schema: str):
        super().__init__(instance, rows, schema)
        self.source = "internal"

    def saveImpl(self, path: str) -> None:
        if self.source.lower() == "pmml":
            from clusterlake.ml_pmml import save_pmml

            save_pmml(self.instance, path, self.sparkSession)
        elif self.source.lower() == "spark":
            from clusterlake.ml_spark_layout import save_spark_layout

            save_spark_layout(self.instance, path, self.sparkSession)
        elif self.source.lower() in ("internal", "parquet"):
            super().saveImpl(path)
        else:
            raise ValueError(f"{type(self.instance).__name__} cannot be written in format {self.source!r}: "
                             "use 'internal' (the default), 'pmml' or 'spark' (Spark's own KMeansModel layout)")


def _set_params(instance: Params, meta: dict) -> None:
    """``instance`` takes the saved uid and params of ``meta`` (Spark's metadata). A param the
    class no longer has (saved by an earlier clusterlake) is left out, with a note in the log."""
    instance._resetUid(meta["uid"])
    known = {p.name for p in instance.params}
    kept = dict(meta)
    dropped = set()
    for key in ("paramMap", "defaultParamMap"):
        if key in meta:
            kept[key] = {n: v for n, v in meta[key].items() if n in known}
            dropped |= set(meta[key]) - known
    if dropped:
        log.info("%s: left out saved params it does not have: %s", type(instance).__name__, ", ".join(sorted(dropped)))
    DefaultParamsReader.getAndSetParams(instance, kept)


class ParamsReader(DefaultParamsReader):
    """Reads an estimator saved with ``DefaultParamsWriter`` (its uid and params; see :func:`_set_params`)."""

    def load(self, path: str):
        meta = DefaultParamsReader.loadMetadata(path, self.sparkSession.sparkContext)
        instance = self.cls()
        _set_params(instance, meta)
        return instance


class CentersReader(MLReader):
    """Reads a :class:`CentersWriter`'s model (``internal`` format) as ``cls``, with its saved uid;
    also a model saved by Spark's own ``KMeansModel`` (its centres and params; data columns
    ``clusterIdx``, ``clusterCenter``), so users can switch from Spark's class to ours."""

    def __init__(self, cls: type):
        super().__init__()
        self.cls = cls

    def load(self, path: str):
        meta = DefaultParamsReader.loadMetadata(path, self.sparkSession.sparkContext)
        from clusterlake.ml_spark_layout import SPARK_CLASS as SPARK_KMEANS_MODEL

        if meta.get("class", "").startswith("org.apache.spark.") and meta["class"] != SPARK_KMEANS_MODEL:
            raise ValueError(f"{path} holds a {meta['class']}; {self.cls.__name__}.load reads clusterlake's models "
                             f"and Spark's {SPARK_KMEANS_MODEL} (a bisecting model's split tree is Spark's own)")
        data = self.sparkSession.read.parquet(f"{path}/data")
        if "clusterCenter" in data.columns:  # Spark's KMeansModel
            rows = sorted(data.collect(), key=lambda r: r["clusterIdx"])
            model = self.cls(np.asarray([r["clusterCenter"].toArray() for r in rows], dtype=np.float64))
        else:
            rows = sorted(data.collect(), key=lambda r: r["cluster_index"])
            parents = np.asarray([r["parent"] for r in rows], dtype=np.int64)
            model = self.cls(np.asarray([r["center"] for r in rows], dtype=np.float64),
                             None if (parents == -2).all() else parents)
        _set_params(model, meta)
        return model


# ----------------------------------------------------------------------------------------------
# the engine's input


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


def engine_input(estimator: Params, dataset):
    """``(spark, df, source)``: what the engine fits ``estimator`` on (see :func:`_fit_input`)."""
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession() or dataset.sparkSession
    df, source = _fit_input(dataset, estimator.getFeaturesCol(), _weight_col(estimator),
                            estimator.getDistanceMeasure() == "cosine")
    return spark, df, source


def lexicographic(centers: np.ndarray) -> np.ndarray:
    """The order of ``centers`` sorted by their first coordinate, then the second, ..."""
    return np.lexsort(np.asarray(centers).T[::-1])


# ----------------------------------------------------------------------------------------------
# the estimator


_INIT = {"k-means||": "kmeans||", "k-means++": "kmeans++", "random": "random"}


class _EstimatorSetters:
    """The setters KMeans and BisectingKMeans share (Spark's names and meanings)."""

    def setK(self, value: int):
        """Sets the value of :py:attr:`k`."""
        return self._set(k=value)

    def setDistanceMeasure(self, value: str):
        """Sets the value of :py:attr:`distanceMeasure`."""
        return self._set(distanceMeasure=value)

    def setMaxIter(self, value: int):
        """Sets the value of :py:attr:`maxIter`."""
        return self._set(maxIter=value)

    def setFeaturesCol(self, value: str):
        """Sets the value of :py:attr:`featuresCol`."""
        return self._set(featuresCol=value)

    def setPredictionCol(self, value: str):
        """Sets the value of :py:attr:`predictionCol`."""
        return self._set(predictionCol=value)

    def setSeed(self, value: int):
        """Sets the value of :py:attr:`seed`."""
        return self._set(seed=value)

    def setTol(self, value: float):
        """Sets the value of :py:attr:`tol` (relative: see the class)."""
        return self._set(tol=value)

    def setWeightCol(self, value: str):
        """Sets the value of :py:attr:`weightCol`."""
        return self._set(weightCol=value)

    def setNumTasks(self, value: int):
        """The number of barrier tasks (0: every free task slot)."""
        return self._set(numTasks=value)


class KMeans(_EstimatorSetters, Estimator, _KMeansParams, MLWritable, MLReadable):
    """K-means clustering with a k-means++ like initialization mode (the k-means|| algorithm by
    Bahmani et al), then Lloyd iterations near the BLAS limit, on clusterlake's engine.

    A drop-in for ``pyspark.ml.clustering.KMeans`` (same params, defaults, setters, model and
    summary). Deliberate differences (``docs/ml.md``): ``tol`` is relative (the summed squared
    centre shift over the mean feature variance, as scikit-learn; Spark's is absolute); k-means||
    reclusters its candidates ten times and keeps the best, so the optimum is usually better than
    Spark's; the centres come back in lexicographic order (unless ``initialCenters`` fixes it); an
    unseeded fit uses seed 42; ``solver`` and ``maxBlockSizeInMB`` are accepted and ignored;
    ``initMode`` also takes ``"k-means++"``. Ours: ``initialCenters`` (warm start) and ``numTasks``.
    """

    _algorithm = "kmeans"

    @keyword_only
    def __init__(self, *, featuresCol="features", predictionCol="prediction", k=2, initMode="k-means||",
                 initSteps=2, tol=1e-4, maxIter=20, seed=None, distanceMeasure="euclidean", weightCol=None,
                 solver="auto", maxBlockSizeInMB=0.0, initialCenters=None, numTasks=0):
        super().__init__()
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, featuresCol="features", predictionCol="prediction", k=2, initMode="k-means||",
                  initSteps=2, tol=1e-4, maxIter=20, seed=None, distanceMeasure="euclidean", weightCol=None,
                  solver="auto", maxBlockSizeInMB=0.0, initialCenters=None, numTasks=0):
        """Sets params for KMeans."""
        return self._set(**self._input_kwargs)

    def setInitMode(self, value: str):
        """Sets the value of :py:attr:`initMode`."""
        return self._set(initMode=value)

    def setInitSteps(self, value: int):
        """Sets the value of :py:attr:`initSteps`."""
        return self._set(initSteps=value)

    def setSolver(self, value: str):
        """Sets the value of :py:attr:`solver` (accepted and ignored)."""
        return self._set(solver=value)

    def setMaxBlockSizeInMB(self, value: float):
        """Sets the value of :py:attr:`maxBlockSizeInMB` (accepted and ignored)."""
        return self._set(maxBlockSizeInMB=value)

    def setInitialCenters(self, centers):
        """Warm start: the ``k`` starting centres (their order is the model's)."""
        return self._set(initialCenters=[[float(v) for v in c] for c in centers])

    def _check(self) -> None:
        k = self.getK()
        if k < 2:
            raise ValueError(f"The 'k' parameter of {type(self).__name__} must be an int >= 2. Got {k} instead.")
        if self.getInitMode() not in _INIT:
            raise ValueError(f"The 'initMode' parameter must be one of {sorted(_INIT)}. "
                             f"Got {self.getInitMode()!r} instead.")
        _check_common(self)
        for name, ok, rule in (("initSteps", self.getInitSteps() > 0, "> 0"), ("tol", self.getTol() >= 0, ">= 0"),
                               ("solver", self.getSolver() in ("auto", "row", "block"), "one of auto, row, block"),
                               ("maxBlockSizeInMB", self.getMaxBlockSizeInMB() >= 0, ">= 0")):
            if not ok:
                raise ValueError(f"The {name!r} parameter must be {rule}. Got {self.getOrDefault(name)!r} instead.")
        init_c = self.getInitialCenters()
        if init_c:
            lens = sorted({len(c) for c in init_c})
            if len(init_c) != k or len(lens) != 1 or not lens[0]:
                raise ValueError(f"The 'initialCenters' parameter must have shape (k={k}, n_features). "
                                 f"Got {len(init_c)} centres of lengths {lens} instead.")
            if not np.isfinite(np.asarray(init_c, dtype=np.float64)).all():
                raise ValueError("The 'initialCenters' parameter has NaN or infinite values.")

    def _fit(self, dataset):
        self._check()
        spark, df, source = engine_input(self, dataset)
        init_c = self.getInitialCenters()
        # (the seed is any long, as in Spark, while numpy's generators need a non-negative one:
        # taken modulo 2**64)
        res = on_workers(spark, lambda: fit(
            spark, df, source, self.getK(), algorithm=self._algorithm, init=_INIT[self.getInitMode()],
            initial_centers=None if not init_c else np.asarray(init_c), max_iter=self.getMaxIter(),
            tol=self.getTol(), seed=self.getSeed() % (1 << 64), init_steps=self.getInitSteps(),
            num_tasks=self.getNumTasks() or None))
        order = np.arange(len(res.centers)) if init_c else lexicographic(res.centers)
        model = self._copyValues(KMeansModel(res.centers[order])._resetUid(self.uid))  # Spark: the estimator's uid
        model._summary = KMeansSummary(model, dataset, res, res.n_iter, np.asarray(res.counts)[order], res.inertia)
        return model

    def write(self) -> MLWriter:
        return DefaultParamsWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return ParamsReader(cls)


def _check_common(est: Params) -> None:
    """The checks KMeans and BisectingKMeans share (Spark's ParamValidators)."""
    if est.getDistanceMeasure() not in ("euclidean", "cosine"):
        raise ValueError(f"The 'distanceMeasure' parameter must be 'euclidean' or 'cosine'. "
                         f"Got {est.getDistanceMeasure()!r}.")
    if est.getMaxIter() < 0:
        raise ValueError(f"The 'maxIter' parameter must be >= 0. Got {est.getMaxIter()} instead.")


_BISECTING = ("BisectingKMeans", "BisectingKMeansModel", "BisectingKMeansSummary")


def __getattr__(name: str):
    """``clusterlake.ml.BisectingKMeans`` etc. (:mod:`clusterlake.ml_bisecting`, which builds on
    this module, is imported on first use)."""
    if name in _BISECTING:
        from clusterlake import ml_bisecting

        return getattr(ml_bisecting, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


from clusterlake.ml_gmm import GaussianMixture, GaussianMixtureModel, GaussianMixtureSummary  # noqa: E402,F401
from clusterlake.ml_kmedoids import KMedoids, KMedoidsModel, KMedoidsSummary  # noqa: E402,F401  (the package's API)
