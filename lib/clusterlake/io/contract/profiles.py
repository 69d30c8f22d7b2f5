"""The ``profiles`` table: one row per cluster, feature and run (:mod:`clusterlake.quality.profiles`
computes the figures)."""

from __future__ import annotations

import numpy as np

DDL = ("cluster_id int, feature string, mean double, std double, z double, rank int, "
       "population_mean double, population_std double, run_id string")


def rows(p, cluster_ids, run_id: str) -> list[tuple]:
    """The rows of a :class:`~clusterlake.quality.profiles.Profiles`; an empty cluster's mean and
    std are null."""
    out = []
    for i, cid in enumerate(cluster_ids):
        for j, f in enumerate(p.features):
            m, s = p.mean[i, j], p.std[i, j]
            pm, ps = p.pop_mean[j], p.pop_std[j]
            out.append((int(cid), f, None if np.isnan(m) else float(m), None if np.isnan(s) else float(s),
                        float(p.z[i, j]), int(p.rank[i, j]), None if np.isnan(pm) else float(pm),
                        None if np.isnan(ps) else float(ps), run_id))
    return out
