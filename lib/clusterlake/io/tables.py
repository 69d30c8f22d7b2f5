"""Output tables: staging a run's data, committing it per table, rolling back on failure.

A run writes its tables in two phases so that a failure leaves readers on the previous run:

1. **stage** (inside :func:`staging`): the run's journal ``_clusterlake/pending/<run_id>.json``
   (phase ``staging``: the tables it may stage, its model directory) is written first, then Spark
   writes every table's parquet files where readers do not see them yet (for Delta: files not yet
   in the Delta log; for parquet: a ``_staging`` directory that readers skip) and the job saves the
   run's model directory. This is the slow part; a failure here changes nothing visible and the
   staged files, the model directory and the journal are deleted.
2. **publish** (:func:`publish_run`): the journal is rewritten with every table's current version
   (phase ``publish``), then each table's ``run_date`` partition is replaced in one commit
   (centroids, assignments, metrics, ...), and the ``runs`` row is committed **last**. It records
   the Delta version of every table it belongs to, so a reader can read exactly that run with time
   travel. A failure during publish restores the tables committed so far (Delta ``RESTORE``) and
   deletes the staged files; the journal is removed once the run is committed.

   A table staged with ``append=True`` (an incremental job adding rows) is committed by adding its
   files to the table instead of replacing the ``run_date`` partition; a rollback removes exactly
   those files again.

A driver killed at any point leaves the journal (always replaced atomically, never torn), and the
next run's :func:`recover_interrupted` finishes the dead run before it starts: it deletes what a
run killed while staging wrote, and restores (delta-rs) the tables a run killed while publishing
committed.

Three stores implement this: :class:`DeltaRsStore` (Spark writes parquet, the ``deltalake``
package commits: works without Delta's Spark jars, used here and in CI), :class:`SparkDeltaStore`
(Spark's own Delta writer where its jars are on the classpath, e.g. Databricks) and
:class:`ParquetStore` (plain parquet, partition directories swapped by rename).

:meth:`TableStore.spark_read` reads the committed rows of given runs back as a Spark DataFrame
(e.g. to compare tonight's assignments with the previous run's).

Everything here runs on the driver; only Spark's write (and read) of the files is distributed.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from clusterlake.config import OutputSection
from clusterlake.errors import OutputError
from clusterlake.faults import pause_point
from clusterlake.io import contract
from clusterlake.io.fs import Location, is_temp_name, location
from clusterlake.io.model_artifact import latest_run_id, models_dir
from clusterlake.stages import spark_pass

log = logging.getLogger(__name__)

PARTITION = "run_date"
RUN_ID_KEY = "clusterlake.run_id"
RUN_TABLES = contract.TABLES
"""Every table a run (full or update) may stage and commit, ``runs`` last (the output contract's)."""
JOURNAL_VERSION = 2
"""Version 1 journals (no ``phase``) were written by publish_run only: they read as ``publish``."""
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # run ids and table names in paths
_RUN_ID = re.compile(r"^\d{8}-\d{8}T\d{6}-[0-9a-f]{8}$")  # run.scaffold.new_run_id's shape: journal names


def commit_metadata(tag: str) -> dict[str, str]:
    """What every commit of clusterlake records about the run that made it (``tag``: the run id,
    or ``rollback-of-<run id>``), readable by both writers' readers: ``clusterlake.run_id`` in
    the commit info (delta-rs' custom metadata) and Delta's ``userMetadata`` (what Spark's writer
    records and ``DESCRIBE HISTORY`` shows), a JSON object with the same key."""
    return {RUN_ID_KEY: tag, "userMetadata": json.dumps({RUN_ID_KEY: tag})}


def commit_run_id(info: dict) -> Optional[str]:
    """The run id a commit recorded (:func:`commit_metadata`; a commit info from delta-rs'
    ``history()``), whichever writer made it; None for a commit not made by clusterlake."""
    if info.get(RUN_ID_KEY):
        return str(info[RUN_ID_KEY])
    try:
        meta = json.loads(info.get("userMetadata") or "{}")
    except ValueError:
        return None
    return str(meta[RUN_ID_KEY]) if isinstance(meta, dict) and meta.get(RUN_ID_KEY) else None


@dataclass
class StagedTable:
    name: str
    table: Location
    staged: Location
    schema: Optional[pa.Schema] = None  # file schema + run_date, all nullable
    files: list[tuple[str, int, int, int]] = field(default_factory=list)  # relpath, size, mtime ms, rows
    df: object = None  # SparkDeltaStore writes at commit time
    append: bool = False  # commit adds the files instead of replacing the run_date partition

    @property
    def rows(self) -> int:
        return sum(f[3] for f in self.files)

    def check_rows(self, expected: int, what: str) -> None:
        """One row per validated row, or a RuntimeError (a lost or doubled partition is a bug, never
        committed). Skipped where the store stages lazily (Spark's Delta writer: no files yet)."""
        if self.files and self.rows != expected:
            raise RuntimeError(f"{self.name} has {self.rows} rows but {expected} {what}")


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
        # the run's journal state, kept by staging() and publish_run()
        self.model_dir: Optional[Location] = None  # the run's model directory (staging() sets it)
        self._in_staging = False  # inside staging(): it removes the journal after the model dir
        self._published = False  # the runs row is committed: nothing of the run may be discarded
        self._keep_leftovers = False  # a rollback failed: the next run's recovery needs everything

    def table(self, name: str) -> Location:
        return self.root.child(name)

    # -- to implement
    def stage(self, name: str, df, files: Optional[int] = None, append: bool = False) -> StagedTable:
        """Write ``df`` where readers do not see it yet. ``files``: coalesce to that many files.
        ``append``: its commit adds the rows to the table (nothing is removed) instead of
        replacing the store's ``run_date`` partition."""
        raise NotImplementedError

    def stage_files(self, name: str, write: Callable[[Location], object], append: bool = False):
        """Stage files that ``write(folder)`` writes itself into ``folder`` (parquet files named
        ``part-*.parquet``, e.g. by the engine's tasks), where readers do not see them yet, as
        :meth:`stage` does for a DataFrame. Returns (the StagedTable, what ``write`` returned)."""
        st = self._new_staged(name, append)
        result = write(st.staged)
        self._collect_files(st)
        pause_point("write.staged", table=name, run_id=self.run_id, path=st.staged.uri)
        return st, result

    def _new_staged(self, name: str, append: bool) -> StagedTable:
        """Where this run's files of table ``name`` are staged."""
        raise NotImplementedError

    def stage_rows(self, name: str, rows: list, ddl: str, append: bool = False) -> StagedTable:
        """Stage a small table of contract rows (:mod:`clusterlake.io.contract`, tuples in the
        order of ``ddl``) as one parquet file written by the driver: the types of ``ddl`` as
        Spark would write them, without a Spark job (half a second per table saved)."""
        names = _ddl_names(ddl)  # Spark's DDL parser: once, not per row (1 s on 700 profile rows)
        table = pa.Table.from_pylist([dict(zip(names, r)) for r in rows], schema=arrow_schema(ddl))

        def write(folder: Location) -> None:
            folder.fs.create_dir(folder.path, recursive=True)
            pq.write_table(table, folder.child(f"part-00000-{self.run_id}.parquet").path, filesystem=folder.fs)

        with spark_pass(f"write {name}"):
            return self.stage_files(name, write, append)[0]

    def current_version(self, name: str) -> Optional[int]:
        raise NotImplementedError

    def commit(self, st: StagedTable) -> Optional[int]:
        raise NotImplementedError

    def transaction_version(self, name: str, app_id: str) -> Optional[int]:
        """The last version an idempotent writer ``app_id`` committed to table ``name`` (Delta's
        ``txn`` action, written by ``commit(st, app_transaction=(app_id, version))``), or None.
        Only the Delta stores record it; see :mod:`clusterlake.stream`."""
        return None

    def rollback(self, name: str, version: Optional[int], run_id: Optional[str] = None) -> None:
        """Put table ``name`` back to ``version``; ``None`` means it did not exist before run
        ``run_id`` (default: this store's run), and is deleted only if that run created it."""
        raise NotImplementedError

    def finish(self) -> None:
        """Called once after the whole run is published (cleanup of replaced data)."""

    def last_commit_run_id(self, name: str) -> Optional[str]:
        """The run id recorded with the latest commit of table ``name``; None when the table does
        not exist or the store keeps no commit log."""
        return None

    def committed_by(self, name: str, run_id: str) -> bool:
        """Whether run ``run_id`` made the latest commit of table ``name`` (recovery asks this
        about a dead run whose journal is damaged)."""
        return self.last_commit_run_id(name) == run_id

    def discard(self, st: StagedTable) -> None:
        try:
            if st.staged.exists():
                st.staged.delete()
        except Exception as exc:  # best effort: never hide the original error
            log.warning("could not delete staged files %s: %s", st.staged.uri, exc)

    def read(self, name: str, version: Optional[int] = None) -> pa.Table:
        raise NotImplementedError

    def spark_read(self, name: str, run_ids: Iterable[str], run_dates: Optional[Iterable[str]] = None,
                   columns: Optional[list[str]] = None):
        """The rows of table ``name`` written by the runs ``run_ids``, as a (lazy, distributed)
        Spark DataFrame, from the table's current committed state: never staged files, never files
        a commit replaced. ``None`` when the table does not exist.

        ``run_dates`` ('YYYY-MM-DD' strings) restricts the read to those ``run_date`` partitions
        (only their files are read). ``columns`` selects columns (``run_id`` and ``run_date``
        included); by default every column of the table, ``run_date`` (a date) last. When nothing
        matches the result is an empty DataFrame with the same columns.
        """
        raise NotImplementedError

    # -- shared
    @staticmethod
    def _read_args(run_ids, run_dates) -> tuple[list[str], Optional[list[str]]]:
        ids = [run_ids] if isinstance(run_ids, str) else [str(r) for r in run_ids]
        if run_dates is None:
            return ids, None
        dates = [run_dates] if isinstance(run_dates, str) else list(run_dates)
        try:
            return ids, [_dt.date.fromisoformat(str(d)).isoformat() for d in dates]
        except ValueError:
            raise OutputError(f"run_dates must be 'YYYY-MM-DD' strings, got {dates}") from None

    @staticmethod
    def _select(df, name: str, ids: list[str], dates: Optional[list[str]], columns: Optional[list[str]]):
        """Filter a table's DataFrame to the runs (and dates) asked for, then select ``columns``."""
        from pyspark.sql import functions as F

        have = df.columns
        if "run_id" not in have:
            raise OutputError(f"table {name} has no run_id column (columns: {have})")
        if columns is not None:
            unknown = [c for c in columns if c not in have]
            if unknown:
                raise OutputError(f"table {name} has no column(s) {unknown}; it has {have}")
        df = df.where(F.col("run_id").isin(ids)) if ids else df.where(F.lit(False))
        if dates is not None:
            df = df.where(F.col(PARTITION).isin([_dt.date.fromisoformat(d) for d in dates])) if dates else df.where(F.lit(False))
        if columns is None:  # the same order from every store: run_date last
            columns = [c for c in have if c != PARTITION] + [PARTITION]
        from clusterlake.io.columns import col

        return df.select(*[col(c) for c in columns])

    def _spark_write_parquet(self, name: str, df, dest: Location, files: Optional[int]) -> None:
        if files is not None:
            df = df.coalesce(files)
        # Delta's timestamp is microseconds since the epoch in UTC; Spark's default INT96 is not
        self.spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        with spark_pass(f"write {name}"):
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


def arrow_schema(ddl: str) -> pa.Schema:
    """The Arrow schema Spark writes for a DDL string (Spark's own parser, on the driver's JVM)."""
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import _parse_datatype_string

    return to_arrow_schema(_parse_datatype_string(ddl))


def _ddl_names(ddl: str) -> list[str]:
    return arrow_schema(ddl).names


class DeltaRsStore(TableStore):
    """Spark writes the parquet files into the table directory; delta-rs commits them.

    Files of a run land in ``<table>/run_date=<date>/<run_id>/`` and become visible only when the
    commit (``mode=overwrite`` with a ``run_date`` partition filter: one atomic replace of that
    date) adds them to the Delta log. An append (``stage(..., append=True)``) is one ``append``
    commit that only adds the files; if it brings new columns they are added first by an
    ``ADD COLUMNS`` commit (delta-rs ignores the schema of an ``append`` transaction), so readers
    may briefly see the new, still empty, columns before the rows. Both commits carry the run id
    and a rollback (``RESTORE``) undoes both.
    """

    kind = "delta-rs"

    def _new_staged(self, name: str, append: bool) -> StagedTable:
        t = self.table(name)
        return StagedTable(name, t, t.child(f"{PARTITION}={self.run_date}", self.run_id), append=append)

    def stage(self, name: str, df, files: Optional[int] = None, append: bool = False) -> StagedTable:
        st = self._new_staged(name, append)
        self._spark_write_parquet(name, df, st.staged, files)
        self._collect_files(st)
        pause_point("write.staged", table=name, run_id=self.run_id, path=st.staged.uri)
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

    def commit(self, st: StagedTable, app_transaction: Optional[tuple[str, int]] = None) -> int:
        """Commit the staged files. ``app_transaction=(app_id, version)``: record Delta's
        idempotent-writer ``txn`` action in the same commit as the files (appends only: a table
        staged with ``append=True``), so :meth:`transaction_version` tells whether this
        ``version`` of ``app_id`` has landed (a micro-batch replayed after a crash is skipped)."""
        from deltalake import Schema
        from deltalake.transaction import (AddAction, CommitProperties, Transaction,
                                           create_table_with_add_actions)

        adds = [
            AddAction(rel, size, {PARTITION: self.run_date}, mtime, True, json.dumps({"numRecords": rows}))
            for rel, size, mtime, rows in st.files
        ]
        props = CommitProperties(custom_metadata=commit_metadata(self.run_id))
        # the commit that adds the files: with the writer's txn action, if any (never the
        # ADD COLUMNS commit before it, or a crash between the two would skip the rows)
        data_props = props
        if app_transaction is not None:
            if not st.append:
                raise ValueError("app_transaction is only supported for append commits")
            app_id, txn_version = app_transaction
            data_props = CommitProperties(custom_metadata=commit_metadata(self.run_id),
                                          app_transactions=[Transaction(str(app_id), int(txn_version))])
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
                commit_properties=data_props,
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
            if st.append:
                new = [f for f in schema if f.name not in current.names]
                if new:
                    # an "append" transaction does not update the table's schema (delta-rs 1.x
                    # keeps the old one and silently hides the new columns): add them first
                    log.info("adding columns %s to %s", [f.name for f in new], st.table.uri)
                    dt.alter.add_columns(Schema.from_arrow(pa.schema(new)).fields, commit_properties=props)
                    dt.update_incremental()
                dt.create_write_transaction(adds, "append", schema, partition_by=[PARTITION],
                                            commit_properties=data_props)
            else:
                dt.create_write_transaction(
                    adds, "overwrite", schema, partition_by=[PARTITION],
                    partition_filters=[(PARTITION, "=", self.run_date)], commit_properties=props,
                )
            dt.update_incremental()
        version = dt.version()
        log.info("committed %s: %s %d rows in %d files, Delta version %d", st.name,
                 "appended" if st.append else "replaced run_date partition with", st.rows, len(st.files), version)
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
                if commit_run_id(dt.history()[-1]) == owner:
                    log.warning("rolling back %s: deleting the table run %s created", name, owner)
                    t.delete()
                else:
                    log.error("not deleting %s: it was not created by run %s", t.uri, owner)
            return
        dt = self._dt(name)
        if dt is not None and dt.version() != version:
            log.warning("rolling back %s from version %d to %d", name, dt.version(), version)
            self._restore(name, dt, int(version))

    def _restore(self, name: str, dt, version: int) -> None:
        """Restore table ``name`` (its delta-rs handle ``dt``) to ``version``, tagged as this run's rollback."""
        dt.restore(version, commit_properties=_props(commit_metadata(f"rollback-of-{self.run_id}")))

    def transaction_version(self, name: str, app_id: str) -> Optional[int]:
        dt = self._dt(name)
        return None if dt is None else dt.transaction_version(app_id)

    def last_commit_run_id(self, name: str) -> Optional[str]:
        dt = self._dt(name)
        if dt is None:
            return None
        return commit_run_id(dt.history(1)[0])

    def committed_by(self, name: str, run_id: str) -> bool:
        """The run made the latest commit of ``name``, or the table's current files include the
        run's (``run_date=<date>/<run_id>/``: a commit of that run that later runs of other dates
        committed on top of)."""
        if super().committed_by(name, run_id):
            return True
        dt = self._dt(name)
        return dt is not None and any(f"/{run_id}/" in uri for uri in dt.file_uris())

    def discard_unreferenced(self, name: str, since_ms: int) -> list[str]:
        """Delete the data files directly in the table's ``run_date=<date>/`` directories (Spark's
        Delta writer's layout) written at or after ``since_ms`` that the current snapshot does not
        reference: a commit of Spark's writer that failed or was killed before it landed (one run
        at a time holds the output path, so they are that run's). Their ``.crc`` files go too;
        files without a modification time are kept. Returns the URIs deleted."""
        t = self.table(name)
        dt = self._dt(name)
        if not t.is_dir():
            return []
        base = t.uri.rstrip("/")
        referenced = {_spark_path(u, dt.table_uri, base)[len(base) + 1:] for u in dt.file_uris()} if dt else set()
        root = t.path.rstrip("/")
        removed = []
        for info in t.fs.get_file_info(pafs.FileSelector(t.path, recursive=True)):
            rel = info.path[len(root) + 1:]
            parts = rel.split("/")
            if (len(parts) != 2 or not parts[0].startswith(f"{PARTITION}=") or not parts[1].startswith("part-")
                    or info.mtime_ns is None or info.mtime_ns // 1_000_000 < since_ms or rel in referenced):
                continue
            t.child(*parts).delete()
            t.child(parts[0], f".{parts[1]}.crc").delete()
            removed.append(t.child(*parts).uri)
            log.warning("%s: deleted %s (written by a commit that never landed)", name, removed[-1])
        return removed

    def version_before(self, name: str, run_id: str) -> Optional[int]:
        """The version of table ``name`` before the latest run of commits by ``run_id`` (a run
        makes one or two per table); None when that run created the table (the current version
        when the latest commit is not that run's)."""
        dt = self._dt(name)
        first = None
        for h in dt.history(10) if dt is not None else []:  # newest first
            if commit_run_id(h) != run_id:
                break
            first = h["version"]
        if first is None:
            return dt.version() if dt is not None else None
        return first - 1 if first > 0 else None

    def read(self, name: str, version: Optional[int] = None) -> pa.Table:
        dt = self._dt(name, version)
        if dt is None:
            raise OutputError(f"no Delta table {name} under {self.root.uri}")
        return dt.to_pyarrow_table()

    def spark_read(self, name: str, run_ids: Iterable[str], run_dates: Optional[Iterable[str]] = None,
                   columns: Optional[list[str]] = None):
        """See :meth:`TableStore.spark_read`. delta-rs lists the current snapshot's files (pruned
        to ``run_dates``) and Spark reads exactly those, with the table's schema (older files
        lacking newer columns read as nulls); ``run_date`` comes from the partition directory.
        The file list is fixed when this is called: a later commit does not change the result."""
        from pyspark.sql.pandas.types import from_arrow_schema

        ids, dates = self._read_args(run_ids, run_dates)
        dt = self._dt(name)
        if dt is None:
            return None
        if list(dt.metadata().partition_columns) != [PARTITION]:
            raise OutputError(f"Delta table {self.table(name).uri} is partitioned by "
                              f"{dt.metadata().partition_columns}, expected ['{PARTITION}']")
        schema = from_arrow_schema(pa.schema(dt.schema().to_arrow()))
        if dates is not None and not dates:
            uris = []
        else:
            uris = dt.file_uris(file_pruning_predicate=[(PARTITION, "in", dates)] if dates is not None else None)
        base = self.table(name).uri.rstrip("/")
        paths = [_spark_path(u, dt.table_uri, base) for u in uris]
        bad = [p for p in paths if not p[len(base) + 1:].startswith(f"{PARTITION}=")]
        if bad:
            raise OutputError(f"Delta table {base} has files outside its {PARTITION}=<date>/ directories "
                              f"(e.g. {bad[0]}); it was not written by clusterlake")
        log.info("reading %s through delta-rs (version %d): %d files", name, dt.version(), len(paths))
        if paths:
            # basePath: Spark takes run_date from the directory names (typed by the schema)
            df = self.spark.read.schema(schema).option("basePath", base).parquet(*paths)
        else:
            df = self.spark.createDataFrame([], schema)
        return self._select(df, name, ids, dates, columns)


def _spark_path(uri: str, table_uri: str, base: str) -> str:
    """A file URI from delta-rs as the path Spark should read: under the table root it is
    rebuilt on ``base`` (the table's URI as Spark knows it, e.g. ``s3a://`` where delta-rs says
    ``s3://``, or a plain local path where it says ``file://``)."""
    def norm(u: str) -> str:
        u = u[len("file://"):] if u.startswith("file://") else u
        return u.split("://", 1)[1] if "://" in u else u

    root = norm(table_uri).rstrip("/") + "/"
    path = norm(uri)
    if path.startswith(root):
        return f"{base}/{path[len(root):]}"
    return uri[len("file://"):] if uri.startswith("file://") else uri


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


class SparkDeltaStore(DeltaRsStore):
    """Spark's own Delta writer and reader (delta-spark's jars on the classpath: ``make setup``
    fetches them for local sessions; Databricks and delta-spark clusters have them).

    :meth:`stage` is lazy: the DataFrame is written at commit, by Spark's Delta writer, with
    ``replaceWhere`` on the run date (one atomic replace of that date per table) or
    ``mode("append")``. :meth:`stage_files` keeps files written by others (the engine's tasks)
    under ``<table>/_staging/<run_id>/``, which Delta ignores, and the commit has Spark's writer
    copy them into the table. Every commit carries :func:`commit_metadata` (Delta's
    ``userMetadata``); a rollback is ``RESTORE TABLE ... TO VERSION AS OF``, tagged the same way.
    The log is read (versions, the commits' run ids, transactions) through delta-rs, as
    :class:`DeltaRsStore` does, without a Spark job: the engine's tasks may hold every task slot.
    Schema rules are the same as delta-rs' (:meth:`DeltaRsStore._evolve`): new columns are added
    (``mergeSchema``), an existing column never changes type.
    """

    kind = "spark-delta"

    def stage(self, name: str, df, files: Optional[int] = None, append: bool = False) -> StagedTable:
        from pyspark.sql import functions as F
        from pyspark.sql.pandas.types import to_arrow_schema

        t = self.table(name)
        if files is not None:
            df = df.coalesce(files)
        df = df.withColumn(PARTITION, F.lit(self.run_date).cast("date"))
        schema = _nullable(to_arrow_schema(df.schema))
        pause_point("write.staged", table=name, run_id=self.run_id, path=t.uri)  # (lazy: nothing written yet)
        return StagedTable(name, t, t, schema=schema, df=df, append=append)

    def _new_staged(self, name: str, append: bool) -> StagedTable:
        t = self.table(name)
        return StagedTable(name, t, t.child("_staging", self.run_id), append=append)

    def stage_files(self, name: str, write: Callable[[Location], object], append: bool = False):
        """The files are written under ``<table>/_staging/<run_id>/``; the commit has Spark's Delta
        writer read them (a DataFrame made then: reading their schema is a Spark job, and the
        engine's tasks that wrote them may still hold every task slot now)."""
        from pyspark.sql import functions as F

        st, result = super().stage_files(name, write, append)
        folder = st.staged
        st.df = lambda: self.spark.read.parquet(folder.uri).withColumn(PARTITION, F.lit(self.run_date).cast("date"))
        return st, result

    def commit(self, st: StagedTable, app_transaction: Optional[tuple[str, int]] = None) -> Optional[int]:
        """``app_transaction=(app_id, version)``: Delta's idempotent writes (the ``txnAppId`` /
        ``txnVersion`` writer options, as documented for ``foreachBatch``): Delta records the pair
        in the commit and skips the write when ``app_id`` has committed ``version`` already."""
        dt = self._dt(st.name)
        log_dir = st.table.child("_delta_log")
        if dt is None and log_dir.exists():
            if any(i.base_name.endswith(".json") for i in log_dir.files(recursive=False)):
                raise OutputError(f"{st.table.uri} has a Delta log delta-rs cannot read (newer Delta features?); "
                                  "write to a new output.path")
            log.warning("deleting %s: a Delta log without a commit (a first commit that died)", log_dir.uri)
            log_dir.delete()
        if dt is not None:
            if dt.metadata().partition_columns != [PARTITION]:
                raise OutputError(
                    f"Delta table {st.table.uri} is partitioned by {dt.metadata().partition_columns}, "
                    f"expected ['{PARTITION}']; it was not written by clusterlake")
            self._evolve(st, pa.schema(dt.schema().to_arrow()))
        elif st.table.exists() and any(i.base_name not in ("", "_staging") for i in st.table.files(recursive=False)):
            raise OutputError(f"{st.table.uri} exists and is not a Delta table; point output.path elsewhere "
                              "or set output.format: parquet")
        df = st.df() if callable(st.df) else st.df
        w = (df.write.format("delta").partitionBy(PARTITION).option("mergeSchema", "true")
             .option("userMetadata", commit_metadata(self.run_id)["userMetadata"]))
        if app_transaction is not None:
            if not st.append:
                raise ValueError("app_transaction is only supported for append commits")
            w = w.option("txnAppId", str(app_transaction[0])).option("txnVersion", int(app_transaction[1]))
        if st.append:
            w = w.mode("append")
        else:
            w = w.mode("overwrite").option("replaceWhere", f"{PARTITION} = DATE'{self.run_date}'")
        # Delta's timestamp is microseconds since the epoch in UTC; Spark's default INT96 is not
        self.spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        before, started_ms = (dt.version() if dt is not None else None), int(time.time() * 1000)
        try:
            with spark_pass(f"commit {st.name}"):
                w.save(st.table.uri)
        except BaseException:
            if self.current_version(st.name) == before:  # it did not land: its files are nobody's
                self.discard_unreferenced(st.name, started_ms)
            raise
        self.discard(st)  # the files stage_files wrote: Delta's writer made its own copies
        version = self.current_version(st.name)
        log.info("committed %s with Spark's Delta writer: %s %s rows, Delta version %s", st.name,
                 "appended" if st.append else "replaced run_date partition with",
                 st.rows if st.files else "the", version)
        return version

    def _restore(self, name: str, dt, version: int) -> None:
        """``RESTORE`` through Delta's API (no SQL extension needed), tagged as this run's
        rollback; then the files the undone commits added, unreferenced now, are deleted (no
        VACUUM needed to keep a failed run's rows off the disk)."""
        from delta.tables import DeltaTable as SparkDeltaTable

        added = set(dt.file_uris()) - set(self._dt(name, version).file_uris())
        key = "spark.databricks.delta.commitInfo.userMetadata"  # tags the RESTORE commit
        theirs = self.spark.conf.get(key, None)
        self.spark.conf.set(key, commit_metadata(f"rollback-of-{self.run_id}")["userMetadata"])
        try:
            SparkDeltaTable.forPath(self.spark, self.table(name).uri).restoreToVersion(version)
        finally:
            self.spark.conf.unset(key) if theirs is None else self.spark.conf.set(key, theirs)
        self._delete_files(name, added, dt.table_uri)

    def _delete_files(self, name: str, uris: set[str], table_uri: str) -> None:
        """Delete data files of table ``name`` (delta-rs URIs; ``table_uri`` as delta-rs names the
        table) and the partition directories that leaves empty; best effort, each logged."""
        t = self.table(name)
        base = t.uri.rstrip("/")
        for uri in sorted(uris):
            rel = _spark_path(uri, table_uri, base)[len(base) + 1:]
            f = t.child(*rel.split("/"))
            folder, base_name = rel.rsplit("/", 1) if "/" in rel else ("", rel)
            crc = t.child(*(folder.split("/") if folder else []), f".{base_name}.crc")  # Hadoop's checksum
            try:
                f.delete()
                crc.delete()
                log.warning("rollback of %s: deleted %s", name, f.uri)
                parent = t.child(*folder.split("/")) if folder else None
                if parent is not None and parent.exists() and not parent.files(recursive=True):
                    parent.delete()
            except Exception as exc:  # noqa: BLE001 (an orphan file is harmless: never referenced)
                log.warning("rollback of %s: could not delete %s: %s", name, f.uri, exc)

    def discard(self, st: StagedTable) -> None:
        if st.staged.uri != st.table.uri:  # stage_files' folder (stage() writes nothing before commit)
            TableStore.discard(self, st)
            parent = st.table.child("_staging")
            try:
                if parent.exists() and not parent.files(recursive=True):
                    parent.delete()
            except Exception as exc:  # best effort
                log.warning("could not tidy %s: %s", parent.uri, exc)

    def spark_read(self, name: str, run_ids: Iterable[str], run_dates: Optional[Iterable[str]] = None,
                   columns: Optional[list[str]] = None):
        """See :meth:`TableStore.spark_read`: Spark's Delta reader at the version current when
        this is called (``versionAsOf``: a later commit does not change the result)."""
        ids, dates = self._read_args(run_ids, run_dates)
        version = self.current_version(name)
        if version is None:
            return None
        df = self.spark.read.format("delta").option("versionAsOf", version).load(self.table(name).uri)
        return self._select(df, name, ids, dates, columns)


class ParquetStore(TableStore):
    """Plain parquet tables ``<table>/run_date=<date>/``.

    A run's files are staged under ``<table>/_staging/<run_id>/`` (readers skip ``_`` directories)
    and swapped in by renames at commit; the replaced partition waits in ``_trash`` until the whole
    run is published, so a rollback can put it back. There is no table log: between two tables'
    swaps a reader that does not go through the ``runs`` table can see a mix, and on object
    stores a directory rename is a copy. Prefer Delta (the default).

    An append (``stage(..., append=True)``) moves the staged files one by one into the
    ``run_date=<date>`` directory (created if missing; a name already there gets the run id as
    prefix) and remembers them, so a rollback deletes exactly those files (and the directory if
    this run created it). Unlike a Delta append it is **not atomic**: a reader listing the
    partition while the files move may see part of the appended rows. A driver killed during
    publish leaves them there (no automatic recovery for parquet).
    """

    kind = "parquet"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._swapped: dict[str, bool] = {}
        # appended tables: (partition dir created by this run, the files moved into it)
        self._appended: dict[str, tuple[bool, list[Location]]] = {}

    def _part(self, name: str) -> Location:
        return self.table(name).child(f"{PARTITION}={self.run_date}")

    def _trash(self, name: str) -> Location:
        return self.table(name).child("_trash", self.run_id, f"{PARTITION}={self.run_date}")

    def _new_staged(self, name: str, append: bool) -> StagedTable:
        t = self.table(name)
        return StagedTable(name, t, t.child("_staging", self.run_id, f"{PARTITION}={self.run_date}"), append=append)

    def stage(self, name: str, df, files: Optional[int] = None, append: bool = False) -> StagedTable:
        st = self._new_staged(name, append)
        self._spark_write_parquet(name, df, st.staged, files)
        self._collect_files(st)
        pause_point("write.staged", table=name, run_id=self.run_id, path=st.staged.uri)
        return st

    def current_version(self, name: str) -> Optional[int]:
        return None

    def commit(self, st: StagedTable) -> None:
        if st.append:
            return self._commit_append(st)
        part, trash = self._part(st.name), self._trash(st.name)
        had = part.exists()
        if had:
            part.move_to(trash)
        self._swapped[st.name] = had
        st.staged.move_to(part)
        log.info("committed %s: %d rows in %d files (parquet partition swap)", st.name, st.rows, len(st.files))
        return None

    def _commit_append(self, st: StagedTable) -> None:
        part = self._part(st.name)
        created = not part.exists()
        added: list[Location] = []
        self._appended[st.name] = (created, added)
        part.fs.create_dir(part.path, recursive=True)
        table_root = st.table.path.rstrip("/")
        for rel, *_ in st.files:
            src = Location(st.table.fs, f"{table_root}/{rel}", f"{st.table.uri.rstrip('/')}/{rel}")
            base = rel.rsplit("/", 1)[-1]
            dest = part.child(base)
            if dest.exists():
                dest = part.child(f"{self.run_id}-{base}")
                if dest.exists():
                    raise OutputError(f"cannot append {src.uri}: {dest.uri} exists already")
            added.append(dest)  # before the move: a move that fails halfway is undone too
            src.move_to(dest)
        log.info("committed %s: appended %d rows in %d files to %s", st.name, st.rows, len(added), part.uri)
        return None

    def rollback(self, name: str, version: Optional[int], run_id: Optional[str] = None) -> None:
        if name in self._appended:
            created, added = self._appended[name]
            for loc in added:
                loc.delete()
            part = self._part(name)
            if created and part.exists() and not part.files(recursive=True):
                part.delete()
            return
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
        for name in {**self._swapped, **self._appended}:
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

    def committed_by(self, name: str, run_id: str) -> bool:
        """There is no log to ask: true when the table shows a commit of ``run_id`` on disk, i.e.
        the partition it replaced waits in ``_trash/<run_id>/``, or its ``_staging/<run_id>/`` is
        there but emptied (no ``part-`` file, no Spark ``_temporary`` dir: the commit moved the
        files into the partition). An append killed halfway, with some files still staged, is
        not seen."""
        t = self.table(name)
        if t.child("_trash", run_id).exists():
            return True
        staged = t.child("_staging", run_id)
        if not staged.is_dir():
            return False
        infos = staged.fs.get_file_info(pafs.FileSelector(staged.path, recursive=True))
        return not any(i.base_name == "_temporary" or i.base_name.startswith("part-") for i in infos)

    def read(self, name: str, version: Optional[int] = None) -> pa.Table:
        import pyarrow.dataset as ds

        t = self.table(name)
        return ds.dataset(t.path, filesystem=t.fs, format="parquet", partitioning="hive").to_table()

    def spark_read(self, name: str, run_ids: Iterable[str], run_dates: Optional[Iterable[str]] = None,
                   columns: Optional[list[str]] = None):
        """See :meth:`TableStore.spark_read`. Spark reads the committed partition directories
        (``_staging``/``_trash`` are skipped), only those of ``run_dates`` when given, merging
        the files' schemas. Spark lists the files when this is called; a partition replaced before
        the DataFrame is evaluated fails the read (its files moved away)."""
        from pyspark.sql import functions as F

        ids, dates = self._read_args(run_ids, run_dates)
        t = self.table(name)
        parts = sorted(
            i.base_name for i in (t.fs.get_file_info(pafs.FileSelector(t.path)) if t.is_dir() else [])
            if i.type == pafs.FileType.Directory and i.base_name.startswith(f"{PARTITION}=")
        )
        if not parts:
            return None
        if dates is None:
            paths = [t.uri]
        else:
            paths = [t.child(f"{PARTITION}={d}").uri for d in dates if f"{PARTITION}={d}" in parts]
        reader = self.spark.read.option("basePath", t.uri).option("mergeSchema", "true")
        if paths:
            df = reader.parquet(*paths)
        else:  # nothing of those dates: no rows, the columns of the latest partition
            df = reader.parquet(t.child(parts[-1]).uri).where(F.lit(False))
        df = df.withColumn(PARTITION, F.col(PARTITION).cast("date"))
        return self._select(df, name, ids, dates, columns)


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
    """The run's journal, ``<output>/_clusterlake/pending/<run_id>.json``: written by
    :func:`staging` before anything of the run is, rewritten by :func:`publish_run`, removed when
    the run is committed or cleaned up. Found by a later run, it belongs to a dead run (or to one
    whose rollback failed) and :func:`recover_interrupted` finishes the job."""
    return store.root.child("_clusterlake", "pending", f"{store.run_id}.json")


def _write_journal(store: TableStore, phase: str, pre_versions: Optional[dict] = None) -> Location:
    """Write (atomically: old or new content, never torn) the run's journal in ``phase``."""
    data = {"version": JOURNAL_VERSION, "phase": phase, "run_id": store.run_id, "run_date": store.run_date,
            "store": store.kind, "tables": list(RUN_TABLES),
            "model_dir": store.model_dir.uri if store.model_dir is not None else None}
    if pre_versions is not None:
        data["pre_versions"] = pre_versions
    loc = journal_location(store)
    loc.write_bytes_atomic(json.dumps(data, indent=1).encode())
    return loc


@contextmanager
def staging(store: TableStore, model_dir: Location) -> Iterator[list[StagedTable]]:
    """The whole life of a run's output under one journal: stage, save the model, publish.

    Writes the run's journal (phase ``staging``: run id, run date, store kind, :data:`RUN_TABLES`
    and ``model_dir``) before anything of the run is written, then yields the list the caller
    appends each :class:`StagedTable` to. Call :func:`publish_run` inside the block.

    On any exception inside (or a block left without publishing) the run's staged files, Spark's
    ``_temporary`` directories of a write that failed halfway, ``model_dir`` and finally the
    journal are deleted, and the exception propagates. Exception: when publish_run could not roll
    back a table, everything (journal, staged files, model) stays for the next run's
    :func:`recover_interrupted`. A driver killed inside the block leaves the journal, and the
    next run deletes the same things.

    Parameters
    ----------
    store : TableStore
        The run's store (its run id and date).
    model_dir : Location
        The run's model directory, ``<output>/model/<run_id>``.

    Yields
    ------
    list of StagedTable
        Append every staged data table to it, in commit order.
    """
    staged: list[StagedTable] = []
    store.model_dir = model_dir
    _write_journal(store, "staging")
    store._in_staging = True
    try:
        yield staged
    except BaseException:
        store._in_staging = False
        _discard_run(store, staged)
        raise
    store._in_staging = False
    if not store._published:
        log.warning("run %s left its staging block without publishing: deleting what it staged", store.run_id)
        _discard_run(store, staged)


def _discard_run(store: TableStore, staged: list[StagedTable]) -> None:
    """Delete what this (failed, unpublished) run wrote, the journal last. Best effort: never
    raises; what is left the journal names for the next run's recovery."""
    journal = journal_location(store)
    if store._published:  # a failure after the runs commit: the staged files are the committed data
        log.error("run %s is committed; keeping its files and model directory", store.run_id)
        return
    if store._keep_leftovers:
        log.error("keeping the journal %s, the staged files and the model directory of run %s for the "
                  "next run's recovery", journal.uri, store.run_id)
        return
    for st in staged:
        store.discard(st)
    try:
        _discard_leftovers(store, store.run_id, store.run_date, RUN_TABLES, store.model_dir, logging.INFO)
        journal.delete()
    except Exception as exc:  # never hide the original error
        log.warning("could not delete everything run %s wrote (%s); the next run's recovery finishes it "
                    "(journal %s)", store.run_id, exc, journal.uri)


def publish_run(
    store: TableStore,
    staged: list[StagedTable],
    stage_runs: Callable[[dict[str, Optional[int]]], StagedTable],
    after_commit: Optional[Callable[[], None]] = None,
    guard: Optional[Callable[[], None]] = None,
) -> dict[str, Optional[int]]:
    """Commit the staged tables, then the ``runs`` row, all-or-nothing for readers of ``runs``.

    The journal is first rewritten (atomically) with every table's current version (phase
    ``publish``), so that a run killed from here on is rolled back by the next one; it is removed
    once the ``runs`` row is committed. On a failure the tables committed so far are restored and
    the staged files deleted; if a restore fails, the journal and the files stay for the next
    run's :func:`recover_interrupted`. Inside :func:`staging`, that block removes the journal
    after the model directory; called on its own, publish_run removes it.

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
    journal = _write_journal(store, "publish", pre)
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
        _roll_back(store, committed, pre, staged + ([runs_st] if runs_st else []), journal)
        raise
    store._published = True
    _after_publish(store, journal, after_commit)
    return versions


def _after_publish(store: TableStore, journal: Location, after_commit: Optional[Callable[[], None]]) -> None:
    """The run is committed: run ``after_commit`` (``model/latest`` moves), clean up, and remove
    the journal last, so a driver killed in between leaves a journal whose complete run the next
    start recognises. Never raises (a caller would take the exception for a failed run and discard
    committed files)."""
    for what, step in (("the post-commit step", after_commit), ("cleaning up replaced data", store.finish),
                       ("removing the journal", journal.delete)):
        if step is None:
            continue
        try:
            step()
        except Exception as exc:
            log.error("run %s is committed but %s failed: %s", store.run_id, what, exc)


def _roll_back(store: TableStore, committed: list[str], pre: dict, staged: list[StagedTable],
               journal: Location) -> None:
    """Restore the tables a failed publish committed (newest first), then delete its staged files
    and (outside :func:`staging`) the journal; if a restore fails, keep both for the next run."""
    log.error("publishing run %s failed; restoring %s to their previous versions", store.run_id, committed or "nothing")
    restored = True
    for name in reversed(committed):
        try:
            store.rollback(name, pre[name])
        except Exception as err:  # keep going: restore as much as we can
            restored = False
            log.error("could not roll back table %s: %s", name, err)
    if not restored:  # the next run's recover_interrupted() tries again; its files may still be referenced
        store._keep_leftovers = True
        log.error("keeping the journal %s and the staged files of run %s", journal.uri, store.run_id)
        return
    for st in staged:
        store.discard(st)
    if not store._in_staging:
        journal.delete()


# ----------------------------------------------------------------------------------------------
# recovering from a dead run


@dataclass
class _Journal:
    loc: Location
    run_id: str  # from the file name
    data: Optional[dict]  # None: damaged
    problem: str = ""  # what is wrong with a damaged one
    committed: list[str] = field(default_factory=list)  # damaged: tables whose latest commit is the run's


def recover_interrupted(store: TableStore) -> list[str]:
    """Finish off the runs whose journal is still in ``_clusterlake/pending/``: their driver died
    (or, for a publish, a rollback failed). Runs at the start of every job, holding the run lock
    and before anything is written, so every journal found belongs to a dead run.

    * phase ``staging`` (any store): nothing was committed. Its staged directories
      (``<table>/run_date=<date>/<run_id>/``, ``<table>/_staging/<run_id>/``, with Spark's
      ``_temporary`` inside), the partition and table directories they leave empty, and its model
      directory are deleted. If its ``runs`` row is committed after all, it is complete: only the
      journal goes.
    * phase ``publish``: if the ``runs`` row was committed the run is complete and only the
      journal is removed. Otherwise (delta-rs) every table whose latest commit belongs to that run
      is restored to the version the journal recorded, and the run's leftovers are deleted as
      above. Other stores cannot be restored automatically: a warning names the run.
    * damaged (empty, not JSON, not a journal's fields): the run id is the file name. If no
      table's latest commit belongs to that run, it committed nothing: its leftovers are deleted
      as above (every date searched) with a warning. If its ``runs`` row is committed it is
      complete. Otherwise :class:`~clusterlake.errors.OutputError` names the journal, the tables
      that run committed and how to restore them, before anything is changed.

    Every journal found is removed once handled; every path deleted is logged at WARNING.
    Returns the run ids of the journals handled.
    """
    pending = store.root.child("_clusterlake", "pending")
    if not pending.is_dir():
        return []
    infos = sorted(pending.files(recursive=False), key=lambda i: i.base_name)
    journals = [_read_journal(pending.child(i.base_name)) for i in infos
                if i.base_name.endswith(".json") and not is_temp_name(i.base_name)]
    for j in journals:  # a damaged journal of a run that committed tables stops the job untouched
        if j.data is None:
            _check_damaged(store, j)
    for i in infos:
        if is_temp_name(i.base_name):
            log.warning("deleting %s: a journal write that never finished (its run is dead)",
                        pending.child(i.base_name).uri)
            pending.child(i.base_name).delete()
    for j in journals:
        if j.data is None:
            _recover_damaged(store, j)
        elif j.data.get("phase", "publish") == "staging":
            _recover_staging(store, j)
        else:
            _recover_publish(store, j)
        j.loc.delete()
    return [j.run_id for j in journals]


def _read_journal(loc: Location) -> _Journal:
    """Read and check one journal; a damaged one comes back with ``data=None`` and the problem."""
    name = loc.path.rsplit("/", 1)[-1]
    run_id = name[: -len(".json")]
    if not _RUN_ID.match(run_id):
        raise OutputError(f"{loc.uri} is not a journal clusterlake wrote (its name is not <run_id>.json); "
                          f"move it out of {loc.uri.rsplit('/', 1)[0]}")
    raw = loc.read_bytes()
    try:
        data = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        return _Journal(loc, run_id, None, "an empty file" if not raw.strip() else f"not JSON: {exc}")
    problem = _journal_problem(data, run_id)
    return _Journal(loc, run_id, None if problem else data, problem)


def _journal_problem(data, run_id: str) -> str:
    """What makes ``data`` unusable as the journal of ``run_id`` ('' when it is fine)."""
    if not isinstance(data, dict):
        return f"JSON {type(data).__name__}, not an object"
    if data.get("run_id") != run_id:
        return f"run_id {data.get('run_id')!r}, not the file name's {run_id!r}"
    try:
        _dt.date.fromisoformat(str(data.get("run_date")))
    except ValueError:
        return f"run_date {data.get('run_date')!r} is not a date"
    phase = data.get("phase", "publish")
    tables = data.get("pre_versions") if phase == "publish" else data.get("tables")
    if phase not in ("staging", "publish"):
        return f"unknown phase {phase!r}"
    if not isinstance(tables, (dict, list)) or not all(isinstance(n, str) and _SAFE_NAME.match(n) for n in tables):
        return f"bad {'pre_versions' if phase == 'publish' else 'tables'} {tables!r}"[:200]
    return ""


def run_recorded(store: TableStore, run_id: str) -> bool:
    """Whether the ``runs`` table holds a row of ``run_id`` (the run completed, whatever ran after)."""
    try:
        runs = store.read("runs")
    except Exception:  # noqa: BLE001 (no runs table yet, or unreadable: not recorded)
        return False
    return "run_id" in runs.column_names and run_id in set(runs.column("run_id").to_pylist())


def _check_damaged(store: TableStore, j: _Journal) -> None:
    """Raise if the run of damaged journal ``j`` committed tables but not its ``runs`` row."""
    if run_recorded(store, j.run_id):
        j.committed = ["runs"]
        return
    j.committed = [n for n in RUN_TABLES if store.committed_by(n, j.run_id)]
    if not j.committed or "runs" in j.committed:
        return
    hints = "; ".join(f"{n}: {_undo_hint(store, n, j.run_id)}" for n in j.committed)
    raise OutputError(
        f"the journal {j.loc.uri} of interrupted run {j.run_id} is damaged ({j.problem}) and that run "
        f"committed tables {j.committed} without its runs row, so recovery cannot tell what to restore. "
        f"Restore those tables to their version before run {j.run_id}'s commits (the commits whose "
        f"{RUN_ID_KEY} is {j.run_id}; {hints}), then delete {j.loc.uri} and run again"
    )


def _undo_hint(store: TableStore, name: str, run_id: str) -> str:
    uri = store.table(name).uri
    if isinstance(store, DeltaRsStore):
        before = store.version_before(name, run_id)
        if before is None:
            return f"created by that run, delete {uri}"
        return f"DeltaTable('{uri}').restore({before})"
    if isinstance(store, ParquetStore):
        trash = store.table(name).child("_trash", run_id)
        if trash.exists():
            return f"move the partition saved in {trash.uri} back in place of the one it replaced"
        return f"remove the files that run moved into {uri}"
    return f"RESTORE TABLE delta.`{uri}` TO VERSION AS OF <the version before that run>"


def _recover_damaged(store: TableStore, j: _Journal) -> None:
    if "runs" in j.committed:
        log.warning("the journal %s is damaged (%s) but run %s is complete (its runs row is committed): "
                    "deleting the journal", j.loc.uri, j.problem, j.run_id)
        return
    log.warning("the journal %s is damaged (%s); run %s committed no table: deleting what it left "
                "and the journal", j.loc.uri, j.problem, j.run_id)
    _discard_leftovers(store, j.run_id, None, RUN_TABLES, models_dir(store.root).child(j.run_id), logging.WARNING)


def _recover_staging(store: TableStore, j: _Journal) -> None:
    if store.committed_by("runs", j.run_id) or run_recorded(store, j.run_id):
        log.warning("run %s is complete (its runs row is committed); removing its journal %s", j.run_id, j.loc.uri)
        return
    log.warning("run %s was interrupted before publishing (journal %s): deleting what it wrote",
                j.run_id, j.loc.uri)
    _discard_leftovers(store, j.run_id, j.data["run_date"], j.data["tables"],
                       _model_location(store, j.data.get("model_dir"), j.run_id), logging.WARNING)


def _recover_publish(store: TableStore, j: _Journal) -> None:
    run_id, run_date, pre = j.run_id, j.data["run_date"], j.data["pre_versions"]
    if not isinstance(store, DeltaRsStore):
        log.warning("interrupted run %s found in %s; %s tables cannot be restored automatically",
                    run_id, j.loc.uri, store.kind)
    elif store.last_commit_run_id("runs") == run_id:
        log.info("run %s was complete (its runs row is committed); removing its journal", run_id)
    else:
        for name, version in pre.items():
            if store.last_commit_run_id(name) == run_id:
                log.warning("recovering from interrupted run %s: restoring %s", run_id, name)
                store.rollback(name, version, run_id)
        since = j.loc.fs.get_file_info(j.loc.path).mtime_ns  # the journal's publish phase began then
        for name in pre if since is not None else ():  # files of a Spark commit killed before it landed
            store.discard_unreferenced(name, since // 1_000_000)
        _discard_leftovers(store, run_id, run_date, list(pre),
                           _model_location(store, j.data.get("model_dir"), run_id), logging.WARNING)


def _model_location(store: TableStore, uri: Optional[str], run_id: str) -> Location:
    default = models_dir(store.root).child(run_id)
    return default if uri in (None, default.uri) else location(uri)


def _discard_leftovers(store: TableStore, run_id: str, run_date: Optional[str], names: Iterable[str],
                       model_dir: Optional[Location], level: int) -> list[str]:
    """Delete what run ``run_id`` wrote and did not commit: each table's staged directories (both
    layouts: ``run_date=<date>/<run_id>/`` and ``_staging/<run_id>/``; every date when
    ``run_date`` is None), the directories that leaves empty, and ``model_dir`` (only if it is
    named after the run and ``model/latest`` is not that run). Logs each path at ``level``."""
    removed: list[str] = []
    for name in names:
        removed += _discard_staged_dirs(store.table(name), run_id, run_date)
    if model_dir is not None and _model_dir_deletable(store, model_dir, run_id):
        model_dir.delete()
        removed.append(model_dir.uri)
    for uri in removed:
        log.log(level, "run %s: deleted %s", run_id, uri)
    return removed


def _discard_staged_dirs(t: Location, run_id: str, run_date: Optional[str]) -> list[str]:
    if not t.is_dir():
        return []
    parts = [f"{PARTITION}={run_date}"] if run_date is not None else [
        i.base_name for i in t.fs.get_file_info(pafs.FileSelector(t.path))
        if i.type == pafs.FileType.Directory and i.base_name.startswith(f"{PARTITION}=")]
    candidates = [(t.child("_staging", run_id), t.child("_staging"))] + [(t.child(p, run_id), t.child(p)) for p in parts]
    infos = t.fs.get_file_info([d.path for d, _ in candidates])
    removed = []
    for (d, parent), info in zip(candidates, infos):
        if info.type != pafs.FileType.Directory:
            continue
        d.delete()
        removed.append(d.uri)
        if _empty_dir(parent):  # the partition (or _staging) directory the run created
            parent.delete()
            removed.append(parent.uri)
    if removed and _empty_dir(t):  # the table directory of a table the run would have created
        t.delete()
        removed.append(t.uri)
    return removed


def _empty_dir(loc: Location) -> bool:
    return loc.is_dir() and not loc.fs.get_file_info(pafs.FileSelector(loc.path))


def _model_dir_deletable(store: TableStore, model_dir: Location, run_id: str) -> bool:
    if model_dir.uri.rstrip("/").rsplit("/", 1)[-1] != run_id:
        log.warning("not deleting %s: the model directory of run %s must be named after it", model_dir.uri, run_id)
        return False
    if not model_dir.exists():
        return False
    if latest_run_id(models_dir(store.root)) == run_id:  # None: no latest (first run) or unreadable

        log.warning("not deleting %s: model/latest is that run's model", model_dir.uri)
        return False
    return True
