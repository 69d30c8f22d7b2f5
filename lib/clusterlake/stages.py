"""The job's stage timer, its Spark pass timer, and which stage is running now (for errors).

``Stages`` times the named steps of a run (``read+validate``, ``kmeans``, ``write``, ...), logs
when each starts and ends and keeps the seconds for the ``runs`` table. :func:`spark_pass` times
one pass of Spark over the rows inside a stage (``moments``, ``cluster statistics``, ...): it is
logged with its seconds, named in Spark's UI (the job description) and listed on its stage's
"done" line, so a user sees where the time goes. The module also keeps the stages that are
running in this process, so that code far from the job (the CLI's error handler) can say where a
failure happened: :func:`current_stage` while it runs, :func:`stage_of` for an exception that
left a stage.

Runs on the driver only.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional

log = logging.getLogger("clusterlake")

_lock = threading.Lock()
_running: list[tuple[object, str, dict]] = []  # (token, name, its passes), outermost first; every thread's
_ATTR = "clusterlake_stage"  # set on an exception as it leaves its innermost stage


class Stages:
    """Times the job's stages and logs what each did.

    Call it as a context manager; the ``note`` it yields is a dict whose items are added to the
    "done" log line.

    Attributes
    ----------
    seconds : dict[str, float]
        Wall-clock seconds of every stage that finished, by name (rounded to milliseconds).
    passes : dict[str, dict[str, float]]
        The seconds of the Spark passes (:func:`spark_pass`) of every stage that finished, by
        stage then pass name (a pass run twice in one stage is summed).

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
        self.passes: dict[str, dict[str, float]] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[dict]:
        log.info("stage %s: started", name)
        t0 = time.time()
        note: dict = {}
        token, passes = object(), {}
        with _lock:
            _running.append((token, name, passes))
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
        self.passes[name] = {k: round(v, 3) for k, v in passes.items()}
        extra = ", ".join(f"{k}={v}" for k, v in note.items())
        if passes:
            extra += (", " if extra else "") + "spark passes: " + ", ".join(f"{k} {v:.1f}s" for k, v in passes.items())
        log.info("stage %s: done in %.1f s%s", name, took, f" ({extra})" if extra else "")


@contextmanager
def spark_pass(name: str) -> Iterator[None]:
    """Time one pass over the rows (one or more Spark jobs run by the code inside, or commands
    on the rows resident in the engine's tasks, :mod:`clusterlake.algorithms.resident`): log it
    with its seconds, show ``name`` as the job description in Spark's UI, and add the seconds to
    the innermost running stage (summed when the same pass runs twice). Outside every stage it
    only logs. Knows no Spark when pyspark was never imported (kernels and serving)."""
    sc = _active_spark_context()
    if sc is not None:
        sc.setJobDescription(f"clusterlake: {name}")
    t0 = time.time()
    try:
        yield
    finally:
        took = time.time() - t0
        if sc is not None:
            sc.setJobDescription(None)
        with _lock:
            if _running:
                passes = _running[-1][2]
                passes[name] = passes.get(name, 0.0) + took
        log.info("spark pass %s: %.1f s", name, took)


def _active_spark_context():
    mod = sys.modules.get("pyspark")
    return None if mod is None else mod.SparkContext._active_spark_context


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
