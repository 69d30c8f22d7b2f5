"""The per-run model artifact: JSON + .npy files, no pickle.

Layout of ``<output>/model/<run_id>/``::

    model.json        format version, run, feature names (input order), k, distance, shapes
    center.npy        (d,)    float64
    scale.npy         (d,)    float64
    components.npy    (p, d)  float64   (absent when PCA is off)
    centroids.npy     (k, p)  float64   model-space centroids, row i is cluster_ids[i]
    cluster_ids.npy   (k,)    int32
    tree_*.npy        the cluster tree: bisecting K-means' splits, or Ward's tree over the
                      size-weighted K-means centroids (plus tree_linkage.npy, scipy format)
    density_*.npy     the density pass: core points (model space), their labels and reach
    hier_*.npy        the hierarchical pass: the sample's linkage (the dendrogram), the sample's
                      labels per level, and what extends them (level centroids or sample points)

``model/latest`` points at the newest committed run's artifact: a symlink swapped atomically on a
local filesystem, a full copy elsewhere. Arrays are loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from clusterlake.errors import ClusterlakeError
from clusterlake.io.fs import Location, location
from clusterlake.prep.transform import Preprocessor

FORMAT_VERSION = 1
_EXTRA_NAME = re.compile(r"(density|hier)_[a-z0-9_]+")
_ARRAYS = ("center", "scale", "components", "centroids", "cluster_ids")


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
        }


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


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
    for name, arr in artifact.extras.items():
        if not _EXTRA_NAME.fullmatch(name) or name in arrays:
            raise ValueError(f"bad extra array name {name!r}")
        arrays[name] = np.asarray(arr)
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
    )


def point_latest(model_root: Location, run_id: str) -> None:
    """Make ``model_root/latest`` show ``model_root/<run_id>``.

    Local filesystem: a relative symlink replaced atomically (``os.replace``), so a reader sees the
    old or the new model, never a mix. Elsewhere: the files are copied into ``latest/``
    (model.json last).
    """
    target = model_root.child(run_id)
    latest = model_root.child("latest")
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
