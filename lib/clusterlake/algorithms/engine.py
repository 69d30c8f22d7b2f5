"""clusterlake's distributed K-means engine: blocks cached in the tasks, statistics per step.

:class:`BlockCluster` starts one barrier stage over a DataFrame (see
:mod:`clusterlake.algorithms.collective`): every task turns its partition into one float32 numpy
block (model space, optionally L2-normalised for cosine) and then serves the driver's commands.
The algorithms below run on the driver and send those commands:

* :func:`init_kmeans_parallel` -- k-means|| (Bahmani et al. 2012): a few rounds that oversample
  ~``l`` rows each with probability proportional to w * D^2, then a weighted k-means++ recluster
  (plus local Lloyd) of the candidates on the driver, the same recipe as Spark MLlib's init;
* :func:`init_kmeans_plusplus_sample` -- greedy k-means++ on a uniform sample;
* :func:`init_random` -- k distinct random rows;
* :func:`lloyd` -- Lloyd iterations, one pass each returning k x d sums, counts and inertia;
  empty clusters re-seeded from the globally farthest rows, so exactly k centres come back;
* :func:`bisecting` -- bisecting K-means (split the leaf with the largest SSE, like
  scikit-learn's ``bisecting_strategy="biggest_inertia"``), returning every centre's parent.

Determinism: replies are reduced in partition order and every random draw is seeded from the
fit's seed (and the partition number), so a fixed seed and partitioning give the same result.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
import pyarrow as pa

from clusterlake.algorithms.collective import (
    CollectiveError, Coordinator, JobThread, TaskLost, is_cancellation, python_error_line, serve,
)
from clusterlake.faults import pause_point
from clusterlake.algorithms.passes import _block, arrow_input
from clusterlake.kernels import kmeans as K

log = logging.getLogger(__name__)


class FewerClustersWarning(UserWarning):
    """The fit could not find k distinct centres (the data has fewer distinct points than k)."""


# ----------------------------------------------------------------------------------------------
# what a task loads


@dataclass(frozen=True)
class BlockSource:
    """How a task turns Arrow batches into its block. Captured by the task closure: plain values only.

    Either ``array_column`` (one ``array<float|double>`` column, e.g. from ``vector_to_array``)
    or ``columns`` (numeric columns, transformed by the preprocessor arrays when given).
    """

    columns: tuple[str, ...] = ()
    array_column: Optional[str] = None
    weight_column: Optional[str] = None
    center: Optional[np.ndarray] = None
    scale: Optional[np.ndarray] = None
    components: Optional[np.ndarray] = None
    normalize: bool = False
    labels: tuple[tuple[str, str], ...] = ()
    """(column as the task sees it, the user's name) pairs, for messages (see :meth:`positional`)."""

    @property
    def input_columns(self) -> list[str]:
        cols = [self.array_column] if self.array_column else list(self.columns)
        return cols + ([self.weight_column] if self.weight_column else [])

    def positional(self, pos: dict[str, str]) -> "BlockSource":
        """This source reading the columns under the names ``pos`` gives them
        (:func:`~clusterlake.algorithms.passes.arrow_input`); messages keep the user's names."""
        def p(c):
            return None if c is None else pos[c]

        return replace(self, columns=tuple(pos[c] for c in self.columns), array_column=p(self.array_column),
                       weight_column=p(self.weight_column), labels=tuple((a, c) for c, a in pos.items()))

    def _name(self, column: str) -> str:
        return dict(self.labels).get(column, column)

    def block(self, batch: pa.RecordBatch) -> np.ndarray:
        """One batch as a float64 (n, p) block in the model space."""
        n = batch.num_rows
        if self.array_column:
            col = batch.column(self.array_column)
            if col.null_count:
                raise ValueError(f"column '{self._name(self.array_column)}' has {col.null_count} null vectors")
            flat = col.flatten().to_numpy(zero_copy_only=False)
            if n and flat.size % n:
                raise ValueError(f"column '{self._name(self.array_column)}' holds vectors of different lengths")
            X = flat.reshape(n, -1 if n else 0).astype(np.float64, copy=False)
        else:
            X = _block(batch, list(self.columns))
        if self.center is not None:
            from clusterlake.prep.transform import Preprocessor

            X = Preprocessor(list(self.columns), self.center, self.scale, self.components).transform(X)
            # (L2 normalisation for cosine happens in load(), after the float32 cast)
        return X

    def pack(self, batch: pa.RecordBatch) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """One batch as a checked float32 model-space block (L2-normalised for cosine) and weights."""
        X = np.ascontiguousarray(self.block(batch), dtype=np.float32)
        if X.size and not np.isfinite(X).all():
            bad = int((~np.isfinite(X)).any(axis=1).sum())
            raise ValueError(f"{bad} rows have NaN/inf features (in float32); validate or clean the input first")
        if self.normalize and X.size:
            X = K.normalize_rows(X)
        w = None
        if self.weight_column:
            w = batch.column(self.weight_column).cast(pa.float64()).to_numpy(zero_copy_only=False)
            if w.size and (not np.isfinite(w).all() or (w < 0).any()):
                raise ValueError(f"weight column '{self._name(self.weight_column)}' has null, NaN, infinite or negative values")
        return X, w


# packed blocks: one row per Arrow batch of the input (float32 bytes), small enough to shuffle
_PACKED_DDL = "src long, seq long, n long, d long, x binary, w binary"
_PACKED_SCHEMA = pa.schema([("src", pa.int64()), ("seq", pa.int64()), ("n", pa.int64()), ("d", pa.int64()),
                            ("x", pa.binary()), ("w", pa.binary())])


def _pack_task(source: BlockSource):
    """Executor function: input rows -> packed float32 blocks (the one JVM -> Python conversion)."""

    def run(batches):
        from pyspark import TaskContext

        src = TaskContext.get().partitionId()
        for seq, b in enumerate(batches):
            if not b.num_rows:
                continue
            X, w = source.pack(b)
            yield pa.RecordBatch.from_pydict(
                {"src": [src], "seq": [seq], "n": [X.shape[0]], "d": [X.shape[1]], "x": [X.tobytes()],
                 "w": [None if w is None else w.tobytes()]}, schema=_PACKED_SCHEMA)

    return run


def unpack(batches) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Packed rows -> one C-contiguous float32 block and float64 weights, in (src, seq) order so
    the block does not depend on the order the shuffle delivered them in."""
    items = []
    for b in batches:
        cols = b.to_pydict()
        items += list(zip(cols["src"], cols["seq"], cols["n"], cols["d"], cols["x"], cols["w"]))
    items.sort(key=lambda t: (t[0], t[1]))
    if not items:
        return np.empty((0, 0), dtype=np.float32), None
    X = np.concatenate([np.frombuffer(x, dtype=np.float32).reshape(n, d) for _, _, n, d, x, _ in items])
    ws = [w for *_, w in items]
    w = None if ws[0] is None else np.concatenate([np.frombuffer(v, dtype=np.float64) for v in ws])
    return np.ascontiguousarray(X), w


# ----------------------------------------------------------------------------------------------
# the task side


class BlockWorker:
    """Executes the driver's commands against one task's block. Runs in a barrier task."""

    def __init__(self, X: np.ndarray, w: Optional[np.ndarray], partition: int):
        self.X = X
        self.w = w
        self.partition = partition
        self.x_sq = K.row_sq_norms(X) if X.size else np.zeros(0)
        self.d2: Optional[np.ndarray] = None  # k-means|| distances to the candidates so far
        self.leaf = np.zeros(len(X), dtype=np.int32)  # bisecting: the leaf of every row
        self._sub: Optional[tuple] = None  # bisecting: (leaf, rows, X, w, x_sq) of the leaf being split

    # helpers
    def _weights(self, idx=None) -> np.ndarray:
        if self.w is None:
            return np.ones(len(self.X) if idx is None else len(idx))
        return self.w if idx is None else self.w[idx]

    def _rng(self, seed: int) -> np.random.Generator:
        return np.random.default_rng([int(seed), self.partition])

    def _rows(self, idx) -> tuple[dict, dict]:
        idx = np.asarray(idx, dtype=np.int64)
        return {"n": int(len(idx))}, {"x": self.X[idx].astype(np.float64), "w": self._weights(idx)}

    @staticmethod
    def _stats_reply(ps: "K.PartialStats") -> tuple[dict, dict]:
        return {"inertia": float(ps.inertia)}, {
            "sums": ps.sums, "counts": ps.counts, "far_points": ps.far_points, "far_d2": ps.far_d2,
        }

    def _leaf_block(self, leaf: int):
        if self._sub is None or self._sub[0] != leaf:
            rows = np.flatnonzero(self.leaf == leaf)
            self._sub = (leaf, rows, np.ascontiguousarray(self.X[rows]),
                         None if self.w is None else self.w[rows], self.x_sq[rows])
        return self._sub

    def handle(self, head: dict, arrs: dict) -> tuple[dict, dict]:
        op = head["op"]
        n, d = self.X.shape if self.X.size else (len(self.X), 0)
        if op == "info":
            w = self._weights()
            sx, sxx = np.zeros(d), np.zeros(d)
            for s0 in range(0, n, 65536):  # float64 in chunks: no full-size copy of the block
                Xd = self.X[s0:s0 + 65536].astype(np.float64)
                ws = w[s0:s0 + 65536]
                sx += ws @ Xd
                sxx += ws @ (Xd * Xd)
            return {"n": int(n), "sum_w": float(w.sum())}, {"sum_wx": sx, "sum_wxx": sxx}
        if op == "stats":
            C = arrs["centers"]
            if not n:
                return self._stats_reply(K.PartialStats.zeros(*C.shape))
            ps = K.partial_stats(self.X, C, self.w, self.x_sq, n_far=int(head.get("n_far", 0)))
            return self._stats_reply(ps)
        if op == "pick":  # the row where the cumulative weight passes u
            if not n:
                return self._rows([])
            cw = np.cumsum(self._weights())
            i = int(min(np.searchsorted(cw, float(head["u"]), side="right"), n - 1))
            return self._rows([i])
        if op == "sample":
            leaf = head.get("leaf")
            rows = np.arange(n) if leaf is None else np.flatnonzero(self.leaf == int(leaf))
            keep = rows[self._rng(head["seed"]).random(len(rows)) < float(head["fraction"])]
            return self._rows(keep)
        if op == "kpar_update":
            C = arrs["centers"]
            if n:
                _, d2 = K.nearest(self.X, C, self.x_sq)
                self.d2 = d2 if self.d2 is None else np.minimum(self.d2, d2)
            return {"phi": float(self._weights() @ self.d2) if n else 0.0}, {}
        if op == "kpar_sample":
            if not n:
                return self._rows([])
            idx = K.kmeans_parallel_sample(self.X, self.d2, self.w if self.w is not None else np.ones(n),
                                           float(head["l"]), float(head["phi"]), self._rng(head["seed"]))
            return self._rows(idx)
        if op == "forget_d2":  # k-means|| is over: free the n distances
            self.d2 = None
            return {}, {}
        if op == "cand_weights":
            C = arrs["centers"]
            cw = K.candidate_weights(self.X, C, self.w, self.x_sq) if n else np.zeros(len(C))
            return {}, {"weights": cw}
        if op == "bisect_stats":
            C = arrs["centers"]
            _, _, Xs, ws, xs = self._leaf_block(int(head["leaf"]))
            if not len(Xs):
                return self._stats_reply(K.PartialStats.zeros(*C.shape))
            return self._stats_reply(K.partial_stats(Xs, C, ws, xs, n_far=int(head.get("n_far", 0))))
        if op == "bisect_split":
            C = arrs["centers"]
            _, rows, Xs, _, xs = self._leaf_block(int(head["leaf"]))
            if len(rows):
                lab, _ = K.nearest(Xs, C, xs)
                self.leaf[rows] = np.where(lab == 0, int(head["left"]), int(head["right"]))
            self._sub = None
            return {}, {}
        raise ValueError(f"unknown command {op!r}")


_RESULT_SCHEMA = pa.schema([("partition", pa.int64()), ("rows", pa.int64()), ("commands", pa.int64()),
                            ("max_rss_mb", pa.float64())])


def _max_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _barrier_task(address: tuple[str, int], token: str, timeout: float):
    """The function each barrier task runs (returned to the driver, runs on executors)."""

    def run(batches):
        from pyspark import BarrierTaskContext

        ctx = BarrierTaskContext.get()
        part = ctx.partitionId()
        try:  # one BLAS thread per task cpu: tasks share the executor's cores
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=max(1, int(ctx.cpus())), user_api="blas")
        except Exception:  # threadpoolctl is a scikit-learn dependency; without it, BLAS decides
            pass
        err = None
        try:
            X, w = unpack(batches)
        except Exception as exc:  # reported to the driver, which raises it with the task number
            err = f"{type(exc).__name__}: {exc}"
            X, w = np.empty((0, 0), np.float32), None
        worker = BlockWorker(X, w, part)
        served = serve(address, token, part, len(X), worker.handle, timeout=timeout, load_error=err)
        yield pa.RecordBatch.from_pydict({"partition": [part], "rows": [len(X)], "commands": [served],
                                          "max_rss_mb": [_max_rss_mb()]},
                                         schema=_RESULT_SCHEMA)

    return run


# ----------------------------------------------------------------------------------------------
# the driver side


def task_slots(spark) -> int:
    """How many tasks can run at once on the executors alive now (what Spark checks before it
    starts a barrier stage); ``defaultParallelism // spark.task.cpus`` where that is unavailable
    (it over-counts: standalone reports at least 2, and it lags behind a lost executor)."""
    sc = spark.sparkContext
    try:
        jsc = sc._jsc.sc()
        return max(0, int(jsc.maxNumConcurrentTasks(jsc.resourceProfileManager().defaultResourceProfile())))
    except Exception:  # no JVM (Spark Connect) or a Spark without the method
        cpus = int(sc.getConf().get("spark.task.cpus", "1"))
        return max(1, sc.defaultParallelism // max(1, cpus))


def _has_coalesce(df) -> bool:
    """Whether the executed plan (whose text includes the plans of cached relations) contains a
    coalesce, which Spark refuses inside a barrier stage. A false positive (a coalesce behind an
    exchange) only costs a shuffle of the packed blocks."""
    try:
        plan = df._jdf.queryExecution().executedPlan().toString()
    except Exception:  # no JVM plan to inspect (e.g. Spark Connect): be safe
        return True
    return "Coalesce" in plan


class BlockCluster:
    """Context manager: the barrier stage holding ``df`` as cached blocks, and its coordinator.

    Runs on the driver. ``num_tasks`` defaults to the free task slots. The input is packed into
    float32 blocks once; when it has more partitions than tasks (or a coalesce in its plan) the
    packed blocks are shuffled into one partition per task, else each input partition is a task.

    **Lost tasks.** The driver holds the algorithm's state (centres, the split tree) and a journal
    of the commands that change the tasks' state (``kpar_update``, ``bisect_split``). When a task
    is lost (:class:`TaskLost`: its executor, worker or Python process died) :meth:`call` cancels
    the stage, waits up to ``recovery_wait`` seconds for the lost task slots to come back (YARN and
    Kubernetes replace lost executors), starts the stage again on the slots there are (fewer tasks
    if need be: the packed blocks are reshuffled), replays the journal and sends the interrupted
    command again. A Lloyd iteration therefore continues from the driver's current centres; the
    result equals the uninterrupted fit's up to the order of floating-point sums (and a sample
    drawn after a layout change differs; a bisecting split replayed on a new layout can put a row
    that is equidistant from both children to float precision on the other side). At most
    ``max_recoveries`` times per fit; a stage that ended because its job was cancelled (or the
    context stopped) is not recovered: the fit raises.
    """

    STATEFUL_OPS = frozenset({"kpar_update", "bisect_split"})

    def __init__(self, spark, df, source: BlockSource, num_tasks: Optional[int] = None,
                 command_timeout: float = 3600.0, register_timeout: float = 600.0,
                 max_recoveries: int = 3, recovery_wait: float = 30.0):
        self.spark = spark
        self.source = source
        self.requested = num_tasks
        free = task_slots(spark)
        if free < (num_tasks or 1):  # executors may still be registering
            free = self._wait_for_slots(num_tasks or 1, min(register_timeout, 60.0))
        if free < 1:
            raise CollectiveError("no executor has registered a task slot; the fit needs at least one "
                                  "(check the cluster's executors and spark.executor.cores / spark.task.cpus)")
        slots = min(num_tasks, free) if num_tasks else free
        if num_tasks and num_tasks > free:
            # a barrier stage needs all its tasks at once: more tasks than slots would never start
            log.warning("engine: %d tasks requested but only %d task slots: using %d", num_tasks, free, free)
        self._shuffled = False
        # the tasks read the columns under positional names: PySpark's mapInArrow cannot take a
        # column whose name holds a dot or a backtick
        src, pos = arrow_input(df, source.input_columns)
        packed = src.mapInArrow(_pack_task(source.positional(pos)), _PACKED_DDL)
        self._packed = packed
        parts = packed.rdd.getNumPartitions()
        self._parts = parts
        if parts > slots or _has_coalesce(packed):
            # more partitions than tasks, or a coalesce in the input's plan: a barrier stage cannot
            # coalesce (SPARK-24820), so shuffle the packed float32 blocks (n x p x 4 bytes, far
            # less than the rows) into one partition per task
            packed = packed.repartition(min(parts, slots))
            self._shuffled = True
        self.n_tasks = min(parts, slots) if parts else 1
        self.df = packed
        self.command_timeout = command_timeout
        self.register_timeout = register_timeout
        self.max_recoveries = max_recoveries
        self.recovery_wait = recovery_wait
        self.recoveries = 0
        self.load_seconds = 0.0
        self.rows: list[int] = []
        self.task_sum_w: list[float] = []
        self.task_peak_rss_mb = 0.0
        self._journal: list[tuple[str, Optional[dict], dict]] = []
        self._restore_needed = False
        self._thread: Optional[JobThread] = None

    # -- starting and stopping the stage
    def __enter__(self) -> "BlockCluster":
        t0 = time.time()
        self._launch(self.register_timeout)
        self.load_seconds = time.time() - t0
        log.info("engine: %d tasks loaded %s rows in %.1f s", self.n_tasks, f"{sum(self.rows):,}", self.load_seconds)
        return self

    def _launch(self, register_timeout: float) -> None:
        try:
            self._start(register_timeout)
        except CollectiveError as exc:
            # Spark refuses some narrow lineages inside a barrier stage (a union, a coalesce:
            # SPARK-24820) before any task runs: shuffle the packed blocks and start again
            if "BarrierJobUnsupportedRDDChain" not in str(exc.__cause__ or exc) or self._shuffled:
                raise
            log.info("engine: the input's lineage cannot run in a barrier stage; shuffling the packed blocks")
            self.df = self.df.repartition(self.n_tasks)
            self._shuffled = True
            self._start(register_timeout)
        self.rows = list(self.coord.task_rows)
        log.debug("engine: barrier tasks %s", self.coord.tasks)

    def _start(self, register_timeout: float) -> None:
        host = self.spark.sparkContext.getConf().get("spark.driver.host", None) or "127.0.0.1"
        self._thread = None
        self.coord = Coordinator(self.n_tasks, host, lambda: self._thread.error if self._thread else None,
                                 register_timeout=register_timeout, failed_job_is_loss=self.recoveries > 0)
        fn = _barrier_task(self.coord.address, self.coord.token, self.command_timeout)
        job = self.df.mapInArrow(fn, "partition long, rows long, commands long, max_rss_mb double", barrier=True)
        # bigger Arrow batches load faster (10k rows is Spark's default); restored once loaded
        conf_key = "spark.sql.execution.arrow.maxRecordsPerBatch"
        old_batch = self.spark.conf.get(conf_key, None)
        width = max(1, len(self.source.columns) or 64)
        self.spark.conf.set(conf_key, str(int(min(200_000, max(10_000, 4_000_000 // width)))))
        self._thread = JobThread(self.spark, job.collect)
        self._thread.start()
        try:
            self.coord.accept_all()
        except BaseException:
            self._stop_stage(cancel=True)
            raise
        finally:
            if old_batch is None:
                self.spark.conf.unset(conf_key)
            else:
                self.spark.conf.set(conf_key, old_batch)

    def _stop_stage(self, cancel: bool) -> None:
        if cancel and self._thread is not None:
            self._thread.cancel()
        self.coord.close()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.coord.close()
        if self._thread is None:
            return
        self._thread.join(timeout=600 if exc_type is None else 60)
        if exc_type is None and self._thread.error is not None:
            if is_cancellation(self._thread.error):
                raise CollectiveError(f"the fit was cancelled: {python_error_line(self._thread.error)}")
            # every command was answered: the fit is complete, only the stage's epilogue failed
            log.warning("engine: the barrier stage failed after the fit was complete: %s",
                        python_error_line(self._thread.error))
        rows = self._thread.result or []
        self.task_peak_rss_mb = max((r["max_rss_mb"] for r in rows), default=0.0)

    def _raise_if_cancelled(self) -> None:
        err = self._thread.error if self._thread is not None else None
        if err is not None and is_cancellation(err):
            self._stop_stage(cancel=False)
            raise CollectiveError(f"the fit was cancelled: {python_error_line(err)}") from err

    # -- lost tasks
    def _wait_for_slots(self, want: int, wait: float) -> int:
        deadline = time.time() + wait
        slots = task_slots(self.spark)
        while slots < want and time.time() < deadline:
            time.sleep(1.0)
            slots = task_slots(self.spark)
        return slots

    def _recover(self, lost: TaskLost) -> None:
        """Start the stage again after ``lost``; the journal is replayed by :meth:`call`."""
        self.recoveries += 1
        if self._thread is not None:  # why did the stage end? a cancel is not a loss
            self._thread.join(timeout=3)
            self._raise_if_cancelled()
        if self.recoveries > self.max_recoveries:
            self._stop_stage(cancel=True)
            raise CollectiveError(f"the fit lost barrier tasks {self.recoveries} times; giving up. Last: {lost}") from lost
        log.warning("engine: %s. Recovering (%d of at most %d): restarting the barrier stage and "
                    "replaying %d state-changing commands", lost, self.recoveries, self.max_recoveries,
                    len(self._journal))
        self._stop_stage(cancel=True)
        slots = self._wait_for_slots(self.n_tasks, self.recovery_wait)
        if slots < 1:
            slots = self._wait_for_slots(1, self.register_timeout)
            if slots < 1:
                raise CollectiveError("no executor left to continue the fit on") from lost
        n_new = max(1, min(self.requested or slots, slots, max(self._parts, 1)))
        if n_new != self.n_tasks:
            log.warning("engine: continuing with %d barrier tasks instead of %d (%d task slots now)",
                        n_new, self.n_tasks, slots)
            self.df = self._packed.repartition(n_new)
            self._shuffled = True
            self.n_tasks = n_new
        t0 = time.time()
        try:
            # tasks that do not all start in time (e.g. a dead executor not yet noticed) count as
            # another loss, so the next attempt looks at the slots again
            self._launch(min(self.register_timeout, 120.0))
        except CollectiveError as exc:
            if isinstance(exc, TaskLost) or "barrier tasks reported within" in str(exc):
                raise TaskLost(str(exc)) from exc
            raise
        self._restore_needed = True
        log.warning("engine: %d tasks reloaded %s rows in %.1f s", self.n_tasks, f"{sum(self.rows):,}",
                    time.time() - t0)

    def _restore(self) -> None:
        for op, arrays, params in self._journal:
            self.coord.call(op, arrays, None, **params)
        self.task_sum_w = [float(h["sum_w"]) for h, _ in self.coord.call("info")]
        self._restore_needed = False

    def forget(self, op: str) -> None:
        """Drop ``op`` from the journal: the state it built is no longer needed."""
        self._journal = [j for j in self._journal if j[0] != op]

    # -- commands
    def call(self, op, arrays=None, per_task=None, **params):
        """Send ``op`` to every task; replies in partition order. ``per_task``: a list of extra
        params per task, or a function of this cluster returning one (evaluated again after a
        recovery, when the number of tasks may have changed)."""
        lost: Optional[TaskLost] = None
        while True:
            try:
                if lost is not None:
                    pending, lost = lost, None
                    self._recover(pending)  # a loss while relaunching is caught below like any other
                if self._restore_needed:
                    self._restore()
                self._raise_if_cancelled()
                extra = per_task(self) if callable(per_task) else per_task
                replies = self.coord.call(op, arrays, extra, **params)
                break
            except TaskLost as exc:
                if not (callable(per_task) or per_task is None):
                    raise  # per-task parameters made for the old layout cannot be sent again
                lost = exc
        if op in self.STATEFUL_OPS:
            self._journal.append((op, arrays, dict(params)))
        return replies

    def stats(self, C: np.ndarray, n_far: int = 0, op: str = "stats", **params) -> "K.PartialStats":
        """Sum the tasks' partial statistics for centres ``C`` (in partition order)."""
        total = K.PartialStats.zeros(*C.shape)
        for head, a in self.call(op, {"centers": np.asarray(C, np.float64)}, n_far=n_far, **params):
            total = total.merge(K.PartialStats(a["sums"], a["counts"], head["inertia"], a["far_points"], a["far_d2"]))
        return total

    def gather_rows(self, op: str, **params) -> tuple[np.ndarray, np.ndarray]:
        xs, ws = [], []
        for _, a in self.call(op, **params):
            if len(a["x"]):
                xs.append(a["x"])
                ws.append(a["w"])
        if not xs:
            return np.empty((0, 0)), np.empty(0)
        return np.concatenate(xs), np.concatenate(ws)


