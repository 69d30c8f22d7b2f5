"""The job's stage timer, and which stage is running now (for error messages).

``Stages`` times the named steps of a run (``read+validate``, ``kmeans``, ``write``, ...), logs
when each starts and ends and keeps the seconds for the ``runs`` table. The module also keeps the
stages that are running in this process, so that code far from the job (the CLI's error handler)
can say where a failure happened: :func:`current_stage` while it runs, :func:`stage_of` for an
exception that left a stage.

Runs on the driver only.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional

log = logging.getLogger("clusterlake")

_lock = threading.Lock()
_running: list[tuple[object, str]] = []  # (token, name), outermost first; every thread's stages
_ATTR = "clusterlake_stage"  # set on an exception as it leaves its innermost stage


class Stages:
    """Times the job's stages and logs what each did.

    Call it as a context manager; the ``note`` it yields is a dict whose items are added to the
    "done" log line.

    Attributes
    ----------
    seconds : dict[str, float]
        Wall-clock seconds of every stage that finished, by name (rounded to milliseconds).

    Examples
    --------
    >>> stage = Stages()
    >>> with stage("read+validate") as note:
    ...     note.update(rows=10)
    >>> list(stage.seconds)
    ['read+validate']
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[dict]:
        log.info("stage %s: started", name)
        t0 = time.time()
        note: dict = {}
        token = object()
        with _lock:
            _running.append((token, name))
        try:
            yield note
        except BaseException as exc:
            _tag(exc, name)
            log.debug("stage %s: failed after %.1f s (%s)", name, time.time() - t0, type(exc).__name__)
            raise
        finally:
            with _lock:
                _running[:] = [r for r in _running if r[0] is not token]
        took = time.time() - t0
        self.seconds[name] = round(took, 3)
        extra = ", ".join(f"{k}={v}" for k, v in note.items())
        log.info("stage %s: done in %.1f s%s", name, took, f" ({extra})" if extra else "")


def current_stage() -> Optional[str]:
    """The innermost stage running in this process (the latest one entered that has not ended),
    None when no stage is running."""
    with _lock:
        return _running[-1][1] if _running else None


def stage_of(exc: BaseException) -> Optional[str]:
    """The innermost stage ``exc`` was raised in (recorded as it left that stage), None if it was
    raised outside every stage."""
    return getattr(exc, _ATTR, None)


def _tag(exc: BaseException, name: str) -> None:
    if getattr(exc, _ATTR, None) is None:  # an outer stage must not overwrite the inner one
        try:
            setattr(exc, _ATTR, name)
        except (AttributeError, TypeError):  # an exception type without a __dict__
            pass
