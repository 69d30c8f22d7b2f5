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
free task slots (``defaultParallelism // spark.task.cpus``), and they do not run with dynamic
allocation. A lost task ends the fit with an error naming the task (the driver stops waiting as
soon as the connection drops or the Spark job fails); the job can then be re-run.
"""

from __future__ import annotations

import json
import logging
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
_DTYPES = {"float64", "float32", "int64", "int32", "bool"}
_MAX_FRAME = 1 << 34  # 16 GiB: a sanity bound, not a limit anyone should hit


class CollectiveError(RuntimeError):
    """The barrier tasks and the driver lost each other (a task failed, or the driver went away)."""


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
    sock.sendall(MAGIC + struct.pack(">QI", total, len(head)) + head)
    for b in blobs:
        if len(b):
            sock.sendall(b)


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


class Coordinator:
    """The driver's end: accepts the barrier tasks, then sends them commands and gathers replies.

    Runs on the driver. ``job_error`` is polled while waiting so that a failed Spark job (a task
    that raised, a stage that could not be scheduled) ends the wait with that error instead of a
    hang.
    """

    def __init__(self, n_tasks: int, advertise_host: str, job_error: Callable[[], Optional[BaseException]],
                 register_timeout: float = 600.0):
        self.n_tasks = n_tasks
        self.token = secrets.token_hex(16)
        self.job_error = job_error
        self.register_timeout = register_timeout
        self._server = socket.create_server(("", 0), family=socket.AF_INET, backlog=max(16, n_tasks * 2))
        self.address = (advertise_host, self._server.getsockname()[1])
        self.conns: list[socket.socket] = []
        self.task_rows: list[int] = []

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
                by_part[hello["partition"]] = (s, int(hello["rows"]))
        for p in sorted(by_part):
            self.conns.append(by_part[p][0])
            self.task_rows.append(by_part[p][1])
        for s in pending:
            s.close()

    def _raise_if_job_failed(self) -> None:
        err = self.job_error()
        if err is not None:
            raise CollectiveError(f"the barrier stage failed: {python_error_line(err)}") from err

    # -- steps
    def call(self, op: str, arrays: Optional[dict] = None, per_task: Optional[list[dict]] = None,
             **params) -> list[tuple[dict, dict]]:
        """Send ``op`` to every task (``per_task[i]`` extra params for task i) and return the
        replies in partition order."""
        for i, c in enumerate(self.conns):
            extra = per_task[i] if per_task else {}
            try:
                send_msg(c, {"op": op, **params, **extra}, arrays)
            except OSError as exc:
                self._raise_if_job_failed()
                raise CollectiveError(f"lost barrier task {i}: {exc}") from exc
        replies = []
        for i, c in enumerate(self.conns):
            while True:
                ready, _, _ = select.select([c], [], [], 0.5)
                if ready:
                    break
                self._raise_if_job_failed()
            try:
                head, arrs = recv_msg(c)
            except (CollectiveError, OSError) as exc:
                time.sleep(0.5)  # let the job thread record why the task died
                self._raise_if_job_failed()
                raise CollectiveError(f"lost barrier task {i} during '{op}': {exc}") from exc
            if "error" in head:
                raise CollectiveError(f"barrier task {i} failed during '{op}': {head['error']}")
            replies.append((head, arrs))
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
          load_error: Optional[str] = None) -> int:
    """Connect to the driver and execute its commands until ``stop``. Runs in a barrier task.

    Returns the number of commands served. An exception inside ``handler`` is sent back to the
    driver (which raises it with the task's number) and re-raised here.
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
    hello = {"token": token, "partition": partition, "rows": rows}
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
            except Exception as exc:
                send_msg(sock, {"error": f"{type(exc).__name__}: {exc}"})
                raise
            send_msg(sock, out_head, out_arrs)
            served += 1
    finally:
        sock.close()


class JobThread(threading.Thread):
    """Runs a Spark action in the background (keeping the caller's job group and local
    properties) and records its result or error for :class:`Coordinator` to poll."""

    def __init__(self, spark, action: Callable[[], object]):
        super().__init__(daemon=True, name="clusterlake-barrier-job")
        self._action = action
        self.result = None
        self.error: Optional[BaseException] = None
        sc = spark.sparkContext
        self._props = {}
        for key in ("spark.jobGroup.id", "spark.job.description", "spark.scheduler.pool", "spark.job.interruptOnCancel"):
            v = sc.getLocalProperty(key)
            if v is not None:
                self._props[key] = v
        self._sc = sc

    def run(self) -> None:
        try:
            for k, v in self._props.items():
                self._sc.setLocalProperty(k, v)
            self.result = self._action()
        except BaseException as exc:  # recorded, raised on the driver's main thread
            self.error = exc
