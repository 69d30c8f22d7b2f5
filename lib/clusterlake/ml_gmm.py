"""``clusterlake.ml.GaussianMixture``: a drop-in for ``pyspark.ml.clustering.GaussianMixture`` on
clusterlake's engine (issue 24).

>>> from clusterlake.ml import GaussianMixture
>>> model = GaussianMixture(k=16, seed=1).fit(df)       # df has a `features` vector (or array) column
>>> model.weights; model.gaussiansDF; model.summary.logLikelihood
>>> model.transform(df)                                 # adds `prediction` and `probability`
>>> model.write().overwrite().save(path); GaussianMixtureModel.load(path)

Same parameter names and defaults as Spark's (``k=2, maxIter=100, tol=0.01, seed, featuresCol,
predictionCol, probabilityCol, weightCol, aggregationDepth``), plus ``covarianceType`` (``full``
as Spark, or ``diag``, ``tied``, ``spherical``, as scikit-learn) and ``regCovar`` (1e-6, added to
the covariances' diagonals as scikit-learn does). The rows stay in the engine's barrier tasks: one
pass, one small reply per EM iteration (:mod:`clusterlake.algorithms.gmm`).

Where we deliberately differ from Spark: the start is our K-means fit (k-means|| then Lloyd), not
Spark's random sample of rows, so the result is the optimum near K-means' (usually a better one);
``tol`` keeps Spark's meaning (the change of the total log-likelihood between iterations);
``aggregationDepth`` is accepted and has no effect (the replies are k x d x d numbers per task).
Persistence writes the params as Spark's metadata JSON and the components as a parquet table: no
pickle.
"""

import logging

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (HasAggregationDepth, HasFeaturesCol, HasMaxIter, HasPredictionCol,
                                     HasProbabilityCol, HasSeed, HasTol, HasWeightCol)
from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReadable, MLReader, MLWritable, MLWriter

from clusterlake.ml_summary import PredictionsSummary

log = logging.getLogger(__name__)


class _GaussianMixtureParams(HasFeaturesCol, HasPredictionCol, HasMaxIter, HasTol, HasSeed, HasProbabilityCol,
                             HasWeightCol, HasAggregationDepth):
    k = Param(Params._dummy(), "k", "Number of independent Gaussians in the mixture model. Must be > 1.",
              typeConverter=TypeConverters.toInt)
    covarianceType = Param(Params._dummy(), "covarianceType", "full | diag | tied | spherical",
                           typeConverter=TypeConverters.toString)
    regCovar = Param(Params._dummy(), "regCovar", "added to the covariances' diagonals (>= 0)",
                     typeConverter=TypeConverters.toFloat)

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(k=2, tol=0.01, maxIter=100, aggregationDepth=2, covarianceType="full", regCovar=1e-6)

    def getK(self) -> int:
        return self.getOrDefault(self.k)

    def getCovarianceType(self) -> str:
        return self.getOrDefault(self.covarianceType)

    def getRegCovar(self) -> float:
        return self.getOrDefault(self.regCovar)


class GaussianMixtureSummary(PredictionsSummary):
    """Spark's summary fields: ``k``, ``clusterSizes`` (rows per most probable component),
    ``logLikelihood`` (total, at the last iteration), ``numIter``, the column names, and the
    ``predictions`` / ``cluster`` / ``probability`` DataFrames of the training data."""

    def __init__(self, model: "GaussianMixtureModel", dataset, log_likelihood: float, n_iter: int):
        self.k, self.logLikelihood, self.numIter = model.getK(), float(log_likelihood), int(n_iter)
        self.featuresCol, self.predictionCol = model.getFeaturesCol(), model.getPredictionCol()
        self.probabilityCol = model.getProbabilityCol()
        self.predictions = model.transform(dataset)

    @property
    def probability(self):
        return self.predictions.select(self.probabilityCol)


