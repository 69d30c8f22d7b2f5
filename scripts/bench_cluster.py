"""Benchmark: the same job on a Spark standalone cluster of 1 worker, then of 2 (issue 21's check of
how the stages scale with executors, on this machine).

    make dist && .venv/bin/python scripts/bench_cluster.py --rows 2000000

For each size of cluster, in turn: a master and that many 1-core workers on 127.0.0.1
(``scripts/standalone_cluster.py``), the nightly job submitted to it in client mode with the
artefacts of ``make dist`` (``scripts/submit.sh``, as the README's "Run on a cluster" section), on
the blobs of scripts/bench_job.py (``--rows`` x 32 float32 named columns; cached under data/bench/),
k=20, PCA, density, hierarchy and report off, into an empty output; then the cluster is stopped.
It prints the submission's wall time (JVMs included), the job's own duration and its stages'
seconds from the ``runs`` table, and the speed-up of 2 workers over 1. On this 2-core machine the
two workers share the cores the one worker had half of: the figure is how well the stages spread
over executors, not a promise for a bigger cluster. A benchmark prints; it never asserts.
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _script(*args) -> str:
    p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "standalone_cluster.py"), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise SystemExit(f"standalone_cluster.py {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    return p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""


def one(workers: int, data: str, memory: str, base: str) -> dict:
    """Start a cluster of ``workers`` 1-core workers, run the job on it once, stop it."""
    from deltalake import DeltaTable

    cdir, out = os.path.join(base, f"cluster-{workers}"), os.path.join(base, f"out-{workers}")
    master = _script("start", "--dir", cdir, "--workers", str(workers), "--cores", "1", "--memory", memory)
    try:
        sets = [f"input.path={data}", "input.id_column=id", "input.label_column=label", "input.feature_columns=null",
                f"output.path={out}", "job.run_date=2026-12-01", "kmeans.k=20", "preprocess.pca.enabled=false",
                "density.enabled=false", "hierarchical.enabled=false", "report.enabled=false",
                "output.delta_writer=delta-rs", f"spark.conf.spark.cores.max={workers}",
                "spark.conf.spark.executor.memory=2g"]
        cmd = [os.path.join(ROOT, "scripts", "submit.sh"), master, "conf/standalone.yaml", "--"]
        for s in sets:
            cmd += ["--set", s]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_HOME", "CLUSTERLAKE_"))}
        t0 = time.time()
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        wall = time.time() - t0
        if p.returncode != 0:
            return {"workers": workers, "error": f"exit {p.returncode}: {(p.stderr or p.stdout)[-600:]}"}
        runs = DeltaTable(os.path.join(out, "runs")).to_pandas()
        r = runs.iloc[-1]
        stages = {k: round(float(v), 1) for k, v in dict(r["stage_seconds"]).items()}
        passes = [ln.split("spark pass ", 1)[1] for ln in (p.stdout + p.stderr).splitlines() if "spark pass " in ln]
        return {"workers": workers, "wall_s": round(wall, 1), "job_s": round(float(r["duration_seconds"]), 1),
                "stages": stages, "passes": passes}
    finally:
        _script("stop", "--dir", cdir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--memory", default="3g", help="each worker's memory")
    args = ap.parse_args()
    for f in ("dist/clusterlake-env.tar.gz", "dist/venv/bin/python"):
        if not os.path.exists(os.path.join(ROOT, f)):
            raise SystemExit(f"{f} is missing: run `make dist` first")
    from bench_job import dataset

    sys.path.insert(0, os.path.join(ROOT, "lib"))
    data = dataset(args.rows)
    base = tempfile.mkdtemp(prefix="bench_cluster-")
    results = []
    try:
        for w in [int(x) for x in args.workers.split(",")]:
            r = one(w, data, args.memory, base)
            results.append(r)
            print(json.dumps(r), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    ok = {r["workers"]: r for r in results if "error" not in r}
    print(f"\n{args.rows:,} rows x 32, k=20, passes off; 1-core workers on this machine")
    stages = list(dict.fromkeys(s for r in ok.values() for s in r["stages"]))
    print("workers  wall s   job s  " + "  ".join(f"{s:>14}" for s in stages))
    for w, r in sorted(ok.items()):
        print(f"{w:>7} {r['wall_s']:>7.1f} {r['job_s']:>7.1f}  "
              + "  ".join(f"{r['stages'].get(s, 0.0):>14.1f}" for s in stages))
    if 1 in ok and 2 in ok:
        print(f"speed-up of 2 workers over 1: {ok[1]['job_s'] / ok[2]['job_s']:.2f}x (job), "
              + ", ".join(f"{s} {ok[1]['stages'].get(s, 0) / max(ok[2]['stages'].get(s, 0), 1e-9):.2f}x"
                          for s in stages))
    print("A benchmark prints; it never asserts a time.")


if __name__ == "__main__":
    main()
