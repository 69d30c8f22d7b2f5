"""The distributed engine (``clusterlake.engine`` with K-means, ``clusterlake.algorithms.kmeans_engine``) on local Spark.

Real barrier stages on the shared local[2] session; scikit-learn and the single-process kernels
are the oracles. Data are small separated blobs so each fit takes about a second.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from clusterlake.algorithms import kmeans_engine as engine
from clusterlake.algorithms.kmeans_engine import FewerClustersWarning
from clusterlake.engine.blocks import BlockSource
from clusterlake.engine.collective import CollectiveError, TaskLost
from clusterlake.kernels import kmeans as K

K_TRUE = 5


@pytest.fixture(scope="module")
def blobs():
    X, y, C = make_blobs(n_samples=3000, n_features=4, centers=K_TRUE, cluster_std=0.5, center_box=(-20, 20),
                         random_state=11, return_centers=True)
    return X.astype(np.float32), y, C


def frame(spark, X, parts=2, weights=None, extra=None):
    cols = {f"f{j}": X[:, j].astype(np.float64) for j in range(X.shape[1])}
    if weights is not None:
        cols["w"] = np.asarray(weights, dtype=np.float64)
    if extra:
        cols.update(extra)
    import pandas as pd

    pdf = pd.DataFrame(cols)
    return spark.createDataFrame(pdf).repartition(parts).cache()


def source(d, **kw):
    return BlockSource(columns=tuple(f"f{j}" for j in range(d)), **kw)


def match(A, B):
    """Rows of B reordered to best match A (greedy on distances; fine for separated centres)."""
    from scipy.optimize import linear_sum_assignment

    cost = ((A[:, None, :] - B[None, :, :]) ** 2).sum(-1)
    r, c = linear_sum_assignment(cost)
    return B[c[np.argsort(r)]]


def test_finds_the_true_centres_like_sklearn(spark, blobs):
    X, y, C_true = blobs
    df = frame(spark, X)
    res = engine.fit(spark, df, source(4), K_TRUE, seed=3, max_iter=50)
    from sklearn.cluster import KMeans

    sk = KMeans(K_TRUE, n_init=10, random_state=0).fit(X.astype(np.float64))
    np.testing.assert_allclose(match(sk.cluster_centers_, res.centers), sk.cluster_centers_, rtol=1e-5, atol=1e-5)
    assert res.inertia == pytest.approx(sk.inertia_, rel=1e-5)
    assert res.counts.sum() == len(X) and len(res.centers) == K_TRUE
    labels = K.nearest(X, res.centers)[0]
    assert adjusted_rand_score(y, labels) == 1.0
    assert res.n_tasks == 2 and res.load_seconds > 0 and len(res.iter_seconds) == res.n_iter


def test_distributed_lloyd_equals_single_process_lloyd(spark, blobs):
    """Same start, same data: the distributed iterations are the kernels' Lloyd, summed per task."""
    X, _, C_true = blobs
    rng = np.random.default_rng(0)
    C0 = X[rng.choice(len(X), K_TRUE, replace=False)].astype(np.float64)
    res = engine.fit(spark, frame(spark, X), source(4), K_TRUE, initial_centers=C0, max_iter=100, tol=1e-4)
    ref = K.lloyd(X, C0, max_iter=100, tol=1e-4)
    np.testing.assert_allclose(res.centers, ref.centers, rtol=1e-6, atol=1e-7)
    assert res.inertia == pytest.approx(ref.inertia, rel=1e-6)


@pytest.mark.parametrize("init", ["kmeans||", "kmeans++"])  # random init may land in another optimum
def test_partition_count_does_not_change_the_result(spark, blobs, init):
    X, y, _ = blobs
    one = engine.fit(spark, frame(spark, X, parts=1), source(4), K_TRUE, seed=5, init=init)
    four = engine.fit(spark, frame(spark, X, parts=4), source(4), K_TRUE, seed=5, init=init, num_tasks=4)
    # local[2] has 2 slots: the 4 partitions are packed and shuffled into 2 tasks
    assert one.n_tasks == 1 and four.n_tasks == 2
    np.testing.assert_allclose(match(one.centers, four.centers), one.centers, rtol=1e-5, atol=1e-5)
    assert adjusted_rand_score(y, K.nearest(X, four.centers)[0]) == 1.0


