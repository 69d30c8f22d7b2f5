"""Questions about last night's clusters, answered from the model artifact alone (no Spark).

:class:`ClusterCatalog` wraps an :class:`~clusterlake.serving.assigner.Assigner` and adds:

* :meth:`~ClusterCatalog.nearest`: the top-n clusters of a point, with exact distances;
* :meth:`~ClusterCatalog.cluster`: a cluster's statistics: size and share, radius (mean, rms,
  p50/p90/p99, max), archetype (the description and the z-score profile in input units), parent in
  the cluster tree, nearest other clusters;
* :meth:`~ClusterCatalog.similar`: the rows of the point's cluster nearest to it, from the
  model's ``members/`` sample (one parquet file per cluster, written by the nightly job; see
  ``serving.members_per_cluster``): one small read per cluster, cached (LRU); or, for a row
  holding the grouping column of a run with ``grouping`` on, its near-duplicates from the run's
  band index (:mod:`clusterlake.serving.duplicates`).

Model directories are immutable once written; ``model/latest`` moves. :func:`resolve_model_dir`
turns ``.../model/latest`` into the run's own directory before anything is read, so a model that
is replaced while it loads is never read half old, half new.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from typing import Any, Optional

import numpy as np

from clusterlake.errors import ClusterlakeError
from clusterlake.io import model_artifact
from clusterlake.io.fs import Location, location
from clusterlake.kernels.distances import exact as exact_distances
from clusterlake.serving.assigner import Assigner, Rows
from clusterlake.serving.assigner import json_id as _py
from clusterlake.serving.duplicates import DuplicateIndex

log = logging.getLogger(__name__)
CACHE_BYTES = 512 << 20


class ClusterNotFound(ClusterlakeError, KeyError):
    """The model has no cluster with that id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _parent(loc: Location) -> Location:
    path, uri = loc.path.rstrip("/"), loc.uri.rstrip("/")
    return Location(loc.fs, path.rsplit("/", 1)[0], uri.rsplit("/", 1)[0])


def resolve_model_dir(path: str) -> Location:
    """The immutable run directory behind ``path`` (``model/latest`` or a run's directory): the
    sibling named by ``model.json``'s run id when it exists, else ``path`` itself."""
    if "://" not in path or path.startswith("file://"):  # local: follow symlinks (latest, or a link to it)
        path = os.path.realpath(path[len("file://"):] if path.startswith("file://") else path)
    loc = location(path)
    mj = loc.child("model.json")
    if not mj.exists():
        raise ClusterlakeError(f"{path} is not a clusterlake model directory (no model.json); "
                               "point at <output.path>/model/latest after a successful run")
    run_id = json.loads(mj.read_bytes()).get("run_id")
    if run_id:
        run_dir = _parent(loc).child(str(run_id))
        if run_dir.child("model.json").exists():
            return run_dir
    return loc


def model_run_id(path: str) -> Optional[str]:
    """The run id ``path``'s model.json (a grouping-only run's grouping.json) names now (cheap: one
    small read), None if unreadable."""
    loc = location(path)
    for f in (loc.child("model.json"), loc.child("grouping", "grouping.json")):
        try:
            return json.loads(f.read_bytes()).get("run_id")
        except Exception:  # noqa: BLE001 (a model being replaced or a missing file: "unknown")
            continue
    return None


def load_catalog(path: str, outlier_rule: str = "auto"):
    """What ``clusterlake serve`` serves at ``path``: a :class:`ClusterCatalog`, or for a
    grouping-only run's model directory (no model.json, a band index) a
    :class:`~clusterlake.serving.duplicates.GroupingCatalog`."""
    from clusterlake.serving.duplicates import GroupingCatalog

    loc = location(path)
    if not loc.child("model.json").exists() and loc.child("grouping", "grouping.json").exists():
        return GroupingCatalog.load(path)
    return ClusterCatalog.load(path, outlier_rule=outlier_rule)


def _duplicates(model_dir: Location) -> Optional[DuplicateIndex]:
    """The run's band index; a damaged one is logged and left out (the clusters are still served)."""
    try:
        return DuplicateIndex.load(model_dir.uri)
    except Exception as exc:  # noqa: BLE001 (serve the K-means model whatever is wrong with the index)
        log.error("near-duplicate index under %s could not be loaded, /similar answers clusters only: %s: %s",
                  model_dir.uri, type(exc).__name__, exc)
        return None


