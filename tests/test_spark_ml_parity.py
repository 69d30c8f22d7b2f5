"""clusterlake.ml's KMeans and BisectingKMeans side by side with ``pyspark.ml.clustering``'s (issue 25).

Each test fits, saves or inspects our class and Spark's on the same small data and asserts that
the two behave alike: params (names, docs, defaults, getters and setters, ``copy``,
``extractParamMap``), the partition found (up to relabelling), ``clusterCenters``, ``predict``,
``transform``, the uid, the training summary, the cosine distance, ``minDivisibleClusterSize``,
persistence (ours, and across the two classes where the formats allow it), PMML and a ``Pipeline``.
Where ours deliberately differs (docs/ml.md, lib/clusterlake/ml.py: the relative ``tol``, the
fixed default seed, the better optimum and its ``numIter``, the lexicographic order of the
centres, float32 blocks, costs under cosine, which leaf bisecting splits), the test asserts our
documented behaviour and says so.

Spark's own test files are not vendored here; last,
:func:`test_spark_doctests_pass_on_our_classes` runs the examples of Spark's docstrings of
``KMeans``, ``KMeansModel``, ``BisectingKMeans`` and ``BisectingKMeansModel`` (the installed
pyspark's ``pyspark/ml/clustering.py``) against ours.
"""

import doctest
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from pyspark.ml import clustering as S
from pyspark.ml.feature import MinMaxScaler, MinMaxScalerModel, VectorAssembler
from pyspark.ml.linalg import Vectors
from pyspark.ml.pipeline import Pipeline, PipelineModel
from pyspark.sql import DataFrame

from clusterlake.algorithms.kmeans_engine import FewerClustersWarning
from clusterlake.ml import (
    BisectingKMeans,
    BisectingKMeansModel,
    BisectingKMeansSummary,
    KMeans,
    KMeansModel,
    KMeansSummary,
)

# two clear groups, of 5 rows near the origin and 3 near (5.9, 5.1), with weights: the sizes
# (rows 5 and 3, weights 8 and 4) tell the groups apart
GROUPS = [
    (0, 1.0, [0.0, 0.2]), (1, 2.0, [0.3, -0.1]), (2, 1.0, [-0.2, 0.1]), (3, 1.0, [0.1, 0.4]), (4, 3.0, [-0.3, -0.2]),
    (5, 1.0, [6.0, 5.1]), (6, 2.0, [5.6, 5.4]), (7, 1.0, [6.2, 4.8]),
]
X = np.array([v for _, _, v in GROUPS])
W = np.array([w for _, w, _ in GROUPS])
TRUTH = np.array([0, 0, 0, 0, 0, 1, 1, 1])
NEW_POINTS = [[0.5, 0.5], [5.0, 5.0], [2.5, 2.0], [9.0, 9.0], [-4.0, 1.0]]

# Spark's params with a value other than their default, for the setters (valid for both classes)
VALUES = {"k": 5, "maxIter": 7, "tol": 0.01, "seed": 11, "initMode": "random", "initSteps": 3,
          "distanceMeasure": "cosine", "weightCol": "w", "featuresCol": "f", "predictionCol": "p", "solver": "row",
          "maxBlockSizeInMB": 1.5, "minDivisibleClusterSize": 0.5}
# ours on top of Spark's params (docs/ml.md)
EXTRA_PARAMS = {KMeans: {"initialCenters", "numTasks"}, BisectingKMeans: {"tol", "numTasks"}}
PAIRS = [(KMeans, S.KMeans), (BisectingKMeans, S.BisectingKMeans)]


def _cap(name: str) -> str:
    return name[0].upper() + name[1:]


def _f32(A) -> np.ndarray:
    """The values our engine computes on: its blocks are float32."""
    return np.asarray(A, dtype=np.float32).astype(np.float64)


def _labels(df: DataFrame, col: str = "prediction") -> np.ndarray:
    return np.array([r[col] for r in df.orderBy("id").select(col).collect()])


def _relabelling(ours, theirs) -> dict:
    """Our cluster id -> Spark's, when the two label arrays are the same partition (else fails)."""
    pairs = set(zip(np.asarray(ours).tolist(), np.asarray(theirs).tolist()))
    mapping = dict(pairs)
    assert len(mapping) == len(pairs) == len(set(mapping.values())), f"not the same partition: {sorted(pairs)}"
    return mapping


