"""Spark passes over validated rows held by Spark, not by the engine: the update job and the
stream (which assign new rows to a saved model) and MLlib's fit. The nightly job holds its rows in
the engine's tasks instead (:mod:`clusterlake.algorithms.resident`), with the same kernels.

Each public function runs on the driver and builds a function that runs on executors inside
``mapInArrow``. :func:`map_model_space` is the one place that turns Arrow batches into float64
numpy blocks and applies the fitted :class:`~clusterlake.prep.transform.Preprocessor`, rebuilt on
the executor from its arrays; each pass then applies a kernel (for the assignment: the one
assignment rule, :mod:`clusterlake.kernels.assignment`) and returns either rows (the assignments)
or one small row of partial statistics per partition (k x p numbers). Closures capture plain
numpy arrays and strings only; only per-cluster statistics reach the driver, never rows (except
the explicitly sized samples).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa

from clusterlake.algorithms.cluster_stats import STATS_DDL, ClusterStats, PartitionStats
from clusterlake.algorithms.members import member_fractions
from clusterlake.io.batches import arrow_input, feature_block
from clusterlake.io.columns import quoted
from clusterlake.io.contract import assignments as contract
from clusterlake.kernels.assignment import AssignmentRule
from clusterlake.prep.transform import Preprocessor
from clusterlake.stages import spark_pass

log = logging.getLogger(__name__)

__all__ = ["ClusterStats", "ModelBlock", "assign_rows", "cluster_stats", "map_model_space", "member_fractions",
           "member_rows", "model_space", "write_members"]


# ----------------------------------------------------------------------------------------------
# the executor side of every model-space pass


@dataclass
class ModelBlock:
    """One Arrow batch on an executor: the batch (positional column names), its features in input
    units ``X`` (n, d) and in the model space ``Z`` (n, p)."""

    batch: pa.RecordBatch
    X: np.ndarray
    Z: np.ndarray
    names: dict  # the user's column name -> its positional name in ``batch``

    @property
    def n(self) -> int:
        return self.batch.num_rows

    def column(self, name: str) -> pa.Array:
        """The user's column ``name`` of this batch."""
        return self.batch.column(self.names[name])

    def extra(self, alias: str) -> pa.Array:
        """An extra expression's column, by its alias (never shadowed by a user column's name)."""
        return self.batch.column(alias)


def map_model_space(df, prep: Preprocessor, part: Callable[[Iterator[ModelBlock]], Iterator[pa.RecordBatch]],
                    ddl: str, columns: Sequence[str] = (), extra: Sequence = (), where=None):
    """``df.mapInArrow`` of ``part`` over the rows in the model space.

    ``part(blocks)`` runs once per partition on an executor and receives a :class:`ModelBlock`
    per Arrow batch (empty batches included): the features of ``prep`` transformed by a
    Preprocessor rebuilt there from ``prep``'s arrays, plus the user's ``columns`` (read with
    :meth:`ModelBlock.column`) and the ``extra`` column expressions (:meth:`ModelBlock.extra`).
    ``where``: a filter on those extra columns, applied by Spark before any Python runs. ``ddl``:
    the output schema.
    """
    feats = list(prep.feature_names)
    center, scale, comps, norm = prep.center, prep.scale, prep.components, prep.normalize
    src, pos = arrow_input(df, feats + [c for c in columns if c], *extra)
    if where is not None:
        src = src.where(where)
    names = [pos[c] for c in feats]

    def run(batches):
        local = Preprocessor(feats, center, scale, comps, normalize=norm)

        def blocks():
            for b in batches:
                X = feature_block(b, names)
                yield ModelBlock(b, X, local.transform(X), pos)

        yield from part(blocks())

    return src.mapInArrow(run, ddl)


# ----------------------------------------------------------------------------------------------
# model space for the MLlib fit


