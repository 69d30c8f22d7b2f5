"""Benchmark: the whole clusterlake job vs the plain Spark MLlib pipeline a user would write instead.

    .venv/bin/python scripts/bench_job.py                    # 1M x 32, passes off and on (~10 min)
    .venv/bin/python scripts/bench_job.py --modes off        # passes off only
    .venv/bin/python scripts/bench_job.py --rows 200000      # a smaller table
    .venv/bin/python scripts/bench_job.py --make-run         # also `make run`'s job (conf/local.yaml)
    .venv/bin/python scripts/bench_job.py --repeat 3         # each side 3 times, alternately: medians
    .venv/bin/python scripts/bench_job.py --algorithm gmm --modes off --gmm-iter 20  # Gaussian mixtures

Generates (once, cached under data/bench/) float32 Gaussian blobs as a parquet table of named
columns ``f00..f31``, an ``id`` and the true ``label`` (the blobs of scripts/bench_kmeans.py).
Then, in one SparkSession (local[2]), back to back, each into an empty output:

* **clusterlake**: :func:`clusterlake.pipeline.run_job`, k=20, the first night (no previous model);
  ``off``: PCA, density, hierarchy and report off; ``on``: all four on (the defaults of
  conf/local.yaml);
* **MLlib**: read parquet -> VectorAssembler -> StandardScaler -> (PCA, in mode ``on``, with the
  components clusterlake chose) -> KMeans (same k, max_iter, seed) -> transform -> write parquet
  (id, cluster).

``--algorithm gmm``: clusterlake's ``kmeans.algorithm: gmm`` (full covariance, at most
``--gmm-iter`` EM iterations, its default ``tol`` 1e-3 on the mean log-likelihood) against the same
pipeline ending in MLlib's ``GaussianMixture`` (same k, ``maxIter`` = ``--gmm-iter``, its default
``tol`` 0.01 on the total log-likelihood, seed); both print their ARI against the true label.

It prints each side's seconds (clusterlake's per stage, as its log and ``runs`` table name them)
and the ratio MLlib / clusterlake (above 1: clusterlake is faster). The SparkSession's start is
printed apart and counted in neither. Both sides first run once on a 20,000-row slice of the same
table (``--no-warmup`` to skip), so that neither pays the session's cold start (JVM code
generation, Python workers) for the other: whichever ran first used to carry 8-10 s of it.
``--make-run`` times `make run`'s job in the same session (warm); `make run` itself starts cold.
A benchmark prints; it never asserts a time.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "lib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

D, K, MAX_ITER, SEED = 32, 20, 50, 42
DELTA_WRITER = {"name": "delta-rs"}  # --delta-writer; scripts/bench_writers.py compares the two
ALGO = {"name": "kmeans", "gmm_iter": 20}  # --algorithm, --gmm-iter


def dataset(rows: int) -> str:
    """The blobs as named float columns (cached)."""
    from bench_kmeans import blobs

    path = os.path.join(ROOT, "data", "bench", f"job_blobs_{rows}x{D}.parquet")
    if not os.path.exists(path):
        X, y = blobs(rows, D, K)
        cols = {f"f{j:02d}": pa.array(X[:, j]) for j in range(D)}
        table = pa.table({"id": pa.array(np.arange(rows, dtype=np.int64)), **cols, "label": pa.array(y)})
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        pq.write_table(table, tmp, row_group_size=125_000)
        os.replace(tmp, path)
    return path


def job_config(data: str, out: str, mode: str, rows: int):
    from clusterlake.config import load_config

    on = mode == "on"
    sets = [f"input.path={data}", "input.id_column=id", "input.label_column=label", f"output.path={out}",
            f"kmeans.k={K}", f"kmeans.max_iter={MAX_ITER}", f"kmeans.seed={SEED}", "job.run_date=2026-12-01",
            f"preprocess.pca.enabled={str(on).lower()}", f"density.enabled={str(on).lower()}",
            f"hierarchical.enabled={str(on).lower()}", f"report.enabled={str(on).lower()}",
            "quality.drift.on_failure=warn", f"output.delta_writer={DELTA_WRITER['name']}",
            f"kmeans.algorithm={ALGO['name']}", f"kmeans.gmm.max_iter={ALGO['gmm_iter']}"]
    return load_config(os.path.join(ROOT, "conf", "local.yaml"), sets)


def warm_up(spark, data: str, root: str) -> None:
    """Run both pipelines once on a 20,000-row slice of ``data`` (JIT, Python workers)."""
    small = os.path.join(ROOT, "data", "bench", "job_warmup_20000.parquet")
    if not os.path.exists(small):
        pq.write_table(pq.ParquetFile(data).read_row_group(0).slice(0, 20_000), small)
    t0 = time.time()
    for mode in ("off", "on"):
        ours = run_clusterlake(spark, small, mode, 20_000, root)
        run_mllib(spark, small, mode, ours["components"], root)
        for name in (f"clusterlake-{mode}", f"mllib-{mode}"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    print(f"warm-up on 20,000 rows (both pipelines, passes off and on): {time.time() - t0:.1f} s", flush=True)


def run_clusterlake(spark, data: str, mode: str, rows: int, root: str) -> dict:
    from clusterlake.pipeline import run_job

    out = os.path.join(root, f"clusterlake-{mode}")
    cfg = job_config(data, out, mode, rows)
    t0 = time.time()
    res = run_job(cfg, spark)
    total = time.time() - t0
    return {"total": total, "stages": dict(res.stage_seconds), "passes": res.spark_passes,
            "components": res.n_components, "k": res.k, "ari": res.metrics.get("ari")}


def run_mllib(spark, data: str, mode: str, components, root: str) -> dict:
    from pyspark.ml import Pipeline
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.feature import PCA, StandardScaler, VectorAssembler

    out = os.path.join(root, f"mllib-{mode}")
    t0 = time.time()
    df = spark.read.parquet(data)
    feats = [f"f{j:02d}" for j in range(D)]
    stages = [VectorAssembler(inputCols=feats, outputCol="raw"),
              StandardScaler(inputCol="raw", outputCol="scaled", withMean=True, withStd=True)]
    last = "scaled"
    if mode == "on" and components:
        stages.append(PCA(k=int(components), inputCol="scaled", outputCol="pca"))
        last = "pca"
    if ALGO["name"] == "gmm":
        from pyspark.ml.clustering import GaussianMixture

        stages.append(GaussianMixture(k=K, maxIter=ALGO["gmm_iter"], seed=SEED, featuresCol=last,
                                      predictionCol="cluster"))
    else:
        stages.append(KMeans(k=K, maxIter=MAX_ITER, seed=SEED, featuresCol=last, predictionCol="cluster"))
    model = Pipeline(stages=stages).fit(df)
    model.transform(df).select("id", "cluster").write.mode("overwrite").parquet(out)
    total = time.time() - t0
    ari = None
    if ALGO["name"] == "gmm":  # (after the clock: the comparison of quality is not part of the pipeline)
        from sklearn.metrics import adjusted_rand_score

        got = spark.read.parquet(out).join(spark.read.parquet(data).select("id", "label"), "id").toPandas()
        ari = adjusted_rand_score(got["label"], got["cluster"])
    return {"total": total, "iters": model.stages[-1].summary.numIter, "ari": ari}


def make_run(spark, root: str) -> dict:
    """`make run`'s job (conf/local.yaml on the embedded sample) into an empty output."""
    from clusterlake.config import load_config
    from clusterlake.pipeline import run_job

    data = os.path.join(ROOT, "data", "sample", "customers.parquet")
    if not os.path.exists(data):
        raise SystemExit(f"{data} is missing: run `make data` first")
    cfg = load_config(os.path.join(ROOT, "conf", "local.yaml"),
                      [f"input.path={data}", f"output.path={os.path.join(root, 'make-run')}",
                       "job.run_date=2026-12-01"])
    t0 = time.time()
    res = run_job(cfg, spark)
    return {"total": time.time() - t0, "stages": dict(res.stage_seconds), "passes": res.spark_passes}


