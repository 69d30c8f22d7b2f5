"""One run at a time per output path.

Two overlapping runs on the same tables would break the per-run atomicity: the second one's
start-up recovery (:func:`~clusterlake.io.tables.recover_interrupted`) would take the first one's
publish journal for a dead run's and roll its commits back. So a run holds
``<output>/_clusterlake/lock.json`` (run id, host, pid, start time and a heartbeat refreshed every
``heartbeat`` seconds by a daemon thread) from before that recovery until it ends.

A run that finds a live lock stops with :class:`RunInProgressError` (exit code 75, "try again
later": a scheduler may retry) naming the holder. A lock whose heartbeat is older than
``stale_after`` (or whose process is gone, when it ran on this host) belongs to a driver that
died (SIGKILL, lost machine): it is taken over with a warning, and the recovery then finishes that
run's journal.

On a local or POSIX-like filesystem the lock is created atomically (``O_EXCL``). Object stores
have no create-if-absent through pyarrow: there the lock is written, read back and checked, which
catches all but a race within the same second; schedulers should still run one job per output path
(Airflow ``max_active_runs=1``, ``flock`` with cron: see docs/scheduling.md).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
from typing import Optional

from clusterlake.errors import ClusterlakeError
from clusterlake.io.fs import Location

log = logging.getLogger(__name__)


class RunInProgressError(ClusterlakeError):
    """Another run holds the output path's lock."""

    exit_code = 75  # EX_TEMPFAIL: retry later


def _now() -> float:
    return time.time()


def _namespace() -> str:
    """This machine boot and PID namespace: pids are only comparable within the same one (two
    containers can share a hostname, not their pids)."""
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
        return f"{boot}:{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _dead_here(held: dict) -> bool:
    """The holder ran on this host, in this PID namespace, and its process is gone (a driver
    killed here, e.g. in client mode on the same edge node): no need to wait for its heartbeat."""
    if (held.get("host") != socket.gethostname() or not isinstance(held.get("pid"), int)
            or not held.get("ns") or held.get("ns") != _namespace()):
        return False
    try:
        os.kill(held["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{held['pid']}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


class RunLock:
    def __init__(self, root: Location, run_id: str, heartbeat: float = 30.0, stale_after: float = 600.0):
        self.root = root
        self.loc = root.child("_clusterlake", "lock.json")
        self._root_existed = True
        self.run_id = run_id
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self._stop = threading.Event()
        self._write = threading.Lock()  # heartbeat writes vs release
        self.lost: Optional[str] = None  # set when another run took the lock over
        self._thread: Optional[threading.Thread] = None
        self.started = _now()

    def _payload(self) -> bytes:
        return json.dumps({"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
                           "ns": _namespace(), "started_at": self.started, "heartbeat_at": _now()}).encode()

    def _read(self) -> Optional[dict]:
        try:
            return json.loads(self.loc.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # half-written or unreadable: treat by its age
            log.warning("unreadable run lock %s: %s", self.loc.uri, exc)
            info = self.loc.fs.get_file_info(self.loc.path)
            mtime = info.mtime.timestamp() if info.mtime else 0.0
            return {"run_id": "?", "heartbeat_at": mtime}

    def _create(self) -> bool:
        """Create the lock if absent; False if someone else holds it."""
        if self.loc.is_local:
            os.makedirs(os.path.dirname(self.loc.path), exist_ok=True)
            try:
                fd = os.open(self.loc.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(self._payload())
            return True
        if self._read() is not None:
            return False
        self.loc.write_bytes(self._payload())
        return (self._read() or {}).get("run_id") == self.run_id

    def _remove_if_unchanged(self, judged: dict) -> None:
        """Delete the stale lock ``judged`` unless it changed meanwhile (two runs taking over the
        same stale lock: only one may delete it; the other then finds the winner's live lock)."""
        if not self.loc.is_local:
            if self._read() == judged:
                self.loc.delete()
            return
        import fcntl

        with open(os.path.join(os.path.dirname(self.loc.path), ".takeover"), "w") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            if self._read() == judged:
                os.remove(self.loc.path)

    def acquire(self) -> "RunLock":
        self._root_existed = self.root.exists()
        for _ in range(3):
            if self._create():
                break
            held = self._read()
            if held is None:  # released between our two looks
                continue
            age = _now() - float(held.get("heartbeat_at", 0.0))
            if age <= self.stale_after and not _dead_here(held):
                since = dt.datetime.fromtimestamp(float(held.get("started_at", 0.0)), dt.timezone.utc)
                raise RunInProgressError(
                    f"another run ({held.get('run_id')}, pid {held.get('pid')} on {held.get('host')}, started "
                    f"{since:%Y-%m-%d %H:%M:%S} UTC) is writing to this output path (lock {self.loc.uri}, "
                    f"heartbeat {age:.0f} s ago). Run one job per output path at a time; if that run is "
                    f"dead, its lock expires {self.stale_after - age:.0f} s from now (or delete the file)"
                )
            log.warning("taking over the lock of run %s (%s: its driver died)", held.get("run_id"),
                        "its process is gone" if _dead_here(held) else f"no heartbeat for {age:.0f} s")
            self._remove_if_unchanged(held)
        else:
            raise RunInProgressError(f"could not take the run lock {self.loc.uri}; another run keeps taking it")
        self._thread = threading.Thread(target=self._beat, name="clusterlake-run-lock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            with self._write:
                if self._stop.is_set():
                    return
                try:
                    held = json.loads(self.loc.read_bytes())
                except FileNotFoundError:
                    held = None
                except Exception as exc:  # transient: keep the lock, try again at the next beat
                    log.warning("could not read the run lock %s: %s", self.loc.uri, exc)
                    continue
                if held is not None and held.get("run_id") != self.run_id:
                    self.lost = f"run {held.get('run_id')} took over the lock {self.loc.uri}"
                    log.error("%s; this run will not publish", self.lost)
                    return
                try:
                    self.loc.write_bytes(self._payload())
                except Exception as exc:  # keep beating: a transient store error must not end the run
                    log.warning("could not refresh the run lock %s: %s", self.loc.uri, exc)

    def assert_held(self) -> None:
        """Raise if another run took this run's lock over (called before recovery and before every
        commit, so a run that lost its lock never publishes)."""
        if self.lost is None:
            try:
                held = json.loads(self.loc.read_bytes())
            except FileNotFoundError:
                held = {}
            except Exception:  # unreadable now: the heartbeat thread decides
                held = None
            if held is not None and held.get("run_id") != self.run_id:
                self.lost = f"run {held.get('run_id')} took over the lock {self.loc.uri}" if held else \
                    f"the lock {self.loc.uri} disappeared"
        if self.lost is not None:
            raise RunInProgressError(f"this run lost its lock ({self.lost}); nothing more is committed")

    def release(self) -> None:
        self._stop.set()
        with self._write:
            if self._thread is not None:
                self._thread.join(timeout=0)
            try:
                held = self._read()
                if held is not None and held.get("run_id") == self.run_id:
                    self.loc.delete()
            except Exception as exc:
                log.warning("could not remove the run lock %s: %s", self.loc.uri, exc)
        if self.root.is_local:  # a run that wrote nothing (e.g. bad input) leaves no directories
            dirs = [os.path.dirname(self.loc.path)] + ([] if self._root_existed else [self.root.path])
            for d in dirs:
                try:
                    os.rmdir(d)
                except OSError:  # not empty (journals, tables): keep
                    pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
