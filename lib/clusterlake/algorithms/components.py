"""Connected components of a graph held by Spark, as DataFrame operations.

:func:`connected_components` takes an edge DataFrame (two integral columns, undirected; duplicates,
both directions and self loops allowed) and returns one row ``(id, component)`` for every vertex
that is the end of some edge, ``component`` being the smallest vertex id of its connected
component. Vertices that are no edge's end are the caller's business.

Algorithm
---------
The alternating Large-Star / Small-Star algorithm of Kiveris, Lattanzi, Mirrokni, Rastogi and
Vassilvitskii, "Connected Components in MapReduce and Beyond" (SoCC 2014), which GraphFrames'
``connectedComponents`` also runs. The edge set is kept as pairs ``src < dst`` without self loops;
``m(v)`` is the smallest of ``v`` and the neighbours considered:

* large-star: every vertex ``u`` links each of its *larger* neighbours ``v`` to ``m(u)`` over all
  its neighbours (edge ``(m(u), v)`` replaces ``(u, v)``);
* small-star: every vertex ``v`` links itself and each of its *smaller* neighbours to ``m(v)``
  over those smaller neighbours.

Both keep the components and lower every vertex's smallest neighbour; a round is one of each, and
the rounds stop when one leaves the edge set unchanged: each component is then a star around its
smallest vertex (checked exactly before the answer is built), so ``component`` is the star's
centre. The paper bounds the rounds by O(log^2 n); in practice they are about log n, the last one
changing nothing (a path of 1,000 vertices numbered at random: 9 rounds; 200,000 random edges over
300,000 ids: 8).

On Spark each step is one shuffle of the edges: the rows (both directions of each edge for the
large-star) are hash-partitioned by the vertex whose neighbours are compared and ``m`` is a window
minimum over the partition, so every output edge is made in the task that holds its vertex's
neighbours; no join, no UDF. The new edges are then deduplicated (a third shuffle, after a partial
aggregation). A round thus shuffles about four times the edges, plus one pass over the cached
result for the convergence test: the count, the sums of both ends (the sum of the smaller ids is
GraphFrames' own test) and the sums of two hashes of every edge, compared with the previous
round's; only those few numbers reach the driver. Unlike GraphFrames, a hub is not broadcast: a
vertex with d neighbours is one task's sorted (spillable) partition of d rows, and so is, in the
last rounds, the centre of a large component's star.

Every round's edges are materialized and the previous round's released, so neither the plans nor
the held data grow with the rounds. Without ``checkpoint_dir`` every round is
``localCheckpoint``-ed (eagerly: the blocks stay with the executors and are lost with them; no
dearer than caching, and the plan starts afresh). With one, every ``checkpoint_every``-th round is
written there as parquet and read back (the durable cut of GraphFrames) and the rounds between are
persisted (memory and disk), their lineage going back to the last files, whose predecessors are
deleted. (A persisted round is coalesced to as many partitions as the last cut, at least the
default parallelism: Spark keeps a cached plan's ``spark.sql.shuffle.partitions`` partitions,
which adaptive execution does not coalesce, and 200 tiny tasks in every stage of the next round
made it 10-30 times slower on two cores.)

The result is itself checkpointed the same way and depends on nothing else of the run; under
``checkpoint_dir`` it is ``connected-components-<run>/result``, which the caller removes when done.
The input is read twice, for the edges and for the list of vertices of the result: cache it when
that is dear.

Why not GraphFrames: its jars (a Spark package) cannot be resolved on this project's machines, and
this needs nothing beyond pyspark. Where the ``graphframes`` Python package and its jars are
available a caller could use ``GraphFrame(...).connectedComponents()`` instead; this module does
not try to.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Optional

log = logging.getLogger("clusterlake")

__all__ = ["connected_components"]

_DEC = "decimal(20,0)"  # a long's sum without overflow (Spark widens the sum to 30 digits)


@dataclass
class _Held:
    """A materialized DataFrame of the run and how to release it."""

    df: object
    kind: str  # "cache" (persisted), "local" (localCheckpoint), "files" (parquet under checkpoint_dir)
    uri: Optional[str] = None


class _Store:
    """Materializes the run's DataFrames: persisted, or with the lineage cut (parquet files under
    ``checkpoint_dir/connected-components-<run>``, else a local checkpoint)."""

    def __init__(self, spark, checkpoint_dir: Optional[str]):
        self.spark = spark
        self.root = None
        if checkpoint_dir is not None:
            from clusterlake.io.fs import location

            self.root = location(checkpoint_dir).child(f"connected-components-{uuid.uuid4().hex[:8]}")

    def keep(self, df, name: str, cut: bool, like=None, cache_files: bool = True) -> _Held:
        """``df`` checkpointed now (local, or to files when there is a ``checkpoint_dir``) or, when
        not ``cut`` (files only), coalesced to the partitions of ``like`` (the last cut) and
        persisted, to be filled by the next action on it."""
        from pyspark import StorageLevel

        if self.root is None:
            return _Held(df.localCheckpoint(eager=True), "local")
        if not cut:
            n = max(like.rdd.getNumPartitions(), self.spark.sparkContext.defaultParallelism)
            return _Held(df.coalesce(n).persist(StorageLevel.MEMORY_AND_DISK), "cache")
        uri = self.root.child(name).uri
        df.write.mode("overwrite").parquet(uri)
        back = self.spark.read.parquet(uri)
        return _Held(back.persist(StorageLevel.MEMORY_AND_DISK) if cache_files else back, "files", uri)

    def release(self, held: _Held) -> None:
        """Drop ``held``'s cached blocks, local checkpoint or files (best effort)."""
        try:
            held.df.unpersist()
            if held.kind == "local":
                # DataFrame.unpersist does not free a local checkpoint: its blocks belong to the RDD
                # under the LogicalRDD the checkpoint made
                held.df._jdf.queryExecution().logical().rdd().unpersist(False)
            elif held.kind == "files":
                from clusterlake.io.fs import location

                location(held.uri).delete()
        except Exception as e:  # never hide the run's own result or error behind a cleanup failure
            log.debug("connected components: could not release %s data: %s", held.kind, e)


