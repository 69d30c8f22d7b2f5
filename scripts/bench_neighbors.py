#!/usr/bin/env python3
"""Benchmark of the pruned exact nearest-neighbour index (kernels/neighbors.py) against the brute
blocked GEMM search of kernels/density.extend, single-threaded (one BLAS thread).

    .venv/bin/python scripts/bench_neighbors.py                  # 16-D, 5-D and 2-D blobs
    .venv/bin/python scripts/bench_neighbors.py --dims 16 --groups 100,158,316

Data: scripts/bench_density.data(rows, d, seed) (Gaussian blobs + 1% uniform noise); the index
points are a uniform sample of --sample rows (stand-in for DBSCAN's core points, ~99% of the
sample), the queries are the first --queries rows. Prints the build time, rows/s of
neighbors.query (whole query set in one call, and in --batch-row calls as a mapInArrow task sees
them), rows/s of the brute kmeans.nearest search on --brute-rows rows, and the largest relative
distance difference between the two on those rows.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--dims", default="16,5,2")
    ap.add_argument("--sample", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--brute-rows", type=int, default=5_000)
    ap.add_argument("--groups", default="default", help="comma list of n_groups ('default' = sqrt(m)/2)")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many timings")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    sys.path.insert(0, os.path.join(here, "..", "lib"))
    from threadpoolctl import threadpool_limits

    from bench_density import data
    from clusterlake.kernels import neighbors as NB
    from clusterlake.kernels.kmeans import nearest, row_sq_norms

    def best_of(f):
        ts = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            out = f()
            ts.append(time.perf_counter() - t0)
        return min(ts), out

    print(f"{'dims':>4} {'G':>5} {'build s':>8} {'query rows/s':>13} {'batched rows/s':>15} "
          f"{'brute rows/s':>13} {'speed-up':>8} {'max rel diff':>12}")
    for d in [int(x) for x in a.dims.split(",")]:
        X = data(a.rows, d, a.seed)
        S = X[np.random.default_rng(0).choice(len(X), min(a.sample, len(X)), replace=False)]
        Q = np.ascontiguousarray(X[: a.queries])
        Qb = np.ascontiguousarray(Q[: a.brute_rows])
        m = len(S)
        with threadpool_limits(1):
            block = int(max(64, min(65536, (64 << 20) // (12 * m))))  # as density.extend
            tb, (bi, _) = best_of(lambda: nearest(Qb, S, row_sq_norms(Qb), block_rows=block))
            bd = np.sqrt(((Qb - S[bi]) ** 2).sum(axis=1))
            brute_rate = len(Qb) / tb
            for g in a.groups.split(","):
                t0 = time.perf_counter()
                index = NB.build(S, n_groups=None if g == "default" else int(g))
                t_build = time.perf_counter() - t0
                NB.query(index, Q[:100])  # derived arrays (computed once per process)
                tq, (_, dist) = best_of(lambda: NB.query(index, Q))

                def batched():
                    for s in range(0, len(Q), a.batch):
                        NB.query(index, Q[s:s + a.batch])

                tqb, _ = best_of(batched)
                rel = float(np.max(np.abs(dist[: len(bd)] - bd) / np.maximum(bd, 1e-300)))
                rate = len(Q) / tq
                print(f"{d:4d} {index.n_groups:5d} {t_build:8.2f} {rate:13,.0f} {len(Q) / tqb:15,.0f} "
                      f"{brute_rate:13,.0f} {rate / brute_rate:7.1f}x {rel:12.1e}", flush=True)
    print(f"(reproduce: .venv/bin/python scripts/bench_neighbors.py --rows {a.rows} --dims {a.dims} "
          f"--sample {a.sample} --queries {a.queries} --groups {a.groups})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
