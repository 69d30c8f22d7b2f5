"""What every barrier task runs: load the resident block once, build the algorithm's worker on it,
then serve the driver's commands until the stage ends."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from clusterlake.engine.blocks import Block, unpack
from clusterlake.engine.collective import serve
from clusterlake.engine.spill import TaskMemory, address_space_limit, spill_directory, task_budget
from clusterlake.engine.worker import Worker

RESULT_DDL = "partition long, rows long, commands long, max_rss_mb double"
_RESULT_SCHEMA = pa.schema([("partition", pa.int64()), ("rows", pa.int64()), ("commands", pa.int64()),
                            ("max_rss_mb", pa.float64())])


def _max_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _limit_blas(ctx) -> None:
    """One BLAS thread per task cpu: the tasks share the executor's cores."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=max(1, int(ctx.cpus())), user_api="blas")
    except Exception:  # threadpoolctl is a scikit-learn dependency; without it, BLAS decides
        pass


def _task_memory(ctx, budget_bytes) -> TaskMemory:
    """The task's memory budget (:func:`~clusterlake.engine.spill.task_budget`), shared with the
    stage's other tasks on the same host."""
    try:
        hosts = [info.address.rsplit(":", 1)[0] for info in ctx.getTaskInfos()]
        here = hosts[ctx.partitionId()] if ctx.partitionId() < len(hosts) else None
        on_host = sum(h == here for h in hosts) if here is not None else 1
    except Exception:  # not a barrier context (never in the engine), or no task infos
        on_host = 1
    budget, source = task_budget(budget_bytes, on_host)
    return TaskMemory(budget, source, spill_directory(), address_space_limit())


def _load_worker(worker_cls: type[Worker], batches, part: int, loader=None,
                 memory: TaskMemory | None = None) -> tuple[Worker, str | None]:
    """The task's worker on its block (``loader(batches, part, memory)``, default :func:`unpack`
    of packed rows), or (a worker on an empty block, the error): a task that cannot load reports
    why to the driver, which raises it with the task number."""
    try:
        return worker_cls((loader or unpack)(batches, part, memory or TaskMemory())), None
    except Exception as exc:
        empty = Block(np.empty((0, 0), np.float32), None, part)
        return Worker(empty), f"{type(exc).__name__}: {exc}"


def barrier_task(worker_cls: type[Worker], address: tuple[str, int], token: str, timeout: float, loader=None,
                 memory_budget: int | None = None):
    """The function each barrier task runs (built on the driver, run on the executors): one result
    row per task (rows, commands served, peak RSS of its Python worker). ``memory_budget``: bytes a
    task may keep resident (None: derived on the executor, :func:`_task_memory`)."""

    def run(batches):
        from pyspark import BarrierTaskContext

        ctx = BarrierTaskContext.get()
        part = ctx.partitionId()
        _limit_blas(ctx)
        memory = _task_memory(ctx, memory_budget)
        worker, err = _load_worker(worker_cls, batches, part, loader, memory)
        # (not the Block itself: the worker replaces its arrays, and a reference here would keep
        # the old ones alive, a spilled array's in-memory original included)
        n, sum_w = worker.block.n, worker.block.sum_w
        served = serve(address, token, part, n, worker.handle, timeout=timeout, load_error=err,
                       sum_w=sum_w, memory=memory.report())
        yield pa.RecordBatch.from_pydict({"partition": [part], "rows": [n], "commands": [served],
                                          "max_rss_mb": [_max_rss_mb()]}, schema=_RESULT_SCHEMA)

    return run
