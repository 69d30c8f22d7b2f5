"""A barrier task's memory budget for its resident rows, and the spill to disk beyond it.

A task keeps its rows for the whole stage (:class:`~clusterlake.engine.blocks.Block`). When they
do not fit its budget it must not die: :meth:`TaskMemory.empty` hands out the stage's large
per-row arrays (the rows in input units, the model space) and, once the budget is used up, backs
the next one, whole, by a file on the executor's local disk, mapped into memory (``np.memmap``).
The kernels already work through the rows in blocks of a few thousand, so an iteration streams
through a spilled array: the operating system pages it in block by block and drops clean pages
under pressure, the way Spark's own disk-backed caching does. Nothing else changes: a spilled
array is an ``ndarray`` with the same values, and every command gives the same result (tested).
When the model space (read by every iteration) would spill but the input rows (read at the end)
are in memory, the rows go to disk instead (:meth:`TaskMemory.to_disk`).

The file's blocks are reserved when it is made (a full disk is a clear error, not a crash when a
page is first written) and it is unlinked at once: its space returns to the disk when the task
ends, however it ends.

The budget (:func:`task_budget`): the job's ``job.task_memory_gb`` when set; else
``spark.executor.pyspark.memory`` (the ``PYSPARK_EXECUTOR_MEMORY_MB`` Spark gives its Python
workers) less a quarter for the load's buffers; else half of the memory of the executor's
machine or container, shared by the stage's tasks on that host. ``spark.executor.pyspark.memory``
also caps the worker's address space, which a mapping cannot escape: under such a limit a spill
that would pass it is an error that says so (:func:`address_space_limit`), and the input rows are
not moved to disk to make room (a mapping would free nothing).
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from typing import Optional

import numpy as np

from clusterlake.memory import machine_memory_bytes

log = logging.getLogger(__name__)

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


def address_space_limit() -> Optional[int]:
    """This process's address-space limit (``RLIMIT_AS``), None when unlimited. PySpark sets it
    from ``spark.executor.pyspark.memory``, and a memory-mapped file counts against it."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def spill_directory() -> str:
    """The executor's first local directory (``spark.local.dir``, given to Python workers as
    ``SPARK_LOCAL_DIRS``), else the system's temporary directory."""
    dirs = [d for d in os.environ.get("SPARK_LOCAL_DIRS", "").split(",") if d]
    return dirs[0] if dirs else tempfile.gettempdir()


class TaskMemory:
    """One task's resident arrays against its budget (``None``: unlimited, nothing spills).

    Arrays are accounted by name (``"rows"``, ``"model"``) and spilled whole: an array that does
    not fit what is left of the budget goes to disk entire. Asking again under a name replaces the
    old array's share once the new one exists (the caller drops the old array; while it copies
    from it, both count). ``address_limit``: the process's address-space limit, which a mapping
    cannot escape (:func:`address_space_limit`).
    """

    def __init__(self, budget: Optional[int] = None, source: str = "", directory: Optional[str] = None,
                 address_limit: Optional[int] = None):
        self.budget = budget
        self.source = source
        self.directory = directory
        self.address_limit = address_limit
        self._held: dict[str, tuple[int, bool]] = {}  # name -> (bytes, spilled)

    @property
    def resident(self) -> int:
        return sum(b for b, spilled in self._held.values() if not spilled)

    @property
    def spilled(self) -> int:
        return sum(b for b, spilled in self._held.values() if spilled)

    def fits(self, nbytes: int, without: Optional[str] = None) -> bool:
        """Whether ``nbytes`` more fit the budget in memory (with ``without``'s share freed)."""
        held = self.resident
        if without is not None and without in self._held and not self._held[without][1]:
            held -= self._held[without][0]
        return self.budget is None or nbytes == 0 or held + nbytes <= self.budget

    def empty(self, shape: tuple, dtype, name: str) -> np.ndarray:
        """An uninitialised array of ``shape``: in memory while it fits what is left of the budget,
        else memory-mapped from a file on the local disk."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if self.fits(nbytes):
            self._held[name] = (nbytes, False)
            return np.empty(shape, dtype=dtype)
        if self.address_limit is not None and _address_space_used() + nbytes > self.address_limit:
            raise MemoryError(
                f"the task's {name} ({size(nbytes)}) do not fit its budget ({size(self.budget)}, {self.source}) and "
                f"cannot be spilled to disk either: this Python worker's address space is limited to "
                f"{size(self.address_limit)} (spark.executor.pyspark.memory sets that limit, as does `ulimit -v`), "
                "memory-mapped files included. Raise it, add executors, or unset it (the container's limit "
                "still applies) so the rows can spill")
        directory = self.directory or spill_directory()
        log.info("engine task: %s (%s) exceeds the budget (%s of %s held; %s): spilled to %s",
                 name, size(nbytes), size(self.resident), size(self.budget), self.source, directory)
        arr = _mapped(shape, dtype, directory)
        self._held[name] = (nbytes, True)
        return arr

    def to_disk(self, name: str, arr: np.ndarray, chunk_rows: int = 65_536) -> np.ndarray:
        """``arr`` (held under ``name``) copied to a memory-mapped file, chunk by chunk, to make
        room for a hotter array; the caller drops the in-memory one."""
        out = _mapped(arr.shape, arr.dtype, self.directory or spill_directory())
        for s0 in range(0, len(arr), chunk_rows):
            out[s0:s0 + chunk_rows] = arr[s0:s0 + chunk_rows]
        self._held[name] = (int(arr.nbytes), True)
        log.info("engine task: %s (%s) moved to local disk to keep a more used array in memory", name,
                 size(arr.nbytes))
        return out

    def release(self, name: str) -> None:
        """The caller dropped the array held under ``name``."""
        self._held.pop(name, None)

    def report(self) -> dict:
        """What the task holds, for the driver's log."""
        return {"budget": self.budget, "resident": self.resident, "spilled": self.spilled}


def _address_space_used() -> int:
    """This process's mapped address space in bytes (``/proc/self/statm``; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


_NO_FALLOCATE = {errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS}
"""posix_fallocate's errors that mean "not supported here" (a sparse file then), not "no room"."""


def _mapped(shape: tuple, dtype, directory: str) -> np.ndarray:
    """A writable array backed by a fresh file in ``directory``, its blocks reserved up front (a
    full disk is an error here, not a SIGBUS when a page is first written); the file is unlinked
    at once (the mapping keeps its pages until the array is dropped)."""
    os.makedirs(directory, exist_ok=True)
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    fd, path = tempfile.mkstemp(prefix="clusterlake-spill-", suffix=".f", dir=directory)
    try:
        try:
            os.posix_fallocate(fd, 0, max(nbytes, 1))
        except OSError as exc:
            if exc.errno not in _NO_FALLOCATE:  # ENOSPC, EDQUOT, EFBIG, ...
                raise OSError(exc.errno, f"no room on the local disk for a {size(nbytes)} spilled array in "
                                         f"{directory} ({os.strerror(exc.errno)}): free space there, point "
                                         "spark.local.dir at a larger disk, or raise job.task_memory_gb") from None
            os.ftruncate(fd, nbytes)  # a filesystem without fallocate: a sparse file
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
