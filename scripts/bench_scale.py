"""Benchmark: how the whole nightly job's cost grows with the rows (issue 21's scaling curve).

    .venv/bin/python scripts/bench_scale.py                                  # 1M, 2M, 5M, 10M x 32 (~15 min)
    .venv/bin/python scripts/bench_scale.py --rows 1000000,2000000 --plot docs/scaling.png
    .venv/bin/python scripts/bench_scale.py --rows 20000000 --driver-memory 4g
    .venv/bin/python scripts/bench_scale.py --rows 10000000 --task-memory-gb 0.25   # rows spilled to disk

For each size, in a fresh process (a nightly ``spark-submit`` starts its own JVM): the blobs of
scripts/bench_job.py (``rows`` x 32 float32 named columns, an id and a label; cached under
data/bench/), ``conf/local.yaml`` with k=20 and the density pass, hierarchy, PCA and report off
(the issue's configuration), into an empty output, Spark local mode on this machine's cores with
``--driver-memory`` (conf/local.yaml's 4g by default). It prints, per size: each stage's seconds,
the peak summed RSS of the Spark JVM and its Python workers (sampled every 0.5 s; the engine's
tasks live in the workers), the driver process's own peak, the bytes Spark shuffled (its status
store's stage figures), and the rows per second of the whole job; then a Markdown table and, with
``--plot``, a chart of seconds and memory against rows. A benchmark prints; it never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "lib"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

K = 20


def _shuffle_bytes(spark) -> int:
    """Bytes written by every shuffle of the application so far (Spark's status store)."""
    jvm = spark.sparkContext._jvm
    store = spark.sparkContext._jsc.sc().statusStore()
    no_quantiles = spark.sparkContext._gateway.new_array(jvm.double, 0)
    stages = store.stageList(jvm.java.util.ArrayList(), False, False, no_quantiles, jvm.java.util.ArrayList())
    return int(sum(stages.apply(i).shuffleWriteBytes() for i in range(stages.size())))


def one(rows: int, driver_memory: str, out: str, task_memory_gb: str = "") -> dict:
    """Run the job once on ``rows`` rows in this process; the figures as a dict."""
    from bench_embeddings import SparkRss, _peak_rss_mb
    from bench_job import dataset

    from clusterlake.config import load_config
    from clusterlake.pipeline import run_job
    from clusterlake.session import build_session

    data = dataset(rows)
    sets = [f"input.path={data}", "input.id_column=id", "input.label_column=label", f"output.path={out}",
            f"kmeans.k={K}", "job.run_date=2026-12-01", "preprocess.pca.enabled=false", "density.enabled=false",
            "hierarchical.enabled=false", "report.enabled=false", "output.delta_writer=delta-rs",
            f"spark.conf.spark.driver.memory={driver_memory}"]
    if task_memory_gb:  # the engine's tasks spill what does not fit to local disk
        sets.append(f"job.task_memory_gb={task_memory_gb}")
    cfg = load_config(os.path.join(ROOT, "conf", "local.yaml"), sets)
    t0 = time.time()
    spark = build_session(cfg.spark, "bench_scale")
    start = time.time() - t0
    with SparkRss(spark) as mem:
        t0 = time.time()
        res = run_job(cfg, spark)
        total = time.time() - t0
    shuffled = _shuffle_bytes(spark)
    spark.stop()
    return {"rows": rows, "input_mb": os.path.getsize(data) / 2**20, "session_s": round(start, 1),
            "job_s": round(total, 1), "stages": {k: round(v, 1) for k, v in res.stage_seconds.items()},
            "spark_mb": round(mem.peak_mb or 0.0), "driver_py_mb": round(_peak_rss_mb()),
            "shuffle_mb": round(shuffled / 2**20, 1), "ari": res.metrics.get("ari"),
            "passes": {st: {k: round(v, 1) for k, v in ps.items()} for st, ps in res.spark_passes.items() if ps}}


def run_size(rows: int, driver_memory: str, task_memory_gb: str = "") -> dict:
    """:func:`one` in a fresh Python process (its own JVM); a failure is reported, not raised."""
    out = tempfile.mkdtemp(prefix="bench_scale-")
    try:
        p = subprocess.run([sys.executable, __file__, "--one", str(rows), "--driver-memory", driver_memory,
                            "--out", out, "--task-memory-gb", task_memory_gb], capture_output=True, text=True)
        line = next((ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("{")), None)
        if p.returncode != 0 or line is None:
            tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
            return {"rows": rows, "error": f"exit {p.returncode}: {tail[:300]}"}
        return json.loads(line)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def table(results: list[dict]) -> str:
    stages = []
    for r in results:
        stages += [s for s in r.get("stages", {}) if s not in stages]
    head = ["rows", "input MB", "job s", *[f"{s} s" for s in stages], "rows/s", "Spark+workers peak MB",
            "shuffle MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['rows']:,} | failed: {r['error']} |")
            continue
        cells = [f"{r['rows']:,}", f"{r['input_mb']:.0f}", f"{r['job_s']:.1f}",
                 *[f"{r['stages'].get(s, 0.0):.1f}" for s in stages], f"{r['rows'] / r['job_s']:,.0f}",
                 f"{r['spark_mb']:,}", f"{r['shuffle_mb']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "error" not in r]
    x = [r["rows"] / 1e6 for r in ok]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    bottom = [0.0] * len(ok)
    for s in dict.fromkeys(s for r in ok for s in r["stages"]):
        v = [r["stages"].get(s, 0.0) for r in ok]
        a.bar(x, v, bottom=bottom, width=0.6, label=s)
        bottom = [p + q for p, q in zip(bottom, v)]
    a.set(xlabel="rows (millions) x 32 features", ylabel="seconds", title="Whole job, by stage (k=20)")
    a.legend(fontsize=8)
    b.plot(x, [r["spark_mb"] / 1024 for r in ok], "o-", label="Spark JVM + Python workers")
    b.plot(x, [r["input_mb"] / 1024 for r in ok], "s--", label="input parquet")
    b.set(xlabel="rows (millions)", ylabel="GiB", title="Peak memory")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="1000000,2000000,5000000,10000000")
    ap.add_argument("--driver-memory", default="4g")
    ap.add_argument("--plot", help="write the chart here (PNG)")
    ap.add_argument("--task-memory-gb", default="", help="job.task_memory_gb: spill the engine's rows past it")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        import logging

        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(one(args.one, args.driver_memory, args.out, args.task_memory_gb)), flush=True)
        return
    results = []
    for rows in [int(r) for r in args.rows.split(",") if r.strip()]:
        t0 = time.time()
        r = run_size(rows, args.driver_memory, args.task_memory_gb)
        results.append(r)
        print(json.dumps(r), f"({time.time() - t0:.0f} s with the data and the session)", flush=True)
    print("\n" + table(results))
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