def _by_name(param_map: dict) -> dict:
    return {p.name: v for p, v in param_map.items()}


def _cost(X_, C, labels, w=None) -> float:
    """Sum of (weighted) squared distances of the rows to the centres of their labels."""
    d2 = ((np.asarray(X_) - np.asarray(C)[np.asarray(labels)]) ** 2).sum(axis=1)
    return float(d2.sum() if w is None else d2 @ np.asarray(w))


@pytest.fixture(scope="module")
def groups(spark):
    df = spark.createDataFrame([(i, w, Vectors.dense(v)) for i, w, v in GROUPS], ["id", "weight", "features"])
    df.cache()
    yield df
    df.unpersist()


def _fit_both(ours_cls, spark_cls, df, **params):
    ours_est, spark_est = ours_cls(**params), spark_cls(**params)
    return ours_est, ours_est.fit(df), spark_est, spark_est.fit(df)


@pytest.fixture(scope="module")
def kmeans_fits(groups):
    """(our estimator, our model, Spark's estimator, Spark's model), weighted, k=2."""
    return _fit_both(KMeans, S.KMeans, groups, k=2, seed=3, weightCol="weight")


@pytest.fixture(scope="module")
def bisecting_fits(groups):
    return _fit_both(BisectingKMeans, S.BisectingKMeans, groups, k=2, seed=3, weightCol="weight")


# ----------------------------------------------------------------------------------------------
# params


@pytest.mark.parametrize("ours_cls, spark_cls", PAIRS, ids=["KMeans", "BisectingKMeans"])
def test_params_docs_defaults_getters_and_setters_are_sparks(spark, ours_cls, spark_cls):
    ours, theirs = ours_cls(), spark_cls()
    names = {p.name for p in theirs.params}
    assert {p.name for p in ours.params} - names == EXTRA_PARAMS[ours_cls]
    assert names <= {p.name for p in ours.params}
    for p in theirs.params:
        q = ours.getParam(p.name)
        assert (q.name, q.doc, q.parent) == (p.name, p.doc, ours.uid)
        assert ours.hasDefault(p.name) == theirs.hasDefault(p.name), p.name
        assert ours.isSet(p.name) is theirs.isSet(p.name) is False, p.name
        assert ours.isDefined(p.name) == theirs.isDefined(p.name), p.name
        if p.name == "seed":  # deliberate: ours is fixed (42), Spark's hash(class name) changes per process
            assert ours.getSeed() == 42
            continue
        if theirs.hasDefault(p.name):
            assert ours.getOrDefault(p.name) == theirs.getOrDefault(p.name), p.name
            assert ours.explainParam(p.name) == theirs.explainParam(p.name), p.name
    if ours_cls is BisectingKMeans:
        assert ours.getK() == theirs.getK() == 4
    # every getter and setter of Spark's, and each sets and gets what Spark's does
    accessors = {m for m in dir(spark_cls) if m.startswith(("get", "set"))}
    assert accessors <= set(dir(ours_cls)), sorted(accessors - set(dir(ours_cls)))
    for name in sorted(names):
        getter, setter = f"get{_cap(name)}", f"set{_cap(name)}"
        if hasattr(theirs, setter):
            value = VALUES[name]
            assert getattr(ours, setter)(value) is ours
            getattr(theirs, setter)(value)
            assert getattr(ours, getter)() == getattr(theirs, getter)() == value, name
            assert ours.isSet(name) and theirs.isSet(name)
    assert _by_name(ours.extractParamMap()).items() >= _by_name(theirs.extractParamMap()).items()
    # setParams: all at once, keyword only, as Spark's
    both = {n: VALUES[n] for n in names if n != "featuresCol"}
    ours, theirs = ours_cls().setParams(**both), spark_cls().setParams(**both)
    assert {n: ours.getOrDefault(n) for n in both} == {n: theirs.getOrDefault(n) for n in both} == both
    with pytest.raises(TypeError):
        ours_cls().setParams(3)