def test_same_seed_same_partitioning_is_deterministic(spark, blobs):
    X, _, _ = blobs
    df = frame(spark, X, parts=3)
    a = engine.fit(spark, df, source(4), K_TRUE, seed=9, max_iter=3, tol=0.0)
    b = engine.fit(spark, df, source(4), K_TRUE, seed=9, max_iter=3, tol=0.0)
    np.testing.assert_array_equal(a.centers, b.centers)
    assert a.inertia == b.inertia


def test_warm_start_from_the_true_centres_converges_at_once(spark, blobs):
    X, _, C_true = blobs
    res = engine.fit(spark, frame(spark, X), source(4), K_TRUE, initial_centers=C_true, max_iter=50)
    assert res.n_iter <= 2 and res.converged
    np.testing.assert_allclose(res.centers, C_true, atol=0.1)  # blob means are within noise of the true centres


def test_weights_behave_as_repeated_rows(spark, blobs):
    X, _, C_true = blobs
    X = X[:600]
    w = np.random.default_rng(1).integers(1, 4, size=len(X))
    C0 = C_true + 1.0
    weighted = engine.fit(spark, frame(spark, X, weights=w), source(4, weight_column="w"), K_TRUE,
                          initial_centers=C0, max_iter=100, tol=0.0)
    repeated = engine.fit(spark, frame(spark, np.repeat(X, w, axis=0)), source(4), K_TRUE,
                          initial_centers=C0, max_iter=100, tol=0.0)
    np.testing.assert_allclose(weighted.centers, repeated.centers, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(weighted.counts, repeated.counts)
    assert weighted.inertia == pytest.approx(repeated.inertia, rel=1e-9)


def test_empty_cluster_is_reseeded_and_k_centres_come_back(spark, blobs):
    X, y, C_true = blobs
    C0 = np.vstack([C_true[:-1], [[1e3, 1e3, 1e3, 1e3]]])  # one centre nobody is near
    res = engine.fit(spark, frame(spark, X), source(4), K_TRUE, initial_centers=C0, max_iter=50)
    assert len(res.centers) == K_TRUE and (res.counts > 0).all() and res.n_repaired >= 1
    assert len(np.unique(res.centers, axis=0)) == K_TRUE


def test_cosine_is_spherical_kmeans_on_directions(spark):
    rng = np.random.default_rng(4)
    dirs = np.linalg.qr(rng.normal(size=(6, 6)))[0][:3]  # 3 orthogonal directions
    lab = rng.integers(0, 3, 900)
    X = (dirs[lab] + rng.normal(scale=0.05, size=(900, 6))) * rng.uniform(0.1, 50, size=(900, 1))
    res = engine.fit(spark, frame(spark, X), source(6, normalize=True), 3, seed=2)
    np.testing.assert_allclose(np.linalg.norm(res.centers, axis=1), 1.0, rtol=1e-9)
    assert adjusted_rand_score(lab, K.nearest(K.normalize_rows(X), res.centers)[0]) == 1.0
    # the same data without normalisation is split by magnitude instead: the option matters
    plain = engine.fit(spark, frame(spark, X), source(6), 3, seed=2)
    assert adjusted_rand_score(lab, K.nearest(X, plain.centers)[0]) < 0.9


def test_bisecting_returns_a_consistent_split_tree(spark, blobs):
    X, y, _ = blobs
    res = engine.fit(spark, frame(spark, X), source(4), K_TRUE, algorithm="bisecting", seed=1)
    assert len(res.centers) == K_TRUE and len(res.tree_centers) == 2 * K_TRUE - 1
    tp = res.tree_parents
    assert tp[0] == -1 and (tp[1:] >= 0).all() and (tp[1:] < np.arange(1, len(tp))).all()  # parents come first
    assert sorted(np.bincount(tp[1:], minlength=len(tp))[np.bincount(tp[1:], minlength=len(tp)) > 0]) == [2] * (K_TRUE - 1)
    assert set(res.leaf_nodes) == set(range(len(tp))) - set(tp[1:])
    np.testing.assert_array_equal(res.parents, tp[res.leaf_nodes])
    assert adjusted_rand_score(y, K.nearest(X, res.centers)[0]) == 1.0
    # an inner node's centre is the weighted mean of its children's rows
    counts = dict(zip(res.leaf_nodes.tolist(), res.counts))
    for parent in set(res.parents.tolist()):
        kids = [n for n in res.leaf_nodes if tp[n] == parent]
        if len(kids) == 2:
            labels = K.nearest(X, res.centers)[0]
            rows = np.isin(labels, [list(res.leaf_nodes).index(k) for k in kids])
            np.testing.assert_allclose(X[rows].astype(np.float64).mean(0), res.tree_centers[parent], atol=0.5)
            assert counts[kids[0]] + counts[kids[1]] == rows.sum()


def test_fewer_distinct_points_than_k_warns(spark):
    X = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0]]), 20, axis=0)
    with pytest.warns(FewerClustersWarning):
        res = engine.fit(spark, frame(spark, X), source(2), 3, seed=1)
    assert len(np.unique(res.centers, axis=0)) == 2