class GaussianMixture(Estimator, _GaussianMixtureParams, MLWritable, MLReadable):
    """Gaussian mixture by EM on clusterlake's engine (see the module)."""

    @keyword_only
    def __init__(self, *, featuresCol="features", predictionCol="prediction", k=2, probabilityCol="probability",
                 tol=0.01, maxIter=100, seed=None, aggregationDepth=2, weightCol=None, covarianceType="full",
                 regCovar=1e-6):
        super().__init__()
        self._set(**{key: v for key, v in self._input_kwargs.items() if v is not None})

    @keyword_only
    def setParams(self, **kwargs):
        return self._set(**kwargs)

    def setK(self, value: int):
        return self._set(k=value)

    def setMaxIter(self, value: int):
        return self._set(maxIter=value)

    def setTol(self, value: float):
        return self._set(tol=value)

    def setSeed(self, value: int):
        return self._set(seed=value)

    def setFeaturesCol(self, value: str):
        return self._set(featuresCol=value)

    def setPredictionCol(self, value: str):
        return self._set(predictionCol=value)

    def setProbabilityCol(self, value: str):
        return self._set(probabilityCol=value)

    def setWeightCol(self, value: str):
        return self._set(weightCol=value)

    def setAggregationDepth(self, value: int):
        return self._set(aggregationDepth=value)

    def setCovarianceType(self, value: str):
        return self._set(covarianceType=value)

    def setRegCovar(self, value: float):
        return self._set(regCovar=value)

    def _fit(self, dataset):
        from pyspark.sql import SparkSession

        from clusterlake.algorithms.gmm import fit_mixture
        from clusterlake.kernels.gmm import COVARIANCE_TYPES
        from clusterlake.ml import _fit_input
        from clusterlake.ml_workers import on_workers

        k, t = self.getK(), self.getCovarianceType()
        if k < 2:
            raise ValueError(f"GaussianMixture: k={k}; it must be > 1")
        if t not in COVARIANCE_TYPES:
            raise ValueError(f"GaussianMixture: covarianceType={t!r}; use one of {', '.join(COVARIANCE_TYPES)}")
        for name, ok in (("regCovar", self.getRegCovar() >= 0), ("maxIter", self.getMaxIter() >= 1),
                         ("tol", self.getTol() >= 0)):
            if not ok:
                raise ValueError(f"GaussianMixture: {name}={self.getOrDefault(name)!r}; it must be >= "
                                 f"{1 if name == 'maxIter' else 0}")
        spark = SparkSession.getActiveSession() or dataset.sparkSession
        wcol = self.getOrDefault(self.weightCol) if self.isDefined(self.weightCol) else None
        df, source = _fit_input(dataset, self.getFeaturesCol(), wcol or None, False)
        res = on_workers(spark, lambda: fit_mixture(
            spark, df, source, k, covariance_type=t, reg_covar=self.getRegCovar(), tol=self.getTol(),
            max_iter=self.getMaxIter(), seed=self.getSeed() % (1 << 64), tol_on_total=True))
        model = self._copyValues(GaussianMixtureModel(res.mixture)._resetUid(self.uid))  # Spark: the estimator's uid
        model._summary = GaussianMixtureSummary(model, dataset, res.log_likelihood * res.rows, res.n_iter)
        return model

    def write(self) -> MLWriter:
        return DefaultParamsWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return DefaultParamsReader(cls)


