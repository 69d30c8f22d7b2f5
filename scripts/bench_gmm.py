"""Benchmark: Gaussian mixtures on clusterlake's engine vs Spark MLlib GaussianMixture vs scikit-learn.

    .venv/bin/python scripts/bench_gmm.py                      # 1M x 16, k=16, full covariance
    .venv/bin/python scripts/bench_gmm.py --rows 200000        # a smaller table
    .venv/bin/python scripts/bench_gmm.py --max-iter 20 --tol 0  # every engine exactly 20 iterations

Generates (once, cached under data/bench/) float32 rows from k Gaussians with random rotations and
elongations (unequal weights), as parquet with a ``features`` array<float> column and the true
component. On Spark local[N] (default local[2]) it fits, with the same k, max_iter and seed:

* ours: :func:`clusterlake.algorithms.gmm.fit_mixture` (k-means|| + Lloyd on the engine, then EM,
  one pass per iteration over the rows resident in the barrier tasks); its tasks read the parquet
  files themselves, as ``clusterlake.ml``'s estimators do for a plain scan (``--through-spark``:
  the rows come through Spark instead);
* Spark MLlib ``GaussianMixture`` (full covariance; ``array_to_vector``);
* scikit-learn ``GaussianMixture(covariance_type="full", init_params="kmeans")`` in this process.

Both Spark engines first run twice on a 20,000-row table (``--no-warmup`` to skip), so that the
first of them does not pay the session's cold start (its first job, the Python workers: 2.5 s
before our tasks begin to load) for the other.

It prints init seconds (ours: K-means; sklearn: its K-means init; MLlib: the fit with maxIter=1
minus one iteration), seconds per iteration, fit seconds, iterations, the mean log-likelihood of
every row under each fitted model (the same float64 code for all three), the ARI of the most
probable component against the true one, and peak memory. ``tol`` is each engine's own: ours and
scikit-learn's on the change of the mean log-likelihood, MLlib's on the change of the total.
A benchmark prints; it never asserts a time.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "lib"))


def mixture_rows(n: int, d: int, k: int, seed: int = 0):
    """float32 rows of k rotated, elongated Gaussians (axis scales 0.3..3), unequal weights."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-5, 5, size=(k, d))  # overlapping: EM has work to do
    props = rng.dirichlet(np.full(k, 4.0))
    y = rng.choice(k, size=n, p=props).astype(np.int32)
    maps = []
    for _ in range(k):
        Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        maps.append(Q * rng.uniform(0.3, 3.0, size=d))
    X = np.empty((n, d), dtype=np.float32)
    for j in range(k):
        idx = np.flatnonzero(y == j)
        X[idx] = centers[j] + rng.normal(size=(len(idx), d)) @ maps[j].T
    return X, y


def dataset(n: int, d: int, k: int):
    path = os.path.join(ROOT, "data", "bench", f"mixture_{n}x{d}_k{k}.parquet")
    X, y = mixture_rows(n, d, k)
    from bench_kmeans import cache_features  # (scripts/ is on the path of a script run from it)

    cache_features(path, X, y)
    return path, X, y


def score(X: np.ndarray, weights, means, covs):
    """Mean log-likelihood of every row and the most probable component (float64, in chunks)."""
    from clusterlake.kernels import gmm as G

    mix = G.Mixture.of("full", weights, means, covs)
    ll, lab = 0.0, []
    for s in range(0, len(X), 100_000):
        norm, R = G.responsibilities(X[s:s + 100_000].astype(np.float64), mix)
        ll += float(norm.sum())
        lab.append(R.argmax(axis=1))
    return ll / len(X), np.concatenate(lab)


def ours(spark, path, k, max_iter, tol, seed, through_spark: bool = False) -> dict:
    from clusterlake.algorithms.gmm import fit_mixture
    from clusterlake.engine.blocks import BlockSource
    from clusterlake.io.input_files import frame_file_scan

    df = spark.read.parquet(path).select("features")
    t0 = time.time()
    # as clusterlake.ml's estimators load a plain parquet scan: the tasks read the files themselves
    scan = None if through_spark else frame_file_scan(df, ["features"])
    res = fit_mixture(spark, scan if scan is not None else df, BlockSource(array_column="features"), k,
                      covariance_type="full", tol=tol, max_iter=max_iter, seed=seed)
    total = time.time() - t0
    m = res.mixture
    return {"engine": "clusterlake", "init_s": res.kmeans.fit_seconds, "per_iter_s": float(np.median(res.iter_seconds)),
            "iters": res.n_iter, "fit_s": total, "params": (m.weights, m.means, m.covariances),
            "peak_mb": res.task_peak_rss_mb}