@dataclass
class DataInfo:
    n: int
    sum_w: float
    mean: np.ndarray
    var: np.ndarray  # weighted, per column
    task_sum_w: list[float] = field(default_factory=list)


def data_info(bc: BlockCluster) -> DataInfo:
    """One pass: row count, total weight, weighted column means and variances."""
    replies = bc.call("info")
    n = sum(h["n"] for h, _ in replies)
    sw = sum(h["sum_w"] for h, _ in replies)
    sx = sum(a["sum_wx"] for h, a in replies if h["n"])  # an empty partition does not know d
    sxx = sum(a["sum_wxx"] for h, a in replies if h["n"])
    mean = sx / sw if sw else np.zeros_like(sx)
    var = np.maximum(sxx / sw - mean * mean, 0.0) if sw else np.zeros_like(sx)
    bc.task_sum_w = [float(h["sum_w"]) for h, _ in replies]
    return DataInfo(int(n), float(sw), mean, var, list(bc.task_sum_w))


# ----------------------------------------------------------------------------------------------
# initialisation


def _pick(bc: BlockCluster, rng: np.random.Generator) -> np.ndarray:
    """One row drawn with probability proportional to its weight."""
    u = rng.random()
    chosen = {}

    def per_task(cluster: BlockCluster) -> list[dict]:  # again after a recovery: the layout may differ
        sums_w = cluster.task_sum_w
        cum = np.cumsum(sums_w)
        v = u * float(cum[-1])
        t = int(min(np.searchsorted(cum, v, side="right"), len(cum) - 1))
        chosen["t"] = t
        v_local = v - (cum[t - 1] if t else 0.0)
        return [{"u": v_local} if i == t else {"u": 0.0} for i in range(cluster.n_tasks)]

    replies = bc.call("pick", per_task=per_task)
    return replies[chosen["t"]][1]["x"][0]