def test_copy_extract_param_map_and_params_by_name_are_sparks(groups):
    """``copy``, ``extractParamMap``, ``set``/``isSet``/``hasDefault``/``clear`` by name and a
    fit with an extra param map behave as Spark's, side by side."""
    ours, theirs = KMeans(k=3, seed=5), S.KMeans(k=3, seed=5)
    for est in (ours, theirs):
        copy = est.copy({est.maxIter: 4})
        assert type(copy) is type(est) and copy.uid == est.uid and copy is not est
        assert (copy.getMaxIter(), est.getMaxIter()) == (4, 20)
        assert copy.isSet("maxIter") and not est.isSet("maxIter")
        assert copy.getK() == 3 and copy.getSeed() == 5
        assert all(p.parent == est.uid for p in copy.extractParamMap())
        extra = est.extractParamMap({est.tol: 0.5})
        assert extra[est.tol] == 0.5 and est.getTol() == 1e-4
        assert _by_name(extra)["k"] == 3
    common = {p.name for p in theirs.params}
    assert {n: v for n, v in _by_name(ours.extractParamMap()).items() if n in common} == \
        _by_name(theirs.extractParamMap())
    for est in (ours, theirs):
        est.set(est.getParam("initSteps"), 5)
        assert est.getOrDefault("initSteps") == est.getInitSteps() == 5
        assert est.isSet("initSteps") and est.hasDefault("initSteps")
        assert "(default: 2, current: 5)" in est.explainParam("initSteps")
        est.clear(est.getParam("initSteps"))
        assert not est.isSet("initSteps") and est.getInitSteps() == 2
        assert not est.isDefined("weightCol") and not est.hasDefault("weightCol")
        assert est.hasParam("initMode") and not est.hasParam("minDivisibleClusterSize")
        with pytest.raises(Exception):
            est.getParam("noSuchParam")
    # the same explanation of every param Spark's has (the seed's default is ours: 42)
    mine = {ln.split(":")[0]: ln for ln in ours.explainParams().splitlines()}
    spark_lines = {ln.split(":")[0]: ln for ln in theirs.explainParams().splitlines()}
    assert set(mine) == set(spark_lines) | EXTRA_PARAMS[KMeans]
    assert {n: ln for n, ln in mine.items() if n in spark_lines and n != "seed"} == \
        {n: ln for n, ln in spark_lines.items() if n != "seed"}
    # a fit with a param map fits a copy: the estimator keeps its params
    om, sm = ours.fit(groups, {ours.k: 2}), theirs.fit(groups, {theirs.k: 2})
    assert om.getK() == sm.getK() == 2 and ours.getK() == theirs.getK() == 3
    assert len(om.clusterCenters()) == len(sm.clusterCenters()) == 2
    _relabelling(_labels(om.transform(groups)), _labels(sm.transform(groups)))


# ----------------------------------------------------------------------------------------------
# KMeans and BisectingKMeans: fit, model, summary


@pytest.mark.parametrize("fits", ["kmeans_fits", "bisecting_fits"])
def test_fit_finds_sparks_partition_centres_and_predictions(request, groups, fits):
    ours_est, ours, spark_est, theirs = request.getfixturevalue(fits)
    assert isinstance(ours, KMeansModel if fits == "kmeans_fits" else BisectingKMeansModel)
    # the model keeps its estimator's uid and params, as Spark's does
    assert ours.uid == ours_est.uid and theirs.uid == spark_est.uid
    assert _by_name(theirs.extractParamMap()).items() <= _by_name(ours.extractParamMap()).items()
    out, spark_out = ours.transform(groups), theirs.transform(groups)
    assert out.columns == spark_out.columns == groups.columns + ["prediction"]
    assert out.count() == 8
    labels = _labels(out)
    to_spark = _relabelling(labels, _labels(spark_out))
    _relabelling(labels, TRUTH)
    # the same centres, but for the float32 blocks ours computes on
    C, SC = np.stack(ours.clusterCenters()), np.stack(theirs.clusterCenters())
    assert C.shape == SC.shape == (2, 2)
    np.testing.assert_allclose(C, SC[[to_spark[j] for j in range(2)]], rtol=0, atol=1e-6)
    np.testing.assert_allclose(C, [_f32(X)[labels == j].T @ W[labels == j] / W[labels == j].sum() for j in range(2)],
                               rtol=0, atol=1e-6)
    # deliberate: the centres come in lexicographic order
    assert [tuple(c) for c in C] == sorted(tuple(c) for c in C)
    for v in NEW_POINTS:
        j = ours.predict(Vectors.dense(v))
        assert isinstance(j, int) and to_spark[j] == theirs.predict(Vectors.dense(v))
        assert j == int(np.argmin(((C - v) ** 2).sum(axis=1)))
    assert ours.numFeatures == 2  # (pyspark 4.0's Python models have no numFeatures to compare with)
    assert ours.hasSummary and theirs.hasSummary
    # a renamed prediction column, on the model as on Spark's
    ours.setPredictionCol("c"), theirs.setPredictionCol("c")
    try:
        assert ours.transform(groups).columns == theirs.transform(groups).columns == groups.columns + ["c"]
    finally:
        ours.setPredictionCol("prediction"), theirs.setPredictionCol("prediction")


