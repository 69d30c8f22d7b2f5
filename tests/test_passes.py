"""Spark passes of ``clusterlake.algorithms.passes`` that are not covered end to end."""

from __future__ import annotations

import numpy as np



def test_map_model_space_gives_both_units_the_columns_and_the_filter(spark):
    """The one executor-side helper every model-space pass runs on: features in input units and in
    the model space, the user's other columns (odd names too) and extra expressions, a filter."""
    import pyarrow as pa
    from pyspark.sql import functions as F

    from clusterlake.algorithms.passes import map_model_space
    from clusterlake.prep.transform import Preprocessor

    rng = np.random.default_rng(4)
    n = 500
    X = rng.normal(size=(n, 2)) * [3.0, 0.5] + [10.0, -2.0]
    df = spark.createDataFrame([(i, float(a), float(b), float(i) / 7) for i, (a, b) in enumerate(X)],
                               "id long, a double, b double, `w.eight` double").repartition(3)
    prep = Preprocessor(["a", "b"], np.array([10.0, -2.0]), np.array([3.0, 0.5]), None)

    def part(blocks):
        for blk in blocks:
            yield pa.RecordBatch.from_pydict({
                "id": blk.column("id"), "x": pa.array(blk.X[:, 0]), "z": pa.array(blk.Z[:, 0]),
                "w": blk.column("w.eight"), "u": blk.extra("__u")})

    out = map_model_space(df, prep, part, "id long, x double, z double, w double, u long", ["id", "w.eight"],
                          [(F.col("id") % 2).alias("__u")], F.col("__u") == 0).toPandas().sort_values("id")
    assert out["id"].tolist() == list(range(0, n, 2)) and (out["u"] == 0).all()
    np.testing.assert_array_equal(out["x"], X[::2, 0])
    np.testing.assert_array_equal(out["z"], prep.transform(X[::2])[:, 0])  # no PCA: elementwise, exact
    np.testing.assert_allclose(out["w"], out["id"] / 7, rtol=1e-15)


def test_cluster_stats_are_the_numpy_sums_of_the_assignment_rule(spark):
    from clusterlake.algorithms.passes import cluster_stats
    from clusterlake.kernels.assignment import assign_points
    from clusterlake.prep.transform import Preprocessor

    rng = np.random.default_rng(5)
    X = np.vstack([rng.normal(size=(300, 3)) + c for c in ([0, 0, 0], [6, 0, 0], [0, 6, 6])])
    labels = np.repeat(["p", "q", None], 300)
    df = spark.createDataFrame([(float(a), float(b), float(c), lab) for (a, b, c), lab in zip(X, labels)],
                               "a double, b double, c double, label string").repartition(4)
    prep = Preprocessor(["a", "b", "c"], X.mean(0), X.std(0), None)
    Z = prep.transform(X)
    C = Z[[0, 300, 600]]
    stats = cluster_stats(df, prep, C, "label", x_center=X.mean(0))
    a = assign_points(Z, C)
    k = 3
    np.testing.assert_array_equal(stats.counts, np.bincount(a.index, minlength=k))
    for got, rows in ((stats.sum_z, Z), (stats.sum_x, X), (stats.sum_sq_dx, (X - X.mean(0)) ** 2)):
        np.testing.assert_allclose(got, [rows[a.index == j].sum(0) for j in range(k)], rtol=1e-12)
    np.testing.assert_allclose(stats.sum_dist, np.bincount(a.index, a.distance, k), rtol=1e-12)
    np.testing.assert_allclose(stats.max_dist, [a.distance[a.index == j].max() for j in range(k)], rtol=1e-15)
    want = {}
    for lab, j in zip(labels, a.index):
        key = ("<null>" if lab is None else lab, int(j))
        want[key] = want.get(key, 0) + 1
    assert stats.contingency == want