def init_random(bc: BlockCluster, k: int, info: DataInfo, seed: int) -> np.ndarray:
    """k distinct rows chosen uniformly (from a sample of ~20 k rows)."""
    frac = min(1.0, 20.0 * k / max(info.n, 1))
    X, _ = bc.gather_rows("sample", fraction=frac, seed=seed)
    X = np.unique(X, axis=0) if len(X) else X
    rng = np.random.default_rng(seed)
    if len(X) < k:
        X, _ = bc.gather_rows("sample", fraction=1.0, seed=seed)
        X = np.unique(X, axis=0)
    idx = rng.choice(len(X), size=min(k, len(X)), replace=False)
    return X[np.sort(idx)]


def init_kmeans_plusplus_sample(bc: BlockCluster, k: int, info: DataInfo, seed: int,
                                sample_size: int = 200_000) -> np.ndarray:
    """Greedy (weighted) k-means++ on a uniform sample of about ``sample_size`` rows (driver)."""
    frac = min(1.0, sample_size / max(info.n, 1))
    X, w = bc.gather_rows("sample", fraction=frac, seed=seed)
    if len(X) < k:
        X, w = bc.gather_rows("sample", fraction=1.0, seed=seed)
    C, _ = K.kmeans_plusplus(X, k, weights=w, random_state=seed)
    return C