def test_fewer_rows_than_k_is_an_error(spark):
    with pytest.raises(ValueError, match="n_samples=3 should be >= k=4"):
        engine.fit(spark, frame(spark, np.eye(3)), source(3), 4)


def test_a_failing_task_reaches_the_driver_with_its_reason(spark, blobs):
    X, _, _ = blobs
    X = X[:200].copy()
    X[17, 2] = np.nan
    with pytest.raises(CollectiveError, match=r"ValueError: 1 rows have NaN/inf features"):
        engine.fit(spark, frame(spark, X), source(4), 3)
    # the session is still usable afterwards
    assert spark.range(5).count() == 5


def test_empty_partitions_are_fine(spark, blobs):
    X, y, _ = blobs
    df = frame(spark, X[:500], parts=1).union(spark.createDataFrame([], frame(spark, X[:1]).schema))
    res = engine.fit(spark, df.repartition(2, "f0").filter("f0 > -1e9"), source(4), K_TRUE, seed=1)
    assert res.counts.sum() == 500


def test_wire_format_round_trip_and_refuses_pickle():
    import socket

    from clusterlake.engine.collective import recv_msg, send_msg

    a, b = socket.socketpair()
    arrays = {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "e": np.empty((0, 5)), "i": np.array([1, -2], np.int64)}
    send_msg(a, {"op": "t", "n": 3}, arrays)
    head, got = recv_msg(b)
    assert head == {"op": "t", "n": 3}
    for k_, v in arrays.items():
        np.testing.assert_array_equal(got[k_], v)
        assert got[k_].dtype == v.dtype and got[k_].shape == v.shape
    with pytest.raises(TypeError, match="dtype object"):
        send_msg(a, {}, {"o": np.array([object()])})
    a.close()
    b.close()


# ----------------------------------------------------------------------------------------------
# lost tasks: the fit survives a barrier task whose Python worker is killed mid-fit


def _fit_killing_a_task(spark, tmp_path, monkeypatch, point: str, victim: int, fit=None, **fit_kw):
    """Run ``fit`` (default ``engine.fit``) in a thread, pause it at ``point``, SIGKILL barrier
    task ``victim``'s Python process, resume; return the fit and what the pause reported."""
    import json
    import os
    import signal
    import threading
    import time

    from clusterlake import faults

    faults.reset()
    monkeypatch.setenv(faults.ENV, point)
    monkeypatch.setenv(faults.DIR_ENV, str(tmp_path))
    out = {}

    def run():
        try:
            out["fit"] = (fit or engine.fit)(spark, **fit_kw)
        except BaseException as exc:  # reported by the assertion below
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    paused = tmp_path / f"{point}.paused"
    deadline = time.time() + 120
    while not paused.exists() and t.is_alive() and time.time() < deadline:
        time.sleep(0.05)
    assert paused.exists(), f"the fit never reached {point}: {out.get('error')}"
    info = json.loads(paused.read_text())
    pid = info["tasks"][victim]["pid"]
    assert pid and pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    (tmp_path / f"{point}.resume").write_text("")
    t.join(timeout=300)
    faults.reset()
    assert not t.is_alive(), "the fit did not finish after the lost task"
    assert "error" not in out, f"the fit failed after a lost task: {out.get('error')}"
    return out["fit"], info