def model_space(df, prep: Preprocessor, weight_col: Optional[str] = None):
    """DataFrame of model-space vectors ``z: array<double>`` (and the weight column, if any)."""
    p = prep.n_components

    def part(blocks):
        for blk in blocks:
            arr = pa.FixedSizeListArray.from_arrays(pa.array(blk.Z.ravel()), p).cast(pa.list_(pa.float64()))
            cols = {"z": arr}
            if weight_col:
                cols[weight_col] = blk.column(weight_col)
            yield pa.RecordBatch.from_pydict(cols)

    schema = "z array<double>" + (f", {quoted(weight_col)} double" if weight_col else "")
    return map_model_space(df, prep, part, schema, [weight_col])


# ----------------------------------------------------------------------------------------------
# assignment


def assign_rows(df, prep: Preprocessor, centroids: np.ndarray, cluster_ids: np.ndarray, id_col: str,
                density=None, hierarchy=None, passthrough: Optional[str] = None, metric=None, mixture=None):
    """Assign every row: the ``assignments`` table's row (:mod:`clusterlake.io.contract.assignments`:
    ``id, cluster_id, distance, second_cluster_id, margin, density_label, is_outlier,
    density_distance, hierarchy``) by the one assignment rule
    (:class:`~clusterlake.kernels.assignment.AssignmentRule`; the pass columns are null when
    ``density`` / ``hierarchy`` is None, second/margin null when k == 1).

    ``passthrough``: one input column carried along as ``__passthrough`` (the label column, for
    agreement metrics). The pass models are broadcast once. Rows are streamed, never collected.
    ``metric``: the model's distance when it is not Euclidean (a k-medoids model's
    ``ModelArtifact.metric()``); ``mixture``: a Gaussian mixture model's ``gmm.Mixture`` (rows by
    posterior: ``ModelArtifact.mixture()``).
    """
    C = np.ascontiguousarray(centroids, dtype=np.float64)
    ids = np.asarray(cluster_ids, dtype=np.int32)
    models = (density, hierarchy)
    bc = df.sparkSession.sparkContext.broadcast(models) if any(m is not None for m in models) else None

    def part(blocks):
        dens, hier = bc.value if bc is not None else (None, None)
        rule = AssignmentRule(C, ids, dens, hier, metric=metric, mixture=mixture)
        for blk in blocks:
            cols = {id_col: blk.column(id_col), **contract.arrow_columns(rule(blk.Z))}
            if passthrough:
                cols["__passthrough"] = blk.column(passthrough)
            yield pa.RecordBatch.from_pydict(cols)

    # the id column keeps its name and type
    schema = contract.ddl(id_col, df.schema[id_col].dataType.simpleString())
    if passthrough:
        schema += f", __passthrough {df.schema[passthrough].dataType.simpleString()}"
    return map_model_space(df, prep, part, schema, [id_col, passthrough])


# ----------------------------------------------------------------------------------------------
# per-cluster statistics for metrics and the centroids table


def cluster_stats(df, prep: Preprocessor, centroids: np.ndarray, label_col: Optional[str] = None,
                  x_center: Optional[np.ndarray] = None) -> ClusterStats:
    """One pass: assign each row and accumulate per-cluster count, sums (model space and original
    units), sums of squares about ``x_center`` (original units; default: zero), distance
    sums/max, and the (label, cluster) contingency when a label column is given
    (:class:`~clusterlake.algorithms.cluster_stats.PartitionStats`).

    Collected: one row of O(k (p + d)) numbers (plus the contingency pairs) per partition.
    """
    C = np.ascontiguousarray(centroids, dtype=np.float64)
    k, p, d = C.shape[0], C.shape[1], len(prep.feature_names)
    xc = np.zeros(d) if x_center is None else np.asarray(x_center, dtype=np.float64)

    def part(blocks):
        rule, acc = AssignmentRule(C), PartitionStats(C, d, xc)
        for blk in blocks:
            if blk.n:
                acc.add(blk.X, blk.Z, rule(blk.Z).index, blk.column(label_col) if label_col else None)
        yield acc.batch()

    with spark_pass("cluster statistics"):
        rows = map_model_space(df, prep, part, STATS_DDL, [label_col]).collect()
    return ClusterStats.merge(rows, k, p, d, label_col is not None)