def init_kmeans_parallel(bc: BlockCluster, k: int, info: DataInfo, seed: int, steps: int = 2,
                         oversampling: float = 2.0, max_candidates: int = 100_000,
                         restarts: int = 10) -> np.ndarray:
    """k-means|| (Bahmani et al. 2012): ``steps`` rounds oversampling ~``oversampling * k`` rows
    each (probability proportional to w * D^2), then the candidates, weighted by the weight of
    the rows nearest to each, are reclustered on the driver: weighted greedy k-means++ and Lloyd,
    ``restarts`` times, keeping the lowest weighted inertia. (MLlib reclusters once; on blobs a
    single recluster lands in a visibly worse optimum for some seeds, ten restarts on a few
    hundred candidates cost milliseconds -- see the README's performance section.)

    Passes over the data: 2 per round + 2. Collected: the candidates (about
    ``1 + steps * oversampling * k`` rows).
    """
    rng = np.random.default_rng(seed)
    first = _pick(bc, rng)[None, :]
    cands = [first]
    phi = sum(h["phi"] for h, _ in bc.call("kpar_update", {"centers": first}))
    l = oversampling * k
    for r in range(steps):
        if phi <= 0:
            break
        new, _ = bc.gather_rows("kpar_sample", l=l, phi=phi, seed=seed * 1000 + r + 1)
        if not len(new):
            continue
        cands.append(new)
        if sum(len(c) for c in cands) > max_candidates:
            log.warning("k-means|| stopped after round %d: %d candidates", r + 1, sum(len(c) for c in cands))
            break
        phi = sum(h["phi"] for h, _ in bc.call("kpar_update", {"centers": new}))
    C = np.unique(np.concatenate(cands), axis=0)
    weights = sum(a["weights"] for _, a in bc.call("cand_weights", {"centers": C}))
    bc.call("forget_d2")
    bc.forget("kpar_update")  # a recovery from here on need not rebuild the distances
    log.info("k-means||: %d candidates from %d rounds", len(C), len(cands) - 1)
    if len(C) <= k:
        if len(C) < k:  # top up with uniformly drawn rows
            extra = init_random(bc, k, info, seed + 7)
            C = np.unique(np.concatenate([C, extra]), axis=0)[: max(k, len(C))]
            if len(C) > k:
                C = C[:k]
        return C
    keep = weights > 0
    C, weights = C[keep], weights[keep]
    if len(C) <= k:
        return C
    best = None
    for r in range(max(1, restarts)):
        C0, _ = K.kmeans_plusplus(C, k, weights=weights, random_state=seed * 7919 + r)
        fit_r = K.lloyd(C, C0, weights=weights, max_iter=50, tol=1e-6)
        if best is None or fit_r.inertia < best.inertia:
            best = fit_r
    return best.centers


