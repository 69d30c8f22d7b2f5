"""``clusterlake.ml.KMedoids``: k-medoids under any distance as a ``pyspark.ml`` estimator (issue 23).

>>> from clusterlake.ml import KMedoids
>>> model = KMedoids(k=8, distanceMeasure="manhattan").fit(df)        # named distance
>>> model = KMedoids(k=8, distanceMeasure=lambda A, B: my_dist(A, B)).fit(df)   # your own, vectorised
>>> model.clusterCenters()  # the medoids: rows of df
>>> model.transform(df)     # adds `prediction`: the nearest medoid under the distance

The nightly job's k-medoids, for a Python user: FasterPAM (:mod:`clusterlake.kernels.kmedoids`)
on a uniform sample of ``sampleSize`` rows brought to the driver (``seed``: 42 by default) (their pairwise distances are
held there: 8 n^2 bytes), then every row assigned to its nearest medoid in the tasks by the one
assignment rule (:class:`~clusterlake.kernels.assignment.AssignmentRule`), as the job, serving and
the stream assign.

``distanceMeasure``: a named distance of :mod:`clusterlake.kernels.distances` (``euclidean,
cosine, manhattan, chebyshev, minkowski`` with ``minkowskiP``, ``hamming, jaccard``; mahalanobis
needs the input's covariance: use the nightly job) or a **vectorised callable** ``fn(A, B)``
returning the ``(len(A), len(B))`` distances of two float64 arrays of rows (called on blocks,
never per pair; checked on every call; shipped to the tasks by Spark's own closure pickling, as a
UDF is). A model under a callable works in the session but cannot be saved (a saved model holds
data, not code); a named one saves as Spark's params metadata plus a parquet table of medoids.
"""

import logging
from typing import Callable, Optional, Union

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasFeaturesCol, HasMaxIter, HasPredictionCol, HasSeed
from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReadable, MLReader, MLWritable, MLWriter

log = logging.getLogger(__name__)

_NAMED = ("euclidean", "cosine", "manhattan", "chebyshev", "minkowski", "hamming", "jaccard")


class _KMedoidsParams(HasFeaturesCol, HasPredictionCol, HasMaxIter, HasSeed):
    k = Param(Params._dummy(), "k", "the number of medoids (> 1)", typeConverter=TypeConverters.toInt)
    distanceMeasure = Param(Params._dummy(), "distanceMeasure",
                            "a named distance (" + ", ".join(_NAMED) + ") or 'custom' (a callable given to "
                            "the estimator)", typeConverter=TypeConverters.toString)
    minkowskiP = Param(Params._dummy(), "minkowskiP", "p of the minkowski distance (>= 1)",
                       typeConverter=TypeConverters.toFloat)
    sampleSize = Param(Params._dummy(), "sampleSize", "rows the medoids are chosen from (their distances are held "
                       "on the driver: 8 n^2 bytes)", typeConverter=TypeConverters.toInt)

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(k=2, distanceMeasure="euclidean", maxIter=100, sampleSize=10_000, seed=42)
        # (a fixed default seed: pyspark's, hash(class name), changes with every Python process)

    def getK(self) -> int:
        return self.getOrDefault(self.k)

    def getDistanceMeasure(self) -> str:
        return self.getOrDefault(self.distanceMeasure)

    def getSampleSize(self) -> int:
        return self.getOrDefault(self.sampleSize)

    def _metric(self, fn: Optional[Callable]):
        from clusterlake.kernels.distances import custom, metric

        name = self.getDistanceMeasure()
        if name == "custom":
            if fn is None:
                raise ValueError("distanceMeasure='custom' needs the callable itself: KMedoids(distanceMeasure=fn)")
            return custom(fn, "custom")
        if name not in _NAMED:
            raise ValueError(f"distanceMeasure={name!r}: use one of {', '.join(_NAMED)} or a callable fn(A, B)"
                             + (" (mahalanobis needs the input's covariance: use the nightly job's kmeans.distance)"
                                if name == "mahalanobis" else ""))
        p = self.getOrDefault(self.minkowskiP) if self.isDefined(self.minkowskiP) else None
        try:
            return metric(name, p=p)
        except ValueError as e:
            raise ValueError(f"KMedoids(distanceMeasure={name!r}, minkowskiP={p!r}): {e}") from None

    def _callable(self, fn: Optional[Callable]) -> Optional[Callable]:
        """The callable, when the distance in force is it (a param map may name another)."""
        return fn if self.getDistanceMeasure() == "custom" else None


