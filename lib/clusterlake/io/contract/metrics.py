"""The ``metrics`` table: one row per (scope, algorithm, metric[, cluster_id]) of a run (long format)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class Metric:
    scope: str  # full | sample | auto_k | drift
    metric: str
    value: float
    sample_size: int
    algorithm: str = "kmeans"  # kmeans | dbscan | hdbscan | hierarchical
    k: Optional[int] = None  # clusters of that algorithm (a hierarchical level); None = the K-means k
    cluster_id: Optional[int] = None  # a per-cluster metric (scope drift); None = the whole run


DDL = ("scope string, algorithm string, metric string, value double, k int, sample_size long, "
       "cluster_id int, run_id string")


def rows(run_id: str, metrics: list[Metric], k: int) -> list[tuple]:
    """The table's rows; ``k`` is the run's K-means k, used where a metric has no k of its own."""
    return [(m.scope, m.algorithm, m.metric, float(m.value), int(k if m.k is None else m.k), int(m.sample_size),
             None if m.cluster_id is None else int(m.cluster_id), run_id)
            for m in metrics]