def test_lloyd_continues_after_a_lost_task(spark, blobs, tmp_path, monkeypatch):
    """Kill one task's Python worker before the 3rd Lloyd iteration: the stage is restarted, the
    fit goes on from the driver's centres and ends where the uninterrupted fit ends."""
    X, y, _ = blobs
    rng = np.random.default_rng(5)
    C0 = X[rng.choice(len(X), K_TRUE, replace=False)].astype(np.float64)
    df = frame(spark, X)
    kw = dict(df=df, source=source(4), k=K_TRUE, initial_centers=C0, max_iter=100, tol=0.0, recovery_wait=0.0)
    ref = engine.fit(spark, **kw)
    assert ref.recoveries == 0 and ref.n_iter >= 3
    res, info = _fit_killing_a_task(spark, tmp_path, monkeypatch, "engine.lloyd@3", victim=1, **kw)
    assert info["iteration"] == 3 and len(info["tasks"]) == 2
    assert res.recoveries == 1 and res.n_tasks == 2
    assert res.n_iter == ref.n_iter and res.converged == ref.converged
    np.testing.assert_allclose(res.centers, ref.centers, rtol=1e-12, atol=1e-12)
    assert res.inertia == pytest.approx(ref.inertia, rel=1e-12)
    np.testing.assert_array_equal(K.nearest(X, res.centers)[0], K.nearest(X, ref.centers)[0])