class KMedoidsSummary:
    """The fit on the sample: ``trainingCost`` (the sum of the sampled rows' distances to their
    medoid), ``k``, ``sampleSize`` (rows used), ``numIter`` (FasterPAM's passes), ``converged``."""

    def __init__(self, loss: float, k: int, rows: int, n_iter: int, converged: bool):
        self.trainingCost, self.k, self.sampleSize, self.numIter, self.converged = float(loss), k, rows, n_iter, converged


class KMedoids(Estimator, _KMedoidsParams, MLWritable, MLReadable):
    """k-medoids (FasterPAM on a sample) under a named distance or your own (see the module)."""

    @keyword_only
    def __init__(self, *, featuresCol="features", predictionCol="prediction", k=2,
                 distanceMeasure: Union[str, Callable] = "euclidean", minkowskiP=None, sampleSize=10_000,
                 maxIter=100, seed=None):
        super().__init__()
        kwargs = dict(self._input_kwargs)
        self._distance_fn = None
        if callable(kwargs.get("distanceMeasure")):
            self._distance_fn, kwargs["distanceMeasure"] = kwargs["distanceMeasure"], "custom"
        self._set(**{key: v for key, v in kwargs.items() if v is not None})
        self._metric(self._distance_fn)  # a bad name or p fails here, not at fit

    def _fit(self, dataset):
        from clusterlake.kernels import kmedoids as K
        from clusterlake.kernels.distances import pairwise

        m = self._metric(self._distance_fn)
        S = _sample(dataset, self.getFeaturesCol(), self.getSampleSize(), self.getSeed())
        k = self.getK()
        if k < 2 or k > len(S):
            raise ValueError(f"k={k} medoids need 2 <= k <= the {len(S)} sampled rows")
        f = K.fit(pairwise(S, S, m, dtype=np.float32 if len(S) > 20_000 else np.float64), k,
                  self.getSeed() % (1 << 32), self.getMaxIter())
        log.info("k-medoids: %d medoids of %d sampled rows under %s, loss %.6g", k, len(S), m.describe(), f.loss)
        model = KMedoidsModel(S[f.medoids], self._callable(self._distance_fn))
        model._summary = KMedoidsSummary(f.loss, k, len(S), f.n_iter, f.converged)
        return self._copyValues(model._resetUid(self.uid))  # as Spark's models: the estimator's uid

    def write(self) -> MLWriter:
        if self.getDistanceMeasure() == "custom":
            raise ValueError("a KMedoids with a callable distance cannot be saved (it is code, not data); "
                             "save one with a named distanceMeasure")
        return DefaultParamsWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return DefaultParamsReader(cls)