# ----------------------------------------------------------------------------------------------
# Lloyd


@dataclass
class LloydFit:
    centers: np.ndarray
    counts: np.ndarray  # weighted sizes at the final centres
    inertia: float  # at the final centres
    n_iter: int
    converged: bool
    n_repaired: int
    iter_seconds: list[float] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)


def lloyd(bc: BlockCluster, C0: np.ndarray, max_iter: int, tol_abs: float, spherical: bool = False,
          op: str = "stats", label: str = "kmeans", **params) -> LloydFit:
    """Distributed Lloyd from ``C0``: one pass per iteration (k x d statistics collected).

    Stops when the summed squared centre shift is at most ``tol_abs`` (scikit-learn's rule; an
    unchanged assignment gives a zero shift) or after ``max_iter`` iterations. Empty clusters are
    re-seeded from the farthest rows of the whole data. A last pass computes the sizes and
    inertia at the returned centres.
    """
    C = np.array(C0, dtype=np.float64)
    k = len(C)
    n_far = k
    converged, repaired, it = False, 0, 0
    times, hist = [], []
    for it in range(1, max_iter + 1):
        pause_point("engine.lloyd", label=label, iteration=it, tasks=bc.coord.tasks)
        t0 = time.time()
        ps = bc.stats(C, n_far=n_far, op=op, **params)
        C_new, empty = K.centers_from_stats(ps.sums, ps.counts, C, spherical=spherical)
        if empty.any():
            C_new, fixed = K.repair_empty(C_new, empty, ps.far_points, ps.far_d2)
            repaired += fixed
            log.info("%s iteration %d: re-seeded %d empty clusters from the farthest rows", label, it, fixed)
        shift = K.center_shift_sq(C, C_new)
        C = C_new
        times.append(time.time() - t0)
        hist.append({"iteration": it, "inertia": float(ps.inertia), "shift": float(shift)})
        log.debug("%s iteration %d: inertia %.6g, shift %.3g, %.3f s", label, it, ps.inertia, shift, times[-1])
        if shift <= tol_abs and not empty.any():
            converged = True
            break
    final = bc.stats(C, n_far=0, op=op, **params)
    return LloydFit(C, final.counts, float(final.inertia), it, converged, repaired, times, hist)


