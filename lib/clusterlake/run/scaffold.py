"""The scaffold of a run, shared by the nightly job, the update and the stream.

A run is: a run id; the output path checked and its lock held (before Spark starts); a
SparkSession; the table store; the recovery of an interrupted earlier run; timed, logged steps;
the inputs it cached, released at the end; the staged tables under one journal; the ``runs`` row and the publish; the report after the lock
is released. :func:`open_run` and :class:`Run` hold all of it, so each job is only its steps.

The stream is a long-running query, not a run (no lock, no ``runs`` row: docs/streaming.md); it
uses the pieces that apply per micro-batch: :func:`check_model_id_column` and the staged row
check (:meth:`clusterlake.io.tables.StagedTable.check_rows`).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from clusterlake.config import JobConfig
from clusterlake.errors import InputDataError
from clusterlake.stages import Stages

log = logging.getLogger("clusterlake")


def new_run_id(run_date: str) -> str:
    """``<run date>-<UTC start>-<random>``: sorts by date, then start; unique per run."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{run_date.replace('-', '')}-{stamp}-{uuid.uuid4().hex[:8]}"


@contextmanager
def open_output(path: str, run_id: str):
    """Check ``output.path`` and hold its run lock (exit 2 / 75 before Spark starts); yields the lock."""
    from clusterlake.io.fs import location
    from clusterlake.io.lock import RunLock
    from clusterlake.io.output_check import check_output_path

    check_output_path(path)
    with RunLock(location(path), run_id) as lock:
        yield lock


def check_model_id_column(art, id_column: str) -> str:
    """The model's id column, which must be ``input.id_column`` (ids of two columns never mix)."""
    model_id = art.meta.get("id_column") or id_column
    if model_id != id_column:
        raise InputDataError(f"input.id_column is '{id_column}' but the model (run {art.run_id}) "
                             f"was fitted with '{model_id}'; use the model's id column")
    return model_id


@dataclass
class Run:
    """One run in progress: its identity, session, store, lock and step timer."""

    cfg: JobConfig
    kind: str  # full | update
    run_id: str
    run_date: str
    started_at: dt.datetime
    t_start: float
    lock: object
    spark: object = None
    store: object = None
    step: Stages = field(default_factory=Stages)
    cached: list = field(default_factory=list)
    held: list = field(default_factory=list)  # ResidentRows open on the engine's tasks

    @property
    def model_root(self):
        from clusterlake.io.model_artifact import models_dir

        return models_dir(self.store.root)

    @property
    def model_dir(self):
        """This run's model directory (``<output>/model/<run_id>``)."""
        return self.model_root.child(self.run_id)

    @property
    def seconds(self) -> float:
        return time.time() - self.t_start

    def cache(self, df):
        """Persist ``df`` (memory, then disk) for this run; released when the run ends."""
        from pyspark import StorageLevel

        df = df.persist(StorageLevel.MEMORY_AND_DISK)
        self.cached.append(df)
        return df

    def hold(self, rows):
        """Load ``rows`` (:class:`~clusterlake.algorithms.resident.ResidentRows`) into the
        engine's tasks for this run; released by :meth:`release` or when the run ends."""
        rows.open()
        self.held.append(rows)
        return rows

    def release(self, rows) -> None:
        """Free the tasks holding ``rows`` (their slots serve Spark's jobs again)."""
        if rows in self.held:
            self.held.remove(rows)
        rows.close()

    @contextmanager
    def staging(self) -> Iterator[list]:
        """The run's output under one journal (:func:`clusterlake.io.tables.staging`)."""
        from clusterlake.io.tables import staging

        with staging(self.store, self.model_dir) as staged:
            yield staged

    def stage_rows(self, name: str, rows: list, ddl: str, append: bool = False):
        """Stage a small table built from contract rows (:mod:`clusterlake.io.contract`), one file."""
        return self.store.stage_rows(name, rows, ddl, append=append)

    def publish(self, staged: list, runs_row: Callable[[dict], tuple], move_latest: bool = True) -> dict:
        """Commit the staged tables, then the ``runs`` row built by ``runs_row(versions)``, then
        point ``model/latest`` at this run (:func:`clusterlake.io.tables.publish_run`), unless
        ``move_latest`` is False (a run without a K-means model: ``latest`` stays the last model's)."""
        from clusterlake.io import model_artifact
        from clusterlake.io.contract import runs
        from clusterlake.io.tables import publish_run

        def stage_runs(versions):
            return self.stage_rows("runs", [runs_row(versions)], runs.DDL, append=self.kind == "update")

        with self.step("publish"):
            return publish_run(self.store, staged, stage_runs,
                               after_commit=(lambda: model_artifact.point_latest(self.model_root, self.run_id))
                               if move_latest else None,
                               guard=self.lock.assert_held)

    def runs_row(self, summary, record, versions: dict, cfg: Optional[JobConfig] = None) -> tuple:
        """The ``runs`` row of this run (:func:`clusterlake.io.contract.runs.row`)."""
        from clusterlake.io.contract import runs

        return runs.row(cfg or self.cfg, self.run_id, self.run_date, self.started_at, self.seconds,
                        self.step.seconds, summary, record, versions, table_writer=self.store.kind)

    def report(self) -> Optional[str]:
        """Write the run's HTML report (after the commit, outside the lock); None when off or failed."""
        if not self.cfg.report.enabled:
            return None
        return write_report(self.store.root.uri, self.run_id, self.cfg.report.history_runs)


