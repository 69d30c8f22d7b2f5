"""Near-duplicates of a new item, from the band index a grouping run saved (issue 22; no Spark).

A run with ``grouping.enabled`` saves, under ``<model>/grouping/``, ``grouping.json`` (the column,
the similarity, the banding and its seed: what signs a new item exactly as the run signed its
rows) and ``index/part-*.parquet``: every indexed row's id, group id, payload (its hashed set or
unit vector) and band keys, written by the run's tasks. :class:`DuplicateIndex` loads them once
into sorted numpy arrays; :meth:`DuplicateIndex.query` signs an item with the same kernels
(:mod:`clusterlake.kernels.minhash`), looks its band keys up (a binary search per key), computes
the candidates' exact similarity and returns those at or above the threshold, best first.

The answer is approximate in the LSH sense only: a row at the threshold is found with the banding's
recall (``recall_at_threshold``), a more similar one more surely; every similarity returned is
exact. A band key shared by more than ``max_bucket`` indexed rows (many identical sets) yields its
first ``max_bucket`` rows only (the run linked the rest of such a bucket by a star and a chain).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clusterlake.errors import ClusterlakeError
from clusterlake.io.fs import Location, location
from clusterlake.kernels import minhash as M
from clusterlake.serving.assigner import json_id as _py

log = logging.getLogger(__name__)

FOLDER = "grouping"
META = "grouping.json"
INDEX = "index"


class ItemError(ClusterlakeError):
    """An item that cannot be signed (not a set / vector of the index's kind, empty, wrong length)."""


def save_meta(folder: Location, meta: dict) -> None:
    """Write ``grouping.json`` (after the index files: its presence marks a complete index)."""
    folder.child(META).write_bytes(json.dumps(meta, sort_keys=True).encode())


class DuplicateIndex:
    """The band index of one grouping run, loaded into memory (read-only, thread-safe)."""

    def __init__(self, meta: dict, ids: np.ndarray, group_ids: np.ndarray, payload: tuple, keys: np.ndarray):
        self.meta = meta
        self.kind = meta["similarity"]
        self.bands, self.rows, self.seed = int(meta["bands"]), int(meta["rows"]), int(meta["seed"])
        self.threshold = float(meta["threshold"])
        self.max_bucket = int(meta.get("max_bucket", 1000))
        self.ids, self.group_ids = ids, group_ids
        self._payload = payload  # jaccard: (offsets, hashes uint64); cosine: (unit vectors float32,)
        n = len(ids)
        flat = np.asarray(keys, dtype=np.int64).reshape(n, self.bands).ravel()
        order = np.argsort(flat, kind="stable")
        self._keys = flat[order]
        self._key_rows = (order // self.bands).astype(np.int64)

    @property
    def size(self) -> int:
        return len(self.ids)

    @classmethod
    def load(cls, model_dir: str) -> Optional["DuplicateIndex"]:
        """The index under ``<model_dir>/grouping/``, or None when the run saved none (grouping
        off, or ``grouping.index_rows: 0``)."""
        folder = location(model_dir).child(FOLDER)
        if not folder.child(META).exists():
            return None
        meta = json.loads(folder.child(META).read_bytes())
        if not meta.get("index", True):
            return None  # grouping.index_rows was 0
        idx = folder.child(INDEX)
        files = sorted((f for f in idx.fs.get_file_info(_selector(idx.path))
                        if f.is_file and f.path.endswith(".parquet")), key=lambda f: f.path)
        t = pa.concat_tables([pq.read_table(f.path, filesystem=idx.fs) for f in files]) if files else None
        if t is None or t.num_rows == 0:
            return cls(meta, np.zeros(0, dtype=object), np.zeros(0, np.int64), _empty_payload(meta),
                       np.zeros((0, int(meta["bands"])), np.int64))
        t = t.combine_chunks()
        keys = _flat_values(t.column("keys")).astype(np.int64, copy=False)
        payload = _payload_arrays(t.column("payload"), meta)
        log.info("duplicate index: %d rows, %d bands of %d, from %s", t.num_rows, meta["bands"], meta["rows"],
                 idx.uri)
        return cls(meta, t.column("id").to_numpy(zero_copy_only=False), t.column("group_id").to_numpy(),
                   payload, keys)

    # -------------------------------------------------------------------------------------------
    def _sign(self, item) -> tuple[np.ndarray, tuple]:
        """(band keys (bands,), the item's payload) of one new item."""
        if self.kind == "jaccard":
            if isinstance(item, (str, bytes, dict)) or not hasattr(item, "__iter__"):
                raise ItemError(f"'{self.meta['column']}' is a set: give a list of tokens, got {type(item).__name__}")
            tokens = [t for t in item if t is not None]
            if not tokens:
                raise ItemError(f"'{self.meta['column']}' is an empty set: nothing to compare")
            kinds = {type(t) for t in tokens}
            if not (kinds <= {str} or kinds <= {int}):
                raise ItemError(f"'{self.meta['column']}' must hold only strings or only integers, got {sorted(k.__name__ for k in kinds)}")
            try:
                arr = pa.array([tokens], pa.list_(pa.string() if kinds <= {str} else pa.int64()))
            except (OverflowError, UnicodeError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise ItemError(f"'{self.meta['column']}': tokens that are not strings or 64-bit integers "
                                f"({exc})") from None
            off, h = M.set_hashes(arr)
            sig = M.minhash_signatures(off, h, self.bands * self.rows, self.seed)
            return M.band_keys(sig, self.bands, self.rows)[0].view(np.int64), (off, h)
        try:
            x = np.asarray(item, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError, OverflowError):
            raise ItemError(f"'{self.meta['column']}' is a vector: give a list of numbers") from None
        dim = int(self.meta["dim"])
        if len(x) != dim or not np.isfinite(x).all() or not np.any(x):
            raise ItemError(f"'{self.meta['column']}' must be {dim} finite numbers, not all zero (got length {len(x)})")
        x = x / np.abs(x).max()  # the norm of 1e308s would overflow
        u = (x / np.linalg.norm(x)).astype(np.float32)[None, :]
        bits = M.hyperplane_signatures(u, self.bands * self.rows, self.seed)
        return M.band_keys(bits, self.bands, self.rows)[0].view(np.int64), (u,)

    def _candidates(self, keys: np.ndarray) -> np.ndarray:
        lo = np.searchsorted(self._keys, keys, side="left")
        hi = np.minimum(np.searchsorted(self._keys, keys, side="right"), lo + self.max_bucket)
        if not (hi > lo).any():
            return np.zeros(0, np.int64)
        idx = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi) if b > a])  # at most `bands` ranges
        return np.unique(self._key_rows[idx])

    def _similarity(self, rows: np.ndarray, item_payload: tuple) -> np.ndarray:
        if self.kind == "jaccard":
            off, h = self._payload
            io, ih = item_payload
            starts, ends = off[rows], off[rows + 1]
            lengths = ends - starts
            b_off = np.r_[0, np.cumsum(lengths)]
            b_h = h[np.repeat(starts - b_off[:-1], lengths) + np.arange(int(b_off[-1]))]
            a_off = np.arange(len(rows) + 1, dtype=np.int64) * len(ih)
            return M.jaccard_pairs(a_off, np.tile(ih, len(rows)), b_off, b_h)
        (U,), (u,) = self._payload, item_payload
        return np.clip(U[rows].astype(np.float64) @ u[0].astype(np.float64), -1.0, 1.0)

    def query(self, item, n: int = 10, min_similarity: Optional[float] = None) -> dict[str, Any]:
        """The indexed rows whose exact similarity to ``item`` (a set, or a vector) is at least
        ``min_similarity`` (default: the run's threshold), best first, at most ``n``:
        ``{candidates, items: [{id, group_id, similarity}]}``."""
        keys, payload = self._sign(item)
        rows = self._candidates(keys)
        thr = self.threshold if min_similarity is None else float(min_similarity)
        items: list[dict[str, Any]] = []
        if len(rows):
            sim = self._similarity(rows, payload)
            keep = np.flatnonzero(sim >= thr)
            keep = keep[np.lexsort((rows[keep], -sim[keep]))][: max(0, int(n))]
            items = [{"id": _py(self.ids[rows[j]]), "group_id": int(self.group_ids[rows[j]]),
                      "similarity": float(sim[j])} for j in keep]
        return {"candidates": int(len(rows)), "threshold": thr, "items": items}