def _stages(stages: dict) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in stages.items())


def _passes(passes: dict) -> str:
    """The Spark passes over the rows (clusterlake.stages.spark_pass), stage by stage."""
    return "\n".join(f"    {stage}: " + ", ".join(f"{p} {s:.1f}" for p, s in ps.items())
                     for stage, ps in passes.items() if ps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--modes", default="off,on", help="comma-separated: off (passes off), on (all on)")
    ap.add_argument("--make-run", action="store_true", help="also time make run's job on the embedded sample")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="8g")
    ap.add_argument("--no-warmup", action="store_true", help="measure from a cold session (the first run pays it)")
    ap.add_argument("--delta-writer", default="delta-rs", choices=["delta-rs", "spark"],
                    help="who commits the job's Delta tables (Spark's writer rewrites them at publish: "
                         "see scripts/bench_writers.py)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run both pipelines this many times each, alternately, and compare medians "
                         "(MLlib's time varies a lot from run to run on this machine)")
    ap.add_argument("--algorithm", default="kmeans", choices=["kmeans", "gmm"],
                    help="gmm: Gaussian mixtures on both sides (clusterlake's kmeans.algorithm: gmm vs MLlib's)")
    ap.add_argument("--gmm-iter", type=int, default=20, help="--algorithm gmm: EM iterations at most, both sides")
    args = ap.parse_args()
    DELTA_WRITER["name"] = args.delta_writer
    ALGO.update(name=args.algorithm, gmm_iter=args.gmm_iter)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from clusterlake.config import SparkSection
    from clusterlake.session import build_session

    data = dataset(args.rows)
    t0 = time.time()
    spark = build_session(SparkSection(master=args.master, conf={
        "spark.driver.memory": args.driver_memory, "spark.sql.shuffle.partitions": "8"}), "bench_job")
    print(f"SparkSession started in {time.time() - t0:.1f} s ({args.master}, driver {args.driver_memory}); "
          f"input {args.rows:,} x {D} float32, k={K}, max_iter={MAX_ITER}", flush=True)
    root = tempfile.mkdtemp(prefix="bench_job-")
    try:
        if not args.no_warmup:
            warm_up(spark, data, root)
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            runs = []
            for r in range(max(1, args.repeat)):
                for name in (f"clusterlake-{mode}", f"mllib-{mode}"):
                    shutil.rmtree(os.path.join(root, name), ignore_errors=True)
                ours = run_clusterlake(spark, data, mode, args.rows, root)
                if r == 0:
                    print(f"\n== passes {mode}\n  clusterlake {ours['total']:7.1f} s  ({_stages(ours['stages'])})\n"
                          f"  its Spark passes (s):\n{_passes(ours['passes'])}", flush=True)
                theirs = run_mllib(spark, data, mode, ours["components"], root)
                print(f"  MLlib       {theirs['total']:7.1f} s  ({theirs['iters']} iterations"
                      f"{', PCA to %d' % ours['components'] if mode == 'on' and ours['components'] else ''})")
                if theirs.get("ari") is not None:
                    print(f"  ARI against the label: clusterlake {ours['ari']:.4f}, MLlib {theirs['ari']:.4f}")
                print(f"  MLlib / clusterlake = {theirs['total'] / ours['total']:.2f}x", flush=True)
                runs.append((ours["total"], theirs["total"]))
            if len(runs) > 1:
                a, b = (float(np.median([r_[i] for r_ in runs])) for i in (0, 1))
                print(f"  {len(runs)} runs each: clusterlake {', '.join(f'{r_[0]:.1f}' for r_ in runs)} s; "
                      f"MLlib {', '.join(f'{r_[1]:.1f}' for r_ in runs)} s; medians {a:.1f} vs {b:.1f} s = "
                      f"{b / a:.2f}x", flush=True)
        if args.make_run:
            mr = make_run(spark, root)
            print(f"\n== make run's job (200,000 rows, conf/local.yaml)\n  {mr['total']:.1f} s  "
                  f"({_stages(mr['stages'])})\n  its Spark passes (s):\n{_passes(mr['passes'])}", flush=True)
    finally:
        spark.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