@contextmanager
def open_run(cfg: JobConfig, spark=None, *, kind: str = "full", app: str = "clusterlake",
             describe: str = "") -> Iterator[Run]:
    """Start a run: id, output check and lock, SparkSession, store, recovery of an interrupted
    run. Yields the :class:`Run`; the DataFrames it cached are released and the lock freed on
    the way out, whatever happens."""
    from clusterlake.io.tables import make_store, recover_interrupted
    from clusterlake.session import build_session

    run_date = cfg.resolved_run_date.isoformat()
    run_id = new_run_id(run_date)
    log.info("%s %s of job %s %s", "run" if kind == "full" else kind, run_id, cfg.job.name,
             describe or f"for run_date {run_date}")
    started_at, t_start = dt.datetime.now(dt.timezone.utc), time.time()
    # one run per output path: the recovery below must not mistake a live run for a dead one. The
    # path and the lock are checked before Spark starts (seconds, not a JVM start-up)
    with open_output(cfg.output.path, run_id) as lock:
        run = Run(cfg, kind, run_id, run_date, started_at, t_start, lock)
        run.spark = spark if spark is not None else build_session(cfg.spark, f"{app}-{cfg.job.name}")
        run.store = make_store(run.spark, cfg.output, run_date, run_id)
        log.info("tables: %s under %s (%s)", cfg.output.format, cfg.output.path, {
            "delta-rs": "delta-rs commits the files Spark and the engine's tasks write",
            "spark-delta": "Spark's Delta writer commits them",
            "parquet": "partition directories swapped by rename"}.get(run.store.kind, run.store.kind))
        recovered = recover_interrupted(run.store)
        if recovered:
            log.warning("recovered interrupted run(s) %s", recovered)
        try:
            yield run
        except BaseException as exc:
            _release_all(run, exc)
            raise
        finally:
            _release_all(run, None)
            for df in run.cached:
                df.unpersist()


def _release_all(run: Run, exc: Optional[BaseException]) -> None:
    while run.held:
        rows = run.held.pop()
        try:
            rows.close(exc)
        except Exception as err:  # noqa: BLE001 (the run's own outcome matters more)
            if exc is None:
                raise
            log.warning("could not stop the engine's tasks after the failure: %s", err)


def write_report(output_path: str, run_id: str, history_runs: int) -> Optional[str]:
    """Write the run's HTML report. The run is committed: a failure here is logged, not raised
    (``clusterlake report --output ... --run ...`` rebuilds it)."""
    from clusterlake.report.build import write_report as build

    try:
        return build(output_path, run_id, history_runs)
    except Exception as exc:  # noqa: BLE001 (the committed run must not fail over its report)
        log.error("run %s is committed but its report could not be written: %s; rebuild it with "
                  "clusterlake report --output %s --run %s", run_id, exc, output_path, run_id, exc_info=True)
        return None
