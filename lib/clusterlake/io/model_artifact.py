"""The per-run model artifact: JSON + .npy files, no pickle.

Layout of ``<output>/model/<run_id>/``::

    model.json        format version, run, feature names (input order), k, distance, shapes
    center.npy        (d,)    float64
    scale.npy         (d,)    float64
    components.npy    (p, d)  float64   (absent when PCA is off)
    centroids.npy     (k, p)  float64   model-space centroids, row i is cluster_ids[i]
    cluster_ids.npy   (k,)    int32     stable ids: row i of centroids is cluster cluster_ids[i]
    cluster_*.npy     per-cluster statistics of the run (row i = cluster_ids[i]): sizes (rows),
                      radius_mean/rms/max and radius_p50/p90/p99 (the rows' distance to the
                      centroid, model space), means_x (input units), members (rows in members/)
    members/          a sample of each cluster's rows for similar-item queries: parquet,
                      ``cluster_id=<id>/part-*.parquet`` with columns id (the id column), distance and
                      z (model space, float32); ``meta.members.runs`` lists the runs whose
                      ``members/`` folders together make up this model's (an update adds its rows)
    tree_*.npy        the cluster tree: bisecting K-means' splits, or Ward's tree over the
                      size-weighted K-means centroids (plus tree_linkage.npy, scipy format, whose
                      leaves are rows of centroids.npy). Leaves are named by cluster id, inner
                      nodes from max(cluster_id) + 1
    density_*.npy     the density pass: core points (model space), their labels and reach
    report_*.npy      the report's sample: its first two model-space components, stable cluster
                      ids, per-point silhouette and density noise flags
    hier_*.npy        the hierarchical pass: the sample's linkage (the dendrogram), the sample's
                      labels per level, and what extends them (level centroids or sample points)
    mixture_*.npy     a Gaussian mixture (algorithm ``gmm``): its weights (k,) and covariances
                      (full (k, p, p), tied (p, p), diag (k, p), spherical (k,); model space),
                      row i = cluster_ids[i]; the means are ``centroids.npy``, the covariance
                      type ``meta.mixture.covariance_type``

``model.json`` also records the run's ``lineage`` (kind ``full`` or ``update``, the previous and
base run ids, the runs whose ``assignments`` rows make up the current state, and the next unused
cluster id) and its ``quality`` (silhouette, Davies-Bouldin, Calinski-Harabasz), so any model can
be traced back run by run and the next run can measure drift against it.

``model/latest`` points at the newest committed run's artifact: a symlink swapped atomically on a
local filesystem, a full copy elsewhere. Arrays are loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import numpy as np

from clusterlake.errors import ClusterlakeError, InputDataError
from clusterlake.io.fs import Location, location
from clusterlake.prep.transform import Preprocessor

if TYPE_CHECKING:
    from clusterlake.kernels.density import DensityModel
    from clusterlake.kernels.hierarchy import HierarchyModel

FORMAT_VERSION = 1
_EXTRA_NAME = re.compile(r"(density|hier|report|mixture)_[a-z0-9_]+")
_ARRAYS = ("center", "scale", "components", "centroids", "cluster_ids")
CLUSTER_STATS = ("sizes", "radius_mean", "radius_rms", "radius_max", "means_x",  # saved as cluster_<name>.npy
                 "radius_p50", "radius_p90", "radius_p99", "members")


@dataclass
class ModelArtifact:
    run_id: str
    run_date: str
    prep: Preprocessor
    centroids: np.ndarray  # (k, p)
    cluster_ids: np.ndarray  # (k,)
    distance: str = "euclidean"
    algorithm: str = "kmeans"
    meta: dict = field(default_factory=dict)
    tree: Optional[dict] = None  # {"node_ids", "parent_ids", "centers"[, "linkage"]} of every tree node
    passes: dict = field(default_factory=dict)  # settings and figures of the density/hierarchical passes
    extras: dict = field(default_factory=dict)  # name -> np.ndarray (density_*, hier_*), saved as <name>.npy
    cluster_stats: dict = field(default_factory=dict)  # CLUSTER_STATS name -> (k,...) array; {} in old models
    lineage: dict = field(default_factory=dict)  # kind, previous_run_id, base_run_id, assignment_runs, next_cluster_id
    quality: dict = field(default_factory=dict)  # silhouette, davies_bouldin, calinski_harabasz (None = undefined)

    def metric(self):
        """The model's distance as a :class:`~clusterlake.kernels.distances.Metric` when it is not
        Euclidean (a k-medoids model: ``meta.metric``), else None (Euclidean; cosine models assign
        by Euclidean distance on the unit sphere)."""
        from clusterlake.kernels.distances import from_spec

        return from_spec(self.meta.get("metric")) if self.algorithm == "kmedoids" else None

    def mixture(self):
        """A Gaussian mixture model's :class:`~clusterlake.kernels.gmm.Mixture` (its means the
        centroids, rows by posterior), else None."""
        from clusterlake.kernels.gmm import Mixture

        if self.algorithm != "gmm":
            return None
        spec = self.meta.get("mixture") or {}
        return Mixture.of(spec.get("covariance_type"), self.extras["mixture_weights"], self.centroids,
                          self.extras["mixture_covariances"])

    def rule(self) -> dict:
        """How the model assigns a row, as the assignment rule's keywords (``metric``, ``mixture``)."""
        return {"metric": self.metric(), "mixture": self.mixture()}

    @property
    def next_cluster_id(self) -> int:
        """The smallest cluster id this model's lineage has never used."""
        used = int(self.cluster_ids.max()) + 1 if len(self.cluster_ids) else 0
        return max(int(self.lineage.get("next_cluster_id", 0)), used)

    @property
    def assignment_runs(self) -> list[tuple[str, str]]:
        """(run_id, run_date) of every run whose assignments rows make up this model's state:
        the full run, then the updates applied to it."""
        runs = self.lineage.get("assignment_runs")
        return [tuple(r) for r in runs] if runs else [(self.run_id, self.run_date)]

    def to_json(self) -> dict:
        return {
            "format": "clusterlake-model",
            "format_version": FORMAT_VERSION,
            "run_id": self.run_id,
            "run_date": self.run_date,
            "algorithm": self.algorithm,
            "distance": self.distance,
            "feature_names": self.prep.feature_names,
            "scaling": self.prep.scaling,
            "pca": None if self.prep.components is None else {
                "n_components": int(self.prep.components.shape[0]),
                "explained_variance_ratio": [float(v) for v in self.prep.explained_variance_ratio],
            },
            "k": int(self.centroids.shape[0]),
            "n_model_dims": int(self.centroids.shape[1]),
            "tree": self.tree is not None,
            "meta": self.meta,
            "passes": self.passes,
            "extra_arrays": sorted(self.extras),
            "cluster_stats": sorted(self.cluster_stats),
            "lineage": self.lineage,
            "quality": self.quality,
        }


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