def test_bisecting_replays_its_splits_after_a_lost_task(spark, blobs, tmp_path, monkeypatch):
    """The tasks' per-row leaves come from earlier splits: after a loss they are rebuilt by
    replaying the journal, and the tree comes out as without the loss."""
    X, _, _ = blobs
    df = frame(spark, X)
    kw = dict(df=df, source=source(4), k=K_TRUE, algorithm="bisecting", seed=4, max_iter=30, recovery_wait=0.0)
    ref = engine.fit(spark, **kw)
    # Lloyd visits of the later splits come after at least two bisect_split commands
    res, info = _fit_killing_a_task(spark, tmp_path, monkeypatch, "engine.lloyd@7", victim=0, **kw)
    assert info["label"].startswith("bisect node") and info["label"] != "bisect node 0"
    assert res.recoveries == 1
    np.testing.assert_allclose(res.tree_centers, ref.tree_centers, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(res.tree_parents, ref.tree_parents)
    np.testing.assert_allclose(res.counts, ref.counts)


def test_a_task_error_is_not_mistaken_for_a_lost_task(spark, blobs):
    """A task that raises reports its error: the fit fails with it at once, no recovery."""
    X, _, _ = blobs
    bc = engine.KMeansStage(spark, frame(spark, X), source(4))
    with pytest.raises(CollectiveError, match="unknown command 'nonsense'") as ei:
        with bc:
            bc.call("nonsense")
    assert not isinstance(ei.value, TaskLost) and bc.recoveries == 0


def test_a_second_loss_while_recovering_is_recovered_too(spark, blobs, tmp_path, monkeypatch):
    """The first restart of the stage is lost as well (simulated: the relaunch raises TaskLost
    once); the next one goes through and the result is unchanged."""
    X, _, _ = blobs
    rng = np.random.default_rng(5)
    C0 = X[rng.choice(len(X), K_TRUE, replace=False)].astype(np.float64)
    kw = dict(df=frame(spark, X), source=source(4), k=K_TRUE, initial_centers=C0, max_iter=100, tol=0.0,
              recovery_wait=0.0)
    ref = engine.fit(spark, **kw)
    real_launch = engine.KMeansStage._launch
    calls = []

    def flaky_launch(self, register_timeout):
        calls.append(self.recoveries)
        if self.recoveries == 1:
            raise TaskLost("simulated: an executor died while the stage restarted")
        return real_launch(self, register_timeout)

    monkeypatch.setattr(engine.KMeansStage, "_launch", flaky_launch)
    res, _ = _fit_killing_a_task(spark, tmp_path, monkeypatch, "engine.lloyd@2", victim=0, **kw)
    assert calls == [0, 1, 2] and res.recoveries == 2
    np.testing.assert_allclose(res.centers, ref.centers, rtol=1e-12, atol=1e-12)


def test_a_cancelled_fit_is_not_recovered(spark, blobs, tmp_path, monkeypatch):
    """Cancelling the Spark jobs (a notebook's Cancel, a scheduler's kill) ends the fit; it does
    not restart the stage."""
    import json
    import threading
    import time

    from clusterlake import faults

    X, _, _ = blobs
    faults.reset()
    monkeypatch.setenv(faults.ENV, "engine.lloyd@2")
    monkeypatch.setenv(faults.DIR_ENV, str(tmp_path))
    out = {}

    def run():
        try:
            out["fit"] = engine.fit(spark, frame(spark, X), source(4), K_TRUE, max_iter=100, tol=0.0)
        except BaseException as exc:
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    paused = tmp_path / "engine.lloyd@2.paused"
    deadline = time.time() + 120
    while not paused.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert json.loads(paused.read_text())["iteration"] == 2
    spark.sparkContext.cancelAllJobs()
    time.sleep(3)  # let the cancel reach the tasks
    (tmp_path / "engine.lloyd@2.resume").write_text("")
    t.join(timeout=120)
    faults.reset()
    assert not t.is_alive()
    assert isinstance(out.get("error"), CollectiveError), out
    assert "the fit was cancelled" in str(out["error"])


def test_the_recluster_of_kmeans_parallel_candidates_stays_within_its_budget():
    from clusterlake.algorithms.kmeans_engine import RECLUSTER_FLOPS, recluster_budget

    assert recluster_budget(401, 20, 17, 10) == (10, 50, 401)  # the usual case: untouched
    r, it, m = recluster_budget(10_001, 1000, 384, 10)
    assert (r, it, m) == (1, 25, 10_001) and r * 2.0 * m * 1000 * 384 * (it + 1) <= RECLUSTER_FLOPS
    r, it, m = recluster_budget(20_001, 1000, 768, 10)  # fewer iterations than 10 would not do: fewer candidates
    assert (r, it) == (1, 10) and m < 20_001 and 2.0 * m * 1000 * 768 * (it + 1) <= RECLUSTER_FLOPS
    assert recluster_budget(50_001, 5000, 1536, 10)[2] == 10_000  # never fewer than 2k candidates


@pytest.mark.parametrize("weighted", [False, True])
def test_kmeans_parallel_weights_from_the_rounds_equal_a_pass_over_every_candidate(weighted):
    """The candidates' weights come from each row's nearest candidate kept through the rounds:
    the same as the kernel's pass over all candidates (no pass of their own)."""
    from clusterlake.engine.blocks import Block

    rng = np.random.default_rng(1)
    X = rng.normal(size=(3000, 5)).astype(np.float32)
    w = rng.uniform(0.5, 2.0, 3000) if weighted else None
    worker = engine.KMeansWorker(Block(X, w, 0))
    rounds = [X[:1].astype(np.float64), X[10:60].astype(np.float64), X[500:620].astype(np.float64)]
    offset = 0
    for C in rounds:
        worker.kpar_update(C, offset=offset)
        offset += len(C)
    got = worker.kpar_weights(offset)["weights"]
    want = K.candidate_weights(X, np.concatenate(rounds), weights=w)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got.sum() == pytest.approx(3000 if w is None else w.sum())
    # a new seeding on the same rows (offset 0) starts afresh
    worker.kpar_update(rounds[1], offset=0)
    np.testing.assert_allclose(worker.kpar_weights(len(rounds[1]))["weights"],
                               K.candidate_weights(X, rounds[1], weights=w), rtol=1e-12)
