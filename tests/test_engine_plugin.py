"""A new iterative algorithm plugs into the engine without editing it (``clusterlake.engine``).

``tests/engine_colsum.py`` is such an algorithm (a worker with a stateful command and a driver);
here it runs on real barrier stages of the shared local[2] session, through the same recovery path
as K-means after one of its tasks is killed. Its answers are integers, so they must be exact.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pandas as pd
import pytest

from clusterlake.engine import (
    BarrierStage, Block, BlockSource, CollectiveError, TaskLost, UnknownCommand, Worker, command,
)
from tests.engine_colsum import ColumnSums, centre, column_sums


@pytest.fixture(scope="module")
def rows():
    """Integer-valued features far from 0 and integer weights: every sum is exact in float64."""
    rng = np.random.default_rng(3)
    X = rng.integers(-50, 50, size=(2000, 3)) + np.array([900, -3000, 17])
    w = rng.integers(1, 4, size=len(X))
    return X.astype(np.float64), w.astype(np.float64)


def frame(spark, X, w, parts=2):
    pdf = pd.DataFrame({**{f"f{j}": X[:, j] for j in range(X.shape[1])}, "w": w})
    return spark.createDataFrame(pdf).repartition(parts).cache()


SOURCE = BlockSource(columns=("f0", "f1", "f2"), weight_column="w")


def expected_centring(X, w):
    """The centring driver's loop in numpy on all rows at once."""
    offset = np.zeros(X.shape[1])
    while True:
        sums = w @ (X + offset)
        step = -np.trunc(np.trunc(sums / w.sum()) / 2)
        if not step.any():
            return sums, offset
        offset += step


def test_column_sums_equal_numpy(spark, rows):
    X, w = rows
    with BarrierStage(spark, frame(spark, X, w), SOURCE, ColumnSums) as stage:
        sums, sum_w = column_sums(stage)
        assert stage.n_tasks == 2 and sum(stage.rows) == len(X) and sum(stage.task_sum_w) == w.sum()
    np.testing.assert_array_equal(sums, w @ X)
    assert sum_w == w.sum()


def test_iterative_driver_equals_numpy(spark, rows):
    X, w = rows
    with BarrierStage(spark, frame(spark, X, w), SOURCE, ColumnSums) as stage:
        sums, shift, n_iter = centre(stage)
    want_sums, want_shift = expected_centring(X, w)
    assert n_iter > 4
    np.testing.assert_array_equal(shift, want_shift)
    np.testing.assert_array_equal(sums, want_sums)


def test_a_lost_task_is_recovered_and_its_state_replayed(spark, rows):
    """Kill one task's Python worker after three shifts: the stage restarts, replays the shifts
    on the new tasks (without them the sums would be off by the lost rows' offsets) and the
    driver ends exactly where an undisturbed run ends."""
    X, w = rows
    df = frame(spark, X, w)
    with BarrierStage(spark, df, SOURCE, ColumnSums, recovery_wait=0.0) as stage:
        ref = centre(stage)
    killed = []

    def kill_at_4(it):
        if it == 4:
            pid = stage.coord.tasks[1]["pid"]
            assert pid and pid != os.getpid()
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    with BarrierStage(spark, df, SOURCE, ColumnSums, recovery_wait=0.0) as stage:
        sums, shift, n_iter = centre(stage, on_iteration=kill_at_4)
        assert killed and killed[0] not in [t["pid"] for t in stage.coord.tasks]
        assert stage.recoveries == 1 and [j[0] for j in stage._journal] == ["shift"] * (n_iter - 1)
    assert n_iter == ref[2]
    np.testing.assert_array_equal(shift, ref[1])
    np.testing.assert_array_equal(sums, ref[0])
    np.testing.assert_array_equal(sums, expected_centring(X, w)[0])


def test_an_unknown_command_names_itself_and_the_worker(spark, rows):
    X, w = rows
    stage = BarrierStage(spark, frame(spark, X[:100], w[:100]), SOURCE, ColumnSums)
    want = r"unknown command 'nonsense' for worker tests\.engine_colsum\.ColumnSums \(its commands: colsum, shift\)"
    with pytest.raises(CollectiveError, match=want) as ei:
        with stage:
            stage.call("nonsense")
    assert not isinstance(ei.value, TaskLost) and stage.recoveries == 0


# ---------------------------------------------------------------------------------------------
# the worker registry, without Spark


def _worker(cls=ColumnSums):
    return cls(Block(np.arange(6, dtype=np.float32).reshape(3, 2), np.array([1.0, 2.0, 3.0]), partition=0))


def test_commands_dispatch_by_name_and_reply_split_into_header_and_arrays():
    worker = _worker()
    assert ColumnSums.commands == {"colsum": "colsum", "shift": "shift"} and ColumnSums.stateful == {"shift"}
    assert worker.handle({"op": "shift"}, {"by": np.array([1.0, -1.0])}) == ({}, {})
    head, arrays = worker.handle({"op": "colsum"}, {})
    assert head == {"n": 3, "sum_w": 6.0} and set(arrays) == {"sums"}
    np.testing.assert_array_equal(arrays["sums"], np.array([1.0, 2.0, 3.0]) @ (np.arange(6).reshape(3, 2) + [1, -1]))


def test_an_unknown_command_raises_in_the_worker():
    with pytest.raises(UnknownCommand, match=r"unknown command 'nope' for worker tests\.engine_colsum\.ColumnSums"):
        _worker().handle({"op": "nope"}, {})


def test_subclasses_inherit_and_override_commands():
    class Twice(ColumnSums):
        @command("colsum")  # replaces the base's command, stays stateless
        def colsum_twice(self):
            return {"n": len(self.X), "sums": 2 * self.weights() @ self.X.astype(np.float64)}

        @command
        def reset(self):
            self.offset = 0.0

    assert Twice.commands == {"colsum": "colsum_twice", "shift": "shift", "reset": "reset"}
    assert Twice.stateful == {"shift"}
    np.testing.assert_array_equal(_worker(Twice).handle({"op": "colsum"}, {})[1]["sums"], [32.0, 44.0])


@pytest.mark.parametrize("body", ["stop", "twice"])
def test_bad_command_tables_are_refused_when_the_class_is_defined(body):
    with pytest.raises(TypeError, match="reserved" if body == "stop" else "two methods register"):
        class Bad(Worker):
            @command("stop" if body == "stop" else "a")
            def one(self):
                return None

            @command("a")
            def two(self):
                return None


def test_the_stage_refuses_a_worker_that_is_not_a_worker_class():
    with pytest.raises(TypeError, match="Worker subclass"):  # before it asks Spark anything
        BarrierStage(None, None, SOURCE, object)
