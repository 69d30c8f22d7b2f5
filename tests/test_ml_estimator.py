"""clusterlake.ml: the ``pyspark.ml`` KMeans / BisectingKMeans estimators on our engine.

Behavioural tests against the truth of generated blobs, numpy, scikit-learn and Spark MLlib:
API parity with ``pyspark.ml.clustering.KMeans`` (issue 25: params, uid, summary, PMML; the
side-by-side tests against Spark's classes and Spark's doctests are in test_spark_ml_parity.py),
pipelines and persistence, warm start, weights,
cosine distance, bisecting, partition invariance, and the errors users see (a worker's Python
without clusterlake too).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linear_sum_assignment
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from clusterlake.ml import BisectingKMeans, BisectingKMeansModel, KMeans, KMeansModel

pytestmark = pytest.mark.spark

K = 4
SIZES = [700, 500, 450, 350]  # unequal, so that sizes identify the clusters
N = sum(SIZES)
# well separated (pairwise distances >= 10, cluster_std 0.5), not centred on the origin
TRUE_CENTERS = np.array([[2.0, 3.0, 14.0], [12.0, 3.0, 4.0], [2.0, 13.0, 4.0], [12.0, 13.0, 14.0]])


# ----------------------------------------------------------------------------------------------
# data


def _blobs(sizes=SIZES, centers=TRUE_CENTERS, std=0.5, seed=0):
    X, y = make_blobs(n_samples=list(sizes), centers=centers, cluster_std=std, random_state=seed)
    return X, y


def _f32(X):
    """The values the engine sees: its blocks are float32."""
    return np.asarray(X, dtype=np.float32).astype(np.float64)


def _group_means(X, y, k=K):
    return np.stack([X[y == j].mean(axis=0) for j in range(k)])


def _match(found, expected):
    """``found`` reordered to best match the rows of ``expected`` (Hungarian on distances)."""
    found = np.asarray(found)
    cost = ((found[:, None, :] - expected[None, :, :]) ** 2).sum(axis=2)
    rows, cols = linear_sum_assignment(cost)
    out = np.empty_like(found)
    out[cols] = found[rows]
    return out


def _inertia(X, C, w=None):
    d2 = ((X[:, None, :] - np.asarray(C)[None, :, :]) ** 2).sum(axis=2)
    m = d2.min(axis=1)
    return float(m.sum() if w is None else m @ w)


def _frame(spark, X, y, extra=None):
    """id, features (VectorUDT), arr_d (array<double>), arr_f (array<float>), label (+ extra)."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    pdf = pd.DataFrame({"id": np.arange(len(X), dtype=np.int64), "arr_d": list(np.asarray(X, np.float64)),
                        "label": np.asarray(y, np.int64), **(extra or {})})
    df = spark.createDataFrame(pdf)
    df = df.select("id", array_to_vector("arr_d").alias("features"), "arr_d",
                   F.col("arr_d").cast("array<float>").alias("arr_f"), "label", *(extra or {}))
    return df.cache()


def _predictions(df, col="prediction"):
    pdf = df.select("id", col).toPandas().sort_values("id")
    return pdf[col].to_numpy()


@pytest.fixture(scope="module")
def blobs():
    return _blobs()


@pytest.fixture(scope="module")
def blob_df(spark, blobs):
    X, y = blobs
    df = _frame(spark, X, y)
    assert df.count() == N
    yield df
    df.unpersist()


@pytest.fixture(scope="module")
def blob_model(blob_df):
    return KMeans(k=K, seed=1, maxIter=20).fit(blob_df)


# ----------------------------------------------------------------------------------------------
# 1. parity with the pyspark.ml.clustering.KMeans API


@pytest.mark.parametrize("col", ["features", "arr_d", "arr_f"])
def test_fit_transform_summary_match_the_truth(blob_df, blobs, col):
    X, y = blobs
    km = KMeans(k=K, seed=1, maxIter=20, featuresCol=col)
    model = km.fit(blob_df)

    centers = model.clusterCenters()
    assert isinstance(centers, list) and len(centers) == K
    assert all(isinstance(c, np.ndarray) and c.shape == (3,) for c in centers)
    C = _match(np.stack(centers), TRUE_CENTERS)
    np.testing.assert_allclose(C, TRUE_CENTERS, atol=0.1)  # the generating centres
    # ... and exactly the means of the true groups (of the float32 values the engine holds)
    np.testing.assert_allclose(C, _group_means(_f32(X), y), rtol=0, atol=1e-5)

    out = model.transform(blob_df)
    assert out.columns == blob_df.columns + ["prediction"]
    assert out.count() == N
    pdf = out.select("id", "label", "prediction", col).toPandas().sort_values("id")
    np.testing.assert_array_equal(pdf["label"].to_numpy(), y)
    pred = pdf["prediction"].to_numpy()
    assert set(pred) == set(range(K))
    assert adjusted_rand_score(y, pred) == 1.0

    s = model.summary
    assert model.hasSummary
    np.testing.assert_allclose(s.trainingCost, _inertia(X, np.stack(centers)), rtol=1e-6)
    assert s.clusterSizes == np.bincount(pred, minlength=K).tolist()
    assert sum(s.clusterSizes) == N
    assert s.numIter >= 1 and s.k == K


