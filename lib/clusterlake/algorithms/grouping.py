"""Near-duplicate groups on Spark (issue 22): sign, band, verify, link, number.

1. :func:`sign`: one pass through Python over the input's id and grouping column. Each Arrow batch
   becomes, vectorised (:mod:`clusterlake.kernels.minhash`), every row's vertex id, its payload
   (the hashed set, or the unit vector) and its band keys; a row whose set is null or empty (or
   whose vector is null, of another length, or not finite) gets the reason instead, so the
   invalid-row policy counts it from the same pass.
2. :func:`candidate_pairs`: the (band key, vertex) rows are shuffled by key, and each task sorts
   its rows once (numpy): the runs of equal keys are the buckets. Every bucket of two or more
   rows yields its pairs, all of them up to ``grouping.max_bucket`` rows, beyond that a star
   around its smallest vertex plus a chain through its sorted vertices (2m pairs, not m(m-1)/2:
   a bucket of many identical sets is one group either way).
3. :func:`verified_edges`: each distinct candidate pair is joined with both payloads and its
   *exact* similarity computed; the pairs at or above ``grouping.threshold`` are the edges.
4. :func:`clusterlake.algorithms.components.connected_components` (large-star / small-star on
   Spark) turns the edges into components, whose smallest vertex is the representative; the rows
   that are no edge's end are groups of one.
5. :func:`number_groups`: stable group ids against the previous run's groups (a group inherits the
   id of the previous group most of whose members it holds), new ids after the previous run's
   ``next_group_id``; every row's similarity to its representative, exact.

Nothing here collects rows to the driver: counts, and at most one row per bucket size in the logs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa

from clusterlake.kernels import minhash as M

log = logging.getLogger("clusterlake")

VID, PAYLOAD, KEYS, BAD = "_vid", "_payload", "_keys", "_bad"


@dataclass(frozen=True)
class Banding:
    """The LSH banding of a run: ``bands`` bands of ``rows`` hash values each."""

    kind: str  # jaccard | cosine
    bands: int
    rows: int
    seed: int
    threshold: float

    @property
    def hashes(self) -> int:
        return self.bands * self.rows

    @property
    def recall_at_threshold(self) -> float:
        """The probability that a pair exactly at the threshold shares a band (the S-curve)."""
        return float(M.s_curve(M.collision_probability(self.threshold, self.kind), self.bands, self.rows))


def banding(gcfg) -> Banding:
    """The banding of ``grouping``: given (bands and rows), or derived from the threshold and the
    target recall there (:func:`clusterlake.kernels.minhash.lsh_params`)."""
    if gcfg.bands is not None:
        b, r = int(gcfg.bands), int(gcfg.rows)
    else:
        b, r = M.lsh_params(gcfg.threshold, gcfg.similarity, gcfg.recall, gcfg.max_hashes)
    return Banding(gcfg.similarity, b, r, int(gcfg.seed), float(gcfg.threshold))


# -- 1. sign ------------------------------------------------------------------------------------

def _vertex_ids(ids: pa.Array) -> np.ndarray:
    """The rows' vertex ids: an integer id itself, any other id its stable 64-bit hash."""
    if pa.types.is_integer(ids.type):
        return np.asarray(ids.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
    return M.token_hashes(ids.cast(pa.string())).view(np.int64)


def _set_batch(col: pa.Array, name: str, band: Banding):
    """(payload, keys, bad) of a batch of sets."""
    offsets, hashes = M.set_hashes(col)
    sizes = np.diff(offsets)
    bad = np.full(len(col), None, dtype=object)
    bad[sizes == 0] = f"{name}:empty"
    if col.null_count:
        bad[np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)] = f"{name}:null"
    sig = M.minhash_signatures(offsets, hashes, band.hashes, band.seed)
    keys = M.band_keys(sig, band.bands, band.rows).view(np.int64)
    payload = pa.ListArray.from_arrays(pa.array(offsets, pa.int32() if offsets[-1] < 2**31 else pa.int64()),
                                       pa.array(hashes.view(np.int64), pa.int64()))
    if isinstance(payload, pa.LargeListArray):
        payload = payload.cast(pa.list_(pa.int64()))
    return payload, keys, bad