class ClusterCatalog:
    """Nearest clusters, cluster statistics and similar items for one model (thread-safe).

    Parameters
    ----------
    model_dir : Location
        The run's model directory (see :func:`resolve_model_dir`).
    assigner : Assigner
    cache_clusters, cache_bytes : int
        At most this many clusters' member samples, and this many bytes of them (default 512 MiB),
        stay in memory (least recently used out first; the newest always stays).
    """

    def __init__(self, model_dir: Location, assigner: Assigner, cache_clusters: int = 32,
                 cache_bytes: int = CACHE_BYTES):
        self.model_dir = model_dir
        self.assigner = assigner
        self.artifact = art = assigner.artifact
        self._model_root = _parent(model_dir)
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_size = max(1, int(cache_clusters))
        self._cache_bytes = int(cache_bytes)
        self._lock = threading.Lock()
        st = art.cluster_stats
        self._sizes = np.asarray(st.get("sizes", np.zeros(assigner.k)), dtype=np.float64)
        self._members = art.meta.get("members") or {}
        descriptions = art.meta.get("descriptions") or []
        self._parents = self._tree_parents()
        C = assigner._centroids
        if assigner.metric is not None:  # a k-medoids model: the medoids under its distance
            d = exact_distances(C, C, assigner.metric)
        else:
            d = np.sqrt(np.maximum(0.0, (C * C).sum(1)[:, None] - 2 * C @ C.T + (C * C).sum(1)[None, :]))
        np.fill_diagonal(d, np.inf)
        self._centroid_dist = d
        self._clusters = {int(c): self._describe(i, descriptions) for i, c in enumerate(assigner.cluster_ids)}
        self.duplicates = _duplicates(model_dir)  # the run's band index (grouping), or None

    @classmethod
    def load(cls, path: str, outlier_rule: str = "auto", cache_clusters: int = 32) -> "ClusterCatalog":
        """Load ``path`` (``model/latest`` or a run's directory) through its run directory."""
        run_dir = resolve_model_dir(path)
        return cls(run_dir, Assigner(model_artifact.load(run_dir.uri), outlier_rule=outlier_rule), cache_clusters)

    # ------------------------------------------------------------------------------------------
    def _tree_parents(self) -> dict[int, Optional[int]]:
        tree = self.artifact.tree
        if not tree or tree.get("node_ids") is None:
            return {}
        return {int(n): (int(p) if p >= 0 else None) for n, p in zip(tree["node_ids"], tree["parent_ids"])}

    def _describe(self, i: int, descriptions: list) -> dict[str, Any]:
        art, st = self.artifact, self.artifact.cluster_stats
        cid = int(art.cluster_ids[i])
        total = float(self._sizes.sum()) or 1.0
        names = art.prep.feature_names
        radius = {k.split("_", 1)[1]: (float(st[k][i]) if np.isfinite(st[k][i]) else None) for k in
                  ("radius_mean", "radius_rms", "radius_p50", "radius_p90", "radius_p99", "radius_max") if k in st}
        profile = None
        if "means_x" in st and self._sizes[i] > 0 and np.isfinite(st["means_x"][i]).all():
            mx = np.asarray(st["means_x"][i], dtype=np.float64)
            z = (mx - art.prep.center) / art.prep.scale if art.prep.scaling == "standard" else None
            profile = {f: {"mean": float(mx[j]), **({"z": round(float(z[j]), 4)} if z is not None else {})}
                       for j, f in enumerate(names)}
        near = np.argsort(self._centroid_dist[i], kind="stable")[: min(3, len(art.cluster_ids) - 1)]
        return {
            "cluster_id": cid,
            "run_id": art.run_id,
            "size": int(self._sizes[i]),
            "share": float(self._sizes[i] / total),
            "radius": radius,
            "archetype": {"description": descriptions[i] if i < len(descriptions) else None, "profile": profile},
            "parent_id": self._parents.get(cid),
            "members": int(st["members"][i]) if "members" in st else 0,
            "nearest_clusters": [{"cluster_id": int(art.cluster_ids[j]), "distance": float(self._centroid_dist[i, j])}
                                 for j in near],
        }

    # ------------------------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return self.artifact.run_id

    def clusters(self) -> list[dict[str, Any]]:
        """A short line per cluster: id, size, share, description."""
        return [{k: v[k] for k in ("cluster_id", "size", "share")} | {"description": v["archetype"]["description"]}
                for v in self._clusters.values()]

    def cluster(self, cluster_id: int) -> dict[str, Any]:
        """Statistics of one cluster (see the module docstring); :class:`ClusterNotFound` if the
        model has no such id (a retired id, or one never used)."""
        try:
            return self._clusters[int(cluster_id)]
        except KeyError:
            raise ClusterNotFound(
                f"cluster {cluster_id} is not in model {self.run_id}; its clusters are "
                f"{sorted(self._clusters)}") from None

    def nearest(self, row: Rows, n: int = 5) -> list[list[dict[str, Any]]]:
        """For every row, its ``n`` nearest clusters ``{cluster_id, distance}``, nearest first (a
        Gaussian mixture's: most probable first, the distances to the components' means)."""
        ids, dist = self.assigner.nearest(row, n)
        return [[{"cluster_id": int(c), "distance": float(d)} for c, d in zip(ri, rd)] for ri, rd in zip(ids, dist)]

    # ------------------------------------------------------------------------------------------
    def members(self, cluster_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The cluster's member sample: (ids, model-space coordinates float32 (m, p))."""
        cid = int(cluster_id)
        self.cluster(cid)
        with self._lock:
            hit = self._cache.get(cid)
            if hit is not None:
                self._cache.move_to_end(cid)
                return hit
        got = self._read_members(cid)
        with self._lock:
            self._cache[cid] = got
            used = sum(z.nbytes + ids.nbytes for ids, z in self._cache.values())
            while len(self._cache) > 1 and (len(self._cache) > self._cache_size or used > self._cache_bytes):
                ids, z = self._cache.popitem(last=False)[1]
                used -= z.nbytes + ids.nbytes
        return got

    def _read_members(self, cid: int) -> tuple[np.ndarray, np.ndarray]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        p = self.assigner._centroids.shape[1]
        ids, zs = [], []
        for run in self._members.get("runs", []):
            root = (self.model_dir if str(run) == self.run_id else self._model_root.child(str(run))).child("members")
            if not root.exists():
                log.warning("model %s lists the member sample of run %s, but %s is missing: similar items "
                            "come from the other runs' samples only", self.run_id, run, root.uri)
                continue
            folder = root.child(f"cluster_id={cid}")
            files = sorted(i.path for i in folder.files(recursive=False)
                           if i.base_name.endswith(".parquet") and not i.base_name.startswith((".", "_")))
            for f in files:
                t = pq.read_table(f, filesystem=folder.fs, columns=["id", "z"])
                ids.append(t.column("id").to_numpy())
                flat = pa.chunked_array(t.column("z").chunks).combine_chunks().flatten()
                zs.append(flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, p))
        if not ids:
            return np.zeros(0, dtype=object), np.zeros((0, p), np.float32)
        return np.concatenate(ids), np.ascontiguousarray(np.concatenate(zs))

    def near_duplicate_column(self, row) -> Optional[str]:
        """The grouping column when ``row`` (one row as a dict) holds it and the model has a band
        index: :meth:`similar` then answers near-duplicates."""
        if self.duplicates is None or not isinstance(row, dict):
            return None
        col = self.duplicates.meta["column"]
        return col if col in row else None

    def similar(self, row: Rows, n: int = 10, cluster_id: Optional[int] = None) -> dict[str, Any]:
        """The ``n`` rows of the point's cluster (or of ``cluster_id``) nearest to the point, from
        the cluster's member sample: ``{cluster_id, distance, members, items: [{id, distance}]}``.

        A row (a dict) holding the grouping column of a model with a band index asks for its
        near-duplicates instead: ``{near_duplicates: true, candidates, threshold, items: [{id,
        group_id, similarity}]}``, exact similarities at or above the run's threshold, best first
        (:class:`~clusterlake.serving.duplicates.DuplicateIndex`)."""
        col = self.near_duplicate_column(row)
        if col is not None:
            return {"near_duplicates": True, "column": col, **self.duplicates.query(row[col], n)}
        Z = self.assigner.transform(row)
        if len(Z) != 1:
            raise ClusterlakeError(f"similar takes one row, got {len(Z)}")
        # the assignment rule without the passes: the outlier rule (a density search) is not needed here
        metric = self.assigner.metric  # a k-medoids model's distance (None: Euclidean)
        near = self.assigner.explained(lambda: self.assigner.rule.partition(Z))  # the rule without the passes
        cid = int(near.cluster_id[0]) if cluster_id is None else int(cluster_id)
        ids, M = self.members(cid)
        n = max(0, min(int(n), len(ids)))
        items: list[dict[str, Any]] = []
        if n:
            if metric is not None:  # a k-medoids model: its members under its distance
                d = exact_distances(Z[:1], M, metric)[0]
            else:
                diff = M - Z[0]  # float64 (the float32 members are promoted)
                d = np.sqrt(np.einsum("ij,ij->i", diff, diff))
            top = np.argpartition(d, n - 1)[:n] if n < len(d) else np.arange(len(d))
            top = top[np.argsort(d[top], kind="stable")]
            items = [{"id": _py(ids[j]), "distance": float(d[j])} for j in top]
        out = {"cluster_id": cid, "members": int(len(ids)), "items": items}
        if cluster_id is None:
            out["distance"] = float(near.distance[0])
        if not self._members.get("runs"):
            out["note"] = "this model has no member sample (serving.members_per_cluster was 0)"
        return out