@pytest.mark.parametrize("fits", ["kmeans_fits", "bisecting_fits"])
def test_summary_is_sparks(request, groups, fits):
    _, ours, _, theirs = request.getfixturevalue(fits)
    s, t = ours.summary, theirs.summary
    assert isinstance(s, KMeansSummary if fits == "kmeans_fits" else BisectingKMeansSummary)
    assert (s.k, s.featuresCol, s.predictionCol) == (t.k, t.featuresCol, t.predictionCol) == (2, "features",
                                                                                               "prediction")
    assert isinstance(s.predictions, DataFrame) and isinstance(s.cluster, DataFrame)
    assert s.predictions.columns == t.predictions.columns == groups.columns + ["prediction"]
    assert s.cluster.columns == t.cluster.columns == ["prediction"]
    assert s.cluster.count() == t.cluster.count() == 8
    labels = _labels(s.predictions)
    np.testing.assert_array_equal(labels, _labels(ours.transform(groups)))
    to_spark = _relabelling(labels, _labels(t.predictions))
    # clusterSizes: rows (not weights) per cluster, in the model's order, as Spark counts them
    assert s.clusterSizes == [int((labels == j).sum()) for j in range(2)]
    assert [t.clusterSizes[to_spark[j]] for j in range(2)] == s.clusterSizes
    assert sorted(s.clusterSizes) == [3, 5]
    # ours on top: the weighted sizes
    np.testing.assert_allclose(s.clusterWeights, [W[labels == j].sum() for j in range(2)])
    # trainingCost: the weighted sum of squared distances to the centres, Spark's on the same
    # optimum. Ours is the engine's: its float32 blocks rank rows by ||x||^2 - 2 x.c + ||c||^2 in
    # float32 (lib/clusterlake/kernels/kmeans.py), so it is within ~1e-5 (relative) of the exact sum
    # here, where the rows' norms are large next to their spread
    C = np.stack(ours.clusterCenters())
    np.testing.assert_allclose(s.trainingCost, _cost(_f32(X), C, labels, W), rtol=1e-4)
    np.testing.assert_allclose(s.trainingCost, t.trainingCost, rtol=1e-4)
    if fits == "kmeans_fits":
        # deliberate: our k-means|| init starts nearer the optimum and our tol is relative, so
        # numIter can be lower than Spark's (docs/ml.md); it is Lloyd's iterations, within maxIter
        assert 1 <= s.numIter <= ours.getMaxIter() and t.numIter <= theirs.getMaxIter()
        assert s.converged
    else:
        # Spark's convention for bisecting: numIter is maxIter; ours keeps it (lloydIterations: ours)
        assert s.numIter == t.numIter == ours.getMaxIter() == 20
        assert 1 <= s.lloydIterations


def test_bisecting_compute_cost_is_sparks_and_deprecated(groups, bisecting_fits):
    _, ours, _, theirs = bisecting_fits
    with pytest.warns(FutureWarning, match="Deprecated in 3.0.0"):
        cost = ours.computeCost(groups)
    with pytest.warns(FutureWarning, match="Deprecated in 3.0.0"):
        spark_cost = theirs.computeCost(groups)
    # unweighted (as Spark's), with our centres; Spark's centres are the exact means
    labels = _labels(ours.transform(groups))
    np.testing.assert_allclose(cost, _cost(X, np.stack(ours.clusterCenters()), labels), rtol=1e-9)
    np.testing.assert_allclose(cost, spark_cost, rtol=1e-6)
    assert cost < ours.summary.trainingCost  # the weights (>= 1) count in the summary's


