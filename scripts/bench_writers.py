"""Benchmark: the whole job with each Delta writer (delta-rs vs Spark's Delta writer), same data.

    .venv/bin/python scripts/bench_writers.py               # 1M x 32 blobs (bench_job's), passes off
    .venv/bin/python scripts/bench_writers.py --repeat 3

Both writers first run once on a 20,000-row slice (warm-up), then alternately into empty outputs;
prints each run's seconds per stage. The difference is the publish: delta-rs commits the files
Spark and the engine's tasks wrote, Spark's Delta writer rewrites them into the table. A
benchmark prints; it never asserts a time.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "lib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

WRITERS = ("delta-rs", "spark")


def main() -> None:
    import bench_job as B

    from clusterlake.config import SparkSection
    from clusterlake.pipeline import run_job
    from clusterlake.session import build_session, delta_spark_available

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    spark = build_session(SparkSection(master="local[2]", conf={"spark.driver.memory": "8g",
                                                                "spark.sql.shuffle.partitions": "8"}), "bench_writers")
    if not delta_spark_available(spark):
        raise SystemExit("Delta's Spark jars are not on the classpath: run `make setup` (fetches .venv/jars)")
    data, small = B.dataset(args.rows), os.path.join(ROOT, "data", "bench", "job_warmup_20000.parquet")
    root = tempfile.mkdtemp(prefix="bench_writers-")
    try:
        for w in WRITERS:  # warm-up (needs bench_job's 20,000-row slice: run bench_job once)
            cfg = B.job_config(small if os.path.exists(small) else data, f"{root}/warm-{w}", "off", 20_000)
            cfg.output.delta_writer = w
            run_job(cfg, spark)
        for rep in range(args.repeat):
            for w in WRITERS:
                cfg = B.job_config(data, f"{root}/{w}-{rep}", "off", args.rows)
                cfg.output.delta_writer = w
                t0 = time.time()
                res = run_job(cfg, spark)
                stages = ", ".join(f"{k} {v:.1f}" for k, v in res.stage_seconds.items())
                print(f"{w:9s} {time.time() - t0:5.1f} s  ({stages})", flush=True)
    finally:
        spark.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
