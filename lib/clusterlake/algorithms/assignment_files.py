"""The ``assignments`` parquet files, written by the engine's tasks from their resident rows.

Each barrier task applies the one assignment rule (:class:`~clusterlake.kernels.assignment.AssignmentRule`,
passes included) to its rows and writes one parquet file of the ``assignments`` contract
(:mod:`clusterlake.io.contract.assignments`, then ``run_id``) into the table's staging directory:
first under a ``_tmp-`` name (which no commit picks up: the stores collect ``part-*.parquet``
only), renamed when complete. It replies with the file's name, its rows and the counts the pass
metrics need (k-means cluster x pass label x label), so no Spark job reads the rows again.

After the command :func:`keep_only` deletes every other file in the directory: what a task lost
mid-write (and an earlier attempt's tasks, if the stage restarted with fewer tasks) left behind.
"""

from __future__ import annotations

import pickle
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clusterlake.algorithms.cluster_stats import label_codes
from clusterlake.io.contract import assignments as contract
from clusterlake.kernels.assignment import AssignmentRule

def _arrow_type(id_type: pa.DataType) -> pa.DataType:
    """The id column's type in the file (large strings as Spark's plain strings)."""
    if pa.types.is_large_string(id_type):
        return pa.string()
    if pa.types.is_large_binary(id_type):
        return pa.binary()
    return id_type


def file_schema(id_column: str, id_type: pa.DataType) -> pa.Schema:
    fields = [pa.field(id_column, _arrow_type(id_type))] + list(contract.SCHEMA) + [pa.field("run_id", pa.string())]
    return pa.schema(fields)


DICTIONARY_COLUMNS = ["cluster_id", "second_cluster_id", "density_label", "is_outlier",
                      "hierarchy.key_value.key", "hierarchy.key_value.value", "run_id"]
"""The columns a dictionary helps (few distinct values). The id and the distances are left plain:
a dictionary attempt on unique or continuous values made the write of 500,000 rows 0.17 s instead
of 0.10 s, and the file 25% larger."""