def connected_components(edges, src: str = "src", dst: str = "dst", *, checkpoint_dir: Optional[str] = None,
                         checkpoint_every: int = 2, max_iterations: int = 100):
    """Connected components of the undirected graph ``edges`` (see the module doc).

    Parameters
    ----------
    edges : pyspark.sql.DataFrame
        One row per edge; ``src`` and ``dst`` integral (cast to bigint). Duplicates, both
        directions and self loops are allowed; a row with a null end is no edge.
    src, dst : str
        The names of the two end columns.
    checkpoint_dir : str, optional
        Where to cut the lineage durably (parquet files, any Spark-readable URI); None: every
        round is ``localCheckpoint``-ed. The result stays under it
        (``connected-components-<run>/result``) for the caller to remove.
    checkpoint_every : int
        With ``checkpoint_dir``: write every this many rounds there (>= 1), the rounds between
        being persisted. Without, every round is local-checkpointed whatever this is.
    max_iterations : int
        Rounds (one large-star and one small-star each) before giving up.

    Returns
    -------
    pyspark.sql.DataFrame
        ``id`` bigint, ``component`` bigint (the smallest id of the component): one row per vertex
        that is an end of some edge, self loops included; materialized (checkpointed).

    Raises
    ------
    RuntimeError
        When the edges do not converge in ``max_iterations`` rounds.
    """
    from pyspark.sql import functions as F

    _check_arguments(edges, src, dst, checkpoint_every, max_iterations)
    t0 = time.monotonic()
    spark = edges.sparkSession
    store = _Store(spark, checkpoint_dir)
    a, b = F.col(src).cast("long"), F.col(dst).cast("long")
    ends = edges.select(a.alias("src"), b.alias("dst")).where(F.col("src").isNotNull() & F.col("dst").isNotNull())
    prepared = ends.where(F.col("src") != F.col("dst")) \
        .select(F.least("src", "dst").alias("src"), F.greatest("src", "dst").alias("dst")).distinct()

    held = [store.keep(prepared, "round-0", cut=True)]  # live data, oldest first; held[0] the last cut
    try:
        current, rounds = _converge(store, held, checkpoint_every, max_iterations)
        vertices = ends.select(F.explode(F.array("src", "dst")).alias("id")).distinct()
        stars = current.df.select(F.col("dst").alias("id"), F.col("src").alias("component"))
        result = vertices.join(stars, "id", "left").select(
            "id", F.coalesce("component", "id").alias("component"))
        out = store.keep(result, "result", cut=True, cache_files=False)
    finally:
        for h in held:
            store.release(h)
    totals = out.df.agg(F.count(F.lit(1)).alias("n"), F.sum((F.col("id") == F.col("component")).cast("long"))
                        .alias("c")).first()
    log.info("connected components: %d vertices in %d components, %d rounds, %.1f s",
             totals["n"], totals["c"] or 0, rounds, time.monotonic() - t0)
    return out.df