def _vector_batch(col: pa.Array, name: str, dim: int, band: Banding):
    """(payload, keys, bad) of a batch of vectors: the unit vectors (zeros for a bad row). A bad
    vector is one :func:`clusterlake.io.vectors.vector_rows` rejects (null, length, nan, inf,
    too_large), or a zero vector (no direction: ``<column>:zero``)."""
    from clusterlake.io.vectors import vector_rows

    v = vector_rows(col, dim)
    bad = np.full(len(col), None, dtype=object)
    for reason, mask in v.reasons.items():
        bad[mask & np.equal(bad, None)] = f"{name}:{reason}"
    X = np.where(np.equal(bad, None)[:, None], np.nan_to_num(np.asarray(v.X, np.float64)), 0.0)
    norm = np.linalg.norm(X, axis=1)
    bad[(norm == 0) & np.equal(bad, None)] = f"{name}:zero"
    U = (X / np.where(norm > 0, norm, 1.0)[:, None]).astype(np.float32)
    keys = M.band_keys(M.hyperplane_signatures(U, band.hashes, band.seed), band.bands, band.rows).view(np.int64)
    payload = pa.FixedSizeListArray.from_arrays(pa.array(U.ravel(), pa.float32()), dim).cast(pa.list_(pa.float32()))
    return payload, keys, bad


def sign(df, id_col: str, column: str, band: Banding, vector_dim: Optional[int] = None):
    """``df`` (id, column) -> (id, _vid, _payload, _keys, _bad): one pass through Python."""
    from clusterlake.io.columns import col as c
    from clusterlake.io.columns import quoted

    id_type = df.schema[id_col].dataType.simpleString()
    payload_type = "array<float>" if vector_dim else "array<bigint>"
    ddl = f"{quoted(id_col)} {id_type}, {VID} bigint, {PAYLOAD} {payload_type}, {KEYS} array<bigint>, {BAD} string"
    nb = band.bands

    def fn(batches):
        for rb in batches:
            ids, col = rb.column(0), rb.column(1)
            if vector_dim:
                payload, keys, bad = _vector_batch(col, column, vector_dim, band)
            else:
                payload, keys, bad = _set_batch(col, column, band)
            kl = pa.FixedSizeListArray.from_arrays(pa.array(keys.ravel(), pa.int64()), nb).cast(pa.list_(pa.int64()))
            yield pa.RecordBatch.from_arrays(
                [ids, pa.array(_vertex_ids(ids), pa.int64()), payload, kl, pa.array(bad, pa.string())],
                names=[id_col, VID, PAYLOAD, KEYS, BAD])

    return df.select(c(id_col), c(column)).mapInArrow(fn, ddl)


def _list_parts(c: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0, values) of a list array, slices included."""
    off = np.asarray(c.offsets.to_numpy(), dtype=np.int64)
    vals = c.values.slice(int(off[0]), int(off[-1] - off[0])).to_numpy(zero_copy_only=False)
    return off - off[0], vals


# -- 2. candidate pairs -------------------------------------------------------------------------

def iter_bucket_pairs(offsets: np.ndarray, flat: np.ndarray, max_bucket: int, max_pairs: int = 1 << 20):
    """The candidate pairs ``(a, b)``, ``a < b``, of buckets of vertex ids (bucket i is
    ``flat[offsets[i]:offsets[i + 1]]``), in blocks of about ``max_pairs`` pairs (a task never
    holds all of its pairs at once): every pair of a bucket of at most ``max_bucket`` vertices; a
    larger bucket's star around its smallest vertex plus the chain through its sorted vertices.
    Vectorised per bucket size (a loop over the few distinct sizes, and the huge buckets)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    sizes = np.diff(offsets)
    small = np.flatnonzero((sizes >= 2) & (sizes <= max_bucket))
    for s in np.unique(sizes[small]):
        starts = offsets[small[sizes[small] == s]]
        i, j = np.triu_indices(int(s), 1)
        per = max(1, max_pairs // len(i))  # buckets of this size per block
        for k in range(0, len(starts), per):
            V = np.sort(flat[starts[k:k + per, None] + np.arange(s)], axis=1)
            yield V[:, i].ravel(), V[:, j].ravel()
    for i in np.flatnonzero(sizes > max_bucket):
        v = np.unique(flat[offsets[i]:offsets[i + 1]])
        yield np.r_[np.full(len(v) - 1, v[0]), v[:-1]], np.r_[v[1:], v[1:]]


def bucket_pairs(offsets: np.ndarray, flat: np.ndarray, max_bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """Every candidate pair of :func:`iter_bucket_pairs` at once (small inputs and tests)."""
    parts = list(iter_bucket_pairs(offsets, flat, max_bucket))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])


