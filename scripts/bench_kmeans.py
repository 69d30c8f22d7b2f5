"""Benchmark: clusterlake's K-means engine vs Spark MLlib KMeans vs scikit-learn (one process).

    .venv/bin/python scripts/bench_kmeans.py                  # both datasets (several minutes)
    .venv/bin/python scripts/bench_kmeans.py --datasets 1m    # 1M x 32, k=20 only

Generates (once, cached under data/bench/) float32 Gaussian blobs -- 1M x 32 with k=20 and
2M x 64 with k=100 -- as parquet with a ``features`` array<float> column and the true label. On
Spark local[N] (default local[2]) it then fits, with the same k, max_iter, tol and seed:

* ours: ``clusterlake.ml.KMeans`` (k-means||, Lloyd on cached blocks) from the parquet table;
* Spark MLlib ``KMeans`` (k-means||, ``solver="block"``, the fast one) from the same table
  (``array_to_vector``; MLlib caches its input itself, inside the timed fit);
* scikit-learn ``KMeans(algorithm="lloyd", n_init=1)`` on the numpy array in this process.

It prints one table (init seconds, seconds per iteration, total fit seconds, iterations, inertia
in the same float64 arithmetic for all three, ARI against the true labels, peak memory) and the
ratios ours/MLlib and ours/sklearn. A benchmark prints; it never asserts a time.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "lib"))

DATASETS = {"1m": (1_000_000, 32, 20), "2m": (2_000_000, 64, 100)}


def blobs(n: int, d: int, k: int, seed: int = 0):
    """Unequal, overlapping-ish Gaussian blobs (float32), like sklearn's make_blobs but chunked."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-10, 10, size=(k, d))
    props = rng.dirichlet(np.full(k, 5.0))
    y = rng.choice(k, size=n, p=props).astype(np.int32)
    X = np.empty((n, d), dtype=np.float32)
    step = 250_000
    for s in range(0, n, step):
        e = min(n, s + step)
        X[s:e] = centers[y[s:e]] + rng.normal(scale=1.5, size=(e - s, d))
    return X, y


def cache_features(path: str, X: np.ndarray, y: np.ndarray) -> None:
    """``X`` as a ``features`` array<float> column and ``y`` as ``label``, written once to ``path``
    (atomically: a ``.tmp`` file renamed)."""
    if os.path.exists(path):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    feats = pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), X.shape[1]).cast(pa.list_(pa.float32()))
    tmp = path + ".tmp"
    pq.write_table(pa.table({"features": feats, "label": y}), tmp, row_group_size=125_000)
    os.replace(tmp, path)


def dataset(name: str):
    n, d, k = DATASETS[name]
    path = os.path.join(ROOT, "data", "bench", f"blobs_{name}.parquet")
    X, y = blobs(n, d, k)
    cache_features(path, X, y)
    return path, X, y, k


def inertia(X: np.ndarray, C: np.ndarray) -> float:
    """Sum of squared distances to the nearest centre, float64, in chunks (same for all three)."""
    from clusterlake.kernels.kmeans import nearest

    total = 0.0
    for s in range(0, len(X), 200_000):
        B = X[s:s + 200_000].astype(np.float64)
        total += float(nearest(B, C)[1].sum())
    return total