_MUST_BE_FINITE = ("center", "scale", "components", "centroids", "tree_centers", "mixture_weights",
                   "mixture_covariances")


def check_finite(arrays: dict, feature_names: list) -> None:
    """Refuse a model whose defining arrays hold NaN or inf (before anything is written): a
    non-finite scale silently drops its feature from every distance.

    Raises
    ------
    InputDataError
        a per-feature array (``center``, ``scale``) is not finite: names the feature(s).
    RuntimeError
        any other defining array is not finite (a bug: the input was validated finite).
    """
    for name in _MUST_BE_FINITE:
        arr = arrays.get(name)
        if arr is None or np.isfinite(arr).all():
            continue
        if name in ("center", "scale") and len(feature_names) == len(arr):
            bad = [feature_names[i] for i in np.flatnonzero(~np.isfinite(arr))]
            raise InputDataError(
                f"the model's {name} is not finite for feature(s) {bad[:5]}: their values are too large "
                "for float64 statistics; check the units of those columns upstream"
            )
        raise RuntimeError(f"the model's {name} array holds NaN/inf ({int((~np.isfinite(arr)).sum())} entries); "
                           "nothing was committed")


def save(artifact: ModelArtifact, dest: Location) -> None:
    """Write the artifact files under ``dest`` (model.json last, so a complete dir has it)."""
    arrays = {
        "center": artifact.prep.center,
        "scale": artifact.prep.scale,
        "centroids": artifact.centroids.astype(np.float64),
        "cluster_ids": artifact.cluster_ids.astype(np.int32),
    }
    if artifact.prep.components is not None:
        arrays["components"] = artifact.prep.components
    if artifact.tree is not None:
        arrays["tree_node_ids"] = np.asarray(artifact.tree["node_ids"], dtype=np.int64)
        arrays["tree_parent_ids"] = np.asarray(artifact.tree["parent_ids"], dtype=np.int64)
        arrays["tree_centers"] = np.asarray(artifact.tree["centers"], dtype=np.float64)
        if artifact.tree.get("linkage") is not None:
            arrays["tree_linkage"] = np.asarray(artifact.tree["linkage"], dtype=np.float64)
    for name, arr in artifact.cluster_stats.items():
        if name not in CLUSTER_STATS:
            raise ValueError(f"unknown cluster statistic {name!r}; expected one of {CLUSTER_STATS}")
        arrays[f"cluster_{name}"] = np.asarray(arr, dtype=np.float64)
    for name, arr in artifact.extras.items():
        if not _EXTRA_NAME.fullmatch(name) or name in arrays:
            raise ValueError(f"bad extra array name {name!r}")
        arrays[name] = np.asarray(arr)
    check_finite(arrays, list(artifact.prep.feature_names))
    for name, arr in arrays.items():
        dest.child(f"{name}.npy").write_bytes(_npy(arr))
    dest.child("model.json").write_bytes(json.dumps(artifact.to_json(), indent=2).encode())


