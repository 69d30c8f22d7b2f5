"""A barrier task's memory budget for its resident rows, and the spill to disk beyond it.

A task keeps its rows for the whole stage (:class:`~clusterlake.engine.blocks.Block`). When they
do not fit its budget it must not die: :meth:`TaskMemory.empty` hands out the stage's large
per-row arrays (the rows in input units, the model space) and, once the budget is used up, backs
the next one by a file on the executor's local disk, mapped into memory (``np.memmap``). The
kernels already work through the rows in blocks of a few thousand, so an iteration streams through
a spilled array: the operating system pages it in block by block and drops clean pages under
pressure, the way Spark's own disk-backed caching does. Nothing else changes: a spilled array is an
``ndarray`` with the same values, and every command gives the same result (tested).

The file is unlinked as soon as it is mapped: its space returns to the disk when the task ends,
however it ends (a killed task leaves no file behind).

The budget (:func:`task_budget`): the job's ``job.task_memory_gb`` when set; else
``spark.executor.pyspark.memory`` (the ``PYSPARK_EXECUTOR_MEMORY_MB`` Spark gives its Python
workers) less a quarter for the load's buffers; else half of the memory of the executor's
machine or container, shared by the stage's tasks on that host.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

from clusterlake.memory import machine_memory_bytes

MiB = 1 << 20


def task_budget(explicit_bytes: Optional[int], tasks_on_host: int) -> tuple[int, str]:
    """The bytes one task may keep resident, and where that figure comes from (for the logs)."""
    if explicit_bytes is not None:
        return int(explicit_bytes), "job.task_memory_gb"
    pyspark_mb = os.environ.get("PYSPARK_EXECUTOR_MEMORY_MB")
    if pyspark_mb and pyspark_mb.isdigit() and int(pyspark_mb) > 0:
        return int(pyspark_mb) * MiB * 3 // 4, "spark.executor.pyspark.memory"
    share = max(1, int(tasks_on_host))
    return machine_memory_bytes() // 2 // share, f"half of the host's memory over {share} tasks"


def spill_directory() -> str:
    """The executor's first local directory (``spark.local.dir``, given to Python workers as
    ``SPARK_LOCAL_DIRS``), else the system's temporary directory."""
    dirs = [d for d in os.environ.get("SPARK_LOCAL_DIRS", "").split(",") if d]
    return dirs[0] if dirs else tempfile.gettempdir()


class TaskMemory:
    """One task's resident arrays against its budget (``None``: unlimited, nothing spills).

    Arrays are accounted by name (``"rows"``, ``"model"``): asking again under a name replaces
    the old array's share (the caller drops the old array).
    """

    def __init__(self, budget: Optional[int] = None, source: str = "", directory: Optional[str] = None):
        self.budget = budget
        self.source = source
        self.directory = directory
        self._held: dict[str, tuple[int, bool]] = {}  # name -> (bytes, spilled)

    @property
    def resident(self) -> int:
        return sum(b for b, spilled in self._held.values() if not spilled)

    @property
    def spilled(self) -> int:
        return sum(b for b, spilled in self._held.values() if spilled)

    def empty(self, shape: tuple, dtype, name: str) -> np.ndarray:
        """An uninitialised array of ``shape``: in memory while it fits what is left of the budget,
        else memory-mapped from a file on the local disk."""
        self._held.pop(name, None)
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if self.budget is None or self.resident + nbytes <= self.budget or nbytes == 0:
            self._held[name] = (nbytes, False)
            return np.empty(shape, dtype=dtype)
        self._held[name] = (nbytes, True)
        log.info("engine task: %s (%s) exceeds the budget (%s of %s held; %s): spilled to %s",
                 name, size(nbytes), size(self.resident), size(self.budget), self.source,
                 self.directory or spill_directory())
        return _mapped(shape, dtype, self.directory or spill_directory())

    def report(self) -> dict:
        """What the task holds, for the driver's log."""
        return {"budget": self.budget, "resident": self.resident, "spilled": self.spilled}


def _mapped(shape: tuple, dtype, directory: str) -> np.ndarray:
    """A writable array backed by a fresh file in ``directory``; the file is unlinked at once (the
    mapping keeps its pages until the array is dropped)."""
    os.makedirs(directory, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="clusterlake-spill-", suffix=".f", dir=directory)
    try:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        os.ftruncate(fd, nbytes)
        with os.fdopen(fd, "r+b") as f:
            fd = -1
            arr = np.memmap(f, dtype=dtype, mode="r+", shape=shape)
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(path)
    return arr


def describe(reports: list[Optional[dict]]) -> str:
    """The tasks' memory reports in one phrase for the driver's log."""
    reports = [r for r in reports if r]
    if not reports:
        return "memory not reported"
    top = max(r["resident"] for r in reports)
    spilled = sum(r["spilled"] for r in reports)
    budgets = {r["budget"] for r in reports}
    budget = "unlimited" if None in budgets else f"{size(min(budgets))} per task"
    text = f"up to {size(top)} resident per task (budget {budget})"
    if spilled:
        text += f", {size(spilled)} spilled to local disk"
    return text


def size(nbytes: int) -> str:
    """Bytes for a log line: ``812 KiB``, ``1.4 GiB``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}" if unit == "GiB" else f"{nbytes / scale:,.0f} {unit}"
    return f"{nbytes} B"
