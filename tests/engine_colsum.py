"""A test-only iterative algorithm on the engine, written without touching the engine's plumbing:
distributed weighted column sums, and an integer centring driver built on them.

The worker keeps a per-task ``offset`` that a ``shift`` command changes (state on the tasks, like
k-means||' distances), so a lost task is only survived if the stage replays the shifts: the
answers are integers in float64, so "the same answer" means bit-for-bit equal.

Executors cannot import this module (``tests`` is not installed), so it registers itself with
cloudpickle to travel by value with the barrier task's closure.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional

import numpy as np
from pyspark import cloudpickle

from clusterlake.engine import BarrierStage, Worker, command

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class ColumnSums(Worker):
    """Each task: the weighted column sums of its rows plus an offset the driver shifts."""

    def __init__(self, block):
        super().__init__(block)
        self.offset = 0.0  # a (d,) vector after the first shift

    @command("colsum")
    def colsum(self) -> dict:
        if not len(self.X):
            return {"n": 0}
        return {"n": len(self.X), "sum_w": float(self.weights().sum()),
                "sums": self.weights() @ (self.X.astype(np.float64) + self.offset)}

    @command("shift", stateful=True)
    def shift(self, by: np.ndarray) -> None:
        self.offset = self.offset + by


def column_sums(stage: BarrierStage) -> tuple[np.ndarray, float]:
    """The weighted column sums of all rows (offsets included) and the total weight."""
    replies = [(h, a) for h, a in stage.call("colsum") if h["n"]]
    return sum(a["sums"] for _, a in replies), sum(h["sum_w"] for h, _ in replies)


def centre(stage: BarrierStage, on_iteration: Optional[Callable[[int], None]] = None,
           max_iter: int = 50) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer centring by halves: shift every column by minus half its (truncated) weighted mean
    until no mean is 2 or more away from 0. Returns (final sums, total shift, iterations)."""
    total = None
    for it in range(1, max_iter + 1):
        if on_iteration is not None:
            on_iteration(it)
        sums, sum_w = column_sums(stage)
        step = -np.trunc(np.trunc(sums / sum_w) / 2)
        if not step.any():
            return sums, (np.zeros_like(sums) if total is None else total), it
        stage.call("shift", {"by": step})
        total = step if total is None else total + step
    raise RuntimeError("did not converge")
