"""The ``lineage`` table: one row per cluster event (persist, split, merge, new, retired) and run."""

from __future__ import annotations

from typing import Optional

DDL = ("run_id string, previous_run_id string, cluster_id int, previous_cluster_id int, event string, "
       "distance double, overlap_previous double, overlap_current double, size long, "
       "previous_size long, basis string")
_KEYS = ("cluster_id", "previous_cluster_id", "event", "distance", "overlap_previous",
         "overlap_current", "size", "previous_size", "basis")
_INTS = ("cluster_id", "previous_cluster_id", "size", "previous_size")
_FLOATS = ("distance", "overlap_previous", "overlap_current")


def _value(event: dict, key: str):
    v = event.get(key)
    if v is None or (isinstance(v, float) and v != v):  # missing or NaN: null
        return None
    return int(v) if key in _INTS else float(v) if key in _FLOATS else str(v)


def rows(run_id: str, previous_run_id: Optional[str], events: list[dict]) -> list[tuple]:
    """The rows of :func:`clusterlake.algorithms.lineage.lineage_rows`-shaped event dicts."""
    return [(run_id, previous_run_id, *(_value(e, key) for key in _KEYS)) for e in events]
