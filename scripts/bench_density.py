#!/usr/bin/env python3
"""Benchmark of the density pass (issue 5): the sample clustering on the driver, and the
extension of its labels to every row, in one process and as the distributed Spark pass.

    .venv/bin/python scripts/bench_density.py                       # 2M x 16, 100k sample
    .venv/bin/python scripts/bench_density.py --rows 500000 --sample 20000

Data: Gaussian blobs in 16 dimensions (model space: no scaling/PCA) plus 1% uniform noise.
Prints: the sample clustering time (DBSCAN with estimated eps, HDBSCAN), the number of core points,
and the extension throughput in rows per second per core (numpy kernel in this process with one
BLAS thread; the job's Spark assignment pass, local[2] over a parquet file, divided by 2 cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np


def data(rows: int, d: int, seed: int) -> np.ndarray:
    from sklearn.datasets import make_blobs

    rng = np.random.default_rng(seed)
    n_noise = rows // 100
    X, _ = make_blobs(n_samples=rows - n_noise, n_features=d, centers=12, cluster_std=1.0,
                      center_box=(-30, 30), random_state=seed)
    noise = rng.uniform(-40, 40, size=(n_noise, d))
    X = np.vstack([X, noise])
    return X[rng.permutation(len(X))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--dims", type=int, default=16)
    ap.add_argument("--sample", type=int, default=100_000)
    ap.add_argument("--min-samples", type=int, default=10)
    ap.add_argument("--algorithms", default="dbscan,hdbscan")
    ap.add_argument("--skip-spark", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)

    from threadpoolctl import threadpool_limits

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
    from clusterlake.kernels import density as D

    X = data(a.rows, a.dims, a.seed)
    idx = np.random.default_rng(a.seed).choice(len(X), min(a.sample, len(X)), replace=False)
    S = X[idx]
    print(f"data: {a.rows:,} x {a.dims}, sample {len(S):,}, min_samples {a.min_samples}")
    print(f"{'algorithm':10} {'fit s':>8} {'clusters':>8} {'core pts':>9} {'noise':>7} "
          f"{'numpy rows/s/core':>18} {'spark rows/s/core':>18}")
    models = {}
    for alg in a.algorithms.split(","):
        t0 = time.time()
        model = D.fit_sample(S, alg, min_samples=a.min_samples, min_cluster_size=max(50, len(S) // 1000))
        fit_s = time.time() - t0
        models[alg] = model
        n_chk = min(len(X), 200_000)
        with threadpool_limits(1, user_api="blas"):
            t0 = time.time()
            lab, _ = D.extend(X[:n_chk], model)
            np_rate = n_chk / (time.time() - t0)
        noise = float((lab < 0).mean())
        spark_rate = float("nan")
        if not a.skip_spark:
            spark_rate = spark_extension_rate(X, model)
        print(f"{alg:10} {fit_s:8.2f} {model.n_clusters:8d} {len(model.core_points):9,d} {noise:7.2%} "
              f"{np_rate:18,.0f} {spark_rate:18,.0f}")
    print(f"(reproduce: .venv/bin/python scripts/bench_density.py --rows {a.rows} --dims {a.dims} "
          f"--sample {a.sample})")
    return 0


def spark_extension_rate(X: np.ndarray, model) -> float:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.sql import SparkSession

    from clusterlake.algorithms.passes import assign_rows
    from clusterlake.prep.transform import Preprocessor

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (SparkSession.builder.master("local[2]").config("spark.driver.memory", "6g")
             .config("spark.sql.execution.arrow.maxRecordsPerBatch", "50000")
             .config("spark.ui.showConsoleProgress", "false").getOrCreate())
    spark.sparkContext.setLogLevel("WARN")
    d = X.shape[1]
    names = [f"f{j}" for j in range(d)]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.parquet")
        cols = {"id": pa.array(np.arange(len(X), dtype=np.int64))}
        cols.update({n: pa.array(X[:, j]) for j, n in enumerate(names)})
        pq.write_table(pa.table(cols), path, row_group_size=250_000)
        df = spark.read.parquet(path)
        prep = Preprocessor(names, np.zeros(d), np.ones(d), None)
        # the job's assignment pass with the density columns (K-means part: 2 centroids, negligible)
        out = assign_rows(df, prep, X[:2], np.array([0, 1]), "id", density=model)
        t0 = time.time()
        n = out.selectExpr("sum(cast(is_outlier as int)) as o", "count(*) as n").collect()[0]["n"]
        took = time.time() - t0
    return n / took / 2


if __name__ == "__main__":
    sys.exit(main())