def pack_passes(density, hierarchy) -> Optional[np.ndarray]:
    """The pass models for the tasks (the driver's own objects, as Spark's broadcast would ship
    them; never read from user files)."""
    if density is None and hierarchy is None:
        return None
    return np.frombuffer(pickle.dumps((density, hierarchy), protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8)


class _PassCounts:
    """(k-means cluster id, pass label, label text or None) -> rows, per pass (density, each level)."""

    def __init__(self, levels):
        self.density: dict = {}
        self.levels: dict = {int(lv): {} for lv in levels}

    @staticmethod
    def _add(acc: dict, cluster: np.ndarray, lab: np.ndarray, text: Optional[tuple]) -> None:
        """Count the rows of each (cluster, pass label, label text) in ``acc``; ``text`` is
        :func:`~clusterlake.algorithms.cluster_stats.label_codes`' pair or None. One bincount of a
        combined integer key (np.unique of records with a text field cost 2-3 s per million rows)."""
        cu, ci = np.unique(cluster, return_inverse=True)
        lu, li = np.unique(lab, return_inverse=True)
        codes, names = text if text is not None else (np.zeros(len(cluster), np.int64), [None])
        nl, nt = len(lu), len(names)
        key = (ci.astype(np.int64) * nl + li) * nt + codes
        counts = np.bincount(key, minlength=len(cu) * nl * nt)
        for kk in np.flatnonzero(counts):
            c, rest = divmod(int(kk), nl * nt)
            l_, t = divmod(rest, nt)
            k3 = (int(cu[c]), int(lu[l_]), names[t])
            acc[k3] = acc.get(k3, 0) + int(counts[kk])

    def add(self, a, text: Optional[tuple]) -> None:
        if a.density_label is not None:
            self._add(self.density, a.cluster_id, a.density_label, text)
        for lv, labs in (a.hierarchy or {}).items():
            self._add(self.levels[int(lv)], a.cluster_id, labs, text)

    def reply(self) -> dict:
        def rows(acc):
            return [[int(k[0]), int(k[1]), k[2], int(c)] for k, c in acc.items()]

        return {"density": rows(self.density), "levels": {str(lv): rows(acc) for lv, acc in self.levels.items()}}


def write_task_file(worker, dest: str, prefix: str, centers: np.ndarray, cluster_ids: np.ndarray, id_column: str,
                    run_id: str, label: Optional[str], passes: Optional[np.ndarray], metric: Optional[dict] = None,
                    mixture: tuple = (None, None, None)) -> dict:
    """The task side (runs in a barrier task, on a :class:`~clusterlake.algorithms.resident.RowsWorker`).
    ``mixture``: a Gaussian mixture's (covariance type, weights, covariances), its means ``centers``."""
    from clusterlake.io.fs import location
    from clusterlake.kernels.distances import from_spec
    from clusterlake.kernels.gmm import Mixture

    dens, hier = pickle.loads(passes.tobytes()) if passes is not None else (None, None)
    kind, mw, mc = mixture
    rule = AssignmentRule(centers, cluster_ids, dens, hier, metric=from_spec(metric),
                          mixture=Mixture.of(kind, mw, centers, mc) if kind else None)
    counts = _PassCounts(hier.levels if hier is not None else ())
    n = len(worker.raw)
    if not n:
        return {"file": None, "rows": 0, **counts.reply()}
    ids = worker.table.column(id_column)
    schema = file_schema(id_column, ids.type)
    folder = location(dest)
    name = f"part-{worker.partition:05d}-{prefix}.parquet"
    tmp, final = folder.child(f"_tmp-{name}"), folder.child(name)
    folder.fs.create_dir(folder.path, recursive=True)
    run = pa.array([run_id], pa.string())
    kept = _kept_partition(worker, model_key(centers, metric, *mixture))
    with folder.fs.open_output_stream(tmp.path) as out, pq.ParquetWriter(out, schema, use_dictionary=DICTIONARY_COLUMNS) as writer:
        for s0, s1 in worker.chunks():
            Z = worker.z64(s0, s1)
            a = rule.with_passes(Z, rule.named(worker.lab[s0:s1], worker.dist[s0:s1], **{
                name: arr[s0:s1] for name, arr in kept.items()})) if kept is not None else rule(Z)
            cols = {id_column: worker.column(id_column, s0, s1).cast(schema.field(0).type),
                    **contract.arrow_columns(a), "run_id": run.take(pa.array(np.zeros(s1 - s0, np.int32)))}
            writer.write_batch(pa.RecordBatch.from_pydict(cols, schema=schema))
            if dens is not None or hier is not None:
                counts.add(a, label_codes(worker.column(label, s0, s1)) if label else None)
    folder.fs.move(tmp.path, final.path)
    return {"file": name, "rows": int(n), **counts.reply()}


def model_key(centers: np.ndarray, metric: Optional[dict], mixture_type: Optional[str] = None,
              mixture_weights: Optional[np.ndarray] = None, mixture_covariances: Optional[np.ndarray] = None) -> str:
    """What identifies the partition's rule of a model (its centres, distance, mixture): the
    assignments file reuses ``assign``'s columns only for the model ``assign`` ran with."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps([metric, mixture_type], sort_keys=True).encode())
    for a in (centers, mixture_weights, mixture_covariances):
        if a is not None:
            a = np.ascontiguousarray(a, dtype=np.float64)
            h.update(repr(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def _kept_partition(worker, key: str) -> Optional[dict]:
    """The partition's columns the task's ``assign`` kept for the model of ``key`` (:func:`model_key`)
    over the rows it holds now (the rule's first half need not run again: a mixture's posteriors
    cost as much as the pass itself), else None."""
    held = getattr(worker, "assigned", None)
    if held is None or held[0] != key or len(worker.lab) != len(worker.raw):
        return None
    return held[1]


def keep_only(folder, names: set[str]) -> list[str]:
    """Delete every file in ``folder`` (a Location) not named in ``names``; returns the deleted."""
    gone = []
    for info in folder.files(recursive=False):
        if info.base_name not in names:
            folder.fs.delete_file(info.path)
            gone.append(info.base_name)
    return gone


def merge_pass_counts(replies) -> dict:
    """The tasks' pass counts added up: {"density": {key: n}, "levels": {lv: {key: n}}}."""
    out = {"density": {}, "levels": {}}

    def add(acc, rows):
        for cid, lab, text, c in rows:
            key = (int(cid), int(lab), text)
            acc[key] = acc.get(key, 0) + int(c)

    for head, _ in replies:
        add(out["density"], head["density"])
        for lv, rows in head["levels"].items():
            add(out["levels"].setdefault(int(lv), {}), rows)
    return out
