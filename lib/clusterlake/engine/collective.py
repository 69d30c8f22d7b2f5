"""A driver-led collective for iterative algorithms on Spark: data loaded once, statistics per step.

Moving rows from Spark's JVM to Python costs far more than the math of one K-means iteration
(see the README's performance section), so an iterative fit must not re-read its input per
iteration. Like ``xgboost.spark`` (a tracker on the driver, collectives in the tasks), the fit
runs as **one barrier stage**: every task loads its partition into a numpy block once, connects to
a small TCP server on the driver, and then executes the driver's commands ("partial statistics for
these centres", "sample rows", ...) against that block until told to stop. The driver sums the
replies in partition order (deterministic for a fixed partitioning) and decides the next step.
Per step only commands and k x d statistics cross the network.

Why not Spark's own ``BarrierTaskContext.allGather``: it polls in 1-second sleeps, which is fine
for a rendezvous and far too slow per iteration.

Wire format (both ways): ``b"CLK1"``, a big-endian u64 frame length, a u32 header length, a JSON
header, then the raw bytes of the arrays the header lists (name, dtype from a fixed whitelist,
shape). Nothing is pickled or evaluated; a connection must present the run's random token first.

Barrier stages need every task scheduled at once: the number of tasks is at most the number of
free task slots, and they do not run with dynamic allocation. A task that raises sends its error
first: the fit fails with it (:class:`CollectiveError`). A task that is *lost* (its executor or
Python worker died: the connection drops, or the Spark job fails without an error frame) raises
:class:`TaskLost`, which :class:`~clusterlake.engine.stage.BarrierStage` answers by starting
the stage again on the slots that are left and restoring the tasks' state from the driver.

This module knows nothing of the algorithm: a command is a name, a JSON header and named arrays;
what a task does with it is its worker's business (:mod:`clusterlake.engine.worker`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import secrets
import socket
import struct
import threading
import time
from typing import Callable, Optional

import numpy as np

log = logging.getLogger(__name__)

MAGIC = b"CLK1"
_DTYPES = {"float64", "float32", "int64", "int32", "bool", "uint8"}  # uint8: opaque bytes (Arrow IPC)
_MAX_FRAME = 1 << 34  # 16 GiB: a sanity bound, not a limit anyone should hit


class CollectiveError(RuntimeError):
    """The barrier tasks and the driver lost each other (a task failed, or the driver went away)."""


class TaskLost(CollectiveError):
    """A barrier task disappeared without reporting an error (executor or worker lost, Python
    worker killed). Recoverable: the driver holds the state, the data can be loaded again."""


# ----------------------------------------------------------------------------------------------
# framing


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        r = sock.recv_into(view[got:], n - got)
        if r == 0:
            raise CollectiveError("connection closed by peer")
        got += r
    return bytes(buf)


def send_msg(sock: socket.socket, header: dict, arrays: Optional[dict] = None) -> None:
    """Send one frame: a JSON header and named numpy arrays (C order, whitelisted dtypes)."""
    for part in _frame(header, arrays):
        if len(part):
            sock.sendall(part)


def _frame(header: dict, arrays: Optional[dict] = None) -> list:
    """The byte chunks of one frame (raises on a bad dtype or an unserialisable header)."""
    arrays = arrays or {}
    specs, blobs = [], []
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        if a.dtype.name not in _DTYPES:
            raise TypeError(f"array {name!r} has dtype {a.dtype}, not one of {sorted(_DTYPES)}")
        specs.append([name, a.dtype.name, list(a.shape)])
        blobs.append(a.data.cast("B") if a.size else b"")
    head = json.dumps({**header, "_arrays": specs}).encode()
    total = 4 + len(head) + sum(len(b) for b in blobs)
    return [MAGIC + struct.pack(">QI", total, len(head)) + head, *blobs]


def recv_msg(sock: socket.socket) -> tuple[dict, dict]:
    """Receive one frame sent by :func:`send_msg`."""
    pre = _recv_exact(sock, 16)
    if pre[:4] != MAGIC:
        raise CollectiveError("bad frame (not a clusterlake collective peer)")
    total, hlen = struct.unpack(">QI", pre[4:])
    if total > _MAX_FRAME or hlen > total:
        raise CollectiveError(f"bad frame length {total}")
    header = json.loads(_recv_exact(sock, hlen))
    arrays = {}
    for name, dtype, shape in header.pop("_arrays", []):
        if dtype not in _DTYPES:
            raise CollectiveError(f"bad dtype {dtype!r} in frame")
        dt = np.dtype(dtype)
        n = int(np.prod(shape)) if shape else 1
        raw = _recv_exact(sock, n * dt.itemsize) if n else b""
        arrays[name] = np.frombuffer(raw, dtype=dt).reshape(shape).copy() if n else np.empty(shape, dt)
    return header, arrays


# ----------------------------------------------------------------------------------------------
# driver side


_PY_ERROR = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Warning)): (.+)$", re.M)


def python_error_line(err: BaseException) -> str:
    """The most telling exception line inside a Spark job failure (a JVM stack trace that wraps
    the Python worker's traceback): the last Python exception, else the first JVM one, else the
    first line of the message."""
    text = str(err)
    found = list(_PY_ERROR.finditer(text))
    jvm = [m for m in found if m.group(1).startswith(("org.", "java.", "scala.", "py4j."))]
    python = [m for m in found if m not in jvm]
    m = python[-1] if python else (jvm[0] if jvm else None)
    if m is not None:
        return f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2).strip()}"
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def is_cancellation(err: BaseException) -> bool:
    """A Spark job that ended because someone cancelled it or stopped the context: not a loss to
    recover from."""
    text = str(err)
    return any(m in text for m in ("cancelled", "canceled", "SparkContext was shut down",
                                   "SparkContext has been shutdown", "Cannot call methods on a stopped SparkContext"))


class Coordinator:
    """The driver's end: accepts the barrier tasks, then sends them commands and gathers replies.

    Runs on the driver. ``job_error`` is polled while waiting so that a failed Spark job (a task
    that raised, a stage that could not be scheduled) ends the wait with that error instead of a
    hang.
    """

    def __init__(self, n_tasks: int, advertise_host: str, job_error: Callable[[], Optional[BaseException]],
                 register_timeout: float = 600.0, failed_job_is_loss: bool = False):
        self.n_tasks = n_tasks
        # while reloading after a lost task, a job that fails without a task's error report is one
        # more loss (a FetchFailed, another executor gone), not a fault of the data
        self.failed_job_is_loss = failed_job_is_loss
        self.token = secrets.token_hex(16)
        self.job_error = job_error
        self.register_timeout = register_timeout
        self._server = socket.create_server(("", 0), family=socket.AF_INET, backlog=max(16, n_tasks * 2))
        self.address = (advertise_host, self._server.getsockname()[1])
        self.conns: list[socket.socket] = []
        self.task_rows: list[int] = []
        self.task_sum_w: list[float] = []  # per task: the total weight of its rows (rows if unweighted)
        self.tasks: list[dict] = []  # per task, in partition order: partition, rows, pid, host

    # -- setup
    def accept_all(self) -> None:
        """Wait until every task connected and loaded its block (its hello carries its row count)."""
        by_part: dict[int, tuple[socket.socket, int]] = {}
        deadline = time.time() + self.register_timeout
        pending: list[socket.socket] = []
        while len(by_part) < self.n_tasks:
            self._raise_if_job_failed()
            if time.time() > deadline:
                raise CollectiveError(
                    f"only {len(by_part)} of {self.n_tasks} barrier tasks reported within "
                    f"{self.register_timeout:.0f} s; the fit needs {self.n_tasks} free task slots at once"
                )
            ready, _, _ = select.select([self._server] + pending, [], [], 0.2)
            for s in ready:
                if s is self._server:
                    conn, _ = self._server.accept()
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    pending.append(conn)
                    continue
                pending.remove(s)
                try:
                    hello, _ = recv_msg(s)
                except (CollectiveError, OSError, ValueError):
                    s.close()
                    continue
                if hello.get("token") != self.token or not isinstance(hello.get("partition"), int):
                    log.warning("rejected a connection without this fit's token")
                    s.close()
                    continue
                if "error" in hello:
                    # the cause is usually upstream (the packing step failed and cut the stream):
                    # give the Spark job a moment to report it and prefer its message
                    for _ in range(50):
                        self._raise_if_job_failed()
                        time.sleep(0.2)
                    raise CollectiveError(f"task {hello['partition']} could not load its data: {hello['error']}")
                old = by_part.get(hello["partition"])
                if old is not None:  # a retried task attempt replaces the one that died
                    old[0].close()
                by_part[hello["partition"]] = (s, hello)
        for p in sorted(by_part):
            conn, hello = by_part[p]
            self.conns.append(conn)
            self.task_rows.append(int(hello["rows"]))
            self.task_sum_w.append(float(hello.get("sum_w", hello["rows"])))
            self.tasks.append({k: hello.get(k) for k in ("partition", "rows", "pid", "host", "memory")})
        for s in pending:
            s.close()

    def _raise_if_job_failed(self) -> None:
        err = self.job_error()
        if err is not None:
            kind = TaskLost if self.failed_job_is_loss and not is_cancellation(err) else CollectiveError
            raise kind(f"the barrier stage failed: {python_error_line(err)}") from err

    # -- steps
    def describe(self, i: int) -> str:
        t = self.tasks[i] if i < len(self.tasks) else {}
        return f"task {i} (pid {t.get('pid')} on {t.get('host')})"

    def call(self, op: str, arrays: Optional[dict] = None, per_task: Optional[list[dict]] = None,
             **params) -> list[tuple[dict, dict]]:
        """Send ``op`` to every task (``per_task[i]`` extra params for task i) and return the
        replies in partition order.

        Raises :class:`CollectiveError` when a task reports an error, :class:`TaskLost` when a
        task disappears without one (its connection drops, or the Spark job fails).
        """
        for i, c in enumerate(self.conns):
            extra = per_task[i] if per_task else {}
            try:
                send_msg(c, {"op": op, **params, **extra}, arrays)
            except OSError as exc:
                raise TaskLost(f"lost barrier {self.describe(i)} while sending '{op}': {exc}") from exc
        replies: list = [None] * len(self.conns)
        pending = {c: i for i, c in enumerate(self.conns)}
        lost: Optional[TaskLost] = None
        while pending:
            ready, _, _ = select.select(list(pending), [], [], 0.5)
            if not ready:
                if lost is not None:  # the others had their moment to report an error
                    break
                err = self.job_error()
                if err is None:
                    continue
                # the job ended: read any error frame already on its way before calling it a loss
                ready, _, _ = select.select(list(pending), [], [], 1.0)
                if not ready:
                    i = min(pending.values())
                    raise TaskLost(f"the barrier stage failed during '{op}' ({self.describe(i)} did not "
                                   f"answer): {python_error_line(err)}") from err
            for c in ready:
                i = pending.pop(c)
                try:
                    head, arrs = recv_msg(c)
                except (CollectiveError, OSError) as exc:
                    # keep reading the others: a task that raised sends its error before it dies
                    # and takes the rest of the stage with it, and that error wins over the loss
                    lost = lost or TaskLost(f"lost barrier {self.describe(i)} during '{op}': {exc}")
                    continue
                if "error" in head:
                    raise CollectiveError(f"barrier task {i} failed during '{op}': {head['error']}")
                replies[i] = (head, arrs)
        if lost is not None:
            raise lost
        return replies

    def close(self) -> None:
        for c in self.conns:
            try:
                send_msg(c, {"op": "stop"})
            except OSError:
                pass
            c.close()
        self.conns = []
        self._server.close()


# ----------------------------------------------------------------------------------------------
# task side


def serve(address: tuple[str, int], token: str, partition: int, rows: int,
          handler: Callable[[dict, dict], tuple[dict, dict]], timeout: float = 3600.0,
          load_error: Optional[str] = None, sum_w: Optional[float] = None, memory: Optional[dict] = None) -> int:
    """Connect to the driver and execute its commands until ``stop``. Runs in a barrier task.

    The hello carries the task's row count and total weight ``sum_w`` (rows when omitted), so the
    driver knows the layout after every (re)launch without a command, and what its rows take in
    ``memory`` (:meth:`~clusterlake.engine.spill.TaskMemory.report`). Returns the number of
    commands served. An exception inside ``handler`` is sent back to the driver (which raises it
    with the task's number) and re-raised here.
    """
    sock = None
    last: Optional[OSError] = None
    for attempt in range(50):
        try:
            sock = socket.create_connection(address, timeout=30)
            break
        except OSError as exc:
            last = exc
            time.sleep(min(0.1 * (attempt + 1), 1.0))
    if sock is None:
        raise CollectiveError(f"cannot reach the driver at {address[0]}:{address[1]}: {last}")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    hello = {"token": token, "partition": partition, "rows": rows, "pid": os.getpid(),
             "host": socket.gethostname(), "sum_w": float(rows if sum_w is None else sum_w), "memory": memory}
    if load_error:
        hello["error"] = load_error
    send_msg(sock, hello)
    served = 0
    try:
        while True:
            try:
                head, arrs = recv_msg(sock)
            except socket.timeout:
                raise CollectiveError(f"no command from the driver for {timeout:.0f} s") from None
            if head.get("op") == "stop":
                return served
            try:
                out_head, out_arrs = handler(head, arrs)
                frame = _frame({**out_head}, out_arrs)  # a reply that cannot be framed is an error too
            except Exception as exc:
                send_msg(sock, {"error": f"{type(exc).__name__}: {exc}"})
                raise
            for part in frame:
                if len(part):
                    sock.sendall(part)
            served += 1
    finally:
        sock.close()


class JobThread(threading.Thread):
    """Runs a Spark action in the background (keeping the caller's job group, tags and local
    properties, plus a tag of its own so :meth:`cancel` stops exactly this job) and records its
    result or error for :class:`Coordinator` to poll."""

    def __init__(self, spark, action: Callable[[], object]):
        super().__init__(daemon=True, name="clusterlake-barrier-job")
        self._action = action
        self.result = None
        self.error: Optional[BaseException] = None
        sc = spark.sparkContext
        self._props = {}
        for key in ("spark.jobGroup.id", "spark.job.description", "spark.scheduler.pool"):
            v = sc.getLocalProperty(key)
            if v is not None:
                self._props[key] = v
        try:
            self._tags = set(sc.getJobTags())
        except Exception:  # pragma: no cover (older Spark)
            self._tags = set()
        self.tag = f"clusterlake-engine-{secrets.token_hex(6)}"
        self._sc = sc

    def run(self) -> None:
        try:
            for k, v in self._props.items():
                self._sc.setLocalProperty(k, v)
            # a cancelled barrier task is interrupted at once instead of finishing its command
            self._sc.setLocalProperty("spark.job.interruptOnCancel", "true")
            for t in self._tags | {self.tag}:
                self._sc.addJobTag(t)
            self.result = self._action()
        except BaseException as exc:  # recorded, raised on the driver's main thread
            self.error = exc

    def cancel(self) -> None:
        """Cancel this thread's Spark job (and any retried attempt of its stage)."""
        try:
            self._sc.cancelJobsWithTag(self.tag)
        except Exception as exc:  # the context may be gone already
            log.debug("could not cancel %s: %s", self.tag, exc)
