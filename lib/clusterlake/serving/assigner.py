"""Assigning new points to a run's clusters, in-process, exactly as the batch job did.

``Assigner`` loads the JSON + .npy model artifact (no pickle, no Spark) and applies the same
``Preprocessor.transform`` and nearest-centroid kernel the job ran on every row, so the same raw
row gets the same ``cluster_id`` and distance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Union

import numpy as np

from clusterlake.errors import ClusterlakeError
from clusterlake.io import model_artifact
from clusterlake.kernels.distance import assign


@dataclass
class Assignment:
    cluster_id: np.ndarray  # (n,) int32
    distance: np.ndarray  # (n,) float64, Euclidean in the model space
    second_cluster_id: np.ndarray  # (n,) int32, -1 when k == 1
    margin: np.ndarray  # (n,) float64, NaN when k == 1


class Assigner:
    """Nearest-centroid assignment with a run's model.

    Examples
    --------
    >>> a = Assigner.load("out/local/model/latest")          # doctest: +SKIP
    >>> a.assign({"age": [34, 51], "annual_income": [52.0, 130.0], ...}).cluster_id  # doctest: +SKIP
    """

    def __init__(self, artifact: model_artifact.ModelArtifact):
        self.artifact = artifact
        self._prep = artifact.prep
        self._centroids = np.ascontiguousarray(artifact.centroids, dtype=np.float64)
        self._ids = np.asarray(artifact.cluster_ids, dtype=np.int32)

    @classmethod
    def load(cls, path: str) -> "Assigner":
        return cls(model_artifact.load(path))

    @property
    def feature_names(self) -> list[str]:
        """The input columns, in the order ``assign`` expects them."""
        return list(self._prep.feature_names)

    @property
    def run_id(self) -> str:
        return self.artifact.run_id

    @property
    def k(self) -> int:
        return int(self._centroids.shape[0])

    def _matrix(self, rows: Union[np.ndarray, Mapping]) -> np.ndarray:
        names = self.feature_names
        if isinstance(rows, Mapping):
            missing = [c for c in names if c not in rows]
            if missing:
                raise ClusterlakeError(f"assign: missing feature(s) {missing}; the model expects {names}")
            cols = [np.asarray(rows[c], dtype=np.float64).reshape(-1) for c in names]
            if len({len(c) for c in cols}) > 1:
                raise ClusterlakeError("assign: feature columns have different lengths")
            X = np.column_stack(cols)
        else:
            X = np.asarray(rows, dtype=np.float64)
            if X.ndim == 1:
                X = X.reshape(1, -1)
            if X.ndim != 2 or X.shape[1] != len(names):
                raise ClusterlakeError(
                    f"assign: expected an (n, {len(names)}) array with columns {names}, got shape {X.shape}"
                )
        bad = ~np.isfinite(X)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise ClusterlakeError(
                f"assign: row {int(r)} column '{names[c]}' is {X[r, c]}; features must be finite numbers"
            )
        return X

    def assign(self, rows: Union[np.ndarray, Mapping]) -> Assignment:
        """Assign raw rows ((n, d) array in ``feature_names`` order, or a name -> values mapping)."""
        Z = self._prep.transform(self._matrix(rows))
        lab, dist, sec, sdist = assign(Z, self._centroids)
        has2 = self.k > 1
        return Assignment(
            cluster_id=self._ids[lab],
            distance=dist,
            second_cluster_id=self._ids[sec] if has2 else np.full(len(lab), -1, np.int32),
            margin=(sdist - dist) if has2 else np.full(len(lab), np.nan),
        )
