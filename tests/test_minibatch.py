"""Mini-batch K-means: the step against scikit-learn's ``_mini_batch_step`` (the oracle), the
batch's split over the tasks, and the fit on the engine against full Lloyd and in the nightly job."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import _kmeans as sk_kmeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from clusterlake.algorithms.minibatch import batch_shares
from clusterlake.config import ConfigError, load_config
from clusterlake.kernels.kmeans import minibatch_update, normalize_rows, partial_stats


BASE = {"input": {"path": "x", "id_column": "id"}, "output": {"path": "o"}}


@pytest.mark.parametrize("weighted", [False, True])
def test_a_step_equals_scikit_learns_mini_batch_step(weighted):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 6))
    C = X[:7].copy()
    C[6] = 1e6  # a centre no batch row is nearest to: it must stay
    w = rng.uniform(0.5, 2.0, 500) if weighted else np.ones(500)
    W0 = rng.uniform(0.0, 30.0, 7)
    sk_new, sk_W = C.copy(), W0.copy()
    sk_kmeans._mini_batch_step(X, w, C, sk_new, sk_W, np.random.RandomState(0), random_reassign=False, n_threads=1)
    ps = partial_stats(X, C, w if weighted else None)
    ours, W = minibatch_update(C, W0, ps.sums, ps.counts)
    np.testing.assert_allclose(ours, sk_new, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(W, sk_W, rtol=1e-12)
    np.testing.assert_array_equal(ours[6], C[6])


def test_a_spherical_step_keeps_unit_centres_and_a_zero_mean_keeps_its_centre():
    C = normalize_rows(np.array([[1.0, 0.0], [0.0, 1.0]]))
    sums = np.array([[0.0, 3.0], [0.0, 0.0]])
    out, W = minibatch_update(C, np.zeros(2), sums, np.array([3.0, 2.0]), spherical=True)
    np.testing.assert_allclose(out[0], [0.0, 1.0])  # the batch's direction
    np.testing.assert_array_equal(out[1], C[1])  # the batch's mean is 0: no direction, the old centre stays
    np.testing.assert_array_equal(W, [3.0, 2.0])


@pytest.mark.parametrize("rows,batch", [([10, 10], 7), ([0, 5, 995], 100), ([3, 3, 3], 1000), ([0, 0], 10)])
def test_the_batch_is_split_over_the_tasks_by_their_rows(rows, batch):
    shares = [s["rows"] for s in batch_shares(rows, batch)]
    assert sum(shares) == (batch if sum(rows) else 0)
    for r, s in zip(rows, shares):
        assert abs(s - r * batch / max(sum(rows), 1)) < 1.0


def test_batch_size_is_refused_where_it_does_not_apply(tmp_path):
    for extra, word in ((["kmeans.algorithm=bisecting"], "bisecting"), (["kmeans.max_iter=0"], "max_iter"),
                        (["kmeans.engine=spark-mllib"], "spark-mllib"), ([], None)):
        sets = ["kmeans.batch_size=1000", *extra]
        if word is None:
            assert load_config(data=BASE, overrides=sets).kmeans.batch_size == 1000
            continue
        with pytest.raises(ConfigError, match="kmeans.batch_size"):
            load_config(data=BASE, overrides=sets)
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(data=BASE, overrides=["kmeans.batch_size=10"])


@pytest.fixture(scope="module")
def blobs(spark):
    X, y = make_blobs(n_samples=40_000, centers=8, n_features=8, cluster_std=1.5, random_state=4)
    X = X.astype(np.float32)
    df = spark.createDataFrame([tuple(map(float, r)) for r in X], [f"f{j}" for j in range(8)]).repartition(2)
    return X, y, df


def test_the_fit_on_the_engine_is_close_to_lloyd_in_far_fewer_rows_touched(spark, blobs):
    from clusterlake.algorithms.kmeans_engine import fit
    from clusterlake.engine.blocks import BlockSource

    X, y, df = blobs
    source = BlockSource(columns=tuple(f"f{j}" for j in range(8)))
    full = fit(spark, df, source, 8, seed=2)
    mb = fit(spark, df, source, 8, seed=2, batch_size=1000, max_iter=5)
    again = fit(spark, df, source, 8, seed=2, batch_size=1000, max_iter=5)
    np.testing.assert_array_equal(mb.centers, again.centers)  # seeded: the same batches, the same fit
    assert mb.n_iter < 5 * 40  # stopped before 5 epochs: the smoothed inertia stopped improving
    assert mb.inertia <= 1.02 * full.inertia
    assert mb.counts.sum() == len(X) and (mb.counts > 0).all()
    labels = np.argmin(((X[:, None, :] - mb.centers[None]) ** 2).sum(-1), axis=1)
    assert adjusted_rand_score(y, labels) > 0.95

