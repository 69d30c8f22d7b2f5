"""Benchmark: near-duplicate grouping (issue 22), clusterlake's whole grouping vs Spark MLlib's
``MinHashLSH.approxSimilarityJoin``, in one SparkSession (local[2]) on this machine.

    .venv/bin/python scripts/bench_lsh.py                                  # 1M sets; MLlib on 100k, 200k
    .venv/bin/python scripts/bench_lsh.py --rows 200000 --mllib-rows 200000 --recall 0.999

Data (cached under data/bench/): ``rows`` token sets (20-40 integer tokens from a 200,000-token
vocabulary, ``scripts/gen_sets.py``), 30% of them in planted groups of a base and 1-5 variants at
Jaccard >= 0.8 to the base. The exact pairs at the threshold (Jaccard >= 0.7 by default) are every
pair of a planted group whose exact Jaccard reaches it: two unrelated sets share 0.005 tokens on
average and would need 25 of 30, so no other pair can (the script checks that no pair any side
found lies outside the planted groups).

* **clusterlake**: the whole nightly job with ``kmeans.enabled: false`` and ``grouping`` on the
  ``tokens`` column (read, sign, buckets, exact verification, connected components, stable ids,
  the ``groups`` table committed), into an empty output; then, not timed, the same steps'
  verified pairs (:mod:`clusterlake.algorithms.grouping`) for the pair recall;
* **mllib**: ``HashingTF(binary=True, 2^20 features)`` on the tokens as strings, then
  ``MinHashLSH(numHashTables = our bands x rows)`` and ``approxSimilarityJoin(df, df, 1 - threshold)``
  with ``a.id < b.id``; the join's pairs are counted and scored. MLlib's OR-only banding makes the
  join's candidates grow with the square of the rows: it runs on ``--mllib-rows`` (each a prefix
  of the same table) and is cancelled after ``--mllib-timeout`` seconds.

Prints seconds, pairs found, pair recall and precision against the exact pairs, and the ratio of
MLlib's join to our whole grouping. A benchmark prints; it never asserts a time.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "lib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def dataset(rows: int) -> tuple[str, np.ndarray, np.ndarray]:
    """(parquet path, ids, planted group per row), generated once."""
    from gen_sets import planted_sets

    path = os.path.join(ROOT, "data", "bench", f"lsh_sets_{rows}.parquet")
    ids, sets, group = planted_sets(rows, seed=11)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(pa.table({"doc_id": ids, "tokens": sets}), path + ".tmp", row_group_size=100_000)
        os.replace(path + ".tmp", path)
    return path, ids, group, sets


def exact_pairs(ids: np.ndarray, group: np.ndarray, sets: pa.Array, threshold: float) -> set:
    """Every pair (id_a < id_b) of a planted group with Jaccard >= threshold (exact, vectorised)."""
    from clusterlake.algorithms.grouping import bucket_pairs
    from clusterlake.kernels.minhash import jaccard_pairs, set_hashes

    rows = np.flatnonzero(group >= 0)
    order = rows[np.argsort(group[rows], kind="stable")]
    _, first = np.unique(group[order], return_index=True)
    offsets = np.r_[first, len(order)]
    a, b = bucket_pairs(offsets, order, max_bucket=10**6)  # every pair of rows within each planted group
    oa, ha = set_hashes(sets.take(pa.array(a)))
    ob, hb = set_hashes(sets.take(pa.array(b)))
    keep = jaccard_pairs(oa, ha, ob, hb) >= threshold
    ia, ib = ids[a[keep]], ids[b[keep]]
    return set(zip(np.minimum(ia, ib).tolist(), np.maximum(ia, ib).tolist()))


def score(found: set, truth: set, planted_ids: set) -> dict:
    hit = len(found & truth)
    outside = sum(1 for a, b in found if a not in planted_ids or b not in planted_ids)
    return {"pairs": len(found), "recall": hit / max(len(truth), 1), "precision": hit / max(len(found), 1),
            "outside_planted": outside}


def run_ours(spark, path: str, out: str, args) -> tuple[float, dict, object]:
    from clusterlake.config import load_config
    from clusterlake.pipeline import run_job

    cfg = load_config(data={
        "job": {"name": "bench-lsh", "run_date": "2026-12-01"},
        "input": {"path": path, "id_column": "doc_id"},
        "kmeans": {"enabled": False},
        "grouping": {"enabled": True, "column": "tokens", "threshold": args.threshold, "recall": args.recall},
        "output": {"path": out, "delta_writer": "delta-rs"},
    })
    t0 = time.time()
    res = run_job(cfg, spark)
    return time.time() - t0, res, cfg


def our_pairs(spark, path: str, cfg) -> set:
    """The verified pairs of the same steps (not timed)."""
    from pyspark.sql import functions as F

    from clusterlake.algorithms import grouping as G

    band = G.banding(cfg.grouping)
    signed = G.sign(spark.read.parquet(path), "doc_id", "tokens", band).where(F.col(G.BAD).isNull()).cache()
    out = G.candidate_pairs(signed, cfg.grouping.max_bucket, signed.count(), band.bands)
    pairs = out.where(out["kind"] == G.PAIR).select("a", "b").distinct()
    edges = G.verified_edges(signed, pairs, band.kind, band.threshold).select("a", "b").toArrow()
    signed.unpersist()
    a, b = edges.column("a").to_numpy(), edges.column("b").to_numpy()
    return set(zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist()))


def run_mllib(spark, path: str, rows: int, tables: int, threshold: float, timeout: float):
    """(seconds of the join, pairs) or (None, None) when cancelled after ``timeout`` s."""
    from pyspark.ml.feature import HashingTF, MinHashLSH
    from pyspark.sql import functions as F

    df = spark.read.parquet(path).limit(rows).select("doc_id", F.transform("tokens", lambda x: x.cast("string"))
                                                     .alias("tokens"))
    feats = HashingTF(inputCol="tokens", outputCol="features", numFeatures=1 << 20, binary=True).transform(df)
    feats = feats.select("doc_id", "features").cache()
    feats.count()
    model = MinHashLSH(inputCol="features", outputCol="hashes", numHashTables=tables, seed=7).fit(feats)
    timer = threading.Timer(timeout, spark.sparkContext.cancelAllJobs)
    timer.start()
    t0 = time.time()
    try:
        joined = model.approxSimilarityJoin(feats, feats, 1.0 - threshold, distCol="d") \
            .where(F.col("datasetA.doc_id") < F.col("datasetB.doc_id")) \
            .select(F.col("datasetA.doc_id").alias("a"), F.col("datasetB.doc_id").alias("b")).toArrow()
    except Exception as exc:  # cancelled by the timer
        if time.time() - t0 < timeout * 0.95:
            raise
        return None, None
    finally:
        timer.cancel()
        feats.unpersist()
    took = time.time() - t0
    return took, set(zip(joined.column("a").to_pylist(), joined.column("b").to_pylist()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--mllib-rows", default="100000,200000", help="comma-separated prefixes MLlib runs on")
    ap.add_argument("--mllib-timeout", type=float, default=1800.0)
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--recall", type=float, default=0.95, help="grouping.recall (the S-curve at the threshold)")
    ap.add_argument("--master", default="local[2]")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from clusterlake.algorithms.grouping import banding
    from clusterlake.config import GroupingSection, SparkSection
    from clusterlake.session import build_session

    path, ids, group, sets = dataset(args.rows)
    truth_all = exact_pairs(ids, group, sets, args.threshold)
    planted = set(ids[group >= 0].tolist())
    band = banding(GroupingSection(enabled=True, column="tokens", threshold=args.threshold, recall=args.recall))
    spark = build_session(SparkSection(master=args.master, conf={
        "spark.driver.memory": "8g", "spark.sql.shuffle.partitions": "8"}), "bench_lsh")
    print(f"{args.rows:,} sets, {len(truth_all):,} exact pairs at Jaccard >= {args.threshold}; banding "
          f"{band.bands} x {band.rows} = {band.hashes} hashes (recall {band.recall_at_threshold:.3f} at the "
          f"threshold)", flush=True)
    root = tempfile.mkdtemp(prefix="bench_lsh-")
    try:
        took, res, cfg = run_ours(spark, path, os.path.join(root, "ours"), args)
        g = res.grouping
        stages = ", ".join(f"{k} {v:.1f}" for k, v in res.stage_seconds.items())
        passes = "; ".join(f"{s}: " + ", ".join(f"{p} {t:.1f}" for p, t in ps.items())
                           for s, ps in res.spark_passes.items() if ps)
        found = our_pairs(spark, path, cfg)
        sc = score(found, truth_all, planted)
        print(f"clusterlake  {args.rows:,} rows: whole grouping job {took:.1f} s ({stages})\n    passes: {passes}\n"
              f"    {int(g['candidate_pairs']):,} candidates, {sc['pairs']:,} verified pairs: recall "
              f"{sc['recall']:.4f}, precision {sc['precision']:.4f} ({sc['outside_planted']} outside the planted "
              f"groups); {int(g['groups']):,} groups", flush=True)
        for n in [int(x) for x in args.mllib_rows.split(",") if x.strip()]:
            prefix = set(ids[:n].tolist())
            truth = {p for p in truth_all if p[0] in prefix and p[1] in prefix}
            t_ml, pairs = run_mllib(spark, path, n, band.hashes, args.threshold, args.mllib_timeout)
            if t_ml is None:
                print(f"mllib        {n:,} rows: approxSimilarityJoin cancelled after {args.mllib_timeout:.0f} s",
                      flush=True)
                continue
            s2 = score(pairs, truth, planted)
            print(f"mllib        {n:,} rows: approxSimilarityJoin {t_ml:.1f} s, {s2['pairs']:,} pairs: recall "
                  f"{s2['recall']:.4f}, precision {s2['precision']:.4f}; MLlib's join / our whole grouping of "
                  f"{args.rows:,} rows = {t_ml / took:.2f}x", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        spark.stop()


if __name__ == "__main__":
    main()