def _converge(store: "_Store", held: list, checkpoint_every: int, max_iterations: int):
    """Large-star then small-star rounds until the edges stop changing (``held``: the live rounds,
    oldest first, updated in place for the caller to release). Returns (the last round, rounds)."""
    current = held[-1]
    fp = _fingerprint(current.df)
    log.info("connected components: %d distinct edges", fp[0])
    rounds, converged = 0, fp[0] == 0
    while not converged:
        if rounds >= max_iterations:
            raise RuntimeError(f"connected components did not converge in max_iterations={max_iterations} "
                               f"rounds ({fp[0]} edges left after the last round)")
        rounds += 1
        cut = store.root is None or rounds % checkpoint_every == 0
        nxt = store.keep(_small_star(_large_star(current.df)), f"round-{rounds}", cut=cut, like=held[0].df)
        new_fp = _fingerprint(nxt.df)  # fills the cache of a persisted round
        log.info("connected components: round %d: %d edges%s", rounds, new_fp[0],
                 f" (written to {nxt.uri})" if nxt.kind == "files" else "")
        if cut:  # nothing depends on the older data now
            for h in held:
                store.release(h)
            held[:] = [nxt]
        else:  # the previous round, unless it is the last cut (the lineage of this one)
            if len(held) > 1:
                store.release(held.pop())
            held.append(nxt)
        current = nxt
        if new_fp == fp:
            converged = _is_star_forest(current.df)
            if not converged:  # equal fingerprints of different edge sets: keep going
                log.warning("connected components: round %d left the edge fingerprint unchanged but the "
                            "edges are not stars yet; going on", rounds)
        fp = new_fp
    return current, rounds


def _check_arguments(edges, src: str, dst: str, checkpoint_every: int, max_iterations: int) -> None:
    """The errors :func:`connected_components` raises before any Spark job."""
    from pyspark.sql.types import IntegralType

    if src == dst:
        raise ValueError(f"connected_components: src and dst name the same column {src!r}")
    types = {f.name: f.dataType for f in edges.schema.fields}
    for c in (src, dst):
        if c not in types:
            raise ValueError(f"connected_components: the edges have no column {c!r} (columns: {list(types)})")
        if not isinstance(types[c], IntegralType):
            raise TypeError(f"connected_components: column {c!r} is {types[c].simpleString()}, not an integer type")
    if int(checkpoint_every) < 1:
        raise ValueError(f"connected_components: checkpoint_every must be >= 1, got {checkpoint_every}")
    if int(max_iterations) < 1:
        raise ValueError(f"connected_components: max_iterations must be >= 1, got {max_iterations}")


def _large_star(e):
    """Large-star on ``e`` (distinct, src < dst): each vertex links its larger neighbours to the
    smallest of itself and all its neighbours. Returns (big, small) pairs, big > small, possibly
    repeated."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    both = e.select(F.col("src").alias("u"), F.col("dst").alias("v")) \
        .unionByName(e.select(F.col("dst").alias("u"), F.col("src").alias("v")))
    nbrs = both.repartition("u")  # e is distinct, so is nbrs
    m = F.least(F.col("u"), F.min("v").over(Window.partitionBy("u")))
    return nbrs.withColumn("m", m).where(F.col("v") > F.col("u")) \
        .select(F.col("v").alias("big"), F.col("m").alias("small"))


def _small_star(pairs):
    """Small-star on (big, small) pairs: each vertex links itself and its smaller neighbours to the
    smallest of those neighbours. Returns the edges (src < dst), deduplicated."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    nbrs = pairs.repartition("big")  # repeated pairs only repeat edges, which the distinct drops
    m = F.min("small").over(Window.partitionBy("big"))
    # one edge per pair: the pair holding the minimum links the vertex itself, the others link
    # their smaller end
    return nbrs.withColumn("m", m).select(
        F.col("m").alias("src"),
        F.when(F.col("small") == F.col("m"), F.col("big")).otherwise(F.col("small")).alias("dst")).distinct()


def _fingerprint(e) -> tuple:
    """(count, sum of src, sum of dst, sums of two hashes of each edge) of a distinct edge set: equal
    for equal sets, and for different ones only by a (vanishingly unlikely) coincidence."""
    from pyspark.sql import functions as F

    row = e.agg(F.count(F.lit(1)), F.sum(F.col("src").cast(_DEC)), F.sum(F.col("dst").cast(_DEC)),
                F.sum(F.xxhash64("src", "dst").cast(_DEC)), F.sum(F.hash("dst", "src").cast("long"))).first()
    return tuple(row)


def _is_star_forest(e) -> bool:
    """Whether every vertex of ``e`` (src < dst, distinct) is a centre (only ever a src) or a leaf
    of exactly one edge: then each component is a star around its smallest vertex."""
    from pyspark.sql import functions as F

    ends = e.select(F.col("src").alias("v"), F.lit(0).alias("leaf")) \
        .unionByName(e.select(F.col("dst").alias("v"), F.lit(1).alias("leaf")))
    per = ends.groupBy("v").agg(F.sum("leaf").alias("leaf"), F.count(F.lit(1)).alias("n"))
    return per.where((F.col("leaf") > 0) & (F.col("n") > 1)).isEmpty()
