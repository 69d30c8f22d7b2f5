"""Exact per-cluster statistics over all rows: what one partition accumulates, how the driver merges
the partitions' rows, and the result (:class:`ClusterStats`, read by ``quality.metrics``, the
centroids table and the model artifact).

The pass itself is :func:`clusterlake.algorithms.passes.cluster_stats`; this module holds no Spark
code, so the per-partition arithmetic is testable on numpy arrays. One partition sends one row of
O(k (p + d)) numbers (plus its (label, cluster) pairs) to the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import pyarrow as pa

from clusterlake.kernels.stats import cluster_moments, cluster_sums

STATS_DDL = ("cnt array<double>, sz array<double>, sx array<double>, sq array<double>, sd array<double>, "
             "ssd array<double>, mx array<double>, cl array<string>, ci array<long>, cc array<long>")
_F64S = pa.list_(pa.float64())
STATS_SCHEMA = pa.schema([("cnt", _F64S), ("sz", _F64S), ("sx", _F64S), ("sq", _F64S), ("sd", _F64S),
                          ("ssd", _F64S), ("mx", _F64S), ("cl", pa.list_(pa.string())), ("ci", pa.list_(pa.int64())),
                          ("cc", pa.list_(pa.int64()))])


@dataclass
class ClusterStats:
    """Exact per-cluster statistics over all rows (index = position in ``centroids``)."""

    counts: np.ndarray  # (k,)
    sum_z: np.ndarray  # (k, p)
    sum_x: np.ndarray  # (k, d) original units
    sum_sq_dx: np.ndarray  # (k, d) sum of (x - x_center)^2, original units (profiles' std)
    sum_dist: np.ndarray  # (k,) to the fitted centroid
    sum_sq_dist: np.ndarray  # (k,)
    max_dist: np.ndarray  # (k,)
    contingency: Optional[dict] = None  # {(label, cluster_index): count}

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def means_z(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sum_z / self.counts[:, None]

    @property
    def means_x(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sum_x / self.counts[:, None]

    @classmethod
    def zeros(cls, k: int, p: int, d: int, with_contingency: bool) -> "ClusterStats":
        return cls(np.zeros(k), np.zeros((k, p)), np.zeros((k, d)), np.zeros((k, d)), np.zeros(k), np.zeros(k),
                   np.zeros(k), {} if with_contingency else None)

    @classmethod
    def merge(cls, rows: Iterable, k: int, p: int, d: int, with_contingency: bool) -> "ClusterStats":
        """The statistics of the partitions' rows (:data:`STATS_DDL`) added up, in their order."""
        out = cls.zeros(k, p, d, with_contingency)
        for r in rows:
            out.counts += np.asarray(r["cnt"])
            out.sum_z += np.asarray(r["sz"]).reshape(k, p)
            out.sum_x += np.asarray(r["sx"]).reshape(k, d)
            out.sum_sq_dx += np.asarray(r["sq"]).reshape(k, d)
            out.sum_dist += np.asarray(r["sd"])
            out.sum_sq_dist += np.asarray(r["ssd"])
            out.max_dist = np.maximum(out.max_dist, np.asarray(r["mx"]))
            if with_contingency:
                for lv, ci, cc in zip(r["cl"], r["ci"], r["cc"]):
                    out.contingency[(lv, ci)] = out.contingency.get((lv, ci), 0) + cc
        return out


NULL_LABEL = "<null>"
"""A null label's text in every (label, cluster) count (the label column as Arrow casts it to text)."""


def label_codes(col) -> tuple[np.ndarray, list]:
    """The labels as codes into their texts (``codes`` int64, ``names[code]``), :data:`NULL_LABEL`
    for null (code 0): the key of every label count. By dictionary encoding, not per-row strings."""
    import pyarrow.compute as pc

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    enc = pc.dictionary_encode(col.cast(pa.string()))  # one code per distinct text, null stays null
    codes = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64) + 1
    return codes, [NULL_LABEL] + enc.dictionary.to_pylist()


class PartitionStats:
    """One partition's running sums (runs on an executor), sent as one :data:`STATS_SCHEMA` row."""

    def __init__(self, centroids: np.ndarray, d: int, x_center: np.ndarray):
        self.C = centroids
        k, p = centroids.shape
        self.k = k
        self.xc = x_center
        self.acc = ClusterStats.zeros(k, p, d, True)

    def add(self, X: np.ndarray, Z: np.ndarray, lab: np.ndarray, labels: Optional[pa.Array] = None) -> None:
        """Add the rows ``X`` (original units) / ``Z`` (model space) of the clusters ``lab``, and
        their (label, cluster) pairs when the label column ``labels`` is given."""
        k, acc = self.k, self.acc
        c1, s1 = cluster_sums(Z, lab, k)
        _, s2 = cluster_sums(X, lab, k)
        dx = X - self.xc
        _, s3 = cluster_sums(dx * dx, lab, k)
        mom = cluster_moments(Z, lab, self.C, k)
        acc.counts += c1
        acc.sum_z += s1
        acc.sum_x += s2
        acc.sum_sq_dx += s3
        acc.sum_dist += mom["sum_dist"]
        acc.sum_sq_dist += mom["sum_sq_dist"]
        acc.max_dist = np.maximum(acc.max_dist, mom["max_dist"])
        if labels is not None:
            self._count_pairs(labels, lab)

    def _count_pairs(self, labels: pa.Array, lab: np.ndarray) -> None:
        """(label as text, :data:`NULL_LABEL` for null; cluster index) -> rows."""
        cont = self.acc.contingency
        codes, names = label_codes(labels)
        k = self.k
        pairs = np.bincount(codes * k + lab, minlength=len(names) * k)
        for key in np.flatnonzero(pairs):
            lv, ci = names[key // k], int(key % k)
            cont[(lv, ci)] = cont.get((lv, ci), 0) + int(pairs[key])

    def batch(self) -> pa.RecordBatch:
        a = self.acc
        keys = list(a.contingency)
        return pa.RecordBatch.from_pydict({
            "cnt": [a.counts.tolist()], "sz": [a.sum_z.ravel().tolist()], "sx": [a.sum_x.ravel().tolist()],
            "sq": [a.sum_sq_dx.ravel().tolist()], "sd": [a.sum_dist.tolist()], "ssd": [a.sum_sq_dist.tolist()],
            "mx": [a.max_dist.tolist()], "cl": [[kk[0] for kk in keys]], "ci": [[kk[1] for kk in keys]],
            "cc": [[a.contingency[kk] for kk in keys]],
        }, schema=STATS_SCHEMA)