# three groups: two tight ones of 3 rows (at (0, 0) and (0, 1)), and a pair of rows far apart
MIN_DIVISIBLE_ROWS = [[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.0, 1.0], [0.1, 1.0], [0.0, 1.1], [10.0, 0.0], [10.0, 6.0]]


@pytest.fixture(scope="module")
def min_divisible_df(spark):
    return spark.createDataFrame([(i, Vectors.dense(v)) for i, v in enumerate(MIN_DIVISIBLE_ROWS)], ["id", "features"])


def test_min_divisible_cluster_size_splits_as_sparks(min_divisible_df):
    """The far pair (2 rows, fewer than 3 = ceil(0.3 * 8)) is not divisible: ours and Spark's both
    split the tight groups instead; the size as a count or as a share of the rows alike."""
    theirs = S.BisectingKMeans(k=3, seed=1, minDivisibleClusterSize=0.3)
    sm = theirs.fit(min_divisible_df)
    spark_labels = _labels(sm.transform(min_divisible_df))
    _relabelling(spark_labels, [0, 0, 0, 1, 1, 1, 2, 2])
    for size in (3.0, 0.3):
        ours = BisectingKMeans(k=3, seed=1).setMinDivisibleClusterSize(size)
        assert ours.getMinDivisibleClusterSize() == size
        om = ours.fit(min_divisible_df)
        assert om.getMinDivisibleClusterSize() == size
        _relabelling(_labels(om.transform(min_divisible_df)), spark_labels)
        assert sorted(om.summary.clusterSizes) == sorted(sm.summary.clusterSizes) == [2, 3, 3]


def test_min_divisible_cluster_size_documented_differences(min_divisible_df):
    """Where ours deliberately differs (docs/ml.md): with every leaf divisible, ours splits the leaf
    of the largest cost (the far pair); and when no leaf is divisible before k, ours warns and its
    summary's k is the number of centres (Spark's is the param k, with an empty cluster)."""
    model = BisectingKMeans(k=3, seed=1).fit(min_divisible_df)
    _relabelling(_labels(model.transform(min_divisible_df)), [0, 0, 0, 0, 0, 0, 1, 2])

    with pytest.warns(FewerClustersWarning):
        ours = BisectingKMeans(k=3, seed=1, minDivisibleClusterSize=7.0).fit(min_divisible_df)
    theirs = S.BisectingKMeans(k=3, seed=1, minDivisibleClusterSize=7.0).fit(min_divisible_df)
    labels = _labels(ours.transform(min_divisible_df))
    _relabelling(labels, _labels(theirs.transform(min_divisible_df)))
    assert len(ours.clusterCenters()) == len(theirs.clusterCenters()) == 2
    assert (ours.summary.k, ours.summary.clusterSizes) == (2, [6, 2])
    assert (theirs.summary.k, theirs.summary.clusterSizes) == (3, [6, 2, 0])


# ----------------------------------------------------------------------------------------------
# cosine distance

# three rays from the origin: near 45 degrees, near the x axis, near 135 degrees (norms far apart)
RAYS = [[1.0, 1.0], [10.0, 10.0], [3.0, 3.2], [1.0, 0.1], [10.0, 0.5], [5.0, 0.2], [-1.0, 1.0], [-100.0, 90.0],
        [-3.0, 3.3]]