# ----------------------------------------------------------------------------------------------
# bisecting


@dataclass
class BisectFit:
    centers: np.ndarray  # (k, d) leaves
    parents: np.ndarray  # (k,) int: index into ``tree_centers`` of each leaf's parent, -1 for the root
    tree_centers: np.ndarray  # (2k - 1, d): every node, root first; leaves are tree_centers[leaf_nodes]
    tree_parents: np.ndarray  # (2k - 1,) parent node of every node (-1 for the root)
    leaf_nodes: np.ndarray  # (k,) node ids of the leaves, in the order of ``centers``
    counts: np.ndarray
    inertia: float
    n_iter: int  # total Lloyd iterations over all splits


def bisecting(bc: BlockCluster, k: int, info: DataInfo, max_iter: int, tol_abs: float, seed: int,
              spherical: bool = False, sample_size: int = 20_000) -> BisectFit:
    """Bisecting K-means: start with one cluster, repeatedly split the leaf with the largest SSE
    in two (2-means++ on a sample of that leaf, then distributed Lloyd on its rows), until k
    leaves. Every split costs a handful of passes over the leaf's rows only."""
    root = info.mean.copy()
    if spherical:
        nrm = np.linalg.norm(root)
        root = root / nrm if nrm > 0 else root
    nodes = [root]
    parents = [-1]
    leaves = {0: None}  # node id -> (count, sse); the root's SSE is filled below
    root_stats = bc.stats(root[None, :], op="bisect_stats", leaf=0)
    leaves[0] = (float(root_stats.counts[0]), float(root_stats.inertia))
    total_iter = 0
    rng = np.random.default_rng(seed)
    while len(leaves) < k:
        splittable = {n: v for n, v in leaves.items() if v[0] >= 2 and v[1] > 0}
        if not splittable:
            msg = f"bisecting K-means found {len(leaves)} divisible clusters, fewer than k={k}"
            warnings.warn(msg, FewerClustersWarning, stacklevel=2)
            log.warning(msg)
            break
        node = max(splittable, key=lambda n: (splittable[n][1], -n))
        count = splittable[node][0]
        frac = min(1.0, sample_size / max(count, 1.0))
        S, w = bc.gather_rows("sample", fraction=frac, seed=int(rng.integers(2**31)), leaf=node)
        if len(np.unique(S, axis=0)) < 2:
            S, w = bc.gather_rows("sample", fraction=1.0, seed=0, leaf=node)
        if len(np.unique(S, axis=0)) < 2:
            leaves[node] = (count, 0.0)  # all rows identical: cannot be split
            continue
        C0, _ = K.kmeans_plusplus(S, 2, weights=w, random_state=int(rng.integers(2**31)))
        fit = lloyd(bc, C0, max_iter, tol_abs, spherical, op="bisect_stats", label=f"bisect node {node}", leaf=node)
        total_iter += fit.n_iter
        left, right = len(nodes), len(nodes) + 1
        bc.call("bisect_split", {"centers": fit.centers}, leaf=node, left=left, right=right)
        nodes += [fit.centers[0], fit.centers[1]]
        parents += [node, node]
        del leaves[node]
        for child, c in ((left, fit.centers[0]), (right, fit.centers[1])):
            st = bc.stats(c[None, :], op="bisect_stats", leaf=child)
            leaves[child] = (float(st.counts[0]), float(st.inertia))
        log.info("bisecting: split node %d (%d rows) into %d + %d rows", node, int(count),
                 int(leaves[left][0]), int(leaves[right][0]))
    leaf_nodes = np.array(sorted(leaves), dtype=np.int64)
    tree = np.asarray(nodes)
    tparents = np.asarray(parents, dtype=np.int64)
    counts = np.array([leaves[n][0] for n in leaf_nodes])
    inertia = float(sum(leaves[n][1] for n in leaf_nodes))
    return BisectFit(tree[leaf_nodes], tparents[leaf_nodes], tree, tparents, leaf_nodes, counts, inertia, total_iter)