def _selector(path: str):
    import pyarrow.fs as pafs

    return pafs.FileSelector(path, recursive=True, allow_not_found=True)


def _flat_values(col) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.flatten().to_numpy(zero_copy_only=False)


def _payload_arrays(col, meta: dict) -> tuple:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if meta["similarity"] == "jaccard":
        off = np.asarray(arr.offsets.to_numpy(), np.int64)
        vals = arr.values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        return off - off[0], vals[off[0]:off[-1]].view(np.uint64)
    U = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(arr), -1)
    return (U,)


def _empty_payload(meta: dict) -> tuple:
    if meta["similarity"] == "jaccard":
        return np.zeros(1, np.int64), np.zeros(0, np.uint64)
    return (np.zeros((0, int(meta.get("dim") or 1)), np.float32),)


class GroupingOnlyModel(ClusterlakeError):
    """A question about clusters asked of a grouping-only run's model (no K-means)."""


class GroupingCatalog:
    """A grouping-only run's model directory (``kmeans.enabled: false``) as the HTTP service serves
    it: near-duplicates of a new item (:meth:`similar`); the cluster questions raise
    :class:`GroupingOnlyModel` naming what is served."""

    assigner = None
    artifact = None

    def __init__(self, model_dir: Location, index: DuplicateIndex):
        self.model_dir = model_dir
        self.duplicates = index

    @classmethod
    def load(cls, path: str) -> "GroupingCatalog":
        loc = location(path)
        index = DuplicateIndex.load(loc.uri)
        if index is None:
            raise ClusterlakeError(f"{path} holds no near-duplicate index (grouping/grouping.json with "
                                   "grouping.index_rows > 0); point at a run's model directory (runs.model_path)")
        return cls(loc, index)

    @property
    def run_id(self) -> str:
        return str(self.duplicates.meta.get("run_id"))

    def near_duplicate_column(self, row) -> Optional[str]:
        col = self.duplicates.meta["column"]
        return col if isinstance(row, dict) and col in row else None

    def _only(self) -> GroupingOnlyModel:
        col = self.duplicates.meta["column"]
        return GroupingOnlyModel(f"model {self.run_id} is a grouping-only run (kmeans.enabled: false): it has no "
                                 f"clusters; it answers POST /similar with {{\"row\": {{\"{col}\": [...]}}}}")

    def similar(self, row, n: int = 10, cluster_id: Optional[int] = None) -> dict[str, Any]:
        col = self.near_duplicate_column(row)
        if col is None or cluster_id is not None:
            raise self._only()
        return {"near_duplicates": True, "column": col, **self.duplicates.query(row[col], n)}

    def health(self) -> dict[str, Any]:
        m = self.duplicates.meta
        return {"kind": "grouping", "column": m["column"], "similarity": m["similarity"],
                "threshold": m["threshold"], "bands": m["bands"], "rows_per_band": m["rows"],
                "indexed_rows": self.duplicates.size}
