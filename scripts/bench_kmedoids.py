"""Benchmark: k-medoids on a sample (issue 23), clusterlake's FasterPAM kernel vs the reference
implementation (the ``kmedoids`` package's ``fasterpam``, Rust, one thread) on the same sample and
the same k-medoids++ start, then the assignment of every row to its nearest medoid.

    .venv/bin/python scripts/bench_kmedoids.py                       # 1M x 16, k=50, samples 10k and 50k
    .venv/bin/python scripts/bench_kmedoids.py --samples 10000 --metric euclidean

Data: ``rows`` points of ``k`` planted Gaussian blobs in ``dim`` dimensions with heavy-tailed
noise (Laplace: where the Manhattan distance and medians, not means, are the natural geometry),
numpy only, one process (the job's Spark side is not measured here). For each sample size: the
pairwise distances of a uniform sample (float32 above 20,000 rows: 10 GB at 50,000), k-medoids++,
FasterPAM by both implementations (seconds, loss, whether the medoids agree), then every row
assigned to its nearest medoid under the metric (:func:`clusterlake.kernels.distances.nearest`,
one core: rows/s) and the ARI of that assignment against the planted blobs; and, for comparison,
scikit-learn's KMeans (Euclidean, k-means++, one init) fitted on the same sample and extended to
every row. A benchmark prints; it never asserts a time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from clusterlake.kernels import kmedoids as K  # noqa: E402
from clusterlake.kernels.distances import metric, nearest, pairwise  # noqa: E402


def blobs(rows: int, k: int, dim: int, seed: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-6, 6, size=(k, dim))
    y = rng.integers(0, k, rows)
    X = centers[y] + rng.laplace(scale=spread, size=(rows, dim))
    return X, y


def one_thread():
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def run(X, y, size: int, k: int, m, seed: int) -> None:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(seed)
    S = X[rng.choice(len(X), size, replace=False)]
    dtype = np.float32 if size > 20_000 else np.float64
    t0 = time.time()
    D = pairwise(S, S, m, dtype=dtype)
    t_dist = time.time() - t0
    init = K.init_medoids(D, k, seed)
    t0 = time.time()
    ours = K.fasterpam(D, init)
    t_ours = time.time() - t0
    ref_line = "reference: kmedoids package not installed"
    try:
        import kmedoids

        t0 = time.time()
        ref = kmedoids.fasterpam(D, init.astype(np.uint64).copy(), max_iter=100, n_cpu=1)
        t_ref = time.time() - t0
        same = np.array_equal(np.sort(ours.medoids), np.sort(np.asarray(ref.medoids, np.int64)))
        ref_line = (f"reference (kmedoids.fasterpam, 1 thread) {t_ref:7.2f} s  loss {float(ref.loss):.6g}  "
                    f"same medoids: {same}")
    except ImportError:
        pass
    del D
    with one_thread():
        t0 = time.time()
        lab = nearest(X, S[ours.medoids], m)[0]
        t_asg = time.time() - t0
        t0 = time.time()
        km = KMeans(k, n_init=1, random_state=seed).fit(S)
        km_lab = km.predict(X)
        t_km = time.time() - t0
    print(f"sample {size:,} ({np.dtype(dtype).name} distances {t_dist:.2f} s, {size * size * np.dtype(dtype).itemsize / 2**30:.1f} GiB)")
    print(f"  clusterlake FasterPAM {t_ours:7.2f} s  loss {ours.loss:.6g}  swaps {ours.n_swap}  passes {ours.n_iter}")
    print(f"  {ref_line}")
    print(f"  assign {len(X):,} rows to {k} medoids ({m.describe()}, 1 core): {t_asg:.2f} s = "
          f"{len(X) / t_asg:,.0f} rows/s;  ARI vs planted {adjusted_rand_score(y, lab):.4f}")
    print(f"  scikit-learn KMeans (euclidean) on the sample + predict: {t_km:.2f} s;  "
          f"ARI vs planted {adjusted_rand_score(y, km_lab):.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--samples", default="10000,50000")
    ap.add_argument("--metric", default="manhattan")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spread", type=float, default=1.5, help="the Laplace noise's scale per dimension")
    a = ap.parse_args()
    X, y = blobs(a.rows, a.k, a.dim, a.seed, a.spread)
    m = metric(a.metric)
    print(f"{a.rows:,} x {a.dim} Laplace blobs (scale {a.spread:g}), k={a.k}, distance {m.describe()}")
    for size in (int(s) for s in a.samples.split(",")):
        run(X, y, size, a.k, m, a.seed)


if __name__ == "__main__":
    main()
