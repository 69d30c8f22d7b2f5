"""clusterlake.ml.KMedoids (issue 23): a named distance or a vectorised callable, the medoids rows
of the input, every row assigned to its nearest medoid under the distance, save/load without
pickle for named distances, and a callable refused at save."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from clusterlake.ml import KMedoids, KMedoidsModel


@pytest.fixture(scope="module")
def frame(spark):
    rng = np.random.default_rng(0)
    C = rng.normal(scale=6.0, size=(4, 3))
    X = C[rng.integers(0, 4, 1200)] + rng.laplace(size=(1200, 3))
    df = spark.createDataFrame([(i, [float(v) for v in x]) for i, x in enumerate(X)], "id long, features array<double>")
    return df.repartition(2), X


def test_named_and_callable_give_the_same_medoids_and_predictions(frame):
    df, X = frame
    named = KMedoids(k=4, distanceMeasure="manhattan", sampleSize=500, seed=7).fit(df)
    mine = KMedoids(k=4, distanceMeasure=lambda A, B: cdist(A, B, "cityblock"), sampleSize=500, seed=7).fit(df)
    M = np.asarray(named.clusterCenters())
    np.testing.assert_array_equal(M, np.asarray(mine.clusterCenters()))
    assert all((np.abs(X - m).sum(axis=1) == 0).any() for m in M)  # every medoid is an input row
    assert named.summary.sampleSize <= 500 and named.summary.trainingCost > 0
    out = named.transform(df).select("features", "prediction").toPandas()
    want = cdist(np.vstack(out.features.to_numpy()), M, "cityblock").argmin(axis=1)
    np.testing.assert_array_equal(out.prediction.to_numpy(), want)
    out2 = mine.transform(df).select("features", "prediction").toPandas()
    np.testing.assert_array_equal(out2.prediction.to_numpy(), want)
    assert named.predict(X[0]) == int(cdist(X[:1], M, "cityblock").argmin())


def test_save_and_load_a_named_model_and_refuse_a_callable(frame, tmp_path):
    df, X = frame
    model = KMedoids(k=3, distanceMeasure="chebyshev", sampleSize=300, seed=1).fit(df)
    model.write().overwrite().save(str(tmp_path / "m"))
    back = KMedoidsModel.load(str(tmp_path / "m"))
    assert back.getDistanceMeasure() == "chebyshev" and back.getK() == 3
    np.testing.assert_array_equal(np.asarray(back.clusterCenters()), np.asarray(model.clusterCenters()))
    np.testing.assert_array_equal(back.assign(X[:50]).cluster_id, model.assign(X[:50]).cluster_id)
    mine = KMedoids(k=3, distanceMeasure=lambda A, B: cdist(A, B, "chebyshev"), sampleSize=300, seed=1).fit(df)
    with pytest.raises(ValueError, match="cannot be saved .* refit with a named distanceMeasure"):
        mine.write().save(str(tmp_path / "c"))


def test_inside_a_pipeline(spark, frame):
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import VectorAssembler

    df, _ = frame
    flat = df.selectExpr("id", "features[0] as a", "features[1] as b", "features[2] as c")
    pipe = Pipeline(stages=[VectorAssembler(inputCols=["a", "b", "c"], outputCol="features"),
                            KMedoids(k=4, distanceMeasure="manhattan", sampleSize=400, seed=3)])
    pred = pipe.fit(flat).transform(flat).select("prediction").toPandas().prediction
    assert sorted(pred.unique()) == [0, 1, 2, 3]


@pytest.mark.parametrize("kw,text", [
    ({"distanceMeasure": "mahalanobis"}, "mahalanobis needs the input's covariance"),
    ({"distanceMeasure": "minkowski"}, "the minkowski distance needs p >= 1"),
    ({"distanceMeasure": "nope"}, "distanceMeasure='nope': use one of"),
])
def test_bad_settings_are_named(kw, text):
    with pytest.raises(ValueError, match=text):
        KMedoids(k=3, **kw)


def test_a_param_map_naming_a_distance_overrides_the_callable_and_saves(frame, tmp_path):
    df, X = frame
    est = KMedoids(k=3, distanceMeasure=lambda A, B: cdist(A, B, "chebyshev"), sampleSize=300)
    model = est.fit(df, {est.distanceMeasure: "manhattan"})
    assert model.getDistanceMeasure() == "manhattan"
    model.write().overwrite().save(str(tmp_path / "m"))  # a named distance: saved
    M = np.asarray(model.clusterCenters())
    np.testing.assert_array_equal(model.assign(X[:40]).cluster_id, cdist(X[:40], M, "cityblock").argmin(axis=1))


def test_null_rows_and_empty_input_are_named(spark):
    df = spark.createDataFrame([(1, [1.0, 2.0]), (2, None), (3, [0.0, 1.0])], "id long, features array<double>")
    with pytest.raises(ValueError, match="'features' has null or unequal-length rows"):
        KMedoids(k=2).fit(df)
    with pytest.raises(ValueError, match="the input has no rows"):
        KMedoids(k=2).fit(df.limit(0))