# ----------------------------------------------------------------------------------------------
# the whole fit


@dataclass
class EngineFit:
    centers: np.ndarray
    counts: np.ndarray
    inertia: float
    n_iter: int
    converged: bool
    init_seconds: float
    load_seconds: float
    fit_seconds: float
    iter_seconds: list[float]
    n_tasks: int
    parents: Optional[np.ndarray] = None  # bisecting: parent node of each centre
    tree_centers: Optional[np.ndarray] = None
    tree_parents: Optional[np.ndarray] = None
    leaf_nodes: Optional[np.ndarray] = None
    n_repaired: int = 0
    task_peak_rss_mb: float = 0.0  # largest peak RSS of a barrier task's Python worker
    recoveries: int = 0  # times the stage was restarted after a lost task


def fit(spark, df, source: BlockSource, k: int, *, algorithm: str = "kmeans", init: str = "kmeans||",
        initial_centers: Optional[np.ndarray] = None, max_iter: int = 50, tol: float = 1e-4, seed: int = 42,
        init_steps: int = 2, num_tasks: Optional[int] = None, recovery_wait: float = 30.0,
        max_recoveries: int = 3) -> EngineFit:
    """Fit K-means (or bisecting K-means) with our engine on every row of ``df``.

    ``tol`` is relative, as in scikit-learn: the fit stops when the summed squared centre shift
    is at most ``tol`` times the mean per-column (weighted) variance. Runs on the driver; the
    passes are distributed; collected: k x d statistics per pass, samples for initialisation.
    A lost task (executor or worker died) is recovered from: see :class:`BlockCluster`.
    """
    t0 = time.time()
    bc = BlockCluster(spark, df, source, num_tasks=num_tasks, recovery_wait=recovery_wait,
                      max_recoveries=max_recoveries)
    res = _fit(bc, k, algorithm, init, initial_centers, max_iter, tol, seed, init_steps, t0)
    res.task_peak_rss_mb = bc.task_peak_rss_mb
    res.recoveries = bc.recoveries
    res.n_tasks = bc.n_tasks
    return res


