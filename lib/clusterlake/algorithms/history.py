"""The previous run as tonight's job sees it: its model, its centroids in tonight's model space,
and how its rows moved (tonight's assignments joined with its assignments on the id column).

Runs on the driver. The join is distributed; collected: one (tonight's cluster, previous cluster,
count) row per pair that shares ids, at most k x m rows. The numpy side (matching, lineage events,
drift) is :mod:`clusterlake.algorithms.lineage`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

from clusterlake.io import model_artifact
from clusterlake.prep.transform import Preprocessor

log = logging.getLogger(__name__)


@dataclass
class Previous:
    """The model ``model/latest`` pointed at when this run started."""

    artifact: model_artifact.ModelArtifact
    centroids: Optional[np.ndarray]  # (m, p) in tonight's model space; None when not comparable
    radius: np.ndarray  # (m,) rms radius of each previous cluster (model space)
    sizes: np.ndarray  # (m,) rows per previous cluster (after updates: the running counts)
    reason: str = ""  # why the centroids are not comparable

    @property
    def run_id(self) -> str:
        return self.artifact.run_id

    @property
    def ids(self) -> np.ndarray:
        return np.asarray(self.artifact.cluster_ids, dtype=np.int64)

    @property
    def comparable(self) -> bool:
        return self.centroids is not None


def load_latest(model_root) -> Optional[model_artifact.ModelArtifact]:
    """The artifact ``model_root/latest`` shows, or None before the first committed run."""
    latest = model_root.child("latest")
    if not latest.child("model.json").exists():
        return None
    return model_artifact.load(latest.uri)


def previous_radius(art: model_artifact.ModelArtifact) -> np.ndarray:
    """Per-cluster rms radius; for models written before it was recorded, half the distance to
    the nearest other centroid (a radius-like scale, so thresholds in radii keep their meaning)."""
    r = art.cluster_stats.get("radius_rms")
    C = np.asarray(art.centroids, dtype=np.float64)
    if r is None:
        if len(C) < 2:
            return np.ones(len(C))
        d2 = ((C[:, None, :] - C[None, :, :]) ** 2).sum(-1)
        np.fill_diagonal(d2, np.inf)
        r = 0.5 * np.sqrt(d2.min(1))
    r = np.asarray(r, dtype=np.float64)
    pos = r[r > 0]
    floor = float(np.median(pos)) * 1e-3 if len(pos) else 1e-12
    return np.maximum(r, max(floor, 1e-12))


def previous_sizes(art: model_artifact.ModelArtifact) -> np.ndarray:
    s = art.cluster_stats.get("sizes")
    return np.asarray(s, dtype=np.float64) if s is not None else np.ones(len(art.cluster_ids))


def load_previous(model_root, prep: Preprocessor) -> Optional[Previous]:
    """The previous run's model with its centroids mapped into ``prep``'s model space.

    The centroids go back to input units through the previous preprocessor and forward through
    tonight's, so a refitted scaling/PCA does not break the comparison. With other feature columns
    the runs are not comparable: every cluster gets a fresh id (ids are never reused).
    """
    art = load_latest(model_root)
    if art is None:
        return None
    radius, sizes = previous_radius(art), previous_sizes(art)
    if list(art.prep.feature_names) != list(prep.feature_names):
        reason = (f"the previous model (run {art.run_id}) has features {art.prep.feature_names}, "
                  f"this run {prep.feature_names}")
        return Previous(art, None, radius, sizes, reason)
    C = prep.transform(art.prep.inverse_transform(np.asarray(art.centroids, dtype=np.float64)))
    return Previous(art, C, radius, sizes)


def overlap_counts(store, asg, id_col: str, prev: Previous, ids: np.ndarray) -> Optional[np.ndarray]:
    """(k, m) counts of ids in tonight's cluster position i and the previous cluster position j.

    Tonight's ``asg`` (id, cluster_id with stable ids ``ids``) is joined on ``id_col`` with the
    previous state's assignments (the rows of the previous full run and of the updates applied
    after it, read from the committed ``assignments`` table). None when there is no such table
    or no id is shared (the lineage then falls back to centroid distances).
    """
    from pyspark.sql import functions as F

    runs = prev.artifact.assignment_runs
    old = store.spark_read("assignments", [r for r, _ in runs], [d for _, d in runs], columns=[id_col, "cluster_id"])
    if old is None:
        log.info("lineage: no assignments of run %s to join with; splits and merges from centroid distances",
                 prev.run_id)
        return None
    joined = (asg.select(F.col(id_col), F.col("cluster_id").alias("__cur"))
              .join(old.select(F.col(id_col), F.col("cluster_id").alias("__prev")), on=id_col, how="inner"))
    rows = joined.groupBy("__cur", "__prev").count().collect()
    cur_pos = {int(c): i for i, c in enumerate(ids)}
    prev_pos = {int(c): j for j, c in enumerate(prev.ids)}
    out = np.zeros((len(ids), len(prev.ids)), dtype=np.float64)
    for r in rows:
        i, j = cur_pos.get(int(r["__cur"])), prev_pos.get(int(r["__prev"]))
        if i is not None and j is not None:
            out[i, j] += r["count"]
    if out.sum() == 0:
        log.info("lineage: no id of this run was in run %s; splits and merges from centroid distances", prev.run_id)
        return None
    return out