def _sample(dataset, fcol: str, size: int, seed: int) -> np.ndarray:
    """A uniform sample of at most ``size`` rows of the features column, on the driver (float64):
    a Bernoulli draw of about 1.2 ``size`` rows, then ``size`` of them drawn on the driver (a
    ``limit`` would keep the first partitions' rows)."""
    import pyarrow.compute as pc

    from clusterlake.ml import _as_array

    col = dataset.select(_as_array(dataset, fcol).alias("f"))
    n = col.count()
    if n == 0:
        raise ValueError(f"KMedoids.fit: the input has no rows (featuresCol={fcol!r})")
    if n > size:
        col = col.sample(False, min(1.0, 1.2 * size / n), seed % (1 << 63))
    t = col.toArrow().column("f").combine_chunks()
    lengths = pc.list_value_length(t).to_numpy(zero_copy_only=False)
    if t.null_count or (len(t) and (lengths != lengths[0]).any()):
        raise ValueError(f"KMedoids.fit: {fcol!r} has null or unequal-length rows ({t.null_count} null, lengths "
                         f"{sorted(set(lengths[~np.isnan(lengths.astype(float))].astype(int).tolist()))[:5]}); "
                         "drop them or fill them first")
    S = np.asarray(t.flatten(), dtype=np.float64).reshape(len(t), -1) if len(t) else np.zeros((0, 0))
    if len(S) > size:
        S = S[np.sort(np.random.default_rng(seed % (1 << 63)).choice(len(S), size, replace=False))]
    if not np.isfinite(S).all():
        raise ValueError(f"KMedoids.fit: the sampled rows of {fcol!r} hold NaN or infinite values; drop or fill them")
    return S


class KMedoidsModel(Model, _KMedoidsParams, MLWritable, MLReadable):
    """The medoids (rows of the training data) and the distance; ``transform`` adds the nearest
    medoid's index as the prediction."""

    def __init__(self, medoids: Optional[np.ndarray] = None, distance_fn: Optional[Callable] = None):
        super().__init__()
        self._medoids = None if medoids is None else np.asarray(medoids, dtype=np.float64)
        self._distance_fn = distance_fn
        self._summary = None

    def clusterCenters(self) -> list[np.ndarray]:
        return [c.copy() for c in self._medoids]

    @property
    def hasSummary(self) -> bool:
        return self._summary is not None

    @property
    def summary(self) -> KMedoidsSummary:
        if self._summary is None:
            raise RuntimeError("no summary: the model was loaded, not fitted")
        return self._summary

    def assign(self, vectors):
        """The full assignment of local rows (n, d) or one row (d,) by the one assignment rule
        under the model's distance: ``cluster_id`` (the medoid's index), ``distance``,
        ``second_cluster_id``, ``margin``."""
        from clusterlake.kernels.assignment import AssignmentRule

        X = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
        return AssignmentRule(self._medoids, metric=self._metric(self._distance_fn))(X)

    def predict(self, value) -> int:
        x = np.asarray(value.toArray() if hasattr(value, "toArray") else value, dtype=np.float64)
        return int(self.assign(x[None, :]).cluster_id[0])

    def _transform(self, dataset):
        import pandas as pd
        from pyspark.sql.functions import pandas_udf

        from clusterlake.ml import _as_array

        M, m = self._medoids, self._metric(self._distance_fn)

        @pandas_udf("int")
        def nearest_medoid(vecs: pd.Series) -> pd.Series:
            from clusterlake.kernels.assignment import AssignmentRule

            if len(vecs) == 0:
                return pd.Series([], dtype="int32")
            return pd.Series(AssignmentRule(M, metric=m)(np.vstack(vecs.to_numpy()).astype(np.float64)).cluster_id)

        return dataset.withColumn(self.getPredictionCol(), nearest_medoid(_as_array(dataset, self.getFeaturesCol())))

    def write(self) -> MLWriter:
        if self.getDistanceMeasure() == "custom":
            raise ValueError("a KMedoidsModel under a callable distance cannot be saved (a saved model holds data, "
                             "not code): refit with a named distanceMeasure to save it")
        from clusterlake.ml_tables import TableWriter

        rows = [(i, [float(v) for v in c]) for i, c in enumerate(self._medoids)]
        return TableWriter(self, rows, "cluster_index int, medoid array<double>")

    @classmethod
    def read(cls) -> MLReader:
        from clusterlake.ml_tables import TableReader

        return TableReader(lambda _meta, rows: KMedoidsModel(np.asarray([r["medoid"] for r in rows], dtype=np.float64)),
                           "cluster_index")