def _fit(bc, k, algorithm, init, initial_centers, max_iter, tol, seed, init_steps, t0) -> EngineFit:
    spherical = bc.source.normalize
    with bc:
        info = data_info(bc)
        if info.n < k:
            raise ValueError(f"n_samples={info.n} should be >= k={k}")
        tol_abs = float(tol * info.var.mean()) if tol > 0 else 0.0
        t_init = time.time()
        if algorithm == "bisecting":
            b = bisecting(bc, k, info, max_iter, tol_abs, seed, spherical)
            return EngineFit(b.centers, b.counts, b.inertia, b.n_iter, True, 0.0, bc.load_seconds,
                             time.time() - t0, [], bc.n_tasks, b.parents, b.tree_centers, b.tree_parents,
                             b.leaf_nodes)
        if initial_centers is not None:
            C0 = np.asarray(initial_centers, dtype=np.float64)
            if C0.shape != (k, info.mean.shape[0]):
                raise ValueError(f"initial centres have shape {C0.shape}, expected {(k, info.mean.shape[0])}")
            if spherical:
                C0 = K.normalize_rows(C0)
        elif init == "kmeans||":
            C0 = init_kmeans_parallel(bc, k, info, seed, steps=init_steps)
        elif init == "kmeans++":
            C0 = init_kmeans_plusplus_sample(bc, k, info, seed)
        elif init == "random":
            C0 = init_random(bc, k, info, seed)
        else:
            raise ValueError(f"unknown init {init!r}")
        if len(C0) < k:
            msg = f"found only {len(C0)} distinct starting centres, fewer than k={k}: the input has too few distinct points"
            warnings.warn(msg, FewerClustersWarning, stacklevel=2)
            log.warning(msg)
        if spherical:
            C0 = K.normalize_rows(C0)
        init_seconds = time.time() - t_init
        log.info("engine: init %s took %.2f s", "given centres" if initial_centers is not None else init, init_seconds)
        lf = lloyd(bc, C0, max_iter, tol_abs, spherical)
    its = lf.iter_seconds
    log.info("engine: %d iterations (%s), %.3f s per iteration, inertia %.6g",
             lf.n_iter, "converged" if lf.converged else "max_iter reached",
             float(np.median(its)) if its else math.nan, lf.inertia)
    return EngineFit(lf.centers, lf.counts, lf.inertia, lf.n_iter, lf.converged, init_seconds, bc.load_seconds,
                     time.time() - t0, its, bc.n_tasks, n_repaired=lf.n_repaired)
