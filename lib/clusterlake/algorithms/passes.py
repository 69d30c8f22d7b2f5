"""Distributed passes over the validated input: Spark plumbing around ``kernels/``.

Each public function runs on the driver and builds a function that runs on executors inside
``mapInArrow``: it turns Arrow batches into a float64 numpy block (n, d), applies the fitted
:class:`~clusterlake.prep.transform.Preprocessor` and a kernel, and returns either rows (the
assignments) or one small row of partial statistics per partition (k x p numbers). Closures capture
plain numpy arrays and strings only; only per-cluster statistics reach the driver, never rows
(except the explicitly sized samples).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa

from clusterlake.io.columns import col, quoted
from clusterlake.prep.transform import Moments, Preprocessor

log = logging.getLogger(__name__)


def arrow_input(df, names: list[str], *extra):
    """``df`` reduced to the user's columns ``names`` under positional names (``_0, _1, ...``)
    and the column expressions ``extra``, ready for ``mapInArrow``; returns (that DataFrame,
    {name: positional name}).

    PySpark's ``mapInArrow``/``mapInPandas`` pass every input column as ``df[name]``, which Spark
    parses: a column named ``spend.monthly`` is read as a struct field and a backtick is a syntax
    error, even when the DataFrame was built with quoted names. The executors' functions read the
    positional names; the output schema keeps the original names (``quoted`` in the DDL).
    """
    pos: dict[str, str] = {}
    for name in names:
        if name not in pos:
            pos[name] = f"_{len(pos)}"
    return df.select(*[col(n).alias(a) for n, a in pos.items()], *extra), pos


def _block(batch, names: list[str]) -> np.ndarray:
    """Stack the named numeric columns of an Arrow batch into an (n, d) float64 array."""
    n = batch.num_rows
    out = np.empty((n, len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        out[:, j] = batch.column(name).to_numpy(zero_copy_only=False)
    return out


# ----------------------------------------------------------------------------------------------
# preprocessing statistics


def input_moments(df, features: list[str]) -> Moments:
    """One pass: per-partition mean and centred scatter (d x d), merged on the driver.

    Collected: one (d + d*d) row per partition. Cost O(n d^2) flops on executors.
    """
    d = len(features)
    src, pos = arrow_input(df, features)
    names = [pos[c] for c in features]

    def part(batches: Iterator["pa.RecordBatch"]) -> Iterator["pa.RecordBatch"]:
        acc = Moments(0, np.zeros(d), np.zeros((d, d)))
        for b in batches:
            if b.num_rows:
                acc = acc.merge(Moments.of(_block(b, names)))
        yield pa.RecordBatch.from_pydict(
            {"n": [acc.n], "mean": [acc.mean.tolist()], "m2": [acc.m2.ravel().tolist()]},
            schema=pa.schema([("n", pa.int64()), ("mean", pa.list_(pa.float64())), ("m2", pa.list_(pa.float64()))]),
        )

    rows = src.mapInArrow(part, "n long, mean array<double>, m2 array<double>").collect()
    total = Moments(0, np.zeros(d), np.zeros((d, d)))
    for r in rows:
        total = total.merge(Moments(int(r["n"]), np.asarray(r["mean"]), np.asarray(r["m2"]).reshape(d, d)))
    return total


# ----------------------------------------------------------------------------------------------
# model space for the MLlib fit


def model_space(df, prep: Preprocessor, weight_col: Optional[str] = None):
    """DataFrame of model-space vectors ``z: array<double>`` (and the weight column, if any)."""
    feats = list(prep.feature_names)
    center, scale, comps, norm = prep.center, prep.scale, prep.components, prep.normalize
    p = prep.n_components
    src, pos = arrow_input(df, feats + ([weight_col] if weight_col else []))
    names, wname = [pos[c] for c in feats], pos.get(weight_col) if weight_col else None

    def part(batches):
        local = Preprocessor(feats, center, scale, comps, normalize=norm)
        for b in batches:
            Z = local.transform(_block(b, names))
            arr = pa.FixedSizeListArray.from_arrays(pa.array(Z.ravel()), p).cast(pa.list_(pa.float64()))
            cols = {"z": arr}
            if wname:
                cols[weight_col] = b.column(wname)
            yield pa.RecordBatch.from_pydict(cols)

    schema = "z array<double>" + (f", {quoted(weight_col)} double" if weight_col else "")
    return src.mapInArrow(part, schema)


# ----------------------------------------------------------------------------------------------
# assignment


def assign_rows(df, prep: Preprocessor, centroids: np.ndarray, cluster_ids: np.ndarray, id_col: str,
                density=None, hierarchy=None, passthrough: Optional[str] = None):
    """Assign every row: ``id, cluster_id, distance, second_cluster_id, margin``, then the columns
    of the sample passes (``density_label, is_outlier, density_distance, hierarchy``; null when
    ``density`` / ``hierarchy`` is None: see :mod:`clusterlake.algorithms.extend`).

    ``distance`` is the Euclidean distance in the model space to the nearest centroid; ``margin``
    is the distance to the second nearest minus that (null when k == 1). ``passthrough``: one
    input column carried along as ``__passthrough`` (the label column, for agreement metrics).
    The pass models are broadcast once. Rows are streamed, never collected.
    """
    from clusterlake.algorithms.extend import PASS_DDL, pass_columns
    from clusterlake.kernels.distance import assign

    feats = list(prep.feature_names)
    center, scale, comps, norm = prep.center, prep.scale, prep.components, prep.normalize
    C = np.ascontiguousarray(centroids, dtype=np.float64)
    ids = np.asarray(cluster_ids, dtype=np.int32)
    k = C.shape[0]
    models = (density, hierarchy)
    bc = df.sparkSession.sparkContext.broadcast(models) if any(m is not None for m in models) else None
    src, pos = arrow_input(df, [id_col, *feats] + ([passthrough] if passthrough else []))
    names, id_name = [pos[c] for c in feats], pos[id_col]
    pt_name = pos[passthrough] if passthrough else None

    def part(batches):
        local = Preprocessor(feats, center, scale, comps, normalize=norm)
        dens, hier = bc.value if bc is not None else (None, None)
        for b in batches:
            Z = local.transform(_block(b, names))
            lab, dist, sec, sdist = assign(Z, C)
            has2 = k > 1
            cols = {
                id_col: b.column(id_name),
                "cluster_id": pa.array(ids[lab], pa.int32()),
                "distance": pa.array(dist, pa.float64()),
                "second_cluster_id": pa.array(ids[sec] if has2 else np.zeros(len(lab), np.int32),
                                              pa.int32(), mask=None if has2 else np.ones(len(lab), bool)),
                "margin": pa.array(sdist - dist if has2 else np.zeros(len(lab)), pa.float64(),
                                   mask=None if has2 else np.ones(len(lab), bool)),
            }
            cols.update(pass_columns(Z, dens, hier))
            if pt_name:
                cols["__passthrough"] = b.column(pt_name)
            yield pa.RecordBatch.from_pydict(cols)

    # the id column keeps its name and type
    id_type = df.schema[id_col].dataType.simpleString()
    schema = (f"{quoted(id_col)} {id_type}, cluster_id int, distance double, second_cluster_id int, "
              "margin double, " + PASS_DDL)
    if passthrough:
        schema += f", __passthrough {df.schema[passthrough].dataType.simpleString()}"
    return src.mapInArrow(part, schema)


# ----------------------------------------------------------------------------------------------
# per-cluster statistics for metrics and the centroids table


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


def cluster_stats(df, prep: Preprocessor, centroids: np.ndarray, label_col: Optional[str] = None,
                  x_center: Optional[np.ndarray] = None) -> ClusterStats:
    """One pass: assign each row and accumulate per-cluster count, sums (model space and original
    units), sums of squares about ``x_center`` (original units; default: zero), distance
    sums/max, and the (label, cluster) contingency when a label column is given.

    Collected: one row of O(k (p + d)) numbers (plus the contingency pairs) per partition.
    """
    from clusterlake.kernels.distance import assign
    from clusterlake.kernels.stats import cluster_moments, cluster_sums

    feats = list(prep.feature_names)
    center, scale, comps, norm = prep.center, prep.scale, prep.components, prep.normalize
    C = np.ascontiguousarray(centroids, dtype=np.float64)
    k, p, d = C.shape[0], C.shape[1], len(feats)
    xc = np.zeros(d) if x_center is None else np.asarray(x_center, dtype=np.float64)
    src, pos = arrow_input(df, feats + ([label_col] if label_col else []))
    names, label_name = [pos[c] for c in feats], pos[label_col] if label_col else None

    def part(batches):
        local = Preprocessor(feats, center, scale, comps, normalize=norm)
        cnt = np.zeros(k)
        sz = np.zeros((k, p))
        sx = np.zeros((k, d))
        sq = np.zeros((k, d))
        sd = np.zeros(k)
        ssd = np.zeros(k)
        mx = np.zeros(k)
        cont: dict = {}
        for b in batches:
            if not b.num_rows:
                continue
            X = _block(b, names)
            Z = local.transform(X)
            lab, _, _, _ = assign(Z, C)
            c1, s1 = cluster_sums(Z, lab, k)
            _, s2 = cluster_sums(X, lab, k)
            dx = X - xc
            _, s3 = cluster_sums(dx * dx, lab, k)
            mom = cluster_moments(Z, lab, C, k)
            cnt += c1
            sz += s1
            sx += s2
            sq += s3
            sd += mom["sum_dist"]
            ssd += mom["sum_sq_dist"]
            mx = np.maximum(mx, mom["max_dist"])
            if label_name is not None:
                labels = b.column(label_name).cast(pa.string()).to_numpy(zero_copy_only=False)
                labels = np.where(labels == None, "<null>", labels).astype(str)  # noqa: E711
                pairs, counts = np.unique(np.rec.fromarrays([labels, lab]), return_counts=True)
                for (lv, ci), c in zip(pairs.tolist(), counts.tolist()):
                    cont[(lv, int(ci))] = cont.get((lv, int(ci)), 0) + int(c)
        keys = list(cont)
        yield pa.RecordBatch.from_pydict({
            "cnt": [cnt.tolist()], "sz": [sz.ravel().tolist()], "sx": [sx.ravel().tolist()], "sq": [sq.ravel().tolist()],
            "sd": [sd.tolist()], "ssd": [ssd.tolist()], "mx": [mx.tolist()],
            "cl": [[kk[0] for kk in keys]], "ci": [[kk[1] for kk in keys]], "cc": [[cont[kk] for kk in keys]],
        }, schema=_STATS_SCHEMA)

    rows = src.mapInArrow(part, _STATS_DDL).collect()
    out = ClusterStats(np.zeros(k), np.zeros((k, p)), np.zeros((k, d)), np.zeros((k, d)), np.zeros(k), np.zeros(k),
                       np.zeros(k), {} if label_col else None)
    for r in rows:
        out.counts += np.asarray(r["cnt"])
        out.sum_z += np.asarray(r["sz"]).reshape(k, p)
        out.sum_x += np.asarray(r["sx"]).reshape(k, d)
        out.sum_sq_dx += np.asarray(r["sq"]).reshape(k, d)
        out.sum_dist += np.asarray(r["sd"])
        out.sum_sq_dist += np.asarray(r["ssd"])
        out.max_dist = np.maximum(out.max_dist, np.asarray(r["mx"]))
        if label_col:
            for lv, ci, cc in zip(r["cl"], r["ci"], r["cc"]):
                out.contingency[(lv, ci)] = out.contingency.get((lv, ci), 0) + cc
    return out


_STATS_DDL = ("cnt array<double>, sz array<double>, sx array<double>, sq array<double>, sd array<double>, "
              "ssd array<double>, mx array<double>, cl array<string>, ci array<long>, cc array<long>")
_F64S = pa.list_(pa.float64())
_STATS_SCHEMA = pa.schema([("cnt", _F64S), ("sz", _F64S), ("sx", _F64S), ("sq", _F64S), ("sd", _F64S), ("ssd", _F64S),
                           ("mx", _F64S), ("cl", pa.list_(pa.string())), ("ci", pa.list_(pa.int64())),
                           ("cc", pa.list_(pa.int64()))])


def mean_distance_to_means(df, prep: Preprocessor, centroids: np.ndarray, means: np.ndarray) -> np.ndarray:
    """One pass: for each cluster (by nearest ``centroids``), the sum of Euclidean distances of its
    rows to the cluster *mean* ``means`` (what Davies-Bouldin needs). Returns (k,) sums."""
    from clusterlake.kernels.distance import assign

    feats = list(prep.feature_names)
    center, scale, comps, norm = prep.center, prep.scale, prep.components, prep.normalize
    C = np.ascontiguousarray(centroids, dtype=np.float64)
    M = np.nan_to_num(np.asarray(means, dtype=np.float64))
    k = C.shape[0]
    src, pos = arrow_input(df, feats)
    names = [pos[c] for c in feats]

    def part(batches):
        local = Preprocessor(feats, center, scale, comps, normalize=norm)
        acc = np.zeros(k)
        for b in batches:
            if not b.num_rows:
                continue
            Z = local.transform(_block(b, names))
            lab, _, _, _ = assign(Z, C)
            dist = np.sqrt(((Z - M[lab]) ** 2).sum(axis=1))
            acc += np.bincount(lab, weights=dist, minlength=k)
        yield pa.RecordBatch.from_pydict({"s": [acc.tolist()]})

    rows = src.mapInArrow(part, "s array<double>").collect()
    return np.sum([np.asarray(r["s"]) for r in rows], axis=0) if rows else np.zeros(k)


def sample_rows(df, columns: list[str], n_total: int, size: int, seed: int):
    """A uniform random sample of ``min(size, n_total)`` rows (slightly fewer when the Bernoulli
    draw falls short), as a pandas DataFrame.

    A Bernoulli sample of ~1.15 x size rows is drawn, then ``size`` of them are kept by a random
    order (a plain ``limit`` would keep the first partitions' rows and bias the sample).
    Collected: at most ``size`` rows of the given columns; the sort touches the sample only.
    """
    from pyspark.sql import functions as F

    if n_total <= 0 or size <= 0:
        return df.select(*[col(c) for c in columns]).limit(0).toPandas()
    sampled = df.select(*[col(c) for c in columns])
    if size < n_total:
        fraction = min(1.0, 1.15 * size / n_total)
        sampled = (sampled.sample(withReplacement=False, fraction=fraction, seed=seed)
                   .orderBy(F.rand(seed + 1)).limit(size))
    return sampled.toPandas()


# ----------------------------------------------------------------------------------------------
# what the serving layer reads: per-cluster radius quantiles and a per-cluster member sample

RADIUS_QUANTILES = {"radius_p50": 0.5, "radius_p90": 0.9, "radius_p99": 0.99}


def radius_quantiles(asg, cluster_ids: np.ndarray, accuracy: int = 10_000) -> dict[str, np.ndarray]:
    """Per-cluster quantiles of the rows' distance to their centroid (``radius_p50/p90/p99``,
    model space, row i = ``cluster_ids[i]``; 0 for an empty cluster), from the assignments.

    One aggregation (``percentile_approx``: rank error at most 1/``accuracy`` of the cluster's
    rows); collected: k rows of 3 numbers.
    """
    from pyspark.sql import functions as F

    names = list(RADIUS_QUANTILES)
    rows = (asg.groupBy("cluster_id")
            .agg(F.percentile_approx("distance", list(RADIUS_QUANTILES.values()), accuracy).alias("q"))
            .collect())
    pos = {int(c): i for i, c in enumerate(cluster_ids)}
    out = {n: np.zeros(len(cluster_ids)) for n in names}
    for r in rows:
        i = pos[int(r["cluster_id"])]
        for j, n in enumerate(names):
            out[n][i] = float(r["q"][j])
    return out


def member_fractions(counts: np.ndarray, per_cluster: Optional[int]) -> np.ndarray:
    """Share of each cluster's rows kept as members: about ``per_cluster`` rows of each
    (``None``: all of them; empty clusters: 0)."""
    counts = np.asarray(counts, dtype=np.float64)
    if per_cluster is None:
        return np.where(counts > 0, 1.0, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counts > 0, np.minimum(1.0, per_cluster / np.maximum(counts, 1.0)), 0.0)


def member_rows(df, prep: Preprocessor, centroids: np.ndarray, cluster_ids: np.ndarray, id_col: str,
                fractions: np.ndarray, seed: int):
    """The member sample: ``id`` (the id column, renamed: no clash with the other names),
    ``cluster_id, distance, z array<float>`` (model space, float32) for a share ``fractions[i]``
    of cluster i's rows.

    A row is kept when ``u(id) < fractions[its cluster]``, ``u`` uniform in [0, 1) from a hash of
    the id and ``seed``: the same rows every time for the same ids, independent of partitioning.
    Rows with ``u >= max(fractions)`` are filtered out by Spark before any Python runs.
    """
    from pyspark.sql import functions as F

    from clusterlake.kernels.distance import assign

    feats = list(prep.feature_names)
    center, scale, comps, norm = prep.center, prep.scale, prep.components, prep.normalize
    C = np.ascontiguousarray(centroids, dtype=np.float64)
    ids = np.asarray(cluster_ids, dtype=np.int32)
    frac = np.asarray(fractions, dtype=np.float64)
    p = prep.n_components
    # 53 random bits of a 64-bit hash -> [0, 1)
    u = (F.xxhash64(F.lit(int(seed)), col(id_col)).bitwiseAND(F.lit((1 << 53) - 1)).cast("double")
         / float(1 << 53))
    src, pos = arrow_input(df, [id_col, *feats], u.alias("__u"))
    names, id_name = [pos[c] for c in feats], pos[id_col]
    fmax = float(frac.max()) if len(frac) else 0.0
    if fmax < 1.0:
        src = src.where(F.col("__u") < F.lit(fmax))

    def part(batches):
        local = Preprocessor(feats, center, scale, comps, normalize=norm)
        for b in batches:
            if not b.num_rows:
                continue
            Z = local.transform(_block(b, names))
            lab, dist, _, _ = assign(Z, C)
            keep = b.column("__u").to_numpy(zero_copy_only=False) < frac[lab]
            if not keep.any():
                continue
            idx = np.flatnonzero(keep)
            zk = np.ascontiguousarray(Z[idx], dtype=np.float32)
            yield pa.RecordBatch.from_pydict({
                "id": b.column(id_name).take(pa.array(idx)),
                "cluster_id": pa.array(ids[lab[idx]], pa.int32()),
                "distance": pa.array(dist[idx], pa.float64()),
                "z": pa.FixedSizeListArray.from_arrays(pa.array(zk.ravel()), p).cast(pa.list_(pa.float32())),
            })

    id_type = df.schema[id_col].dataType.simpleString()
    return src.mapInArrow(part, f"id {id_type}, cluster_id int, distance double, z array<float>")


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
    rows.repartition(F.col("cluster_id")).write.mode("errorifexists").partitionBy("cluster_id").parquet(dest_uri)
    kept = np.zeros(len(cluster_ids))
    if not any("/cluster_id=" in i.path for i in location(dest_uri).files()):
        return kept  # no row was kept (nothing to read back)
    pos = {int(c): i for i, c in enumerate(cluster_ids)}
    # the partition column and the files' row counts: a listing and the parquet footers
    for r in spark.read.parquet(dest_uri).groupBy("cluster_id").count().collect():
        kept[pos[int(r["cluster_id"])]] = r["count"]
    return kept
