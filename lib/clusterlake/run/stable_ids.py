"""Stable cluster ids night over night, the lineage events and the drift of a run (issue 7; the
numpy side is :mod:`clusterlake.algorithms.lineage`)."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("clusterlake")


def match(previous, centroids: np.ndarray, max_distance: float, metric=None):
    """Stable ids for tonight's centroids: the previous run's ids where a centroid is matched
    (Hungarian method, within ``max_distance`` radii), fresh never-used ids otherwise."""
    from clusterlake.algorithms.lineage import match_clusters

    p = centroids.shape[1]
    none = (np.empty((0, p)), np.empty(0, dtype=np.int64), np.empty(0))
    if previous is None:
        return match_clusters(centroids, *none, max_distance, 0)
    nxt = previous.artifact.next_cluster_id
    if not previous.comparable:
        log.warning("stable ids: %s; every cluster gets a new id (from %d)", previous.reason, nxt)
        return match_clusters(centroids, *none, max_distance, nxt)
    m = match_clusters(centroids, previous.centroids, previous.ids, previous.radius, max_distance, nxt, metric)
    kept = int((m.prev_index >= 0).sum())
    log.info("stable ids against run %s: %d of %d clusters keep their id, %d new, %d retired "
             "(lineage.max_distance=%g radii)", previous.run_id, kept, len(centroids), len(centroids) - kept,
             len(m.retired), max_distance)
    return m


def events_and_drift(previous, matching, centroids, sizes, overlap, quality, lcfg, k, metric=None):
    """The lineage events of this run and its drift metrics (scope drift) against the previous run."""
    from clusterlake.algorithms import lineage

    ids = [int(c) for c in matching.ids]
    if previous is None or not previous.comparable:
        basis = "first run" if previous is None else previous.basis
        events = [dict(cluster_id=c, event="new", size=int(n), basis=basis) for c, n in zip(ids, sizes)]
        if previous is not None:
            events += [dict(previous_cluster_id=int(c), event="retired", previous_size=int(n), basis=basis)
                       for c, n in zip(previous.ids, previous.sizes)]
        return events, []
    cd = lineage.centroid_distances(centroids, previous.centroids, previous.radius, metric)
    events = lineage.lineage_rows(matching, previous.ids, sizes, previous.sizes, overlap=overlap,
                                  min_overlap=lcfg.min_overlap, centroid_dist=cd)
    drift = lineage.drift_metrics(matching, sizes, previous.sizes, previous.ids, overlap=overlap,
                                  quality=quality, prev_quality=previous.artifact.quality, k=k)
    return events, drift


def event_counts(events) -> dict:
    out: dict = {}
    for e in events:
        out[e["event"]] = out.get(e["event"], 0) + 1
    return out


def relabel_tree(tree, cluster_ids):
    """The cluster tree with leaves named by stable ids and inner nodes numbered from
    max(cluster_id) + 1; returns (tree, parent id of each cluster)."""
    if tree is None:
        return None, None
    k = len(cluster_ids)
    base = int(np.max(cluster_ids)) + 1 if k else 0

    def name(n):
        n = np.asarray(n, dtype=np.int64)
        leaf = (n >= 0) & (n < k)
        out = np.where(n >= k, base + (n - k), n)
        out[leaf] = np.asarray(cluster_ids, dtype=np.int64)[n[leaf]]
        return out

    node_ids = np.asarray(tree["node_ids"], dtype=np.int64)
    parents = np.asarray(tree["parent_ids"], dtype=np.int64)
    out = dict(tree, node_ids=name(node_ids), parent_ids=name(parents))
    by_node = dict(zip(node_ids.tolist(), out["parent_ids"].tolist()))
    parent_ids = np.array([by_node.get(i, -1) for i in range(k)], dtype=np.int64)
    return out, parent_ids