def test_predict_agrees_with_transform(blob_df, blobs, blob_model):
    from pyspark.ml.linalg import Vectors

    X, _ = blobs
    pred = _predictions(blob_model.transform(blob_df))
    rows = np.random.default_rng(3).choice(N, size=60, replace=False)
    for i in rows:
        assert blob_model.predict(Vectors.dense(X[i].tolist())) == pred[i]
    # a point between blobs: still the nearest centre
    C = np.stack(blob_model.clusterCenters())
    p = 0.6 * C[0] + 0.4 * C[1]
    assert blob_model.predict(Vectors.dense(p.tolist())) == 0


def test_custom_prediction_col_and_params_are_copied_to_the_model(blob_df):
    model = KMeans(k=K, seed=5, maxIter=10, featuresCol="arr_d", predictionCol="cluster").fit(blob_df)
    assert model.getK() == K and model.getSeed() == 5 and model.getMaxIter() == 10
    assert model.getFeaturesCol() == "arr_d" and model.getPredictionCol() == "cluster"
    out = model.transform(blob_df)
    assert "cluster" in out.columns and "prediction" not in out.columns


@pytest.mark.parametrize("seed", [-1])
def test_negative_seed_fits(blob_df, blobs, seed):
    """Spark seeds are any long; pyspark's default seed is ``hash(class name)``, negative half the
    time (it depends on PYTHONHASHSEED)."""
    X, y = blobs
    model = KMeans(k=K, seed=seed).fit(blob_df)
    assert adjusted_rand_score(y, _predictions(model.transform(blob_df))) == 1.0


def test_default_seed_fits(blob_df, blobs):
    X, y = blobs
    km = KMeans(k=K)
    assert not km.isSet(km.seed)
    model = km.fit(blob_df)
    assert adjusted_rand_score(y, _predictions(model.transform(blob_df))) == 1.0


def test_params_docs_defaults_and_methods_are_sparks(spark):
    """Every param of Spark's KMeans / BisectingKMeans with its doc and default (the seed's
    default is ours: fixed), every public method of Spark's estimators and models; ours on top."""
    from pyspark.ml import clustering as S

    for spark_cls, ours, extra in ((S.KMeans, KMeans, {"initialCenters", "numTasks"}),
                                   (S.BisectingKMeans, BisectingKMeans, {"tol", "numTasks"})):
        theirs, mine = spark_cls(), ours()
        assert {p.name for p in mine.params} - {p.name for p in theirs.params} == extra
        for p in theirs.params:
            q = mine.getParam(p.name)
            assert q.doc == p.doc, p.name
            assert mine.hasDefault(q) == theirs.hasDefault(p), p.name
            if theirs.hasDefault(p) and p.name != "seed":
                assert mine.getOrDefault(q) == theirs.getOrDefault(p), p.name
        assert mine.getSeed() == 42 and ours().getSeed() == 42
    for spark_cls, ours in ((S.KMeans, KMeans), (S.KMeansModel, KMeansModel), (S.BisectingKMeans, BisectingKMeans),
                            (S.BisectingKMeansModel, BisectingKMeansModel)):
        public = {m for m in dir(spark_cls) if not m.startswith("_")}
        assert public <= set(dir(ours)), sorted(public - set(dir(ours)))


def test_model_keeps_the_estimator_uid_and_sparks_repr(blob_df):
    km = KMeans(k=K, seed=1)
    model = km.fit(blob_df)
    assert model.uid == km.uid
    assert model.k.parent == km.uid  # the model's params belong to it
    assert repr(model) == f"KMeansModel: uid={km.uid}, k=4, distanceMeasure=euclidean, numFeatures=3"
    assert model.numFeatures == 3
    assert repr(km) == km.uid
    s = model.summary
    assert (s.k, s.featuresCol, s.predictionCol) == (K, "features", "prediction")
    assert s.predictions.columns == blob_df.columns + ["prediction"]
    assert s.cluster.columns == ["prediction"] and s.cluster.count() == N


def test_centres_in_lexicographic_order_and_a_fixed_default_seed(blob_df, blobs):
    X, y = blobs
    unseeded, seeded = KMeans(k=K).fit(blob_df), KMeans(k=K, seed=42).fit(blob_df)
    C = np.stack(unseeded.clusterCenters())
    assert [tuple(c) for c in C] == sorted(tuple(c) for c in C)
    np.testing.assert_array_equal(C, np.stack(seeded.clusterCenters()))
    # another seed draws another init; the same centres come back in the same order
    np.testing.assert_allclose(np.stack(KMeans(k=K, seed=7).fit(blob_df).clusterCenters()), C, atol=1e-9)
    B = np.stack(BisectingKMeans(k=K).fit(blob_df).clusterCenters())
    assert [tuple(c) for c in B] == sorted(tuple(c) for c in B)


def test_zero_max_iter_returns_the_initial_centres(blob_df):
    """Spark accepts maxIter=0 (the init's centres): so do we."""
    init = (TRUE_CENTERS + 1.0).tolist()
    model = KMeans(k=K, initialCenters=init, maxIter=0).fit(blob_df)
    np.testing.assert_array_equal(np.stack(model.clusterCenters()), np.asarray(init))
    assert model.summary.numIter == 0


# ----------------------------------------------------------------------------------------------
# 2. same result as scikit-learn


