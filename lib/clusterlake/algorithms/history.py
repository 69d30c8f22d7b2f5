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
from clusterlake.stages import spark_pass

log = logging.getLogger(__name__)


@dataclass
class Previous:
    """The model ``model/latest`` pointed at when this run started."""

    artifact: model_artifact.ModelArtifact
    centroids: Optional[np.ndarray]  # (m, p) in tonight's model space; None when not comparable
    radius: np.ndarray  # (m,) rms radius of each previous cluster (model space)
    sizes: np.ndarray  # (m,) rows per previous cluster (after updates: the running counts)
    reason: str = ""  # why the centroids are not comparable
    basis: str = "features changed"  # the lineage events' basis when they are not

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
    latest = model_artifact.latest_dir(model_root)
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


def previous_artifact(model_root, run_date: str) -> Optional[model_artifact.ModelArtifact]:
    """The model tonight's run compares with (stable ids, drift, warm start, feature contract).

    Normally the model ``model_root/latest`` shows. When tonight re-runs the date of that model
    (a re-run replaces the date's rows: the runs of that date, full or update, disappear from the
    tables), it is the newest model of an *earlier* state: the chain of ``previous_run_id`` is
    followed back past every run of ``run_date``, so a re-run is compared with what the run it
    replaces was compared with, and gets the same ids for the same input (new clusters are
    numbered from that earlier model's next id, as the replaced run's were).
    """
    art = load_latest(model_root)
    while art is not None and art.run_date == run_date:
        prev_id = art.lineage.get("previous_run_id")
        if not prev_id:
            log.info("run_date %s re-runs the first run (%s): there is no previous run to compare with",
                     run_date, art.run_id)
            return None
        prev_dir = model_root.child(prev_id)
        if not prev_dir.child("model.json").exists():
            log.warning("run_date %s re-runs run %s, whose previous run %s has no model under %s: "
                        "comparing with nothing (every cluster gets a new id)", run_date, art.run_id, prev_id,
                        prev_dir.uri)
            return None
        log.info("run_date %s re-runs run %s: comparing with the run before it, %s", run_date, art.run_id, prev_id)
        art = model_artifact.load(prev_dir.uri)
    return art


def _geometry(algorithm: str, distance: str) -> str:
    """What a model's radii and shifts are measured in: k-medoids' own distance, else Euclidean
    (K-means and bisecting, cosine included: Euclidean on the unit sphere)."""
    return f"kmedoids/{distance}" if algorithm == "kmedoids" else "euclidean"


def load_previous(art: Optional[model_artifact.ModelArtifact], prep: Preprocessor,
                  algorithm: str = "kmeans", distance: str = "euclidean") -> Optional[Previous]:
    """The previous run's model ``art`` with its centroids mapped into ``prep``'s model space.

    The centroids go back to input units through the previous preprocessor and forward through
    tonight's, so a refitted scaling/PCA does not break the comparison. With other feature columns,
    or a model measured in another distance (k-medoids under another metric than tonight's
    ``algorithm``/``distance``), the runs are not comparable: every cluster gets a fresh id (ids
    are never reused).
    """
    if art is None:
        return None
    radius, sizes = previous_radius(art), previous_sizes(art)
    if list(art.prep.feature_names) != list(prep.feature_names):
        reason = (f"the previous model (run {art.run_id}) has features {art.prep.feature_names}, "
                  f"this run {prep.feature_names}")
        return Previous(art, None, radius, sizes, reason)
    before, now = _geometry(art.algorithm, art.distance), _geometry(algorithm, distance)
    if before != now:
        reason = f"the previous model (run {art.run_id}) measures distances as {before}, this run as {now}"
        return Previous(art, None, radius, sizes, reason, "distance changed")
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

    from clusterlake.io.columns import col

    runs = prev.artifact.assignment_runs
    old = store.spark_read("assignments", [r for r, _ in runs], [d for _, d in runs], columns=[id_col, "cluster_id"])
    if old is None:
        log.info("lineage: no assignments of run %s to join with; splits and merges from centroid distances",
                 prev.run_id)
        return None
    # (the id column under a fixed name: a user's name may hold a dot, a space or a backtick)
    joined = (asg.select(col(id_col).alias("__id"), F.col("cluster_id").alias("__cur"))
              .join(old.select(col(id_col).alias("__id"), F.col("cluster_id").alias("__prev")), on="__id",
                    how="inner"))
    with spark_pass("lineage join"):
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
