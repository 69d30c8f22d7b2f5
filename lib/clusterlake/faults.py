"""Pause points for fault-injection tests (the standalone-cluster test kills a worker or the driver
at a known moment). Inert unless ``CLUSTERLAKE_PAUSE_AT`` is set.

``CLUSTERLAKE_PAUSE_AT=engine.lloyd@3`` makes the driver stop the 3rd time it reaches the pause
point ``engine.lloyd`` (before the 3rd Lloyd iteration), write
``$CLUSTERLAKE_PAUSE_DIR/engine.lloyd@3.paused`` (JSON: the driver's pid and what the point
reports, e.g. the barrier tasks' pids and hosts) and wait until a file ``engine.lloyd@3.resume``
appears there (at most ``CLUSTERLAKE_PAUSE_TIMEOUT`` seconds, default 600). Each point pauses at
most once per process. Several points: comma-separated.

Points:

* ``rows.loaded``: the nightly job's validated rows are loaded into the engine's tasks (from here
  on nothing reads the input again, unless a lost task makes the stage load it again). Reports
  ``run_id`` and ``rows``.
* ``engine.lloyd``: before each Lloyd iteration of the K-means fit.
* ``engine.em``: before each EM iteration of a Gaussian mixture's fit (reports ``iteration`` and
  the barrier ``tasks``, as ``engine.lloyd``).
* ``write.staged``: after each table is staged, i.e. its parquet files are written where readers
  do not see them (``TableStore.stage``/``stage_files``; a job stages assignments, centroids,
  metrics, profiles, lineage, then runs inside the publish; an update centroids, assignments, metrics, runs; the
  stream one table per micro-batch). Reports ``table``, ``run_id`` and ``path`` (the staged
  directory). ``write.staged@2`` in a full run: assignments and centroids are staged and the
  run's model directory is saved.
* ``model.saved``: right after the run's model directory ``<output>/model/<run_id>/`` is saved
  (before anything is committed). Reports ``run_id`` and ``path``.
* ``publish.commit``: before each table commit of a run (centroids, assignments, metrics,
  profiles, lineage, runs).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter

log = logging.getLogger(__name__)

ENV = "CLUSTERLAKE_PAUSE_AT"
DIR_ENV = "CLUSTERLAKE_PAUSE_DIR"
TIMEOUT_ENV = "CLUSTERLAKE_PAUSE_TIMEOUT"

_hits: Counter = Counter()


def _wanted() -> dict[str, int]:
    out = {}
    for spec in os.environ.get(ENV, "").split(","):
        spec = spec.strip()
        if not spec:
            continue
        name, _, nth = spec.partition("@")
        try:
            out[name] = int(nth or 1)
        except ValueError:
            log.warning("ignoring %s entry %r (expected NAME@N)", ENV, spec)
    return out


def pause_point(name: str, **info) -> None:
    """Count a visit to ``name``; pause here if ``CLUSTERLAKE_PAUSE_AT`` asks for this visit."""
    if ENV not in os.environ:
        return
    _hits[name] += 1
    nth = _wanted().get(name)
    if nth is None or _hits[name] != nth:
        return
    folder = os.environ.get(DIR_ENV, ".")
    os.makedirs(folder, exist_ok=True)
    tag = os.path.join(folder, f"{name}@{nth}")
    payload = {"point": name, "visit": nth, "pid": os.getpid(), **info}
    with open(tag + ".paused.tmp", "w") as f:
        json.dump(payload, f, default=str)
    os.replace(tag + ".paused.tmp", tag + ".paused")
    timeout = float(os.environ.get(TIMEOUT_ENV, "600"))
    log.warning("fault injection: paused at %s (visit %d); waiting for %s.resume", name, nth, tag)
    deadline = time.time() + timeout
    while not os.path.exists(tag + ".resume"):
        if time.time() > deadline:
            log.warning("fault injection: no resume file after %.0f s; going on", timeout)
            break
        time.sleep(0.05)
    log.warning("fault injection: resumed at %s", name)


def reset() -> None:
    """Forget the visits counted so far (tests run several fits in one process)."""
    _hits.clear()