def load(path: str) -> ModelArtifact:
    """Load an artifact directory (or ``.../model/latest``). Never unpickles."""
    loc = location(path)
    mj = loc.child("model.json")
    if not mj.exists():
        raise ClusterlakeError(f"{path} is not a clusterlake model directory (no model.json)")
    meta = json.loads(mj.read_bytes())
    if meta.get("format") != "clusterlake-model" or meta.get("format_version") != FORMAT_VERSION:
        raise ClusterlakeError(
            f"{path}: unsupported model format {meta.get('format')!r} version {meta.get('format_version')!r}"
        )

    def arr(name: str) -> Optional[np.ndarray]:
        f = loc.child(f"{name}.npy")
        if not f.exists():
            return None
        return np.load(io.BytesIO(f.read_bytes()), allow_pickle=False)

    prep = Preprocessor(
        feature_names=list(meta["feature_names"]),
        center=arr("center"),
        scale=arr("scale"),
        components=arr("components") if meta.get("pca") else None,
        explained_variance_ratio=(
            np.asarray(meta["pca"]["explained_variance_ratio"]) if meta.get("pca") else None
        ),
        scaling=meta.get("scaling", "standard"),
        normalize=meta.get("distance", "euclidean") == "cosine",  # model space on the unit sphere
    )
    return ModelArtifact(
        run_id=meta["run_id"], run_date=meta["run_date"], prep=prep, centroids=arr("centroids"),
        cluster_ids=arr("cluster_ids"), distance=meta.get("distance", "euclidean"),
        algorithm=meta.get("algorithm", "kmeans"), meta=meta.get("meta", {}),
        tree={"node_ids": arr("tree_node_ids"), "parent_ids": arr("tree_parent_ids"),
              "centers": arr("tree_centers"), "linkage": arr("tree_linkage")} if meta.get("tree") else None,
        passes=meta.get("passes", {}),
        extras={name: arr(name) for name in meta.get("extra_arrays", []) if _EXTRA_NAME.fullmatch(name)},
        cluster_stats={name: arr(f"cluster_{name}") for name in meta.get("cluster_stats", []) if name in CLUSTER_STATS},
        lineage=meta.get("lineage", {}), quality=meta.get("quality", {}),
    )


