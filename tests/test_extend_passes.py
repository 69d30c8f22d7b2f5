"""The distributed extension of the density and hierarchical passes (the pass columns of
``clusterlake.algorithms.passes.assign_rows``) on local Spark, over several partitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_moons
from sklearn.metrics import adjusted_rand_score

from clusterlake.algorithms.passes import assign_rows
from clusterlake.kernels import density as Dk
from clusterlake.kernels import hierarchy as Hk
from clusterlake.prep.transform import Preprocessor

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def moons_df(spark):
    X, y = make_moons(n_samples=4000, noise=0.06, random_state=0)
    far = np.array([[8.0, 8.0], [-9.0, 2.0], [3.0, -12.0], [20.0, 0.0], [0.0, 15.0]])
    X = np.vstack([X, far])
    y = np.r_[y, np.full(len(far), -1)]
    pdf = pd.DataFrame({"id": np.arange(len(X), dtype=np.int64), "a": X[:, 0], "b": X[:, 1]})
    df = spark.createDataFrame(pdf).repartition(4).cache()
    prep = Preprocessor(["a", "b"], np.zeros(2), np.ones(2), None)
    return df, X, y, prep


def test_every_row_gets_its_moon_and_the_far_rows_are_outliers(moons_df):
    df, X, y, prep = moons_df
    idx = np.random.default_rng(1).choice(4000, 1200, replace=False)
    model = Dk.fit_sample(X[idx], "hdbscan", min_samples=10, min_cluster_size=50)
    out = _assign(df, prep, X, density=model)
    assert out.hierarchy.isna().all()  # the other pass is off: its column is null
    assert df.rdd.getNumPartitions() == 4 and len(out) == len(X) and out.id.is_unique
    lab = out.density_label.to_numpy()
    assert (lab[-5:] == -1).all() and out.is_outlier.to_numpy()[-5:].all()
    assert (out.is_outlier == (out.density_label < 0)).all()
    moon = y >= 0
    kept = moon & (lab >= 0)
    assert kept.sum() / moon.sum() > 0.97
    assert adjusted_rand_score(y[kept], lab[kept]) > 0.95
    # the distributed pass is the kernel, row for row
    ref_lab, ref_dist = Dk.extend(X, model)
    np.testing.assert_array_equal(lab, ref_lab)
    np.testing.assert_allclose(out.density_distance.to_numpy(), ref_dist, rtol=1e-12)


def test_hierarchy_levels_for_every_row(moons_df):
    df, X, _, prep = moons_df
    idx = np.random.default_rng(2).choice(len(X), 600, replace=False)
    model = Hk.fit_sample(X[idx], "average", levels=[2, 6])
    out = _assign(df, prep, X, hierarchy=model)
    ref = Hk.extend(X, model)
    assert out.density_label.isna().all() and out.is_outlier.isna().all()
    got = out.hierarchy.map(dict)
    assert (got.map(sorted) == pd.Series([[2, 6]] * len(X), index=got.index)).all()
    np.testing.assert_array_equal(got.map(lambda m: m[2]).to_numpy(), ref[2])
    np.testing.assert_array_equal(got.map(lambda m: m[6]).to_numpy(), ref[6])


def _assign(df, prep, X, density=None, hierarchy=None):
    C = X[[0, 1]]  # two rows as centroids: the K-means columns are not under test here
    out = assign_rows(df, prep, C, np.array([0, 1]), "id", density, hierarchy).toPandas().sort_values("id")
    assert list(out.columns) == ["id", "cluster_id", "distance", "second_cluster_id", "margin", "density_label",
                                 "is_outlier", "density_distance", "hierarchy", "probability"]
    assert out["probability"].isna().all()  # a mixture's column: null for K-means
    return out
