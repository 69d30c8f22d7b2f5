#!/usr/bin/env python3
"""Peak memory and time of the sample passes on the driver, against the estimates the job's
memory guard uses (``lib/clusterlake/memory.py``).

    .venv/bin/python scripts/bench_passes_memory.py                 # 16 dims, default samples
    .venv/bin/python scripts/bench_passes_memory.py --dims 8 --rows 50000

Each case runs in a fresh subprocess: the figure is that process's peak RSS minus its RSS before
the pass (the sample itself included), next to the estimate. An estimate below the measured peak
would let the guard pass a sample that does not fit, so the last column must stay >= 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CASES = [
    ("hdbscan", None), ("dbscan", None), ("ward", None), ("single", None), ("average", 20_000), ("complete", 20_000),
]


def child(kind: str, rows: int, dims: int, min_samples: int) -> dict:
    import resource
    import time

    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
    from bench_density import data
    from clusterlake import memory as M
    from clusterlake.kernels import density as D
    from clusterlake.kernels import hierarchy as H

    X = np.ascontiguousarray(data(rows, dims, 1))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - X.nbytes
    t0 = time.time()
    nb = None
    if kind in ("dbscan", "hdbscan"):
        seen = {}
        m = D.fit_sample(X, kind, None, min_samples, max(min_samples, rows // 1000) if kind == "hdbscan" else None,
                         before_dbscan=lambda v: seen.update(nb=v))
        nb = seen.get("nb")
        est = M.density_bytes(rows, dims, min_samples) + (M.dbscan_neighbourhood_bytes(rows, nb) if nb else 0)
        found = f"{m.n_clusters} clusters"
    else:
        h = H.fit_sample(X, kind, [4, 16])
        est = M.hierarchy_bytes(rows, dims, kind, 2)
        found = f"levels {h.levels}"
    took = time.time() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"kind": kind, "rows": rows, "seconds": took, "peak": peak, "estimate": est, "found": found,
            "neighbours": nb}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="sample rows (average/complete: 20,000)")
    ap.add_argument("--dims", type=int, default=16)
    ap.add_argument("--min-samples", type=int, default=10)
    ap.add_argument("--cases", default=",".join(c for c, _ in CASES))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.rows, a.dims, a.min_samples)))
        return 0
    sizes = dict(CASES)
    print(f"{'pass':9} {'rows':>8} {'seconds':>8} {'peak MiB':>9} {'estimate MiB':>12} {'est/peak':>8}  found")
    for kind in a.cases.split(","):
        rows = sizes.get(kind) or a.rows
        out = subprocess.run([sys.executable, __file__, "--child", kind, "--rows", str(rows), "--dims", str(a.dims),
                              "--min-samples", str(a.min_samples)], capture_output=True, text=True,
                             cwd=os.path.dirname(__file__), env={**os.environ, "OMP_NUM_THREADS": "1"})
        if out.returncode:
            print(f"{kind}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        extra = f", {r['neighbours']:.0f} neighbours/row" if r["neighbours"] else ""
        print(f"{kind:9} {rows:8,d} {r['seconds']:8.1f} {r['peak'] / 2**20:9.0f} {r['estimate'] / 2**20:12.0f} "
              f"{r['estimate'] / max(r['peak'], 1):8.2f}  {r['found']}{extra}")
    print(f"(reproduce: .venv/bin/python scripts/bench_passes_memory.py --rows {a.rows} --dims {a.dims})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
