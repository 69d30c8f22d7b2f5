"""clusterlake.ml.GaussianMixture against pyspark.ml.clustering.GaussianMixture's API (issue 24):
the same params and defaults, the model's attributes, transform's columns, Pipeline save/load,
and on elongated clusters an ARI at least scikit-learn's minus 0.02."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture as SkGMM

from clusterlake.ml import GaussianMixture, GaussianMixtureModel
from tests.test_gmm_engine import _elongated


@pytest.fixture(scope="module")
def data(spark):
    X, y = _elongated(5, n=3000)
    from pyspark.ml.linalg import Vectors

    df = spark.createDataFrame([(i, Vectors.dense(x)) for i, x in enumerate(X)], ["id", "features"]).repartition(2)
    return df, X, y


def test_params_and_defaults_are_sparks(spark):
    from pyspark.ml.clustering import GaussianMixture as SparkGMM

    g = SparkGMM()
    spark_params = {p.name: g.getOrDefault(p) for p in g.params if p.name != "seed" and g.hasDefault(p)}
    assert {"k", "maxIter", "tol", "probabilityCol", "aggregationDepth"} <= set(spark_params)
    ours = GaussianMixture()
    for name, value in spark_params.items():
        assert ours.hasParam(name) and ours.getOrDefault(name) == value, name
    assert ours.getCovarianceType() == "full" and ours.getRegCovar() == 1e-6


def test_fit_transform_and_the_models_attributes(data):
    from pyspark.ml.linalg import DenseMatrix, DenseVector

    from clusterlake.kernels.gmm import responsibilities

    df, X, y = data
    model = GaussianMixture(k=3, seed=4, tol=1e-6).fit(df)
    assert len(model.weights) == 3 and sum(model.weights) == pytest.approx(1.0)
    g = model.gaussiansDF.collect()
    assert len(g) == 3 and isinstance(g[0]["mean"], DenseVector) and isinstance(g[0]["cov"], DenseMatrix)
    assert g[0]["cov"].numRows == g[0]["cov"].numCols == 2
    s = model.summary
    assert s.k == 3 and s.numIter >= 1 and np.isfinite(s.logLikelihood) and sum(s.clusterSizes) == len(X)
    out = model.transform(df).orderBy("id").toPandas()
    P = np.vstack([v.toArray() for v in out.probability])
    _, R = responsibilities(X, model._mixture)
    np.testing.assert_allclose(P, R, atol=1e-12)
    np.testing.assert_array_equal(out.prediction.to_numpy(), R.argmax(axis=1))
    assert model.predict(X[0]) == int(R[0].argmax())
    np.testing.assert_allclose(model.predictProbability(X[0]).toArray(), R[0], atol=1e-12)
    sk = SkGMM(3, covariance_type="full", random_state=0, n_init=3).fit(X)
    assert adjusted_rand_score(y, out.prediction) >= adjusted_rand_score(y, sk.predict(X)) - 0.02
    # the log-likelihood is the total, as Spark's: the mean times the rows
    assert s.logLikelihood == pytest.approx(float(np.log(np.exp(_logp(X, model)).sum(axis=1)).sum()), rel=1e-3)


def _logp(X, model):
    from clusterlake.kernels.gmm import log_prob

    return log_prob(X, model._mixture)


@pytest.mark.parametrize("t", ["full", "diag", "spherical", "tied"])
def test_other_covariance_types_save_and_load_inside_a_pipeline(spark, data, tmp_path, t):
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.feature import VectorAssembler

    df, X, _ = data
    flat = df.rdd.map(lambda r: (r["id"], float(r["features"][0]), float(r["features"][1]))).toDF(["id", "a", "b"])
    pipe = Pipeline(stages=[VectorAssembler(inputCols=["a", "b"], outputCol="features"),
                            GaussianMixture(k=3, covarianceType=t, seed=2)])
    model = pipe.fit(flat)
    model.write().overwrite().save(str(tmp_path / "p"))
    back = PipelineModel.load(str(tmp_path / "p"))
    assert isinstance(back.stages[-1], GaussianMixtureModel) and back.stages[-1].getCovarianceType() == t
    a, b = model.stages[-1]._mixture, back.stages[-1]._mixture
    for f in ("weights", "means", "covariances", "precisions_chol"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    pa_ = model.transform(flat).orderBy("id").select("probability").toPandas().probability
    pb_ = back.transform(flat).orderBy("id").select("probability").toPandas().probability
    np.testing.assert_array_equal(np.vstack([v.toArray() for v in pa_]), np.vstack([v.toArray() for v in pb_]))


def test_bad_settings_are_named(data):
    df, _, _ = data
    with pytest.raises(ValueError, match="covarianceType='round'; use one of full, tied, diag, spherical"):
        GaussianMixture(k=2, covarianceType="round").fit(df)
    with pytest.raises(ValueError, match="k=1; it must be > 1"):
        GaussianMixture(k=1).fit(df)
    with pytest.raises(ValueError, match="regCovar=-1.0; it must be >= 0"):
        GaussianMixture(k=2).setRegCovar(-1.0).fit(df)
