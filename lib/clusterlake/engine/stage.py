"""The driver's end of the engine: one barrier stage holding a DataFrame as resident blocks, the
collective that sends it commands, and the recovery from lost tasks -- for any algorithm.

:class:`BarrierStage` takes the algorithm's :class:`~clusterlake.engine.worker.Worker` class (the
task side) and knows nothing else of it: the driver's algorithm calls commands by name
(:meth:`BarrierStage.call`), the stage journals the worker's ``stateful`` commands and replays them
after a lost task. See :mod:`clusterlake.engine.collective` for why a barrier stage and a socket
collective instead of one Spark job per iteration.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional, Union

from clusterlake.engine.blocks import PACKED_DDL, BlockSource, batch_rows, files_frame, pack_task
from clusterlake.engine.collective import (
    CollectiveError, Coordinator, JobThread, TaskLost, is_cancellation, python_error_line,
)
from clusterlake.engine.spill import describe as describe_memory
from clusterlake.engine.task import RESULT_DDL, barrier_task
from clusterlake.engine.worker import Worker

log = logging.getLogger(__name__)

PerTask = Union[None, list[dict], Callable[["BarrierStage"], list[dict]]]


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


class BarrierStage:
    """Context manager: the barrier stage holding ``df`` as resident blocks, each served by an
    instance of ``worker`` (a :class:`~clusterlake.engine.worker.Worker` subclass), and the
    coordinator that sends them commands.

    Runs on the driver. ``num_tasks`` defaults to the free task slots. The input is packed into
    float32 blocks once; when it has more partitions than tasks (or a coalesce in its plan) the
    packed blocks are shuffled into one partition per task, else each input partition is a task.
    After every (re)launch ``rows`` and ``task_sum_w`` give each task's row count and weight.

    **Memory.** ``memory_budget``: the bytes each task may keep its rows in (None: derived on each
    executor); rows beyond it are spilled to memory-mapped files on the executor's local disk
    instead of failing the task (:mod:`clusterlake.engine.spill`). Every load (and reload after a
    lost task) logs what the tasks hold and spilled.

    **Lost tasks.** The driver holds the algorithm's state and the stage keeps a journal of the
    worker's ``stateful`` commands. When a task is lost (:class:`TaskLost`: its executor, worker or
    Python process died) :meth:`call` cancels the stage, waits up to ``recovery_wait`` seconds for
    the lost task slots to come back (YARN and Kubernetes replace lost executors), starts the stage
    again on the slots there are (fewer tasks if need be: the packed blocks are reshuffled),
    replays the journal and sends the interrupted command again. An iterative algorithm therefore
    continues from the driver's state; the result equals the uninterrupted run's up to the order
    of floating-point sums (and random draws of the tasks after a layout change differ). At most
    ``max_recoveries`` times per stage; a stage that ended because its job was cancelled (or the
    context stopped) is not recovered: the call raises.
    """

    def __init__(self, spark, df, source: BlockSource, worker: type[Worker], num_tasks: Optional[int] = None,
                 command_timeout: float = 3600.0, register_timeout: float = 600.0,
                 max_recoveries: int = 3, recovery_wait: float = 30.0, memory_budget: Optional[int] = None):
        if not (isinstance(worker, type) and issubclass(worker, Worker)):
            raise TypeError(f"worker must be a Worker subclass, not {worker!r}")
        self.spark = spark
        self.source = source
        self.worker = worker
        self.requested = num_tasks
        self.command_timeout = command_timeout
        self.register_timeout = register_timeout
        self.max_recoveries = max_recoveries
        self.recovery_wait = recovery_wait
        self.memory_budget = memory_budget
        self._plan(df, self._slots(num_tasks))
        self.recoveries = 0
        self.load_seconds = 0.0
        self.rows: list[int] = []
        self.task_sum_w: list[float] = []
        self.task_peak_rss_mb = 0.0
        self._journal: list[tuple[str, Optional[dict], dict]] = []
        self._restore_needed = False
        self._thread: Optional[JobThread] = None

    def _slots(self, num_tasks: Optional[int]) -> int:
        """The number of tasks to start: ``num_tasks`` or the free slots, whichever is fewer."""
        free = task_slots(self.spark)
        local = str(self.spark.sparkContext.master).startswith("local")  # its slots are all there already
        if free < (num_tasks or 1) and not (local and free >= 1):  # executors may still be registering
            free = self._wait_for_slots(num_tasks or 1, min(self.register_timeout, 60.0))
        if free < 1:
            raise CollectiveError("no executor has registered a task slot; the fit needs at least one "
                                  "(check the cluster's executors and spark.executor.cores / spark.task.cpus)")
        if num_tasks and num_tasks > free:
            # a barrier stage needs all its tasks at once: more tasks than slots would never start
            log.warning("engine: %d tasks requested but only %d task slots: using %d", num_tasks, free, free)
        return min(num_tasks, free) if num_tasks else free

    def _plan(self, df, slots: int) -> None:
        """The packed input and its layout: one partition per task. ``df`` may also be a
        :class:`~clusterlake.io.input_files.FileSlices`: the tasks read the files themselves."""
        from clusterlake.io.input_files import FileSlices

        self._shuffled = False
        self._files, self._loader = None, None
        if isinstance(df, FileSlices):
            self._files = df
            self.df, self.n_tasks, self._loader = files_frame(self.spark, df, self.source, slots)
            self._parts = self.n_tasks
            return
        src, source = self.source.arrow_frame(df)
        packed = src.mapInArrow(pack_task(source), PACKED_DDL)
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

    # -- starting and stopping the stage
    def __enter__(self) -> "BarrierStage":
        t0 = time.time()
        self._launch(self.register_timeout)
        self.load_seconds = time.time() - t0
        log.info("engine: %d tasks loaded %s rows in %.1f s; %s", self.n_tasks, f"{sum(self.rows):,}",
                 self.load_seconds, describe_memory([t.get("memory") for t in self.coord.tasks]))
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
        self.task_sum_w = list(self.coord.task_sum_w)
        log.debug("engine: barrier tasks %s", self.coord.tasks)

    def _start(self, register_timeout: float) -> None:
        host = self.spark.sparkContext.getConf().get("spark.driver.host", None) or "127.0.0.1"
        self._thread = None
        self.coord = Coordinator(self.n_tasks, host, lambda: self._thread.error if self._thread else None,
                                 register_timeout=register_timeout, failed_job_is_loss=self.recoveries > 0)
        fn = barrier_task(self.worker, self.coord.address, self.coord.token, self.command_timeout, self._loader,
                          self.memory_budget)
        job = self.df.mapInArrow(fn, RESULT_DDL, barrier=True)
        # bigger Arrow batches load faster (10k rows is Spark's default); restored once loaded
        conf_key = "spark.sql.execution.arrow.maxRecordsPerBatch"
        old_batch = self.spark.conf.get(conf_key, None)
        self.spark.conf.set(conf_key, str(batch_rows(self.source.width if (self.source.columns or self.source.vector) else 64)))
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
        self._relayout(lost)
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
        log.warning("engine: %d tasks reloaded %s rows in %.1f s; %s", self.n_tasks, f"{sum(self.rows):,}",
                    time.time() - t0, describe_memory([t.get("memory") for t in self.coord.tasks]))

    def _relayout(self, lost: TaskLost) -> None:
        """Fewer tasks when fewer slots came back: the packed blocks are reshuffled to fit."""
        slots = self._wait_for_slots(self.n_tasks, self.recovery_wait)
        if slots < 1:
            slots = self._wait_for_slots(1, self.register_timeout)
            if slots < 1:
                raise CollectiveError("no executor left to continue the fit on") from lost
        n_new = max(1, min(self.requested or slots, slots, max(self._parts, 1)))
        if n_new != self.n_tasks:
            log.warning("engine: continuing with %d barrier tasks instead of %d (%d task slots now)",
                        n_new, self.n_tasks, slots)
            if self._files is not None:  # the tasks read their files again, cut for n_new tasks
                self.df, self.n_tasks, self._loader = files_frame(self.spark, self._files, self.source, n_new)
                return
            self.df = self._packed.repartition(n_new)
            self._shuffled = True
            self.n_tasks = n_new

    def _restore(self) -> None:
        """Replay the state-changing commands on the relaunched tasks, in their original order."""
        for op, arrays, params in self._journal:
            self.coord.call(op, arrays, None, **params)
        self._restore_needed = False

    def resume_after_restart(self) -> None:
        """The next :meth:`__enter__` starts the stage again after it was ended on purpose: the
        journal is replayed before the next command, as after a lost task."""
        self._restore_needed = bool(self._journal)

    def forget(self, op: str) -> None:
        """Drop ``op`` from the journal: the state it built is no longer needed."""
        self._journal = [j for j in self._journal if j[0] != op]

    # -- commands
    def call(self, op: str, arrays: Optional[dict] = None, per_task: PerTask = None, **params):
        """Send ``op`` to every task; replies ``(header, arrays)`` in partition order. ``per_task``:
        a list of extra params per task, or a function of this stage returning one (evaluated
        again after a recovery, when the number of tasks may have changed)."""
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
        if op in self.worker.stateful:
            self._journal.append((op, arrays, dict(params)))
        return replies