@pytest.mark.parametrize("init_mode", ["k-means||", "k-means++"])
def test_training_cost_matches_sklearn(blob_df, blobs, init_mode):
    from sklearn.cluster import KMeans as SkKMeans

    X, _ = blobs
    sk = SkKMeans(n_clusters=K, n_init=10, random_state=0).fit(X)
    model = KMeans(k=K, seed=2, initMode=init_mode, featuresCol="arr_d").fit(blob_df)
    np.testing.assert_allclose(model.summary.trainingCost, sk.inertia_, rtol=1e-6)
    np.testing.assert_allclose(_match(np.stack(model.clusterCenters()), sk.cluster_centers_),
                               sk.cluster_centers_, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 3. Pipeline and persistence


def test_pipeline_fit_transform_save_load(spark, blobs, tmp_path):
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.feature import StandardScaler, VectorAssembler

    X, y = blobs
    pdf = pd.DataFrame({"id": np.arange(N), "a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "label": y})
    df = spark.createDataFrame(pdf).cache()
    pipe = Pipeline(stages=[
        VectorAssembler(inputCols=["a", "b", "c"], outputCol="raw"),
        StandardScaler(inputCol="raw", outputCol="features", withMean=True, withStd=True),
        KMeans(k=K, seed=4),
    ])
    pm = pipe.fit(df)
    assert isinstance(pm.stages[-1], KMeansModel)
    out = pm.transform(df)
    assert set(out.columns) == {"id", "a", "b", "c", "label", "raw", "features", "prediction"}
    pred = _predictions(out)
    assert adjusted_rand_score(y, pred) == 1.0
    # the centres live in the standardised space
    Z = (X - X.mean(axis=0)) / X.std(axis=0, ddof=1)
    np.testing.assert_allclose(_match(np.stack(pm.stages[-1].clusterCenters()), _group_means(Z, y)),
                               _group_means(Z, y), atol=1e-5)

    path = str(tmp_path / "pipeline_model")
    pm.write().overwrite().save(path)
    loaded = PipelineModel.load(path)
    assert isinstance(loaded.stages[-1], KMeansModel)
    assert str(loaded.stages) == str(pm.stages)  # every stage keeps its uid (ours: the estimator's)
    assert loaded.stages[-1].uid == pipe.getStages()[-1].uid
    np.testing.assert_array_equal(_predictions(loaded.transform(df)), pred)
    df.unpersist()


def test_model_save_load_round_trip(blob_df, tmp_path):
    model = KMeans(k=K, seed=7, featuresCol="arr_d", predictionCol="cluster", maxIter=15).fit(blob_df)
    path = str(tmp_path / "model")
    model.save(path)
    with pytest.raises(Exception):  # no silent overwrite
        model.save(path)
    model.write().overwrite().save(path)

    loaded = KMeansModel.load(path)
    assert isinstance(loaded, KMeansModel)
    assert loaded.uid == model.uid and str(loaded) == str(model)
    assert loaded.getSolver() == "auto" and loaded.getMaxBlockSizeInMB() == 0.0
    np.testing.assert_array_equal(np.stack(loaded.clusterCenters()), np.stack(model.clusterCenters()))
    assert loaded.getK() == K and loaded.getSeed() == 7 and loaded.getMaxIter() == 15
    assert loaded.getDistanceMeasure() == "euclidean"
    assert loaded.getFeaturesCol() == "arr_d" and loaded.getPredictionCol() == "cluster"
    assert loaded.parents() is None
    np.testing.assert_array_equal(_predictions(loaded.transform(blob_df), "cluster"),
                                  _predictions(model.transform(blob_df), "cluster"))
    assert model.hasSummary
    assert loaded.hasSummary is False
    with pytest.raises(RuntimeError, match="summary"):
        loaded.summary


def test_estimator_save_load_keeps_params(tmp_path):
    km = KMeans(k=5, seed=3, maxIter=7, tol=1e-6, distanceMeasure="cosine", featuresCol="x",
                predictionCol="p", initMode="random", initSteps=3, weightCol="w",
                initialCenters=[[float(i), 1.0] for i in range(5)], numTasks=1)
    path = str(tmp_path / "estimator")
    km.save(path)
    loaded = KMeans.load(path)
    assert type(loaded) is KMeans
    assert loaded.uid == km.uid
    for name in ("k", "seed", "maxIter", "tol", "distanceMeasure", "featuresCol", "predictionCol", "initMode",
                 "initSteps", "weightCol", "initialCenters", "numTasks"):
        assert loaded.getOrDefault(name) == km.getOrDefault(name), name
        assert loaded.isSet(name), name

    bk = BisectingKMeans(k=3, seed=9)
    bk.save(str(tmp_path / "bisecting"))
    bl = BisectingKMeans.load(str(tmp_path / "bisecting"))
    assert type(bl) is BisectingKMeans and bl.getK() == 3 and bl.getSeed() == 9


# what the previous clusterlake.ml wrote (a bisecting fit was a KMeansModel then; BisectingKMeans
# had KMeans' params)
OLD_METADATA = {
    "bisecting_model": {"class": "clusterlake.ml.KMeansModel", "timestamp": 1796445138140, "sparkVersion": "4.0.5",
                        "uid": "KMeansModel_1c729077a05b",
                        "paramMap": {"featuresCol": "features", "k": 3, "predictionCol": "c", "seed": 5},
                        "defaultParamMap": {"seed": 2624658134017541294, "predictionCol": "prediction",
                                            "featuresCol": "features", "k": 2, "maxIter": 20, "tol": 0.0001,
                                            "initMode": "k-means||", "initSteps": 2, "distanceMeasure": "euclidean",
                                            "numTasks": 0}},
    "bisecting": {"class": "clusterlake.ml.BisectingKMeans", "timestamp": 1796445139929, "sparkVersion": "4.0.5",
                  "uid": "BisectingKMeans_63503d5ad8e3",
                  "paramMap": {"k": 3, "seed": 5, "tol": 0.01, "initMode": "random"},
                  "defaultParamMap": {"seed": 2624658134017541294, "predictionCol": "prediction",
                                      "featuresCol": "features", "k": 2, "maxIter": 20, "tol": 0.0001,
                                      "initMode": "k-means||", "initSteps": 2, "distanceMeasure": "euclidean",
                                      "numTasks": 0}},
}


def _write_old(spark, path: Path, meta: dict, rows=None) -> str:
    (path / "metadata").mkdir(parents=True)
    (path / "metadata" / "part-00000").write_text(json.dumps(meta))
    if rows is not None:
        spark.createDataFrame(rows, "cluster_index int, center array<double>, parent long").coalesce(1) \
            .write.parquet(str(path / "data"))
    return str(path)


def test_what_the_previous_version_saved_still_loads(spark, tmp_path):
    from pyspark.ml.linalg import Vectors

    rows = [(0, [0.5, 0.5], 0), (1, [9.0, 8.5], 2), (2, [8.0, 9.0], 2)]
    old = KMeansModel.load(_write_old(spark, tmp_path / "m", OLD_METADATA["bisecting_model"], rows))
    assert type(old) is KMeansModel and old.uid == "KMeansModel_1c729077a05b"
    assert old.parents() == [0, 2, 2] and old.getK() == 3 and old.getPredictionCol() == "c"
    assert old.getSeed() == 5 and old.getSolver() == "auto"  # a param it did not have: Spark's default
    assert old.predict(Vectors.dense([8.9, 8.4])) == 1
    df = spark.createDataFrame([(Vectors.dense([0.0, 1.0]),), (Vectors.dense([8.0, 9.5]),)], ["features"])
    assert [r.c for r in old.transform(df).collect()] == [0, 2]

    est = BisectingKMeans.load(_write_old(spark, tmp_path / "e", OLD_METADATA["bisecting"]))
    assert type(est) is BisectingKMeans and est.uid == "BisectingKMeans_63503d5ad8e3"
    assert (est.getK(), est.getSeed(), est.getTol(), est.getMaxIter()) == (3, 5, 0.01, 20)
    assert not est.hasParam("initMode")  # Spark's BisectingKMeans has none: left out


def _pmml_tree(text: str):
    import xml.etree.ElementTree as ET

    def tree(e):
        return e.tag, sorted(e.attrib.items()), (e.text or "").strip(), [tree(c) for c in e]

    root = ET.fromstring(text.encode())
    return root.tag, root.attrib.get("version"), [tree(c) for c in root if not c.tag.endswith("Header")]


def test_pmml_is_the_document_spark_writes(spark, tmp_path):
    """The same PMML as Spark's KMeansModel writes for the same centres (but the Header's
    application, version and time), read back with Spark's textFile as Spark's test does."""
    from pyspark.ml.clustering import KMeans as SparkKMeans
    from pyspark.ml.linalg import Vectors

    df = spark.createDataFrame([(Vectors.dense([0.0, 0.0]),), (Vectors.dense([1.0, 1.0]),),
                                (Vectors.dense([9.0, 8.0]),), (Vectors.dense([8.0, 9.0]),)], ["features"])
    ours, theirs = KMeans(k=2, seed=1).fit(df), SparkKMeans(k=2, seed=1).fit(df)
    np.testing.assert_array_equal(np.stack(ours.clusterCenters()), np.stack(theirs.clusterCenters()))
    ours.write().format("pmml").save(str(tmp_path / "ours"))
    theirs.write().format("pmml").save(str(tmp_path / "theirs"))
    text = "\n".join(spark.sparkContext.textFile(str(tmp_path / "ours")).collect())
    assert _pmml_tree(text) == _pmml_tree("\n".join(spark.sparkContext.textFile(str(tmp_path / "theirs")).collect()))
    assert "clusterlake on Apache Spark" in text and '<Array n="2" type="real">8.5 8.5</Array>' in text
    ours.write().overwrite().format("pmml").save(str(tmp_path / "ours"))  # overwrite, as Spark's writer
    assert sorted(p.name for p in (tmp_path / "ours").iterdir() if not p.name.startswith(".")) == \
        ["_SUCCESS", "part-00000"]


def test_pmml_refuses_cosine_and_unknown_formats(blob_df, tmp_path):
    cos = KMeans(k=K, seed=1, distanceMeasure="cosine").fit(blob_df)
    with pytest.raises(ValueError, match="cannot be exported to PMML.*normalise"):
        cos.write().format("pmml").save(str(tmp_path / "cos"))
    with pytest.raises(ValueError, match="format 'onnx'.*'internal'.*'pmml'"):
        cos.write().format("onnx").save(str(tmp_path / "onnx"))


# ----------------------------------------------------------------------------------------------
# 4. warm start


def test_initial_centers_warm_start(blob_df, blobs):
    X, y = blobs
    model = KMeans(k=K, initialCenters=TRUE_CENTERS.tolist(), featuresCol="arr_d").fit(blob_df)
    assert 1 <= model.summary.numIter <= 2
    assert model.summary.converged
    # warm start keeps the order of the given centres
    C = np.stack(model.clusterCenters())
    np.testing.assert_allclose(C, TRUE_CENTERS, atol=0.1)
    np.testing.assert_allclose(C, _group_means(_f32(X), y), atol=1e-5)
    np.testing.assert_array_equal(_predictions(model.transform(blob_df)), y)


def test_set_initial_centers_from_numpy(blob_df, blobs):
    X, y = blobs
    km = KMeans(k=K, featuresCol="features").setInitialCenters(TRUE_CENTERS + 1.0)
    model = km.fit(blob_df)
    np.testing.assert_allclose(np.stack(model.clusterCenters()), _group_means(_f32(X), y), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 5. weights


def test_integer_weights_equal_repeated_rows(spark):
    X, y = _blobs(sizes=[400, 300, 250, 250], seed=5)
    w = np.random.default_rng(5).integers(1, 4, size=len(X))
    init = (TRUE_CENTERS + np.array([1.5, -1.0, 0.7])).tolist()  # so that Lloyd has work to do

    wdf = _frame(spark, X, y, extra={"w": w.astype(np.int64)})
    rX, ry = np.repeat(X, w, axis=0), np.repeat(y, w)
    rdf = _frame(spark, rX, ry)

    mw = KMeans(k=K, weightCol="w", initialCenters=init, tol=0.0, maxIter=50).fit(wdf)
    mr = KMeans(k=K, initialCenters=init, tol=0.0, maxIter=50).fit(rdf)
    mu = KMeans(k=K, initialCenters=init, tol=0.0, maxIter=50).fit(wdf)  # weights ignored

    Cw, Cr, Cu = (np.stack(m.clusterCenters()) for m in (mw, mr, mu))
    np.testing.assert_allclose(Cw, Cr, rtol=1e-6)
    np.testing.assert_allclose(mw.summary.trainingCost, mr.summary.trainingCost, rtol=1e-6)
    # clusterWeights: the weighted sizes; clusterSizes: the rows, as Spark counts them
    np.testing.assert_allclose(mw.summary.clusterWeights, mr.summary.clusterWeights, rtol=1e-9)
    assert sum(mw.summary.clusterWeights) == int(w.sum())
    assert mw.summary.clusterSizes == np.bincount(_predictions(mw.transform(wdf)), minlength=K).tolist()
    assert sum(mw.summary.clusterSizes) == len(X)
    np.testing.assert_allclose(mw.summary.clusterWeights,
                               np.bincount(_predictions(mw.transform(wdf)), weights=w, minlength=K), rtol=1e-9)
    # the weighted means, not the plain ones
    wmeans = np.stack([np.average(_f32(X)[y == j], axis=0, weights=w[y == j]) for j in range(K)])
    np.testing.assert_allclose(Cw, wmeans, atol=1e-5)
    assert np.abs(Cw - Cu).max() > 1e-3
    wdf.unpersist()
    rdf.unpersist()


# ----------------------------------------------------------------------------------------------
# 6. cosine


def _direction_blobs(n=1600, seed=11):
    dirs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, -1.0, -1.0]])
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    Xd, y = make_blobs(n_samples=n, centers=dirs, cluster_std=0.08, random_state=seed)
    mag = np.random.default_rng(seed).uniform(0.2, 50.0, size=n)
    return Xd * mag[:, None], y


def test_cosine_recovers_directions_and_matches_mllib(spark):
    from pyspark.ml.clustering import KMeans as SparkKMeans

    X, y = _direction_blobs()
    df = _frame(spark, X, y)
    model = KMeans(k=K, seed=1, distanceMeasure="cosine").fit(df)
    pred = _predictions(model.transform(df))
    assert adjusted_rand_score(y, pred) == 1.0

    C = np.stack(model.clusterCenters())
    np.testing.assert_allclose(np.linalg.norm(C, axis=1), 1.0, atol=1e-9)
    # spherical k-means centre: the normalised mean of the normalised rows
    Xn = _f32(X) / np.linalg.norm(_f32(X), axis=1, keepdims=True)
    expected = np.stack([Xn[pred == j].sum(axis=0) for j in range(K)])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(C, expected, atol=1e-5)
    # euclidean k-means on the raw rows is fooled by the magnitudes
    assert adjusted_rand_score(y, _predictions(KMeans(k=K, seed=1).fit(df).transform(df))) < 0.9

    # predict() normalises too: a long and a short vector in the same direction
    from pyspark.ml.linalg import Vectors

    assert model.predict(Vectors.dense((100 * X[0]).tolist())) == model.predict(Vectors.dense((0.01 * X[0]).tolist())) == pred[0]

    spark_model = SparkKMeans(k=K, seed=1, distanceMeasure="cosine").fit(df)
    spark_pred = _predictions(spark_model.transform(df))
    assert adjusted_rand_score(pred, spark_pred) == 1.0
    df.unpersist()


# ----------------------------------------------------------------------------------------------
# 7. bisecting


def test_bisecting_kmeans(blob_df, blobs):
    X, y = blobs
    model = BisectingKMeans(k=K, seed=3).fit(blob_df)
    centers = model.clusterCenters()
    assert len(centers) == K
    parents = model.parents()
    assert isinstance(parents, list) and len(parents) == K
    assert all(isinstance(p, int) and p >= 0 for p in parents)  # every leaf came from a split
    assert max(np.bincount(parents)) >= 2  # two leaves are siblings
    pred = _predictions(model.transform(blob_df))
    assert adjusted_rand_score(y, pred) == 1.0
    np.testing.assert_allclose(_match(np.stack(centers), TRUE_CENTERS), _group_means(_f32(X), y), atol=1e-5)
    assert model.summary.clusterSizes == np.bincount(pred, minlength=K).tolist()
    np.testing.assert_allclose(model.summary.trainingCost, _inertia(X, np.stack(centers)), rtol=1e-6)


def test_bisecting_parents_survive_save_load(blob_df, tmp_path):
    model = BisectingKMeans(k=3, seed=3).fit(blob_df)
    path = str(tmp_path / "bisecting_model")
    model.save(path)
    loaded = BisectingKMeansModel.load(path)
    assert type(loaded) is BisectingKMeansModel and loaded.uid == model.uid and str(loaded) == str(model)
    assert loaded.parents() == model.parents()
    assert (loaded.getK(), loaded.getSeed(), loaded.getMinDivisibleClusterSize()) == (3, 3, 1.0)
    # PMML too (Spark's BisectingKMeansModel has none): a centre-based model, as our rows' nearest centre
    loaded.write().format("pmml").save(str(tmp_path / "bisecting.pmml"))
    tag, version, (dictionary, clustering) = _pmml_tree((tmp_path / "bisecting.pmml" / "part-00000").read_text())
    assert version == "4.4" and dict(clustering[1])["numberOfClusters"] == "3"
    assert [c[3][0][2] for c in clustering[3] if c[0].endswith("Cluster")] == \
        [" ".join(repr(float(v)) for v in c) for c in model.clusterCenters()]
    np.testing.assert_array_equal(np.stack(loaded.clusterCenters()), np.stack(model.clusterCenters()))


def test_bisecting_summary_is_sparks_and_compute_cost(blob_df, blobs):
    X, y = blobs
    bkm = BisectingKMeans(k=K, seed=3, maxIter=15)
    model = bkm.fit(blob_df)
    assert type(model) is BisectingKMeansModel and model.uid == bkm.uid
    s = model.summary
    assert type(s).__name__ == "BisectingKMeansSummary"
    assert s.numIter == 15  # maxIter, as Spark reports it
    assert K - 1 <= s.lloydIterations <= (K - 1) * 15
    pred = _predictions(model.transform(blob_df))
    C = np.stack(model.clusterCenters())
    assert s.clusterSizes == np.bincount(pred, minlength=K).tolist()
    np.testing.assert_allclose(s.trainingCost, _inertia(_f32(X), C), rtol=1e-6)  # (the engine: float32 products)
    with pytest.warns(FutureWarning, match="Deprecated in 3.0.0"):
        cost = model.computeCost(blob_df)
    np.testing.assert_allclose(cost, _inertia(X, C), rtol=1e-12)
    assert repr(model) == f"BisectingKMeansModel: uid={bkm.uid}, k=4, distanceMeasure=euclidean, numFeatures=3"


def _three_groups(spark):
    """600 rows around (0, 0), 250 around (100, 0), 150 around (110, 0): bisecting splits the
    first 600 from the other 400 first."""
    rng = np.random.default_rng(4)
    X = np.concatenate([rng.normal((0, 0), 1.0, (600, 2)), rng.normal((100, 0), 1.0, (250, 2)),
                        rng.normal((110, 0), 1.0, (150, 2))])
    return X, _frame(spark, X, np.repeat([0, 1, 2], [600, 250, 150]))


def test_min_divisible_cluster_size_is_honoured(spark):
    X, df = _three_groups(spark)
    # by default the 400 rows around x = 100 and 110 (the largest cost) are split next
    free = np.stack(BisectingKMeans(k=3, seed=1).fit(df).clusterCenters())
    np.testing.assert_allclose(free[:, 0], [X[:600, 0].mean(), X[600:850, 0].mean(), X[850:, 0].mean()], atol=1e-4)
    # a leaf of 400 rows is not divisible under 500 (or 45% of the 1000 rows): the 600 are split
    for size in (500.0, 0.45):
        model = BisectingKMeans(k=3, seed=1, minDivisibleClusterSize=size).fit(df)
        C = np.stack(model.clusterCenters())
        assert (C[:2, 0] < 5).all() and abs(C[2, 0] - X[600:, 0].mean()) < 1e-4, size
        assert model.summary.clusterSizes[2] == 400 and sum(model.summary.clusterSizes) == 1000
    # under 700 neither 600 nor 400 is divisible: two clusters, as Spark stops
    from clusterlake.algorithms.kmeans_engine import FewerClustersWarning

    with pytest.warns(FewerClustersWarning, match="2 divisible clusters, fewer than k=3"):
        two = BisectingKMeans(k=3, seed=1, minDivisibleClusterSize=700).fit(df)
    assert len(two.clusterCenters()) == 2 and two.summary.clusterSizes == [600, 400]
    df.unpersist()


# ----------------------------------------------------------------------------------------------
# 8. partition invariance


def _fits_on_layouts(*layouts):
    init = (TRUE_CENTERS + np.array([-1.0, 0.5, 1.0])).tolist()
    return [KMeans(k=K, seed=6, initialCenters=init, tol=0.0, featuresCol="features").fit(d) for d in layouts]


def _assert_same_fit(a, b, da, db):
    Ca, Cb = (np.stack(m.clusterCenters()) for m in (a, b))
    np.testing.assert_allclose(Ca, Cb, rtol=1e-9)
    assert a.summary.numIter == b.summary.numIter
    assert a.summary.clusterSizes == b.summary.clusterSizes
    np.testing.assert_allclose(a.summary.trainingCost, b.summary.trainingCost, rtol=1e-9)
    np.testing.assert_array_equal(_predictions(a.transform(da)), _predictions(b.transform(db)))


def test_partitioning_does_not_change_the_fit_1_vs_2(blob_df):
    """Both layouts fit in the 2 task slots of local[2]: 1 task against 2 tasks."""
    one = blob_df.repartition(1).cache()
    two = blob_df.repartition(2).cache()  # other row order, too
    assert one.rdd.getNumPartitions() == 1 and two.rdd.getNumPartitions() == 2
    a, b = _fits_on_layouts(one, two)
    assert a.summary.numTasks == 1 and b.summary.numTasks == 2
    _assert_same_fit(a, b, one, two)
    one.unpersist()
    two.unpersist()


def test_partitioning_does_not_change_the_fit_1_vs_4(blob_df):
    """4 partitions > the 2 task slots of local[2]: the engine must reduce them to 2 tasks."""
    one = blob_df.repartition(1).cache()
    four = blob_df.repartition(4).cache()
    assert one.rdd.getNumPartitions() == 1 and four.rdd.getNumPartitions() == 4
    try:
        a, b = _fits_on_layouts(one, four)
        assert a.summary.numTasks == 1 and b.summary.numTasks == 2
        _assert_same_fit(a, b, one, four)
    finally:
        one.unpersist()
        four.unpersist()


def test_coalesced_input_fits(blob_df, blobs):
    """A coalesce() in the input's lineage would be refused inside a barrier stage (SPARK-24820):
    the engine shuffles the packed blocks first."""
    X, y = blobs
    one = blob_df.coalesce(1).cache()
    try:
        assert one.rdd.getNumPartitions() == 1
        model = KMeans(k=K, seed=1).fit(one)
        assert adjusted_rand_score(y, _predictions(model.transform(one))) == 1.0
    finally:
        one.unpersist()


# ----------------------------------------------------------------------------------------------
# 9. errors


@pytest.mark.parametrize("params, name", [
    ({"k": 1}, "'k'"),
    ({"k": 0}, "'k'"),
    ({"initMode": "bogus"}, "'initMode'"),
    ({"distanceMeasure": "manhattan"}, "'distanceMeasure'"),
    ({"maxIter": -1}, "'maxIter'"),
    ({"initSteps": 0}, "'initSteps'"),
    ({"tol": -1e-3}, "'tol'"),
    ({"solver": "lbfgs"}, "'solver'"),
    ({"maxBlockSizeInMB": -1.0}, "'maxBlockSizeInMB'"),
])
def test_bad_params_raise_value_error_naming_the_param(blob_df, params, name):
    with pytest.raises(ValueError, match=name):
        KMeans(**{"k": K, "seed": 1, **params}).fit(blob_df)


@pytest.mark.parametrize("centers", [
    TRUE_CENTERS[:3].tolist(),  # k - 1 centres
    TRUE_CENTERS[:, :2].tolist(),  # wrong dimension
    [[1.0, 2.0, 3.0], [1.0, 2.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]],  # ragged
])
def test_initial_centers_of_wrong_shape(blob_df, centers):
    with pytest.raises(ValueError, match=r"(?i)initial ?cent.*shape"):
        KMeans(k=K, initialCenters=centers).fit(blob_df)


def test_nan_feature_error_reaches_the_caller_and_engine_recovers(spark, blobs, blob_df):
    X, y = blobs
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import Vectors
    from pyspark.sql import functions as F

    Xn = X[:400].copy()
    Xn[123, 1] = np.nan
    # (built from rows: pandas -> Arrow would turn the NaN into a null)
    df = spark.createDataFrame([(i, Vectors.dense(x.tolist())) for i, x in enumerate(Xn)], ["id", "features"])
    assert df.filter(F.isnan(vector_to_array("features")[1])).count() == 1
    with pytest.raises(Exception, match="NaN"):
        KMeans(k=K, seed=1).fit(df)
    # the failed barrier stage does not hold on to the task slots
    model = KMeans(k=K, seed=1).fit(blob_df)
    assert adjusted_rand_score(y, _predictions(model.transform(blob_df))) == 1.0


@pytest.fixture
def workers_without_clusterlake(spark, tmp_path):
    """The Spark workers' Python as on a cluster where clusterlake is not installed: a
    sitecustomize on their PYTHONPATH takes every folder holding a ``clusterlake`` package (the
    editable install's lib/, and a PYTHONPATH's copy) off their sys.path."""
    import clusterlake.ml_workers as ml_workers

    (tmp_path / "sitecustomize.py").write_text(
        "import os, sys\nsys.path[:] = [p for p in sys.path if not os.path.isfile(os.path.join(p or '.', "
        "'clusterlake', '__init__.py'))]\n")
    sc = spark.sparkContext
    before = sc.environment.get("PYTHONPATH"), list(sc._python_includes), list(sys.path)
    sc.environment["PYTHONPATH"] = str(tmp_path)
    try:
        yield
    finally:  # the shared session's later tests get the workers they had
        if before[0] is None:
            sc.environment.pop("PYTHONPATH", None)
        else:
            sc.environment["PYTHONPATH"] = before[0]
        sc._python_includes[:] = before[1]
        sys.path[:] = before[2]
        ml_workers._SHIPPED.discard(sc.applicationId)


def test_workers_without_clusterlake_get_it_shipped_or_a_clear_error(blob_df, blobs, workers_without_clusterlake,
                                                                    monkeypatch, caplog):
    import clusterlake.ml as ml
    import clusterlake.ml_workers as ml_workers

    X, y = blobs
    with monkeypatch.context() as m:  # shipping does not help (say, their Python lacks numpy too)
        m.setattr(ml_workers, "ship_package", lambda sc: False)
        advice = r"workers' Python cannot import 'clusterlake'.*PYSPARK_PYTHON, or the Spark conf spark\.pyspark\.python"
        with pytest.raises(ml.WorkerImportError, match=advice) as e:
            KMeans(k=K, seed=1).fit(blob_df)
    assert sys.executable in str(e.value) and isinstance(e.value, ImportError)
    with caplog.at_level("WARNING", logger="clusterlake.ml"):
        model = KMeans(k=K, seed=1).fit(blob_df)  # the package is shipped, the fit tried again
    assert "shipped the package to them" in caplog.text
    assert adjusted_rand_score(y, _predictions(model.transform(blob_df))) == 1.0


def test_fewer_rows_than_k(spark, blobs):
    X, y = blobs
    df = _frame(spark, X[:3], y[:3])
    with pytest.raises(ValueError, match=r"n_samples=3.*k=4"):
        KMeans(k=K, seed=1).fit(df)


# ----------------------------------------------------------------------------------------------
# the engine's tasks read plain parquet files themselves


def _array_parquet(tmp_path, X, w=None, name="emb.parquet", files=1):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / name
    path.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(X)), files)):
        cols = {"id": pa.array(part.astype(np.int64)),
                "emb": pa.FixedSizeListArray.from_arrays(pa.array(X[part].astype(np.float32).ravel()),
                                                         X.shape[1]).cast(pa.list_(pa.float32()))}
        if w is not None:
            cols["w"] = pa.array(w[part])
        pq.write_table(pa.table(cols), str(path / f"part-{i}.parquet"), row_group_size=300)
    return str(path)