@pytest.mark.parametrize("ours_cls, spark_cls", PAIRS, ids=["KMeans", "BisectingKMeans"])
def test_cosine_predictions_are_sparks(spark, ours_cls, spark_cls):
    df = spark.createDataFrame([(i, Vectors.dense(v)) for i, v in enumerate(RAYS)], ["id", "features"])
    ours, theirs = (cls(k=3, seed=1, distanceMeasure="cosine").fit(df) for cls in (ours_cls, spark_cls))
    assert ours.getDistanceMeasure() == theirs.getDistanceMeasure() == "cosine"
    labels = _labels(ours.transform(df))
    to_spark = _relabelling(labels, _labels(theirs.transform(df)))
    _relabelling(labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    for v in ([2.0, 2.1], [50.0, 1.0], [-7.0, 7.0]):  # any norm: only the direction counts
        assert to_spark[ours.predict(Vectors.dense(v))] == theirs.predict(Vectors.dense(v))
    # the centres: unit vectors, the normalised mean direction of their unit rows, as Spark's
    C, SC = np.stack(ours.clusterCenters()), np.stack(theirs.clusterCenters())
    np.testing.assert_allclose(np.linalg.norm(C, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(C, SC[[to_spark[j] for j in range(3)]], atol=1e-6)
    U = np.asarray(RAYS) / np.linalg.norm(RAYS, axis=1, keepdims=True)
    for j in range(3):
        mean = U[labels == j].mean(axis=0)
        np.testing.assert_allclose(C[j], mean / np.linalg.norm(mean), atol=1e-6)
    # deliberate: our costs are squared Euclidean between unit vectors, 2 (1 - cos): twice Spark's
    np.testing.assert_allclose(ours.summary.trainingCost, 2 * theirs.summary.trainingCost, rtol=1e-4)
    np.testing.assert_allclose(ours.summary.trainingCost, _cost(U, C, labels), rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# persistence


@pytest.mark.parametrize("fits, model_cls", [("kmeans_fits", KMeansModel), ("bisecting_fits", BisectingKMeansModel)])
def test_model_save_load_keeps_uid_params_and_centres(request, groups, tmp_path, fits, model_cls):
    _, model, _, _ = request.getfixturevalue(fits)
    path = str(tmp_path / "model")
    model.write().save(path)
    with pytest.raises(Exception, match="already exists"):
        model.write().save(path)
    model.write().overwrite().save(path)
    loaded = model_cls.load(path)
    assert type(loaded) is model_cls
    assert loaded.uid == model.uid and str(loaded) == str(model) and repr(loaded) == repr(model)
    assert _by_name(loaded.extractParamMap()) == _by_name(model.extractParamMap())
    assert all(p.parent == loaded.uid for p in loaded.params)
    np.testing.assert_array_equal(np.stack(loaded.clusterCenters()), np.stack(model.clusterCenters()))
    np.testing.assert_array_equal(_labels(loaded.transform(groups)), _labels(model.transform(groups)))
    assert not loaded.hasSummary  # as Spark's: a loaded model has no training summary
    with pytest.raises(RuntimeError):
        loaded.summary


@pytest.mark.parametrize("ours_cls, spark_cls", PAIRS, ids=["KMeans", "BisectingKMeans"])
def test_estimator_save_load_keeps_uid_and_params_as_sparks(spark, tmp_path, ours_cls, spark_cls):
    params = dict(k=3, seed=5, maxIter=7, weightCol="w", distanceMeasure="cosine")
    for cls in (ours_cls, spark_cls):
        est = cls(**params)
        path = str(tmp_path / cls.__module__ / "est")
        est.save(path)
        loaded = cls.load(path)
        assert type(loaded) is cls
        assert loaded.uid == est.uid and str(loaded) == str(est)
        assert all(p.parent == loaded.uid for p in loaded.params)
        for p in est.params:
            assert loaded.isSet(p.name) == est.isSet(p.name), p.name
            assert loaded.hasDefault(p.name) == est.hasDefault(p.name), p.name
            if est.isDefined(p.name):
                assert loaded.getOrDefault(p.name) == est.getOrDefault(p.name), p.name
        est.write().overwrite().save(path)


def test_an_estimator_saved_by_spark_loads_into_ours(spark, tmp_path):
    """Our estimators read Spark's params metadata (no class check): the saved uid and params
    (and Spark's saved defaults, its seed's too) come back."""
    theirs = S.KMeans(k=3, maxIter=9, initMode="random", weightCol="w")
    theirs.save(str(tmp_path / "est"))
    ours = KMeans.load(str(tmp_path / "est"))
    assert type(ours) is KMeans and ours.uid == theirs.uid
    for p in theirs.params:
        assert ours.isSet(p.name) == theirs.isSet(p.name), p.name
        assert ours.getOrDefault(p.name) == theirs.getOrDefault(p.name), p.name


def test_a_model_saved_by_spark_loads_into_ours(kmeans_fits, groups, tmp_path):
    _, _, _, theirs = kmeans_fits
    theirs.save(str(tmp_path / "spark_model"))
    ours = KMeansModel.load(str(tmp_path / "spark_model"))
    assert ours.uid == theirs.uid
    np.testing.assert_array_equal(np.stack(ours.clusterCenters()), np.stack(theirs.clusterCenters()))
    assert _by_name(theirs.extractParamMap()).items() <= _by_name(ours.extractParamMap()).items()
    np.testing.assert_array_equal(_labels(ours.transform(groups)), _labels(theirs.transform(groups)))


def test_our_model_in_sparks_layout_loads_into_sparks(kmeans_fits, groups, tmp_path):
    """``format("spark")`` writes Spark's own KMeansModel layout: Spark's reader loads it, with our
    uid, centres and Spark's params, and predicts as ours; a bisecting model is refused."""
    est, model, _, _ = kmeans_fits
    model.write().format("spark").save(str(tmp_path / "as_spark"))
    theirs = S.KMeansModel.load(str(tmp_path / "as_spark"))
    assert theirs.uid == model.uid
    np.testing.assert_array_equal(np.stack(theirs.clusterCenters()), np.stack(model.clusterCenters()))
    assert theirs.getK() == model.getK() and theirs.getDistanceMeasure() == model.getDistanceMeasure()
    np.testing.assert_array_equal(_labels(theirs.transform(groups)), _labels(model.transform(groups)))
    bisecting = BisectingKMeans(k=2, seed=1).fit(groups)
    with pytest.raises(ValueError, match="split tree"):
        bisecting.write().format("spark").save(str(tmp_path / "bisecting"))


def test_sparks_reader_refuses_our_saved_models(kmeans_fits, tmp_path):
    """What the formats allow: Spark's (JVM) readers check the class named in the metadata, which
    is ours (``clusterlake.ml.KMeansModel``), so they refuse our saved model; an estimator's reader
    looks the saved class up in the JVM and does not find ours."""
    est, model, _, _ = kmeans_fits
    model.save(str(tmp_path / "model"))
    est.save(str(tmp_path / "est"))
    with pytest.raises(Exception, match="Expected class name org.apache.spark.ml.clustering.KMeansModel but found "
                                        "class name clusterlake.ml.KMeansModel"):
        S.KMeansModel.load(str(tmp_path / "model"))
    with pytest.raises(Exception, match=r"ClassNotFoundException: clusterlake\.ml\.KMeans\b"):
        S.KMeans.load(str(tmp_path / "est"))


def _pmml(spark, path: str):
    """(root element, its namespace's prefix) of the PMML document Spark's layout holds in ``path``."""
    root = ET.fromstring("\n".join(spark.sparkContext.textFile(path).collect()).encode())
    return root, root.tag[: root.tag.index("}") + 1]


def _shape(element, skip=("Header",)) -> tuple:
    """An element's tag, attributes and children's shapes, recursively (not the text)."""
    return (element.tag, sorted(element.attrib.items()),
            [_shape(c) for c in element if c.tag.split("}")[-1] not in skip])


def _pmml_centres(root, ns: str) -> np.ndarray:
    model = root.find(f"{ns}ClusteringModel")
    return np.array([[float(v) for v in c.find(f"{ns}Array").text.split()] for c in model.findall(f"{ns}Cluster")])


def test_pmml_holds_the_centres_in_sparks_structure(spark, kmeans_fits, tmp_path):
    _, ours, _, theirs = kmeans_fits
    ours.write().format("pmml").save(str(tmp_path / "ours"))
    theirs.write().format("pmml").save(str(tmp_path / "theirs"))
    root, ns = _pmml(spark, str(tmp_path / "ours"))
    spark_root, spark_ns = _pmml(spark, str(tmp_path / "theirs"))
    assert root.tag == f"{ns}PMML" and ns == spark_ns
    model = root.find(f"{ns}ClusteringModel")
    assert model.get("numberOfClusters") == "2" and model.get("modelClass") == "centerBased"
    assert model.find(f"{ns}ComparisonMeasure/{ns}squaredEuclidean") is not None
    C = _pmml_centres(root, ns)
    np.testing.assert_array_equal(C, np.stack(ours.clusterCenters()))
    SC = _pmml_centres(spark_root, ns)
    np.testing.assert_array_equal(SC, np.stack(theirs.clusterCenters()))
    np.testing.assert_allclose(C[np.lexsort(C.T[::-1])], SC[np.lexsort(SC.T[::-1])], atol=1e-6)
    # Spark's document, element by element and attribute by attribute (but the Header: who wrote it, when)
    assert _shape(root) == _shape(spark_root)
    assert root.find(f"{ns}Header") is not None and spark_root.find(f"{ns}Header") is not None


# ----------------------------------------------------------------------------------------------
# Pipeline


def test_pipeline_fits_transforms_saves_and_loads_as_sparks(spark, tmp_path):
    df = spark.createDataFrame([(i, float(v[0]), float(v[1]), w) for i, w, v in GROUPS], ["id", "a", "b", "c"])
    df.cache()

    def pipeline(kmeans):
        assembler = VectorAssembler(inputCols=["a", "b", "c"], outputCol="raw")
        return Pipeline(stages=[assembler, MinMaxScaler(inputCol="raw", outputCol="features"), kmeans])

    pipe, spark_pipe = pipeline(KMeans(k=2, seed=3)), pipeline(S.KMeans(k=2, seed=3))
    pipe.write().overwrite().save(str(tmp_path / "pipeline"))
    loaded_pipe = Pipeline.load(str(tmp_path / "pipeline"))
    assert str(loaded_pipe) == str(pipe) and str(loaded_pipe.getStages()) == str(pipe.getStages())
    assert isinstance(loaded_pipe.getStages()[2], KMeans)
    assert loaded_pipe.getStages()[2].getSeed() == 3

    model, spark_model = pipe.fit(df), spark_pipe.fit(df)
    assert [type(s) for s in model.stages] == [VectorAssembler, MinMaxScalerModel, KMeansModel]
    assert model.stages[2].uid == pipe.getStages()[2].uid
    out, spark_out = model.transform(df), spark_model.transform(df)
    assert out.columns == spark_out.columns == ["id", "a", "b", "c", "raw", "features", "prediction"]
    labels = _labels(out)
    _relabelling(labels, _labels(spark_out))

    model.write().overwrite().save(str(tmp_path / "model"))
    loaded = PipelineModel.load(str(tmp_path / "model"))
    assert str(loaded.stages) == str(model.stages)
    assert isinstance(loaded.stages[2], KMeansModel)
    np.testing.assert_array_equal(np.stack(loaded.stages[2].clusterCenters()),
                                  np.stack(model.stages[2].clusterCenters()))
    np.testing.assert_array_equal(_labels(loaded.transform(df)), labels)
    df.unpersist()


# ----------------------------------------------------------------------------------------------
# the examples of Spark's docstrings (pyspark/ml/clustering.py), run against our classes

DOCTEST_CLASSES = ("KMeans", "KMeansModel", "BisectingKMeans", "BisectingKMeansModel")
DOCTEST_EXAMPLES = 76  # 37 in KMeans', 39 in BisectingKMeans' (the models' docstrings have none)
DOCTEST_MIN_PASSED = 75  # (the issue asks for 70; 75 pass: a regression shows)


def test_spark_doctests_pass_on_our_classes(spark, tmp_path):
    """Spark runs these with ``optionflags=ELLIPSIS``, numpy's 1.13 print style and the globals
    of its module; here the classes are ours. Every failure is printed (docs/ml.md says why)."""
    import pyspark.ml.clustering as spark_clustering

    ours = {"KMeans": KMeans, "KMeansModel": KMeansModel, "BisectingKMeans": BisectingKMeans,
            "BisectingKMeansModel": BisectingKMeansModel}
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    attempted = failed = 0
    printing = np.get_printoptions()
    np.set_printoptions(legacy="1.13")
    try:
        for name in DOCTEST_CLASSES:
            globs = {**ours, "spark": spark, "sc": spark.sparkContext, "temp_path": str(tmp_path)}
            test = parser.get_doctest(getattr(spark_clustering, name).__doc__ or "", globs, name, None, 0)
            result = runner.run(test, out=report.append, clear_globs=True)
            attempted, failed = attempted + result.attempted, failed + result.failed
    finally:
        np.set_printoptions(**printing)
    print("".join(report))
    print(f"Spark's doctests on clusterlake.ml: {attempted - failed} of {attempted} examples pass")
    assert attempted == DOCTEST_EXAMPLES
    assert attempted - failed >= DOCTEST_MIN_PASSED, "".join(report)


def test_a_spark_bisecting_model_is_refused_by_name(bisecting_fits, tmp_path):
    _, _, _, theirs = bisecting_fits
    theirs.save(str(tmp_path / "spark_bisecting"))
    with pytest.raises(ValueError, match="holds a org.apache.spark.ml.clustering.BisectingKMeansModel"):
        KMeansModel.load(str(tmp_path / "spark_bisecting"))
