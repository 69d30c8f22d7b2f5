"""The ``centroids`` table: one row per cluster and run (plus ``run_date``, the partition).

``weight`` (last, issue 24) is a Gaussian mixture component's mixing weight; null for every other
model (a table written before gains the column, null on its older rows)."""

from __future__ import annotations

from typing import Optional

import numpy as np

DDL = ("cluster_id int, size long, share double, centroid array<double>, centroid_model array<double>, "
       "radius_mean double, radius_rms double, radius_max double, parent_id int, run_id string, "
       "description string, exemplar_ids array<string>, weight double")


def cluster_figures(stats) -> dict:
    """The per-cluster figures the centroids table and the model artifact keep (arrays, index =
    position) from a :class:`~clusterlake.algorithms.cluster_stats.ClusterStats`: sizes, means_x (input
    units), radius_mean/rms/max (model space)."""
    c = np.asarray(stats.counts, dtype=np.float64)
    safe = np.maximum(c, 1.0)
    return {"sizes": c, "means_x": np.asarray(stats.means_x, dtype=np.float64),
            "radius_mean": np.where(c > 0, stats.sum_dist / safe, 0.0),
            "radius_rms": np.where(c > 0, np.sqrt(stats.sum_sq_dist / safe), 0.0),
            "radius_max": np.asarray(stats.max_dist, dtype=np.float64)}


def rows(run_id: str, figures: dict, centroids: np.ndarray, cluster_ids, parent_ids: Optional[np.ndarray] = None,
         descriptions: Optional[list[str]] = None, exemplars: Optional[list] = None,
         weights: Optional[np.ndarray] = None) -> list[tuple]:
    """One row per cluster from :func:`cluster_figures`-shaped arrays; an empty cluster has no
    mean and no radii (null), its model-space centroid is kept. ``exemplars``: the ids (text) of
    each cluster's rows nearest its centroid, nearest first (null when not computed);
    ``weights``: a mixture's mixing weights."""
    sizes = figures["sizes"]
    n = float(sizes.sum())
    out = []
    for i, cid in enumerate(cluster_ids):
        c = float(sizes[i])
        radius = [float(figures[key][i]) if c > 0 else None for key in ("radius_mean", "radius_rms", "radius_max")]
        out.append((
            int(cid), int(round(c)), c / n,
            [float(v) for v in figures["means_x"][i]] if c > 0 else None,
            [float(v) for v in centroids[i]], *radius,
            int(parent_ids[i]) if parent_ids is not None and parent_ids[i] >= 0 else None, run_id,
            descriptions[i] if descriptions is not None else None,
            list(exemplars[i]) if exemplars is not None else None,
            float(weights[i]) if weights is not None else None,
        ))
    return out