class GaussianMixtureModel(Model, _GaussianMixtureParams, MLWritable, MLReadable):
    """The fitted mixture: ``weights``, ``gaussians`` / ``gaussiansDF`` (mean and full covariance
    of every component, as Spark's), ``predict``, ``predictProbability``, ``transform``."""

    def __init__(self, mixture=None):
        super().__init__()
        self._mixture = mixture
        self._summary = None

    @property
    def weights(self) -> list:
        return [float(w) for w in self._mixture.weights]

    def _full_covariances(self) -> np.ndarray:
        m = self._mixture
        k, d = m.means.shape
        c = m.covariances
        if m.covariance_type == "full":
            return c
        if m.covariance_type == "tied":
            return np.repeat(c[None], k, axis=0)
        if m.covariance_type == "diag":
            return np.stack([np.diag(v) for v in c])
        return np.stack([np.eye(d) * v for v in c])

    @property
    def gaussians(self) -> list:
        from pyspark.ml.linalg import DenseMatrix, DenseVector
        from pyspark.ml.stat import MultivariateGaussian

        d = self._mixture.means.shape[1]
        return [MultivariateGaussian(DenseVector(mu), DenseMatrix(d, d, cov.ravel(order="F").tolist()))
                for mu, cov in zip(self._mixture.means, self._full_covariances())]

    @property
    def gaussiansDF(self):
        from pyspark.sql import SparkSession

        rows = [(g.mean, g.cov) for g in self.gaussians]
        return (SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()).createDataFrame(rows, ["mean", "cov"])

    @property
    def hasSummary(self) -> bool:
        return self._summary is not None

    @property
    def summary(self) -> GaussianMixtureSummary:
        if self._summary is None:
            raise RuntimeError("No training summary available for this GaussianMixtureModel")
        return self._summary

    def predictProbability(self, value):
        from pyspark.ml.linalg import DenseVector

        from clusterlake.kernels.gmm import responsibilities

        x = np.asarray(value.toArray() if hasattr(value, "toArray") else value, dtype=np.float64)[None, :]
        return DenseVector(responsibilities(x, self._mixture)[1][0])

    def predict(self, value) -> int:
        return int(np.argmax(self.predictProbability(value).toArray()))

    def _transform(self, dataset):
        import pandas as pd
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql.functions import col, pandas_udf

        from clusterlake.ml import _as_array

        mix = self._mixture

        @pandas_udf("prediction int, probability array<double>")
        def posterior(vecs: pd.Series) -> pd.DataFrame:
            from clusterlake.kernels.gmm import responsibilities

            if len(vecs) == 0:
                return pd.DataFrame({"prediction": pd.Series([], dtype="int32"), "probability": []})
            _, R = responsibilities(np.vstack(vecs.to_numpy()).astype(np.float64), mix)
            return pd.DataFrame({"prediction": R.argmax(axis=1).astype(np.int32), "probability": list(R)})

        tmp = "__clusterlake_posterior"
        out = dataset.withColumn(tmp, posterior(_as_array(dataset, self.getFeaturesCol())))
        return (out.withColumn(self.getPredictionCol(), col(f"{tmp}.prediction"))
                .withColumn(self.getProbabilityCol(), array_to_vector(col(f"{tmp}.probability"))).drop(tmp))

    def write(self) -> MLWriter:
        from clusterlake.ml_tables import TableWriter

        m = self._mixture
        cov = m.covariances if m.covariance_type != "tied" else np.repeat(m.covariances[None], m.k, axis=0)
        rows = [(j, float(w), [float(v) for v in mu], [float(v) for v in np.ravel(c)], list(np.shape(c)))
                for j, (w, mu, c) in enumerate(zip(m.weights, m.means, cov))]
        return TableWriter(self, rows, "component int, weight double, mean array<double>, covariance array<double>, "
                                       "shape array<int>")

    @classmethod
    def read(cls) -> MLReader:
        from clusterlake.ml_tables import TableReader

        return TableReader(_from_rows, "component")


def _from_rows(meta: dict, rows: list) -> GaussianMixtureModel:
    from clusterlake.kernels.gmm import Mixture

    t = meta["paramMap"].get("covarianceType", meta.get("defaultParamMap", {}).get("covarianceType", "full"))
    covs = np.stack([np.asarray(r["covariance"], dtype=np.float64).reshape(r["shape"]) for r in rows])
    return GaussianMixtureModel(Mixture.of(t, [r["weight"] for r in rows], np.asarray([r["mean"] for r in rows]),
                                           covs[0] if t == "tied" else covs))