def labels_of(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    from clusterlake.kernels.kmeans import nearest

    return np.concatenate([nearest(X[s:s + 200_000].astype(np.float64), C)[0] for s in range(0, len(X), 200_000)])


def jvm_heap_used_mb(spark) -> float:
    rt = spark.sparkContext._jvm.java.lang.Runtime.getRuntime()
    return (rt.totalMemory() - rt.freeMemory()) / 2**20


def run(name: str, spark, max_iter: int, tol: float, seed: int) -> list[dict]:
    from pyspark.ml.clustering import KMeans as MLlibKMeans
    from pyspark.ml.functions import array_to_vector
    from sklearn.cluster import KMeans as SkKMeans
    from sklearn.metrics import adjusted_rand_score

    from clusterlake.ml import KMeans

    path, X, y, k = dataset(name)
    n, d = X.shape
    print(f"\n== {name}: {n:,} x {d} float32, k={k}, max_iter={max_iter}, tol={tol}, seed={seed}", flush=True)
    rows = []

    # ours
    df = spark.read.parquet(path)
    t0 = time.time()
    m = KMeans(k=k, maxIter=max_iter, tol=tol, seed=seed).fit(df)
    total = time.time() - t0
    C = np.asarray(m.clusterCenters())
    s = m.summary
    rows.append({"engine": "clusterlake", "init_s": s.initSeconds, "load_s": s.loadSeconds,
                 "per_iter_s": float(np.median(s.iterationSeconds)), "iters": s.numIter, "fit_s": total,
                 "inertia": inertia(X, C), "ari": adjusted_rand_score(y, labels_of(X, C)),
                 "peak_mb": s.taskPeakRssMb})
    print("  clusterlake done", flush=True)

    # Spark MLlib
    vec = spark.read.parquet(path).select(array_to_vector("features").alias("features"))
    before = jvm_heap_used_mb(spark)
    t0 = time.time()
    mm = MLlibKMeans(k=k, maxIter=max_iter, tol=tol, seed=seed, solver="block").fit(vec)
    total = time.time() - t0
    Cm = np.asarray(mm.clusterCenters())
    iters = mm.summary.numIter
    peak = max(jvm_heap_used_mb(spark) - before, 0.0)
    # MLlib reports no timings: the same fit with maxIter=1 costs everything but iterations 2..n
    t1 = time.time()
    MLlibKMeans(k=k, maxIter=1, tol=tol, seed=seed, solver="block").fit(vec)
    first = time.time() - t1
    per_iter = (total - first) / (iters - 1) if iters > 1 else float("nan")
    rows.append({"engine": "spark-mllib", "init_s": max(first - per_iter, 0.0), "load_s": float("nan"),
                 "per_iter_s": per_iter, "iters": iters, "fit_s": total, "inertia": inertia(X, Cm),
                 "ari": adjusted_rand_score(y, labels_of(X, Cm)), "peak_mb": peak})
    print("  mllib done", flush=True)

    # scikit-learn, one process
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.time()
    from sklearn.cluster import kmeans_plusplus

    Ci, _ = kmeans_plusplus(X, k, random_state=seed)
    t_init = time.time() - t0
    sk = SkKMeans(k, init=Ci, n_init=1, max_iter=max_iter, tol=tol, algorithm="lloyd", random_state=seed).fit(X)
    total = time.time() - t0
    rows.append({"engine": "scikit-learn", "init_s": t_init, "load_s": 0.0,
                 "per_iter_s": (total - t_init) / max(sk.n_iter_, 1), "iters": int(sk.n_iter_), "fit_s": total,
                 "inertia": inertia(X, sk.cluster_centers_), "ari": adjusted_rand_score(y, sk.labels_),
                 "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0})
    print("  scikit-learn done", flush=True)
    for r in rows:
        r["dataset"] = name
    return rows


def warm_up(spark) -> None:
    """Start the Python workers and JIT the JVM paths once, so no engine pays for a cold session."""
    def consume(batches):
        n = sum(b.num_rows for b in batches)
        yield pa.RecordBatch.from_pydict({"n": [n]})

    df = spark.range(200_000).selectExpr("array(cast(id as float), cast(id as float)) as features")
    df.mapInArrow(consume, "n long").collect()
    df.count()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="1m,2m")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--max-iter", type=int, default=20)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (SparkSession.builder.master(args.master).appName("bench_kmeans")
             .config("spark.ui.enabled", "false").config("spark.driver.memory", "8g")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    warm_up(spark)
    rows = []
    for name in args.datasets.split(","):
        rows += run(name.strip(), spark, args.max_iter, args.tol, args.seed)

    cmd = "python scripts/bench_kmeans.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"\n{cmd.strip()}   (Spark {spark.version}, {args.master}, {os.cpu_count()} cores)")
    hdr = f"{'dataset':8} {'engine':13} {'init s':>7} {'load s':>7} {'s/iter':>7} {'iters':>5} {'fit s':>7} {'inertia':>14} {'ARI':>6} {'peak MB':>8}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['dataset']:8} {r['engine']:13} {r['init_s']:7.2f} {r['load_s']:7.2f} {r['per_iter_s']:7.3f} "
              f"{r['iters']:5d} {r['fit_s']:7.2f} {r['inertia']:14.6g} {r['ari']:6.3f} {r['peak_mb']:8.0f}")
    print()
    for name in dict.fromkeys(r["dataset"] for r in rows):
        o, m, s = (next(r for r in rows if r["dataset"] == name and r["engine"] == e)
                   for e in ("clusterlake", "spark-mllib", "scikit-learn"))
        print(f"{name}: fit time MLlib/ours {m['fit_s'] / o['fit_s']:.1f}x;  s/iter ours/sklearn "
              f"{o['per_iter_s'] / s['per_iter_s']:.2f}x;  inertia ours/sklearn {o['inertia'] / s['inertia']:.4f};  "
              f"ARI ours {o['ari']:.3f} vs MLlib {m['ari']:.3f}")
    print("peak MB: clusterlake = largest barrier-task Python worker RSS; MLlib = JVM heap growth during "
          "the fit; scikit-learn = growth of this process's peak RSS")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