def mllib(spark, path, k, max_iter, tol, seed) -> dict:
    from pyspark.ml.clustering import GaussianMixture
    from pyspark.ml.functions import array_to_vector

    vec = spark.read.parquet(path).select(array_to_vector("features").alias("features"))
    t0 = time.time()
    m = GaussianMixture(k=k, maxIter=max_iter, tol=tol, seed=seed).fit(vec)
    total = time.time() - t0
    iters = m.summary.numIter
    t1 = time.time()
    GaussianMixture(k=k, maxIter=1, tol=tol, seed=seed).fit(vec)
    first = time.time() - t1
    per_iter = (total - first) / (iters - 1) if iters > 1 else float("nan")
    g = m.gaussiansDF.collect()
    means = np.array([r["mean"].toArray() for r in g])
    covs = np.array([r["cov"].toArray() for r in g])
    return {"engine": "spark-mllib", "init_s": max(first - per_iter, 0.0), "per_iter_s": per_iter, "iters": iters,
            "fit_s": total, "params": (np.asarray(m.weights), means, covs), "peak_mb": float("nan")}


def sklearn(X, k, max_iter, tol, seed) -> dict:
    from sklearn.mixture import GaussianMixture

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.time()
    g = GaussianMixture(k, covariance_type="full", max_iter=max_iter, tol=tol, random_state=seed, init_params="kmeans")
    g._initialize_parameters(X, np.random.RandomState(seed))  # its K-means init alone, timed apart
    t_init = time.time() - t0
    t0 = time.time()
    g = GaussianMixture(k, covariance_type="full", max_iter=max_iter, tol=tol, random_state=seed,
                        init_params="kmeans").fit(X)  # (the fit runs its own init again: counted in it)
    total = time.time() - t0
    return {"engine": "scikit-learn", "init_s": t_init, "per_iter_s": (total - t_init) / max(g.n_iter_, 1),
            "iters": int(g.n_iter_), "fit_s": total, "params": (g.weights_, g.means_, g.covariances_),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dims", type=int, default=16)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--max-iter", type=int, default=100)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--engines", default="clusterlake,spark-mllib,scikit-learn")
    ap.add_argument("--through-spark", action="store_true",
                    help="ours loads the rows through Spark instead of its tasks reading the parquet files")
    ap.add_argument("--no-warmup", action="store_true", help="measure from a cold session (the first engine pays it)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from pyspark.sql import SparkSession
    from sklearn.metrics import adjusted_rand_score

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (SparkSession.builder.master(args.master).appName("bench_gmm").config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "8g").config("spark.sql.execution.arrow.pyspark.enabled", "true")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    path, X, y = dataset(args.rows, args.dims, args.k)
    print(f"{args.rows:,} x {args.dims} float32, k={args.k}, full covariance, max_iter={args.max_iter}, "
          f"tol={args.tol}, seed={args.seed}", flush=True)
    if not args.no_warmup:  # neither side pays the session's cold start (first job, Python workers) for the other
        t0 = time.time()
        small, _, _ = dataset(20_000, args.dims, args.k)
        for e in args.engines.split(","):
            if e == "clusterlake":
                ours(spark, small, args.k, 2, args.tol, args.seed, args.through_spark)
            elif e == "spark-mllib":
                mllib(spark, small, args.k, 2, args.tol, args.seed)
        print(f"warm-up on 20,000 rows (2 iterations each): {time.time() - t0:.1f} s", flush=True)
    rows = []
    for e in args.engines.split(","):
        r = (ours(spark, path, args.k, args.max_iter, args.tol, args.seed, args.through_spark) if e == "clusterlake" else
             mllib(spark, path, args.k, args.max_iter, args.tol, args.seed) if e == "spark-mllib" else
             sklearn(X, args.k, args.max_iter, args.tol, args.seed))
        r["loglik"], lab = score(X, *r.pop("params"))
        r["ari"] = adjusted_rand_score(y, lab)
        rows.append(r)
        print(f"  {e} done in {r['fit_s']:.1f} s", flush=True)
    cmd = "python scripts/bench_gmm.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"\n{cmd.strip()}   (Spark {spark.version}, {args.master}, {os.cpu_count()} cores)")
    hdr = f"{'engine':13} {'init s':>7} {'s/iter':>7} {'iters':>5} {'fit s':>8} {'mean loglik':>12} {'ARI':>6} {'peak MB':>8}"
    print(hdr + "\n" + "-" * len(hdr))
    for r in rows:
        print(f"{r['engine']:13} {r['init_s']:7.2f} {r['per_iter_s']:7.3f} {r['iters']:5d} {r['fit_s']:8.1f} "
              f"{r['loglik']:12.5f} {r['ari']:6.3f} {r['peak_mb']:8.0f}")
    by = {r["engine"]: r for r in rows}
    if "clusterlake" in by and "spark-mllib" in by:
        o, m = by["clusterlake"], by["spark-mllib"]
        print(f"\nfit time MLlib/ours {m['fit_s'] / o['fit_s']:.1f}x; s/iter MLlib/ours "
              f"{m['per_iter_s'] / o['per_iter_s']:.1f}x; mean log-likelihood ours - MLlib {o['loglik'] - m['loglik']:+.5f}")
    print("peak MB: clusterlake = largest barrier-task Python worker RSS; scikit-learn = this process's growth; "
          "MLlib: not measured (JVM)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