PAIR, STATS = 0, 1  # the kinds of rows bucket_rows yields
KEYS_PER_PARTITION = 2_000_000  # band keys one task sorts at once (16 bytes each)


def bucket_rows(batches, max_bucket: int, chunk: int = 1 << 20):
    """One partition's (key, vertex) rows -> its candidate pairs (``kind`` 0) and one row of
    bucket statistics (``kind`` 1: ``a`` the largest bucket, ``b`` the buckets above
    ``max_bucket``). The partition holds every row of its keys (hash-partitioned by key): it is
    sorted by (key, vertex) once and the runs of equal keys are the buckets."""
    parts = [(rb.column(0).to_numpy(), rb.column(1).to_numpy()) for rb in batches]
    if not parts:
        return
    keys = np.concatenate([k for k, _ in parts])
    vids = np.concatenate([v for _, v in parts])
    order = np.lexsort((vids, keys))
    keys, vids = keys[order], vids[order]
    offsets = np.r_[0, np.flatnonzero(keys[1:] != keys[:-1]) + 1, len(keys)]
    sizes = np.diff(offsets)
    for a, b in iter_bucket_pairs(offsets, vids, max_bucket, chunk):
        yield pa.RecordBatch.from_arrays([pa.array(np.full(len(a), PAIR, np.int8)), pa.array(a), pa.array(b)],
                                         names=["kind", "a", "b"])
    yield pa.RecordBatch.from_arrays([pa.array([STATS], pa.int8()), pa.array([int(sizes.max())], pa.int64()),
                                      pa.array([int((sizes > max_bucket).sum())], pa.int64())],
                                     names=["kind", "a", "b"])


