"""Output tables: staging a run's data, committing it per table, rolling back on failure.

A run writes its tables in two phases so that a failure leaves readers on the previous run:

1. **stage**: Spark writes every table's parquet files where readers do not see them yet (for
   Delta: files not yet in the Delta log; for parquet: a ``_staging`` directory that readers skip).
   This is the slow part; a failure here changes nothing visible and the staged files are deleted.
2. **publish** (:func:`publish_run`): a journal of every table's current version is written, then
   each table's ``run_date`` partition is replaced in one commit (centroids, assignments, metrics,
   ...), and the ``runs`` row is committed **last**. It records the Delta version of every table it
   belongs to, so a reader can read exactly that run with time travel. A failure during publish
   restores the tables committed so far (Delta ``RESTORE``) and deletes the staged files; a driver
   killed during publish leaves the journal, and the next run restores from it before it starts.

Three stores implement this: :class:`DeltaRsStore` (Spark writes parquet, the ``deltalake``
package commits: works without Delta's Spark jars, used here and in CI), :class:`SparkDeltaStore`
(Spark's own Delta writer where its jars are on the classpath, e.g. Databricks) and
:class:`ParquetStore` (plain parquet, partition directories swapped by rename).

Everything here runs on the driver; only Spark's write of the files is distributed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from clusterlake.config import OutputSection
from clusterlake.errors import OutputError
from clusterlake.faults import pause_point
from clusterlake.io.fs import Location, location

log = logging.getLogger(__name__)

PARTITION = "run_date"
RUN_ID_KEY = "clusterlake.run_id"


@dataclass
class StagedTable:
    name: str
    table: Location
    staged: Location
    schema: Optional[pa.Schema] = None  # file schema + run_date, all nullable
    files: list[tuple[str, int, int, int]] = field(default_factory=list)  # relpath, size, mtime ms, rows
    df: object = None  # SparkDeltaStore writes at commit time

    @property
    def rows(self) -> int:
        return sum(f[3] for f in self.files)


def _nullable(schema: pa.Schema) -> pa.Schema:
    def fix(f: pa.Field) -> pa.Field:
        t = f.type
        if pa.types.is_timestamp(t):
            t = pa.timestamp("us", tz="UTC")  # Delta's `timestamp`; ns would need timestampNanos
        elif pa.types.is_list(t):
            t = pa.list_(pa.field("element", t.value_type, nullable=True))
        elif pa.types.is_map(t):
            t = pa.map_(t.key_type, pa.field("value", t.item_type, nullable=True))
        return pa.field(f.name, t, nullable=True)

    return pa.schema([fix(f) for f in schema])


class TableStore:
    """Base: where tables live and how a run's partition is staged, committed and rolled back."""

    kind = "base"

    def __init__(self, spark, cfg: OutputSection, run_date: str, run_id: str):
        self.spark = spark
        self.cfg = cfg
        self.root = location(cfg.path)
        self.run_date = run_date
        self.run_id = run_id

    def table(self, name: str) -> Location:
        return self.root.child(name)

    # -- to implement
    def stage(self, name: str, df, files: Optional[int] = None) -> StagedTable:
        raise NotImplementedError

    def current_version(self, name: str) -> Optional[int]:
        raise NotImplementedError

    def commit(self, st: StagedTable) -> Optional[int]:
        raise NotImplementedError

    def rollback(self, name: str, version: Optional[int], run_id: Optional[str] = None) -> None:
        """Put table ``name`` back to ``version``; ``None`` means it did not exist before run
        ``run_id`` (default: this store's run), and is deleted only if that run created it."""
        raise NotImplementedError

    def finish(self) -> None:
        """Called once after the whole run is published (cleanup of replaced data)."""

    def discard(self, st: StagedTable) -> None:
        try:
            if st.staged.exists():
                st.staged.delete()
        except Exception as exc:  # best effort: never hide the original error
            log.warning("could not delete staged files %s: %s", st.staged.uri, exc)

    def read(self, name: str, version: Optional[int] = None) -> pa.Table:
        raise NotImplementedError

    # -- shared
    def _spark_write_parquet(self, df, dest: Location, files: Optional[int]) -> None:
        if files is not None:
            df = df.coalesce(files)
        # Delta's timestamp is microseconds since the epoch in UTC; Spark's default INT96 is not
        self.spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        df.write.mode("errorifexists").parquet(dest.uri)

    def _collect_files(self, st: StagedTable) -> None:
        infos = sorted(
            (i for i in st.staged.files() if i.base_name.startswith("part-") and i.base_name.endswith(".parquet")),
            key=lambda i: i.path,
        )
        if not infos:
            raise OutputError(f"Spark wrote no parquet files for table {st.name} under {st.staged.uri}")
        files = []
        schema = None
        for info in infos:
            with st.staged.fs.open_input_file(info.path) as f:
                md = pq.read_metadata(f)
                if schema is None:
                    schema = md.schema.to_arrow_schema()
            rel = info.path[len(st.table.path.rstrip("/")) + 1 :]
            files.append((rel, int(info.size), int(info.mtime_ns // 1_000_000) if info.mtime_ns else int(time.time() * 1000), md.num_rows))
        schema = _nullable(schema.remove_metadata())
        if PARTITION not in schema.names:
            schema = schema.append(pa.field(PARTITION, pa.date32(), nullable=True))
        st.files, st.schema = files, schema


class DeltaRsStore(TableStore):
    """Spark writes the parquet files into the table directory; delta-rs commits them.

    Files of a run land in ``<table>/run_date=<date>/<run_id>/`` and become visible only when the
    commit (``mode=overwrite`` with a ``run_date`` partition filter: one atomic replace of that
    date) adds them to the Delta log.
    """

    kind = "delta-rs"

    def stage(self, name: str, df, files: Optional[int] = None) -> StagedTable:
        t = self.table(name)
        st = StagedTable(name, t, t.child(f"{PARTITION}={self.run_date}", self.run_id))
        self._spark_write_parquet(df, st.staged, files)
        self._collect_files(st)
        return st

    def discard(self, st: StagedTable) -> None:
        super().discard(st)
        # the run's partition directory, and the table directory of a table this run would have
        # created, are left empty: remove them too (never one that holds a file)
        try:
            for loc in (st.table.child(f"{PARTITION}={self.run_date}"), st.table):
                if loc.exists() and loc.is_dir() and not loc.files(recursive=True):
                    loc.delete()
        except Exception as exc:  # best effort
            log.warning("could not tidy the staging directories of %s: %s", st.table.uri, exc)

    def _dt(self, name: str, version: Optional[int] = None):
        from deltalake import DeltaTable

        uri = self.table(name).uri
        if not DeltaTable.is_deltatable(uri, storage_options=self.cfg.storage_options or None):
            return None
        return DeltaTable(uri, version=version, storage_options=self.cfg.storage_options or None)

    def current_version(self, name: str) -> Optional[int]:
        dt = self._dt(name)
        return None if dt is None else dt.version()

    def commit(self, st: StagedTable) -> int:
        from deltalake import Schema
        from deltalake.transaction import AddAction, CommitProperties, create_table_with_add_actions

        adds = [
            AddAction(rel, size, {PARTITION: self.run_date}, mtime, True, json.dumps({"numRecords": rows}))
            for rel, size, mtime, rows in st.files
        ]
        props = CommitProperties(custom_metadata={RUN_ID_KEY: self.run_id})
        dt = self._dt(st.name)
        if dt is None:
            if st.table.exists() and any(i.base_name != "" for i in st.table.files(recursive=False)):
                raise OutputError(
                    f"{st.table.uri} exists and is not a Delta table; point output.path elsewhere "
                    "or set output.format: parquet"
                )
            create_table_with_add_actions(
                st.table.uri, Schema.from_arrow(st.schema), adds, mode="error",
                partition_by=[PARTITION], storage_options=self.cfg.storage_options or None,
                commit_properties=props,
            )
            dt = self._dt(st.name)
        else:
            current = pa.schema(dt.schema().to_arrow())  # deltalake 1.x returns an arro3 schema
            schema = self._evolve(st, current)
            if dt.metadata().partition_columns != [PARTITION]:
                raise OutputError(
                    f"Delta table {st.table.uri} is partitioned by {dt.metadata().partition_columns}, "
                    f"expected ['{PARTITION}']; it was not written by clusterlake"
                )
            dt.create_write_transaction(
                adds, "overwrite", schema, partition_by=[PARTITION],
                partition_filters=[(PARTITION, "=", self.run_date)], commit_properties=props,
            )
            dt.update_incremental()
        version = dt.version()
        log.info("committed %s: %d rows in %d files, Delta version %d", st.name, st.rows, len(st.files), version)
        return version

    @staticmethod
    def _evolve(st: StagedTable, current: pa.Schema) -> pa.Schema:
        """New columns may be added (later versions write more); existing ones must keep their type."""
        cur = {f.name: f.type for f in current}
        for f in st.schema:
            if f.name in cur and not _same_type(cur[f.name], f.type):
                raise OutputError(
                    f"column '{f.name}' of table {st.name} has type {cur[f.name]} in {st.table.uri} "
                    f"but this run writes {f.type}; write to a new output.path"
                )
        missing = [n for n in cur if n not in st.schema.names]
        if missing:
            raise OutputError(
                f"table {st.name} in {st.table.uri} has columns {missing} this run does not write; "
                "write to a new output.path"
            )
        return st.schema

    def rollback(self, name: str, version: Optional[int], run_id: Optional[str] = None) -> None:
        t = self.table(name)
        owner = run_id or self.run_id
        if version is None:
            # the table did not exist before this run: remove it only if this run created it (its
            # first commit carries our run id), never a table someone else created meanwhile
            dt = self._dt(name)
            if dt is not None:
                if dt.history()[-1].get(RUN_ID_KEY) == owner:
                    log.warning("rolling back %s: deleting the table run %s created", name, owner)
                    t.delete()
                else:
                    log.error("not deleting %s: it was not created by run %s", t.uri, owner)
            return
        dt = self._dt(name)
        if dt is not None and dt.version() != version:
            log.warning("rolling back %s from version %d to %d", name, dt.version(), version)
            dt.restore(version, commit_properties=_props({RUN_ID_KEY: f"rollback-of-{self.run_id}"}))

    def last_commit_run_id(self, name: str) -> Optional[str]:
        dt = self._dt(name)
        if dt is None:
            return None
        return dt.history(1)[0].get(RUN_ID_KEY)

    def read(self, name: str, version: Optional[int] = None) -> pa.Table:
        dt = self._dt(name, version)
        if dt is None:
            raise OutputError(f"no Delta table {name} under {self.root.uri}")
        return dt.to_pyarrow_table()


def _props(meta: dict):
    from deltalake.transaction import CommitProperties

    return CommitProperties(custom_metadata=meta)


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    if pa.types.is_list(a) and pa.types.is_list(b):
        return _same_type(a.value_type, b.value_type)
    if pa.types.is_map(a) and pa.types.is_map(b):
        return _same_type(a.key_type, b.key_type) and _same_type(a.item_type, b.item_type)
    if (pa.types.is_timestamp(a) and pa.types.is_timestamp(b)) or (
        pa.types.is_string(a) or pa.types.is_large_string(a)) and (pa.types.is_string(b) or pa.types.is_large_string(b)):
        return True
    return a == b


class SparkDeltaStore(TableStore):
    """Spark's own Delta writer (where Delta's Spark jars are on the classpath, e.g. Databricks).

    Staging is lazy (the DataFrame is written at commit, with ``replaceWhere`` on the run date:
    one atomic replace per table); rollback uses ``RESTORE TABLE ... TO VERSION AS OF``.
    It cannot be exercised here (no Maven to fetch the jars); :class:`DeltaRsStore` is the tested
    path and writes the same table layout.
    """

    kind = "spark-delta"

    def stage(self, name: str, df, files: Optional[int] = None) -> StagedTable:
        from pyspark.sql import functions as F

        t = self.table(name)
        if files is not None:
            df = df.coalesce(files)
        df = df.withColumn(PARTITION, F.lit(self.run_date).cast("date"))
        return StagedTable(name, t, t, df=df)

    def current_version(self, name: str) -> Optional[int]:
        # None only when there is no Delta log; any other error propagates (a None would make a
        # rollback treat an existing table as created by this run)
        if not self.table(name).child("_delta_log").exists():
            return None
        row = self.spark.sql(f"DESCRIBE HISTORY delta.`{self.table(name).uri}` LIMIT 1").collect()
        return int(row[0]["version"]) if row else None

    def _created_by(self, name: str, run_id: str) -> bool:
        rows = self.spark.sql(f"DESCRIBE HISTORY delta.`{self.table(name).uri}`").orderBy("version").limit(1).collect()
        return bool(rows) and run_id in (rows[0]["userMetadata"] or "")

    def commit(self, st: StagedTable) -> Optional[int]:
        (st.df.write.format("delta").mode("overwrite").partitionBy(PARTITION)
         .option("replaceWhere", f"{PARTITION} = DATE'{self.run_date}'")
         .option("userMetadata", json.dumps({RUN_ID_KEY: self.run_id}))
         .save(st.table.uri))
        return self.current_version(st.name)

    def rollback(self, name: str, version: Optional[int], run_id: Optional[str] = None) -> None:
        uri = self.table(name).uri
        current = self.current_version(name)
        if version is None:
            if current is not None and self._created_by(name, run_id or self.run_id):
                self.table(name).delete()
        elif current != version:
            self.spark.sql(f"RESTORE TABLE delta.`{uri}` TO VERSION AS OF {int(version)}")

    def discard(self, st: StagedTable) -> None:
        pass

    def read(self, name: str, version: Optional[int] = None) -> pa.Table:
        return DeltaRsStore.read(self, name, version)  # type: ignore[arg-type]

    _dt = DeltaRsStore._dt


class ParquetStore(TableStore):
    """Plain parquet tables ``<table>/run_date=<date>/``.

    A run's files are staged under ``<table>/_staging/<run_id>/`` (readers skip ``_`` directories)
    and swapped in by renames at commit; the replaced partition waits in ``_trash`` until the whole
    run is published, so a rollback can put it back. There is no table log: between two tables'
    swaps a reader that does not go through the ``runs`` table can see a mix, and on object
    stores a directory rename is a copy. Prefer Delta (the default).
    """

    kind = "parquet"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._swapped: dict[str, bool] = {}

    def _part(self, name: str) -> Location:
        return self.table(name).child(f"{PARTITION}={self.run_date}")

    def _trash(self, name: str) -> Location:
        return self.table(name).child("_trash", self.run_id, f"{PARTITION}={self.run_date}")

    def stage(self, name: str, df, files: Optional[int] = None) -> StagedTable:
        t = self.table(name)
        st = StagedTable(name, t, t.child("_staging", self.run_id, f"{PARTITION}={self.run_date}"))
        self._spark_write_parquet(df, st.staged, files)
        self._collect_files(st)
        return st

    def current_version(self, name: str) -> Optional[int]:
        return None

    def commit(self, st: StagedTable) -> None:
        part, trash = self._part(st.name), self._trash(st.name)
        had = part.exists()
        if had:
            part.move_to(trash)
        self._swapped[st.name] = had
        st.staged.move_to(part)
        log.info("committed %s: %d rows in %d files (parquet partition swap)", st.name, st.rows, len(st.files))
        return None

    def rollback(self, name: str, version: Optional[int], run_id: Optional[str] = None) -> None:
        if name not in self._swapped:
            return
        part, trash = self._part(name), self._trash(name)
        if part.exists():
            part.delete()
        if self._swapped[name]:
            trash.move_to(part)
        run_trash = self.table(name).child("_trash", self.run_id)
        if run_trash.exists():
            run_trash.delete()

    def finish(self) -> None:
        for name in self._swapped:
            t = self.table(name)
            for sub in ("_trash", "_staging"):
                loc = t.child(sub, self.run_id)
                if loc.exists():
                    loc.delete()

    def discard(self, st: StagedTable) -> None:
        super().discard(st)
        parent = st.table.child("_staging", self.run_id)
        if parent.exists():
            parent.delete()

    def read(self, name: str, version: Optional[int] = None) -> pa.Table:
        import pyarrow.dataset as ds

        t = self.table(name)
        return ds.dataset(t.path, filesystem=t.fs, format="parquet", partitioning="hive").to_table()


def make_store(spark, cfg: OutputSection, run_date: str, run_id: str) -> TableStore:
    """Pick the store for ``output.format`` / ``output.delta_writer``."""
    if cfg.format == "parquet":
        return ParquetStore(spark, cfg, run_date, run_id)
    writer = cfg.delta_writer
    if writer == "auto":
        from clusterlake.session import delta_spark_available

        writer = "spark" if spark is not None and delta_spark_available(spark) else "delta-rs"
    if writer == "spark":
        return SparkDeltaStore(spark, cfg, run_date, run_id)
    return DeltaRsStore(spark, cfg, run_date, run_id)


# ----------------------------------------------------------------------------------------------
# publishing a run


def journal_location(store: TableStore) -> Location:
    """Where publish_run keeps the run's journal while it commits; it exists after a failure only
    when a rollback failed (the next run's recover_interrupted finishes the job)."""
    return store.root.child("_clusterlake", "pending", f"{store.run_id}.json")


def publish_run(
    store: TableStore,
    staged: list[StagedTable],
    stage_runs: Callable[[dict[str, Optional[int]]], StagedTable],
    after_commit: Optional[Callable[[], None]] = None,
    guard: Optional[Callable[[], None]] = None,
) -> dict[str, Optional[int]]:
    """Commit the staged tables, then the ``runs`` row, all-or-nothing for readers of ``runs``.

    Parameters
    ----------
    staged : list of StagedTable
        Data tables in commit order.
    stage_runs : callable
        Given ``{table: committed version}``, stages the one-row ``runs`` table (committed last).
    guard : callable, optional
        Called before every commit; raising stops the publish (and rolls back what it committed).
        The job passes its run lock's check, so a run that lost its lock commits nothing more.
    after_commit : callable, optional
        Runs after the ``runs`` commit (e.g. moving the model's ``latest`` pointer). A failure
        there is logged and does not undo the committed run.

    Returns
    -------
    dict
        The committed version of every table, ``runs`` included.
    """
    names = [s.name for s in staged] + ["runs"]
    pre = {n: store.current_version(n) for n in names}
    journal = journal_location(store)
    journal.write_bytes(json.dumps({"run_id": store.run_id, "run_date": store.run_date,
                                    "store": store.kind, "pre_versions": pre}).encode())
    # tables whose commit was attempted: a commit that raised may still have landed (e.g. the
    # table reload after it failed), so it is rolled back too (rollback is a no-op if it did not)
    committed: list[str] = []
    versions: dict[str, Optional[int]] = {}
    runs_st: Optional[StagedTable] = None
    try:
        for st in staged:
            pause_point("publish.commit", table=st.name, run_id=store.run_id)
            if guard is not None:
                guard()
            committed.append(st.name)
            versions[st.name] = store.commit(st)
        runs_st = stage_runs(dict(versions))
        pause_point("publish.commit", table="runs", run_id=store.run_id)
        if guard is not None:
            guard()
        committed.append("runs")
        versions["runs"] = store.commit(runs_st)
    except BaseException:
        log.error("publishing run %s failed; restoring %s to their previous versions", store.run_id, committed or "nothing")
        restored = True
        for name in reversed(committed):
            try:
                store.rollback(name, pre[name])
            except Exception as err:  # keep going: restore as much as we can
                restored = False
                log.error("could not roll back table %s: %s", name, err)
        if restored:
            for st in staged + ([runs_st] if runs_st else []):
                store.discard(st)
            journal.delete()
        else:  # the next run's recover_interrupted() tries again; its files may still be referenced
            log.error("keeping the journal %s and the staged files of run %s", journal.uri, store.run_id)
        raise
    # the run is committed: from here on nothing may raise (the caller would discard committed files)
    for what, step in (("removing the journal", journal.delete), ("cleaning up replaced data", store.finish),
                       ("the post-commit step", after_commit)):
        if step is None:
            continue
        try:
            step()
        except Exception as exc:
            log.error("run %s is committed but %s failed: %s", store.run_id, what, exc)
    return versions


def recover_interrupted(store: TableStore) -> list[str]:
    """Finish off a run whose driver died while publishing (found by its journal).

    If the run's ``runs`` row was committed, the run is complete and only the journal is removed.
    Otherwise every table whose latest commit belongs to that run is restored to the version the
    journal recorded, and the run's leftover files (staged parquet files, its model directory)
    are deleted. Runs at the start of every job, before anything is written. Returns the run ids
    found.
    """
    pending = store.root.child("_clusterlake", "pending")
    recovered = []
    for info in pending.files(recursive=False) if pending.exists() else []:
        if not info.base_name.endswith(".json"):
            continue
        loc = pending.child(info.base_name)
        data = json.loads(loc.read_bytes())
        run_id, run_date = data["run_id"], data["run_date"]
        if not isinstance(store, DeltaRsStore):
            log.warning("interrupted run %s found in %s; %s tables cannot be restored automatically",
                        run_id, loc.uri, store.kind)
        elif store.last_commit_run_id("runs") == run_id:
            log.info("run %s was complete (its runs row is committed); removing its journal", run_id)
        else:
            for name, version in data["pre_versions"].items():
                if store.last_commit_run_id(name) == run_id:
                    log.warning("recovering from interrupted run %s: restoring %s", run_id, name)
                    store.rollback(name, version, run_id)
            for name in data["pre_versions"]:
                leftover = store.table(name).child(f"{PARTITION}={run_date}", run_id)
                if leftover.exists():
                    leftover.delete()
            model_dir = store.root.child("model", run_id)
            if model_dir.exists():
                model_dir.delete()
        loc.delete()
        recovered.append(run_id)
    return recovered