# ----------------------------------------------------------------------------------------------
# what the serving layer reads: a per-cluster member sample

def member_rows(df, prep: Preprocessor, centroids: np.ndarray, cluster_ids: np.ndarray, id_col: str,
                fractions: np.ndarray, seed: int):
    """The member sample: ``id`` (the id column, renamed: no clash with the other names),
    ``cluster_id, distance, z array<float>`` (model space, float32) for a share ``fractions[i]``
    of cluster i's rows.

    A row is kept when ``u(id) < fractions[its cluster]``, ``u`` uniform in [0, 1) from a hash of
    the id and ``seed`` (:func:`clusterlake.algorithms.members.id_hash_uniform`, the nightly job's
    rule): the same rows every time for the same ids, independent of partitioning.
    """
    from clusterlake.algorithms.members import id_hash_uniform

    C = np.ascontiguousarray(centroids, dtype=np.float64)
    ids = np.asarray(cluster_ids, dtype=np.int32)
    frac = np.asarray(fractions, dtype=np.float64)
    p = prep.n_components

    def part(blocks):
        rule = AssignmentRule(C, ids)
        for blk in blocks:
            if not blk.n:
                continue
            a = rule(blk.Z)
            keep = id_hash_uniform(blk.column(id_col), seed) < frac[a.index]
            if not keep.any():
                continue
            idx = np.flatnonzero(keep)
            zk = np.ascontiguousarray(blk.Z[idx], dtype=np.float32)
            yield pa.RecordBatch.from_pydict({
                "id": blk.column(id_col).take(pa.array(idx)),
                "cluster_id": pa.array(a.cluster_id[idx], pa.int32()),
                "distance": pa.array(a.distance[idx], pa.float64()),
                "z": pa.FixedSizeListArray.from_arrays(pa.array(zk.ravel()), p).cast(pa.list_(pa.float32())),
            })

    id_type = df.schema[id_col].dataType.simpleString()
    return map_model_space(df, prep, part, f"id {id_type}, cluster_id int, distance double, z array<float>", [id_col])


def write_members(df, prep: Preprocessor, centroids: np.ndarray, cluster_ids: np.ndarray, id_col: str,
                  fractions: np.ndarray, seed: int, dest_uri: str) -> np.ndarray:
    """Write the member sample (:func:`member_rows`, ``fractions`` from :func:`member_fractions`)
    to ``dest_uri`` as parquet partitioned by
    ``cluster_id``, one file per cluster (``<dest>/cluster_id=<id>/part-*.parquet``): a
    similar-item query reads that one folder. Returns the rows kept per cluster (row i =
    ``cluster_ids[i]``). Nothing reaches the driver but the k counts."""
    from pyspark.sql import functions as F

    from clusterlake.io.fs import location

    spark = df.sparkSession
    rows = member_rows(df, prep, centroids, cluster_ids, id_col, fractions, seed)
    with spark_pass("member sample"):
        rows.repartition(F.col("cluster_id")).write.mode("errorifexists").partitionBy("cluster_id").parquet(dest_uri)
    kept = np.zeros(len(cluster_ids))
    if not any("/cluster_id=" in i.path for i in location(dest_uri).files()):
        return kept  # no row was kept (nothing to read back)
    pos = {int(c): i for i, c in enumerate(cluster_ids)}
    # the partition column and the files' row counts: a listing and the parquet footers
    with spark_pass("member counts"):
        counted = spark.read.parquet(dest_uri).groupBy("cluster_id").count().collect()
    for r in counted:
        kept[pos[int(r["cluster_id"])]] = r["count"]
    return kept