def candidate_pairs(signed, max_bucket: int, rows: int, bands: int):
    """The distinct candidate pairs (``a < b``) of the buckets (:func:`bucket_pairs`) and the
    bucket statistics (a DataFrame of ``kind`` 1 rows: see :func:`bucket_rows`), both from one
    shuffle of the (key, vertex) rows by key. ``rows`` x ``bands`` keys are spread so that a task
    sorts about :data:`KEYS_PER_PARTITION` of them at most."""
    from pyspark.sql import functions as F

    spark = signed.sparkSession
    parts = max(int(spark.conf.get("spark.sql.shuffle.partitions")), -(-rows * bands // KEYS_PER_PARTITION))
    keyed = signed.select(F.explode(KEYS).alias("key"), VID).repartition(parts, "key")
    out = keyed.mapInArrow(lambda it: bucket_rows(it, max_bucket), "kind tinyint, a bigint, b bigint")
    return out


# -- 3. verification ----------------------------------------------------------------------------

def exact_similarity(pa_col: pa.Array, pb_col: pa.Array, kind: str) -> np.ndarray:
    """The exact similarity of each pair of payloads (hashed sets, or unit vectors)."""
    if kind == "jaccard":
        (oa, ha), (ob, hb) = _list_parts(pa_col), _list_parts(pb_col)
        return M.jaccard_pairs(oa, ha.view(np.uint64), ob, hb.view(np.uint64))
    n = len(pa_col)
    A = np.asarray(pa_col.flatten().to_numpy(zero_copy_only=False), np.float64).reshape(n, -1)
    B = np.asarray(pb_col.flatten().to_numpy(zero_copy_only=False), np.float64).reshape(n, -1)
    return M.cosine_pairs(A, B)


def _tolerance(kind: str) -> float:
    """Round-off allowed at the threshold: none for Jaccard (a ratio of counts), a few ulps for the
    cosine of float32 unit vectors (identical vectors must link at ``threshold: 1``)."""
    return 0.0 if kind == "jaccard" else 1e-9


def verified_edges(signed, pairs, kind: str, threshold: float):
    """The candidate pairs whose exact similarity is at least ``threshold``: (a, b, similarity)."""
    from pyspark.sql import functions as F

    left = signed.select(F.col(VID).alias("a"), F.col(PAYLOAD).alias("pa"))
    right = signed.select(F.col(VID).alias("b"), F.col(PAYLOAD).alias("pb"))
    joined = pairs.join(left, "a").join(right, "b").select("a", "b", "pa", "pb")

    def fn(batches):
        for rb in batches:
            sim = exact_similarity(rb.column(2), rb.column(3), kind)
            keep = sim >= threshold - _tolerance(kind)
            yield pa.RecordBatch.from_arrays(
                [pa.array(rb.column(0).to_numpy()[keep]), pa.array(rb.column(1).to_numpy()[keep]),
                 pa.array(sim[keep], pa.float64())], names=["a", "b", "similarity"])

    return joined.mapInArrow(fn, "a bigint, b bigint, similarity double")


# -- 4/5. groups and their stable ids ---------------------------------------------------------

def representative_similarity(signed, comp, kind: str):
    """(vid, component, similarity) of every vertex in a component: its exact similarity to the
    component's representative (its smallest vertex; 1.0 for the representative itself)."""
    from pyspark.sql import functions as F

    mine = signed.select(F.col(VID).alias("id"), F.col(PAYLOAD).alias("pa"))
    rep = signed.select(F.col(VID).alias("component"), F.col(PAYLOAD).alias("pb"))
    joined = comp.join(mine, "id").join(rep, "component").select("id", "component", "pa", "pb")

    def fn(batches):
        for rb in batches:
            sim = np.minimum(exact_similarity(rb.column(2), rb.column(3), kind), 1.0)
            sim[rb.column(0).to_numpy() == rb.column(1).to_numpy()] = 1.0  # the representative itself
            yield pa.RecordBatch.from_arrays([rb.column(0), rb.column(1), pa.array(sim, pa.float64())],
                                             names=[VID, "component", "similarity"])

    return joined.mapInArrow(fn, f"{VID} bigint, component bigint, similarity double")


def dense_ranks(keys, column: str):
    """(``column``, rank): each distinct value's 0-based rank in ascending order, computed in
    parallel (a range partitioning, each partition's count, then each partition numbers its sorted
    values from the counts before it): the same ranks whatever the input's partitioning."""
    from pyspark.sql import functions as F

    # checkpointed, not cached: recomputed, the range partitioning could draw other bounds than
    # those the counts below were taken from
    ranged = keys.select(column).distinct().repartitionByRange(column) \
        .sortWithinPartitions(column).withColumn("_p", F.spark_partition_id()).localCheckpoint(eager=True)
    counts = {r["_p"]: r["n"] for r in ranged.groupBy("_p").agg(F.count("*").alias("n")).collect()}
    starts, total = {}, 0
    for p in sorted(counts):
        starts[p], total = total, total + counts[p]

    def fn(batches):
        seen = None
        for rb in batches:
            vals, part = rb.column(0), rb.column(1).to_numpy()
            if not len(part):
                continue
            if seen is None:
                seen = starts[int(part[0])]
            ranks = seen + np.arange(len(vals), dtype=np.int64)
            seen += len(vals)
            yield pa.RecordBatch.from_arrays([vals, pa.array(ranks)], names=[column, "rank"])

    return ranged.mapInArrow(fn, f"{column} bigint, rank bigint"), total


def inherited_ids(tonight, previous, id_col: str):
    """(component, group_id) of tonight's components that keep a previous group's id: a component
    holding more than half of a previous group's members may inherit it (so at most one does);
    of the groups it may inherit, it takes the one it shares most rows with (ties: the smaller id)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from clusterlake.io.columns import col as c

    prev = previous.select(c(id_col).alias("_id"), F.col("group_id").alias("prev_id"))
    prev_sizes = prev.groupBy("prev_id").agg(F.count("*").alias("prev_size"))
    overlap = tonight.select(c(id_col).alias("_id"), "component").join(prev, "_id") \
        .groupBy("component", "prev_id").agg(F.count("*").alias("shared"))
    most = overlap.join(prev_sizes, "prev_id").where(2 * F.col("shared") > F.col("prev_size"))
    best = Window.partitionBy("component").orderBy(F.desc("shared"), F.asc("prev_id"))
    return most.withColumn("_r", F.row_number().over(best)).where("_r = 1") \
        .select("component", F.col("prev_id").alias("group_id"))


@dataclass
class Grouping:
    """The result of :func:`group`."""

    numbered: object  # DataFrame: id, _vid, group_id, group_size, similarity, is_representative
    id_col: str
    counts: dict  # candidate_pairs, verified_pairs, groups, grouped_rows, largest_group, huge_buckets, ...
    next_group_id: int  # the first id the next run may give a new group

    @property
    def groups(self):
        """The ``groups`` table's rows (:mod:`clusterlake.io.contract.groups`), without ``run_id``."""
        return self.numbered.drop(VID)

    SIZE_BINS = ((1, 1), (2, 2), (3, 3), (4, 5), (6, 10), (11, 100), (101, 1000), (1001, None))

    def summary(self, examples: int = 5, members: int = 10) -> dict:
        """What the report shows (two small collects): the group-size distribution (``bins``:
        ``[low, high or None, groups, rows]``) and the ``examples`` largest groups, each with its
        ``members`` rows most similar to the representative (``[id, similarity]``)."""
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        from clusterlake.io.columns import col as c

        reps = self.numbered.where(F.col("is_representative"))
        size = F.col("group_size")
        b = F.lit(len(self.SIZE_BINS) - 1)
        for i, (lo, hi) in reversed(list(enumerate(self.SIZE_BINS[:-1]))):
            b = F.when(size <= hi, F.lit(i)).otherwise(b)
        got = {r["b"]: (int(r["g"]), int(r["n"])) for r in
               reps.groupBy(b.alias("b")).agg(F.count("*").alias("g"), F.sum(size).alias("n")).collect()}
        bins = [[lo, hi, *got.get(i, (0, 0))] for i, (lo, hi) in enumerate(self.SIZE_BINS)]
        top = [r["group_id"] for r in reps.where(size > 1).orderBy(F.desc("group_size"), "group_id")
               .limit(examples).select("group_id").collect()]
        rank = Window.partitionBy("group_id").orderBy(F.desc("similarity"), c(self.id_col))
        rows = self.numbered.where(F.col("group_id").isin(top)).withColumn("_r", F.row_number().over(rank)) \
            .where(F.col("_r") <= members).select("group_id", "group_size", c(self.id_col).alias("id"),
                                                  "similarity").collect()
        ex = {g: {"group_id": int(g), "size": 0, "members": []} for g in top}
        for r in sorted(rows, key=lambda r: (top.index(r["group_id"]), -r["similarity"])):
            e = ex[r["group_id"]]
            e["size"] = int(r["group_size"])
            e["members"].append([r["id"] if isinstance(r["id"], (int, str)) else str(r["id"]), float(r["similarity"])])
        return {"bins": bins, "examples": [ex[g] for g in top]}

    def index(self, signed, rows: int, max_rows: int):
        """The serving band index (:mod:`clusterlake.serving.duplicates`): ``id``, ``group_id``,
        ``payload``, ``keys`` of every row, or of a uniform sample of about ``max_rows`` (a hash of
        the vertex, the same rows night over night) when there are more."""
        from pyspark.sql import functions as F

        src = signed.select(VID, F.col(PAYLOAD).alias("payload"), F.col(KEYS).alias("keys"))
        if rows > max_rows:
            frac = max_rows / rows
            src = src.where((F.xxhash64(VID) % 1_000_000 + 1_000_000) % 1_000_000 < int(frac * 1_000_000))
        from clusterlake.io.columns import col as c

        return self.numbered.select(c(self.id_col).alias("id"), VID, "group_id").join(src, VID) \
            .select("id", "group_id", "payload", "keys")


def group(signed, rows: int, id_col: str, gcfg, band: Banding, previous, next_id: int, persist,
          spark_pass) -> Grouping:
    """Steps 2-5 on the ``rows`` valid signed rows (``signed``, persisted by the caller). ``previous``: the
    previous run's groups (id, group_id) or None; ``next_id`` its next unused group id;
    ``persist(df)`` caches a DataFrame for the run; ``spark_pass(name)`` names each pass."""
    from pyspark.sql import functions as F

    from clusterlake.algorithms.components import connected_components
    from clusterlake.io.columns import col as c

    with spark_pass("candidate pairs"):
        out = persist(candidate_pairs(signed, gcfg.max_bucket, rows, band.bands))
        pairs = persist(out.where(F.col("kind") == PAIR).select("a", "b").distinct())
        n_pairs = pairs.count()
        big = out.where(F.col("kind") == STATS).agg(F.max("a").alias("m"), F.sum("b").alias("h")).first()
    with spark_pass("verify pairs"):
        edges = persist(verified_edges(signed, pairs, band.kind, band.threshold))
        n_edges = edges.count()
    with spark_pass("connected components"):
        comp = connected_components(edges.select(F.col("a").alias("src"), F.col("b").alias("dst")))  # materialised
    with spark_pass("groups"):
        sims = representative_similarity(signed, comp, band.kind)
        sizes = comp.groupBy("component").agg(F.count("*").alias("group_size"))
        linked = sims.join(sizes, "component")
        rows = signed.select(c(id_col), VID).join(linked, VID, "left").select(
            c(id_col), VID, F.coalesce("component", VID).alias("component"),
            F.coalesce("group_size", F.lit(1)).alias("group_size"),
            F.coalesce("similarity", F.lit(1.0)).alias("similarity"))
        rows = persist(rows)
        stats = rows.where(F.col(VID) == F.col("component")).agg(
            F.count("*").alias("groups_all"), F.sum((F.col("group_size") > 1).cast("long")).alias("groups"),
            F.coalesce(F.max("group_size"), F.lit(0)).alias("largest"),
            F.coalesce(F.sum(F.when(F.col("group_size") > 1, F.col("group_size"))), F.lit(0)).alias("grouped")).first()
    with spark_pass("group ids"):
        groups, n_new = _numbered(rows, previous, id_col, next_id, persist)
    counts = {"candidate_pairs": int(n_pairs), "verified_pairs": int(n_edges), "groups": int(stats["groups"]),
              "grouped_rows": int(stats["grouped"]), "largest_group": int(stats["largest"]),
              "singletons": int(stats["groups_all"] - stats["groups"]), "largest_bucket": int(big["m"] or 0),
              "huge_buckets": int(big["h"] or 0), "new_group_ids": int(n_new)}
    log.info("grouping: %d candidate pairs, %d verified at similarity >= %g, %d groups of 2+ rows (%d rows, "
             "the largest %d), %d rows alone; %d buckets above grouping.max_bucket=%d (largest %d rows)",
             counts["candidate_pairs"], counts["verified_pairs"], band.threshold, counts["groups"],
             counts["grouped_rows"], counts["largest_group"], counts["singletons"], counts["huge_buckets"],
             gcfg.max_bucket, counts["largest_bucket"])
    return Grouping(groups, id_col, counts, int(next_id + n_new))


def _numbered(rows, previous, id_col: str, next_id: int, persist):
    """``rows`` with their stable ``group_id`` (inherited, else ``next_id`` + the rank of the new
    component's representative) and ``is_representative`` (persisted: the table and the index read
    it); the number of new ids."""
    from pyspark.sql import functions as F

    from clusterlake.io.columns import col as c

    if previous is not None:
        kept = persist(inherited_ids(rows, previous, id_col))
        fresh = rows.select("component").distinct().join(kept, "component", "left_anti")
    else:
        kept, fresh = None, rows.select("component").distinct()
    ranks, n_new = dense_ranks(fresh, "component")
    new_ids = ranks.select("component", (F.col("rank") + F.lit(int(next_id))).alias("group_id"))
    ids = new_ids if kept is None else new_ids.unionByName(kept)
    out = rows.join(ids, "component").select(
        c(id_col), VID, F.col("group_id").cast("long"), F.col("group_size").cast("long"), "similarity",
        (F.col(VID) == F.col("component")).alias("is_representative"))
    return persist(out), n_new