def test_a_plain_parquet_scan_is_read_by_the_tasks_with_the_same_fit(spark, tmp_path, caplog):
    from clusterlake.io.input_files import frame_file_scan

    X, _ = _blobs(seed=8)
    w = np.random.default_rng(8).integers(1, 4, size=len(X)).astype(np.int32)
    path = _array_parquet(tmp_path, X, w, name="emb 1%.parquet", files=3)  # Spark percent-encodes its URIs
    plain = spark.read.parquet(path)
    scan = frame_file_scan(plain, ["emb", "w"])
    assert scan is not None and len(scan.files) == 3 and scan.rows == len(X)
    # anything but the columns as they are in the files goes through Spark
    assert frame_file_scan(plain.where("id > 5"), ["emb"]) is None
    assert frame_file_scan(plain.selectExpr("emb as e"), ["e"]) is None
    assert frame_file_scan(spark.read.schema("id long, emb array<double>, w int").parquet(path), ["emb"]) is None
    init = (TRUE_CENTERS + 1.0).tolist()
    params = dict(k=K, featuresCol="emb", weightCol="w", initialCenters=init, tol=0.0, maxIter=20)
    with caplog.at_level("INFO", logger="clusterlake.ml"):
        by_tasks = KMeans(**params).fit(plain)
    assert "the engine's tasks read the 3 parquet files themselves" in caplog.text
    by_spark = KMeans(**params).fit(plain.repartition(2))  # not a plain scan: Spark reads it
    np.testing.assert_allclose(np.stack(by_tasks.clusterCenters()), np.stack(by_spark.clusterCenters()), rtol=1e-6)
    assert by_tasks.summary.clusterWeights == by_spark.summary.clusterWeights
    assert sum(by_tasks.summary.clusterWeights) == int(w.sum())
    assert by_tasks.summary.clusterSizes == by_spark.summary.clusterSizes
    assert sum(by_tasks.summary.clusterSizes) == len(X)


def test_a_partitioned_parquet_table_is_read_by_spark(spark, tmp_path):
    from clusterlake.io.input_files import frame_file_scan

    X, _ = _blobs(seed=9)
    df = spark.createDataFrame([(int(i % 2), [float(v) for v in x]) for i, x in enumerate(X)], "p int, emb array<float>")
    df.write.partitionBy("p").parquet(str(tmp_path / "parted"))
    assert frame_file_scan(spark.read.parquet(str(tmp_path / "parted")), ["emb"]) is None


def test_a_dotted_features_column_is_read_by_the_tasks(spark, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clusterlake.io.input_files import frame_file_scan

    path = str(tmp_path / "dotted.parquet")
    pq.write_table(pa.table({"e.mb": pa.array([[1.0, 2.0]] * 8, pa.list_(pa.float32()))}), path)
    scan = frame_file_scan(spark.read.parquet(path), ["e.mb"])
    assert scan is not None and scan.columns == ("e.mb",) and scan.rows == 8