def pass_models(art: ModelArtifact) -> tuple[Optional["DensityModel"], Optional["HierarchyModel"]]:
    """The density and hierarchical pass models of a loaded artifact (None for a pass that did not
    run), ready for the assignment rule (:class:`clusterlake.kernels.assignment.AssignmentRule`).
    Lives here, beside the ``density_*``/``hier_*`` arrays it reads, so serving and the stream
    rebuild them without the Spark-side algorithms. The density model carries no sample labels
    (they are not saved)."""
    from clusterlake.kernels.density import DensityModel
    from clusterlake.kernels.distances import from_spec
    from clusterlake.kernels.hierarchy import HierarchyModel

    dens = hier = None
    x = art.extras
    if "density" in art.passes:
        p = art.passes["density"]
        dens = DensityModel(p["algorithm"], x["density_core_points"], x["density_core_labels"],
                            x["density_core_reach"], np.zeros(0, np.int32), p.get("eps"), p["min_samples"],
                            reach_factor=p.get("reach_factor", 1.0), metric=from_spec(p.get("metric")))
    if "hierarchical" in art.passes:
        p = art.passes["hierarchical"]
        levels = [int(v) for v in p["levels"]]
        labels = {lv: x["hier_sample_labels"][:, j] for j, lv in enumerate(levels)}
        cents = {lv: x[f"hier_centroids_{lv}"] for lv in levels if f"hier_centroids_{lv}" in x}
        hier = HierarchyModel(p["linkage"], x["hier_linkage"], levels, labels, x["hier_sample_points"], cents,
                              metric=from_spec(p.get("metric")))
    return dens, hier


MODELS = "model"
"""``<output.path>/model/``: one directory per run (``<run_id>/``) and ``latest``."""
LATEST = "latest"


def models_dir(output_root: Location) -> Location:
    """Where the runs' model directories live under the output root."""
    return output_root.child(MODELS)


def latest_dir(model_root: Location) -> Location:
    """``model/latest``: the newest committed run's model (moved by :func:`point_latest` only)."""
    return model_root.child(LATEST)


def latest_run_id(model_root: Location) -> Optional[str]:
    """The run id ``model/latest`` shows now; None before the first run or when unreadable."""
    try:
        return json.loads(latest_dir(model_root).child("model.json").read_bytes()).get("run_id")
    except Exception:  # noqa: BLE001 (no latest model yet, or one being replaced: unknown)
        return None


def point_latest(model_root: Location, run_id: str) -> None:
    """Make ``model_root/latest`` show ``model_root/<run_id>``.

    Local filesystem: a relative symlink replaced atomically (``os.replace``), so a reader sees the
    old or the new model, never a mix. Elsewhere: the files are copied into ``latest/``
    (model.json last).
    """
    target = model_root.child(run_id)
    latest = latest_dir(model_root)
    if model_root.is_local:
        tmp = model_root.child(f".latest-{run_id}")
        if os.path.lexists(tmp.path):
            os.remove(tmp.path)
        os.symlink(run_id, tmp.path)
        if os.path.isdir(latest.path) and not os.path.islink(latest.path):
            import shutil

            shutil.rmtree(latest.path)
        os.replace(tmp.path, latest.path)
        return
    for info in target.files(recursive=False):
        if info.base_name != "model.json":
            latest.child(info.base_name).write_bytes(target.child(info.base_name).read_bytes())
    latest.child("model.json").write_bytes(target.child("model.json").read_bytes())
