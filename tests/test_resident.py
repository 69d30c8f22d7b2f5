"""The resident rows' commands (clusterlake.algorithms.resident) against numpy and scikit-learn on
the same rows, without Spark: the workers are driven through their command dispatch, as a barrier
stage would, by a stand-in stage that calls each task in turn."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import pairwise_distances_argmin_min

from clusterlake.algorithms import resident
from clusterlake.algorithms.members import id_hash_uniform
from clusterlake.algorithms.resident import ResidentRows, RowsWorker
from clusterlake.engine.blocks import Block
from clusterlake.prep.transform import Moments, fit_preprocessor


class _Stage:
    """What ResidentRows needs of a barrier stage: ``call`` in task order."""

    def __init__(self, workers):
        self.workers = workers
        self.n_tasks = len(workers)
        self.rows = [len(w.raw) for w in workers]

    def call(self, op, arrays=None, per_task=None, **params):
        return [w.handle({"op": op, **params}, dict(arrays or {})) for w in self.workers]


def _rows(X, ids, labels, splits, dtype=np.float64):
    workers, s0 = [], 0
    for part, s1 in enumerate(list(splits) + [len(X)]):
        cols = pa.table({"id": pa.array(ids[s0:s1]), "label": pa.array(labels[s0:s1])})
        workers.append(RowsWorker(Block(np.ascontiguousarray(X[s0:s1], dtype=dtype), None, part, cols)))
        s0 = s1
    held = ResidentRows.__new__(ResidentRows)
    held.stage, held.features, held.id_column, held.label_column = _Stage(workers), [f"f{j}" for j in range(X.shape[1])], "id", "label"
    held.rows, held._max_dist, held._open = len(X), None, False
    return held


@pytest.fixture()
def data():
    rng = np.random.default_rng(5)
    centres = rng.normal(scale=6, size=(4, 5))
    y = rng.integers(0, 4, 3000)
    X = centres[y] + rng.normal(size=(3000, 5)) * (1 + y[:, None])
    return X, np.arange(3000, dtype=np.int64) * 7 + 1, y


def _prepared(X, ids, y, splits=(1000, 1700), pca=False):
    held = _rows(X, ids, y, splits)
    m = held.moments()
    prep = fit_preprocessor(m, held.features, "standard", pca, 3 if pca else None, None)
    held.prepare(prep)
    return held, prep, m


def test_moments_equal_those_of_all_rows(data):
    X, ids, y = data
    m = _rows(X, ids, y, (1000, 1700)).moments()
    ref = Moments.of(X)
    assert m.n == 3000
    np.testing.assert_allclose(m.mean, ref.mean, rtol=1e-12)
    np.testing.assert_allclose(m.m2, ref.m2, rtol=1e-10)


@pytest.mark.parametrize("pca", [False, True])
def test_assignment_and_cluster_statistics_match_numpy(data, pca):
    X, ids, y = data
    held, prep, m = _prepared(X, ids, y, pca=pca)
    Z = prep.transform(X)
    C = Z[[0, 10, 20, 30]]
    held.assign(C)
    stats = held.cluster_stats(C, m.mean)
    lab, dist = pairwise_distances_argmin_min(Z, C)
    np.testing.assert_array_equal(stats.counts, np.bincount(lab, minlength=4))
    for c in range(4):
        np.testing.assert_allclose(stats.sum_x[c], X[lab == c].sum(axis=0), rtol=1e-9)
        np.testing.assert_allclose(stats.sum_z[c], Z[lab == c].sum(axis=0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(stats.max_dist[c], dist[lab == c].max(), rtol=1e-9)
        np.testing.assert_allclose(stats.sum_sq_dx[c], ((X[lab == c] - m.mean) ** 2).sum(axis=0), rtol=1e-9)
    assert sum(stats.contingency.values()) == 3000
    assert stats.contingency[(str(y[0]), int(lab[0]))] == int(((y == y[0]) & (lab == lab[0])).sum())
    sdm = held.mean_distances(stats.means_z)
    ref = [np.linalg.norm(Z[lab == c] - Z[lab == c].mean(axis=0), axis=1).sum() for c in range(4)]
    np.testing.assert_allclose(sdm, ref, rtol=1e-9)


@pytest.mark.parametrize("limit", [50_000, 7])  # 7: the counting rounds narrow the bracket first
def test_radius_quantiles_are_exact(data, monkeypatch, limit):
    monkeypatch.setattr(resident, "_SELECT_LIMIT", limit)
    X, ids, y = data
    held, prep, m = _prepared(X, ids, y)
    Z = prep.transform(X)
    C = Z[[0, 10, 20, 30]]
    held.assign(C)
    counts = held.cluster_stats(C, m.mean).counts
    q = held.radius_quantiles(counts)
    lab, dist = pairwise_distances_argmin_min(Z, C)
    for c in range(4):
        d = np.sort(dist[lab == c])
        for name, frac in resident.RADIUS_QUANTILES.items():
            assert q[name][c] == pytest.approx(d[max(1, math.ceil(frac * len(d))) - 1], rel=1e-12), (name, c)


def test_radius_quantiles_of_identical_distances(monkeypatch):
    monkeypatch.setattr(resident, "_SELECT_LIMIT", 3)
    X = np.vstack([np.zeros((500, 2)), np.ones((40, 2)) * 3])  # one cluster, 500 rows at distance 0
    held = _rows(X, np.arange(540), np.zeros(540, int), (200,))
    held.prepare(fit_preprocessor(held.moments(), held.features, "none", False, None, None))
    held.assign(np.zeros((1, 2)))
    q = held.radius_quantiles(np.array([540.0]))
    assert q["radius_p50"][0] == 0.0 and q["radius_p99"][0] == pytest.approx(3 * math.sqrt(2))


def test_sample_is_uniform_distinct_seeded_and_nested(data):
    X, ids, y = data
    held = _rows(X, ids, y, (1000, 1700))
    a, b = held.sample(500, seed=3), held.sample(500, seed=3)
    np.testing.assert_array_equal(a, b)
    assert len(a) == 500 and len(np.unique(a, axis=0)) == 500
    assert not np.array_equal(a, held.sample(500, seed=4))
    rows = {tuple(r) for r in X}
    assert all(tuple(r) in rows for r in a)
    big = held.sample(10_000, seed=3)  # more than there are: every row once
    assert len(big) == 3000 and len(np.unique(big, axis=0)) == 3000
    np.testing.assert_array_equal(_rows(X, ids, y, (10,)).sample(500, seed=3), a)  # whatever the layout


def test_members_hash_ids_whatever_the_partitioning(data):
    X, ids, y = data

    def kept(splits):
        held, prep, m = _prepared(X, ids, y, splits)
        held.assign(prep.transform(X)[[0, 10, 20, 30]])
        got, pos, dist, z = held.members(np.full(4, 0.25), seed=9)
        return set(got.column("id").to_pylist()), z

    one, z = kept((1000, 1700))
    other, _ = kept((10,))
    assert one == other and 500 < len(one) < 1000
    assert z.dtype == np.float32
    u = id_hash_uniform(pa.array(ids), 9)
    assert ((u >= 0) & (u < 1)).all() and abs(u.mean() - 0.5) < 0.03


def test_file_slices_cover_every_row_once_in_order(tmp_path):
    import pyarrow.parquet as pq

    from clusterlake.config import InputSection
    from clusterlake.io.input_files import plain_file_scan

    folder = tmp_path / "in.parquet"
    folder.mkdir()
    start = 0
    for name, sizes in (("part-0.parquet", (10, 7, 13)), ("part-1.parquet", (5,))):
        n = sum(sizes)
        t = pa.table({"id": pa.array(np.arange(start, start + n)), "a": pa.array(np.arange(n, dtype=np.int32)),
                      "b": pa.array(np.ones(n, np.float32))})
        with pq.ParquetWriter(folder / name, t.schema) as w:
            at = 0
            for size in sizes:
                w.write_table(t.slice(at, size))
                at += size
        start += n
    scan = plain_file_scan(InputSection(path=str(folder), id_column="id"), ["id", "a", "b"], ["a"])
    assert scan.rows == 35 and [len(rgs) for _, rgs in scan.files] == [3, 1]
    for n in (1, 2, 4, 35, 50):
        parts = scan.split(n)
        sizes = [sum(stop - s for _, _, s, stop in p) for p in parts]
        assert sum(sizes) == 35 and max(sizes) - min(sizes) <= 1 and len(parts) == min(n, 35)
        ids = [i for p in parts for b in scan.read(p, 4) for i in b.column("id").to_pylist()]
        assert ids == list(range(35))  # every row once, in file and row order
    batch = next(scan.read(scan.split(1)[0], 100))
    assert batch.schema.field("a").type == pa.float64() and batch.schema.field("b").type == pa.float32()
    assert plain_file_scan(InputSection(path="hdfs://nn/x", id_column="id"), ["id"], []) is None


def test_file_slices_cast_big_integers_like_spark_and_carry_plain_strings(tmp_path):
    import pyarrow.parquet as pq

    from clusterlake.config import InputSection
    from clusterlake.engine.blocks import BlockSource
    from clusterlake.io.input_files import plain_file_scan

    folder = tmp_path / "in.parquet"
    folder.mkdir()
    big = 2**53 + 1  # not a float64: Spark's cast rounds it, pyarrow's safe cast would refuse it
    pq.write_table(pa.table({"id": pa.array(["a", "b"]), "x": pa.array([big, 1], pa.int64()),
                             "lab": pa.array(["p", "q"]).dictionary_encode()}), folder / "part-0.parquet")
    pq.write_table(pa.table({"id": pa.array(["c"]), "x": pa.array([2], pa.int64()),
                             "lab": pa.array(["p"])}), folder / "part-1.parquet")
    scan = plain_file_scan(InputSection(path=str(folder), id_column="id"), ["id", "x", "lab"], ["x"])
    batches = [b for b in scan.read(scan.split(1)[0], 10)]
    assert batches[0].column("x").to_pylist()[0] == float(big)
    src = BlockSource(columns=("x",), carry=("id", "lab"))
    carried = [pa.ipc.open_stream(pa.py_buffer(src.carried(b))).read_all() for b in batches]
    assert pa.concat_tables(carried).column("lab").to_pylist() == ["p", "q", "p"]  # dictionary and plain


def test_the_assignments_file_reuses_the_assign_pass_only_for_its_model(data, tmp_path, monkeypatch):
    """A mixture's ``assign`` keeps every row's partition columns; the tasks' assignments files
    take them instead of computing the posteriors again, but only for the very model ``assign``
    ran with, and nothing kept survives a new model space."""
    import pyarrow.parquet as pq

    from clusterlake.io.fs import location
    from clusterlake.kernels import gmm as G
    from clusterlake.kernels.assignment import AssignmentRule

    X, ids, y = data
    held, prep, _ = _prepared(X, ids, y)
    Z = prep.transform(X)
    mix = G.m_step(G.hard_stats(Z, Z[[0, 10, 20, 30]], "full", Z.mean(axis=0)), "full")
    other = G.Mixture.of("full", mix.weights[::-1] / mix.weights.sum(), mix.means, mix.covariances)
    held.assign(mix.means, mixture=mix)
    calls, partition = [], AssignmentRule.partition
    monkeypatch.setattr(AssignmentRule, "partition", lambda self, Z_, posterior=False: calls.append(len(Z_))
                        or partition(self, Z_, posterior))

    def written(model, name):
        held.write_assignments(location(str(tmp_path / name)), model.means, np.arange(4) + 10, "run", mixture=model)
        got = pq.read_table(str(tmp_path / name)).to_pandas().set_index("id").loc[ids]
        want = partition(AssignmentRule(None, np.arange(4) + 10, mixture=model), Z)
        np.testing.assert_array_equal(got.cluster_id.to_numpy(), want.cluster_id)
        np.testing.assert_array_equal(got.second_cluster_id.to_numpy(), want.second_cluster_id)
        np.testing.assert_allclose(got.probability.to_numpy(), want.probability, rtol=1e-12)
        np.testing.assert_allclose(got.margin.to_numpy(), want.margin, rtol=1e-12, atol=1e-12)

    written(mix, "same")
    assert calls == []  # the posteriors were not computed again
    written(other, "other")
    assert sum(calls) == len(X)  # another model: every row's computed afresh
    held.prepare(prep)
    assert all(w.assigned is None for w in held.stage.workers)
