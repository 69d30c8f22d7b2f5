"""Child process of tests/test_cli.py (the ``stderr_child`` fixture): what a user sees on stderr
when clusterlake starts Spark itself, in three phases separated by ``=== phase N ===`` lines.

1. ``clusterlake run`` (cli.main) on a missing input path: a local session built by
   clusterlake.session (its log4j2 configuration), one error line, exit 2 (printed on stdout).
2. a Spark job that fails in a task (a truncated parquet file): no Java stack traces.
3. the driver JVM killed (SIGKILL) inside a ``Stages`` stage, then a Spark action, under
   ``cli.guarded``: one line naming the stage and spark.driver.memory; the process exits with
   guarded's code (1).

Usage: ``python tests/cli_stderr_child.py WORK_DIR`` (WORK_DIR: a fresh, empty directory).
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _files(work: str) -> tuple[str, str]:
    """(job config with a missing input, a directory holding a truncated parquet file)."""
    cfg = os.path.join(work, "job.yaml")
    with open(cfg, "w", encoding="utf-8") as f:
        f.write(f"input: {{path: '{work}/missing', id_column: customer_id}}\n"
                f"output: {{path: '{work}/out'}}\n"
                "spark: {master: 'local[1]', conf: {spark.ui.enabled: false, spark.driver.memory: 1g}}\n")
    broken = os.path.join(work, "broken")
    os.makedirs(broken)
    n = 5000
    path = os.path.join(broken, "part-0.parquet")
    pq.write_table(pa.table({"customer_id": np.arange(n), "x": np.random.default_rng(0).normal(size=n)}), path)
    os.truncate(path, os.path.getsize(path) // 2)
    return cfg, broken


def main(work: str) -> int:
    from pyspark.sql import SparkSession

    from clusterlake import cli
    from clusterlake.stages import Stages

    cfg, broken = _files(work)
    print("=== phase 1 ===", file=sys.stderr, flush=True)
    print(f"run exit code {cli.main(['run', '--config', cfg])}", flush=True)
    spark = SparkSession.getActiveSession()  # the session `run` built
    print("=== phase 2 ===", file=sys.stderr, flush=True)
    try:
        spark.read.parquet(broken).count()
    except Exception as exc:  # noqa: BLE001 (expected: the footer is gone)
        print(f"task failure: {type(exc).__name__}", flush=True)
    print("=== phase 3 ===", file=sys.stderr, flush=True)
    stage = Stages()

    def job() -> int:
        with stage("kmeans"):
            pid = spark.sparkContext._gateway.proc.pid  # spark-submit execs the JVM: this is java
            exe = os.readlink(f"/proc/{pid}/exe")
            assert os.path.basename(exe) == "java", exe
            os.kill(pid, signal.SIGKILL)
            spark.range(10).count()
        return 0

    return cli.guarded(job)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
