"""Streaming assignment: parquet files dropped in a landing folder, assigned with the latest model,
each file exactly once (``jobs/assign_stream.py``; docs/streaming.md).

Spark Structured Streaming's file source reads new files of ``stream.landing_path`` with an
explicit schema (``stream.schema_ddl``, or the id and feature columns' types of ``input.path``;
Spark never infers it). Each micro-batch goes to :class:`_Sink` (``foreachBatch``), which

1. reads ``<output.path>/model/latest/model.json`` and reloads the model only when its run id
   changed (a long-running stream picks up tonight's model without a restart);
2. applies ``input.invalid_rows`` to the batch (one aggregation): ``drop`` removes and counts rows
   with a null id or a null/NaN/inf feature, ``fail`` stops the stream naming the columns, the
   counts and the files;
3. assigns the rows with :func:`clusterlake.algorithms.passes.assign_rows`, exactly as the
   nightly job's ``assignments`` (same cluster ids), plus ``source_file``, ``model_run_id``,
   ``batch_id`` and ``assigned_at``;
4. appends them to ``stream.table`` under ``output.path`` **idempotently**, keyed by
   (stream id, batch id): Delta records the pair in the commit that adds the files (the Delta
   protocol's ``txn`` action: delta-rs ``CommitProperties(app_transactions=...)``, Spark Delta's
   ``txnAppId``/``txnVersion``) and a batch the table already holds is skipped; plain parquet
   does the same with marker files (the protocols: :mod:`clusterlake.io.stream_commit`).

Exactly once: Spark writes a batch's file list to the checkpoint (``offsets/``, ``sources/``)
before running it and marks it done (``commits/``) after the sink returned. A query killed in
between re-runs that batch, with the same id and the same files, at its next start; the sink
then finds the batch committed and skips it. The stream id is the streaming query's id, kept in
``<checkpoint>/metadata``: the same across restarts from one checkpoint, new for a new checkpoint
(whose batch ids start again at 0).

Everything here runs on the driver except the read, the validation aggregation, the assignment
(``mapInArrow``) and the write of each batch.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Optional

from clusterlake.config import JobConfig
from clusterlake.errors import ConfigError, InputDataError
from clusterlake.io import model_artifact
from clusterlake.io.fs import Location, location

log = logging.getLogger(__name__)

SOURCE_FILE = "__clusterlake_source_file"
"""The landing file of each row (``_metadata.file_path``) while the batch is processed."""
APP_PREFIX = "clusterlake-assign-stream-"
"""The idempotent writer's id: this prefix and the streaming query's id."""
ROWS_PER_FILE = 1_000_000
"""A batch's assignments are written in ceil(rows / this) files (fewer small files)."""
_TRIGGER = re.compile(r"^(available_now|[1-9][0-9]* (seconds?|minutes?|hours?))$")
_NUMERIC = ("ByteType", "ShortType", "IntegerType", "LongType", "FloatType", "DoubleType", "DecimalType")


@dataclass
class StreamResult:
    """What one run of the stream (one streaming query, until it stops) did."""

    landing: str
    checkpoint: str
    table: str
    """The output table's URI (``<output.path>/<stream.table>``)."""
    trigger: str
    query_id: Optional[str] = None
    """The streaming query's id: the same for every run from one checkpoint."""
    app_id: Optional[str] = None
    """The idempotent writer's id recorded with each batch (``clusterlake-assign-stream-<query id>``)."""
    batches: int = 0
    """Micro-batches this run processed, replays included."""
    batches_skipped: int = 0
    """Replays of batches the table already held (a crash after the sink's commit): nothing written."""
    files: int = 0
    rows_read: int = 0
    rows_dropped: int = 0
    rows_written: int = 0
    invalid_counts: dict[str, int] = field(default_factory=dict)
    """``"<column>:<null|nan|inf>" -> rows`` over the batches (``input.invalid_rows: drop``)."""
    model_run_ids: list[str] = field(default_factory=list)
    """The models used, in order of first use."""
    table_version: Optional[int] = None
    """Delta: the table's version after this run's last commit."""
    seconds: float = 0.0


# ----------------------------------------------------------------------------------------------
# configuration


def stream_paths(cfg: JobConfig, landing: Optional[str] = None,
                 checkpoint: Optional[str] = None) -> tuple[Location, Location]:
    """The landing folder and the checkpoint (arguments first, then ``stream.*``)."""
    landing = landing or cfg.stream.landing_path
    if not landing:
        raise ConfigError("stream.landing_path is not set: name the folder new parquet files land in "
                          "(in the config, --set stream.landing_path=PATH or --landing PATH)")
    ckpt = (checkpoint or cfg.stream.checkpoint_path
            or location(cfg.output.path).child("_clusterlake", "checkpoints", "assign_stream").uri)
    land, ck = location(landing), location(ckpt)
    table = location(cfg.output.path).child(cfg.stream.table)
    for a, b, what in ((land, ck, "the checkpoint"), (land, table, "the output table")):
        pa_, pb = a.uri.rstrip("/") + "/", b.uri.rstrip("/") + "/"
        if pa_.startswith(pb) or pb.startswith(pa_):
            raise ConfigError(f"stream.landing_path {land.uri} overlaps {what} {b.uri}; use separate folders")
    return land, ck


def trigger_options(trigger: str) -> dict:
    """``available_now`` or ``"<n> seconds|minutes|hours"`` as ``DataStreamWriter.trigger`` kwargs."""
    if not isinstance(trigger, str) or not _TRIGGER.match(trigger.strip()):
        raise ConfigError(f"stream.trigger must be 'available_now' or an interval such as '30 seconds', "
                          f"got {trigger!r}")
    trigger = trigger.strip()
    return {"availableNow": True} if trigger == "available_now" else {"processingTime": trigger}


def stream_schema(spark, cfg: JobConfig, feature_names: Optional[list[str]] = None):
    """The explicit schema of the landing files and where it came from.

    ``stream.schema_ddl`` when set; otherwise the id column and the feature columns
    (``input.feature_columns``, or the numeric columns it infers, plus any of ``feature_names``,
    the model's) with their types in ``input.path``'s schema (a static read of its footers).
    """
    from pyspark.sql.types import StructType, _parse_datatype_string

    idc = cfg.input.id_column
    if cfg.stream.schema_ddl:
        source = "stream.schema_ddl"
        try:
            schema = _parse_datatype_string(cfg.stream.schema_ddl)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ConfigError(f"stream.schema_ddl is not a Spark DDL schema such as "
                              f"'{idc} long, age double' ({first})") from None
        if not isinstance(schema, StructType):
            raise ConfigError(f"stream.schema_ddl must list columns ('{idc} long, age double, ...'), "
                              f"got the single type {schema.simpleString()}")
    else:
        from clusterlake.io.reader import read_table, resolve_columns

        source = f"input.path ({cfg.input.path})"
        try:
            df = read_table(spark, cfg.input)
            feats = resolve_columns(df, cfg.input)
        except InputDataError as exc:
            raise InputDataError(f"{exc} (the stream takes the landing files' schema from input.path; "
                                 "set stream.schema_ddl to give it explicitly)") from None
        wanted = [*feats] + ([cfg.input.vector_column] if cfg.input.vector_column else []) + list(feature_names or [])
        names = list(dict.fromkeys([idc] + [c for c in wanted if c in df.columns]))
        schema = StructType([df.schema[c] for c in names])
    if idc not in schema.names:
        raise ConfigError(f"the stream's schema ({source}) has no id column '{idc}' (input.id_column); "
                          f"it has {schema.names}")
    return schema, source


def _check_model_columns(art, schema, source: str) -> None:
    from clusterlake.io.reader import input_columns, model_vector

    vec = model_vector(art)
    feats = input_columns(list(art.prep.feature_names), vec)
    missing = [c for c in feats if c not in schema.names]
    if missing:
        raise InputDataError(
            f"the model of run {art.run_id} uses feature column(s) {missing} that the stream's schema "
            f"({source}) does not have; add them (stream.schema_ddl) and restart the stream")
    bad = {c: type(schema[c].dataType).__name__ for c in feats
           if type(schema[c].dataType).__name__ not in _NUMERIC and not (vec and c == vec.column)}
    if vec is not None and vec.column in feats:
        t = schema[vec.column].dataType
        if type(t).__name__ != "ArrayType" or type(t.elementType).__name__ not in ("FloatType", "DoubleType"):
            bad[vec.column] = t.simpleString() + " (the model's vector column needs array<float|double>)"
    if bad:
        desc = ", ".join(f"'{c}' has type {t}" for c, t in bad.items())
        raise InputDataError(f"the stream's schema ({source}): feature column {desc}; features must be numeric")


class _LatestModel:
    """``<output>/model/latest``, reloaded only when its run id changes."""

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg
        self.root = model_artifact.models_dir(location(cfg.output.path))
        self.art = None
        self.passes = (None, None)

    def _missing(self) -> InputDataError:
        return InputDataError(
            f"there is no model under {self.root.uri}/latest yet: run the nightly job first "
            f"(clusterlake run --config ..., or spark-submit jobs/cluster.py --config ...) with "
            f"output.path={self.cfg.output.path}; the stream assigns rows with the latest model it committed")

    def get(self):
        """(artifact, density model, hierarchy model) of the model ``latest`` shows now."""
        from clusterlake.run.scaffold import check_model_id_column

        mj = model_artifact.latest_dir(self.root).child("model.json")
        if not mj.exists():
            raise self._missing()
        try:
            run_id = json.loads(mj.read_bytes())["run_id"]
        except FileNotFoundError:  # latest swapped away between the two calls
            raise self._missing() from None
        if self.art is None or self.art.run_id != run_id:
            from clusterlake.serving.query import resolve_model_dir

            # the run's own directory, not latest/: never a mix of two models' files
            art = model_artifact.load(resolve_model_dir(model_artifact.latest_dir(self.root).uri).uri)
            check_model_id_column(art, self.cfg.input.id_column)
            if self.art is not None:
                log.info("stream: new model %s (was %s)", art.run_id, self.art.run_id)
            self.art, self.passes = art, model_artifact.pass_models(art)
        return (self.art, *self.passes)


# ----------------------------------------------------------------------------------------------
# the sink


class _Sink:
    """The ``foreachBatch`` function: validate, assign and append one micro-batch idempotently."""

    def __init__(self, cfg: JobConfig, checkpoint: Location, model: _LatestModel, schema, source: str,
                 result: StreamResult):
        self.cfg = cfg
        self.checkpoint = checkpoint
        self.model = model
        self.schema, self.source = schema, source
        self.result = result
        self.table = cfg.stream.table
        self.query_id: Optional[str] = None
        self.error: Optional[BaseException] = None

    def __call__(self, batch_df, batch_id) -> None:
        try:
            self._batch(batch_df, int(batch_id))
        except BaseException as exc:  # kept: the query only reports a Python traceback as text
            self.error = exc
            raise

    def app_id(self) -> str:
        """``clusterlake-assign-stream-<query id>``; the id is in ``<checkpoint>/metadata`` (written
        when the query first started; the same after every restart from this checkpoint)."""
        if self.query_id is None:
            meta = json.loads(self.checkpoint.child("metadata").read_bytes())
            self.query_id = str(meta["id"])
            self.result.query_id = self.query_id
            self.result.app_id = APP_PREFIX + self.query_id
        return APP_PREFIX + self.query_id

    # -- one micro-batch
    def _batch(self, batch_df, batch_id: int) -> None:
        from pyspark import StorageLevel
        from pyspark.sql import functions as F

        from clusterlake.io.columns import col
        from clusterlake.io.stream_commit import committed_batch
        from clusterlake.io.tables import make_store

        t0 = time.time()
        res = self.result
        app_id = self.app_id()
        art, density, hierarchy = self.model.get()
        _check_model_columns(art, self.schema, self.source)
        now = dt.datetime.now(dt.timezone.utc)
        run_date = (self.cfg.job.run_date or now.date()).isoformat()
        # the batch's own session (a streaming query runs on a clone of the session that started
        # it): the stores set their parquet write options on it
        store = make_store(batch_df.sparkSession, self.cfg.output, run_date, f"stream-{self.query_id}-b{batch_id}")
        res.batches += 1
        done = committed_batch(store, self.table, app_id)
        if done is not None and done >= batch_id:
            res.batches_skipped += 1
            log.warning("stream batch %d: already committed to %s (stream %s holds batch %d); a replay "
                        "after a restart, skipped", batch_id, store.table(self.table).uri, app_id, done)
            return

        from clusterlake.io.reader import input_columns, model_vector

        idc, feats = self.cfg.input.id_column, list(art.prep.feature_names)
        rows = batch_df.select(col(idc), *[col(c) for c in input_columns(feats, model_vector(art))],
                               F.col(SOURCE_FILE))
        rows = rows.persist(StorageLevel.MEMORY_AND_DISK)  # read once: counted, then assigned
        try:
            n, n_bad, files, valid = self._count(rows, idc, feats, batch_id, art)
            if n == n_bad:
                log.info("stream batch %d: %d rows in %d file(s), %d dropped, nothing to write (%.1f s)",
                         batch_id, n, files, n_bad, time.time() - t0)
                return
            clean = rows.filter(valid) if n_bad else rows
            written, version = self._write(store, clean, art, density, hierarchy, batch_id, now, n - n_bad)
        finally:
            rows.unpersist()
        res.rows_written += written
        res.table_version = version if version is not None else res.table_version
        log.info("stream batch %d: %d rows in %d file(s), %d dropped, %d written to %s%s with model %s (%.1f s)",
                 batch_id, n, files, n_bad, written, store.table(self.table).uri,
                 f" (Delta version {version})" if version is not None else "", art.run_id, time.time() - t0)

    def _count(self, rows, idc: str, feats: list[str], batch_id: int, art):
        """Check the batch's rows (:meth:`_check_rows`) and add what was read to the result."""
        from clusterlake.io.reader import model_vector

        res, model_run_id = self.result, art.run_id
        n, n_bad, counts, files, valid = self._check_rows(rows, idc, feats, batch_id, model_vector(art))
        res.files += files
        res.rows_read += n
        res.rows_dropped += n_bad
        for k, v in counts.items():
            res.invalid_counts[k] = res.invalid_counts.get(k, 0) + v
        if model_run_id not in res.model_run_ids:
            res.model_run_ids.append(model_run_id)
        return n, n_bad, files, valid

    def _write(self, store, clean, art, density, hierarchy, batch_id: int, now, n_ok: int):
        """Assign the valid rows as the nightly job does and append them exactly once."""
        from clusterlake.algorithms.passes import assign_rows
        from clusterlake.io import stream_commit
        from clusterlake.io.columns import col
        from clusterlake.io.contract import stream_assignments

        from clusterlake.io.reader import feature_column, model_vector

        idc, feats, vec = self.cfg.input.id_column, list(art.prep.feature_names), model_vector(art)
        clean = clean.select(col(idc), *[feature_column(c, vec and vec.column) for c in feats], col(SOURCE_FILE))
        asg = assign_rows(clean, art.prep, art.centroids, art.cluster_ids, idc, density, hierarchy,
                          passthrough=SOURCE_FILE, **art.rule())
        asg = stream_assignments.with_stream_columns(asg, "__passthrough", art.run_id, batch_id, now)
        n_files = max(1, math.ceil(n_ok / ROWS_PER_FILE))
        write = stream_commit.write_parquet if store.kind == "parquet" else stream_commit.write_delta
        return write(store, self.table, asg, n_files, self.app_id(), batch_id, n_ok)

    def _check_rows(self, rows, idc: str, feats: list[str], batch_id: int, vector=None):
        """``input.invalid_rows`` on one batch, in one aggregation (a few counts and the batch's
        file names, at most ``max_files_per_trigger`` of them, reach the driver). No duplicate or
        constant-column checks: a micro-batch may be one row, and the model decides the scaling."""
        from pyspark.sql import functions as F

        from clusterlake.io.reader import row_checks

        valid, reasons = row_checks(idc, feats, None, vector)  # the nightly job's rule (input.invalid_rows)
        names = list(reasons)
        row = rows.agg(
            F.count(F.lit(1)).alias("n"), F.sum(F.when(valid, 0).otherwise(1)).alias("bad"),
            F.collect_set(F.col(SOURCE_FILE)).alias("files"),
            F.collect_set(F.when(~valid, F.col(SOURCE_FILE))).alias("bad_files"),
            *[F.sum(F.when(cond, 1).otherwise(0)).alias(f"r{i}") for i, cond in enumerate(reasons.values())],
        ).collect()[0]
        n, n_bad = int(row["n"]), int(row["bad"] or 0)
        counts = {name: int(row[f"r{i}"] or 0) for i, name in enumerate(names)}
        counts = {k: v for k, v in counts.items() if v}
        if n_bad:
            worst = sorted(counts.items(), key=lambda kv: -kv[1])[:5]
            # (keys are "<column>:<reason>"; a column name may hold a colon)
            detail = ", ".join(f"'{k.rsplit(':', 1)[0]}' {v} {k.rsplit(':', 1)[1]}" for k, v in worst)
            bad_files = sorted(row["bad_files"])
            shown = ", ".join(bad_files[:3]) + (f" and {len(bad_files) - 3} more" if len(bad_files) > 3 else "")
            if self.cfg.input.invalid_rows == "fail":
                raise InputDataError(
                    f"stream batch {batch_id} has {n_bad} of {n} rows with invalid values ({detail}; null, NaN "
                    f"or inf) in {shown}; input.invalid_rows is fail, so the stream stops and retries this batch "
                    "(the same files) when it starts again: set input.invalid_rows: drop to drop and count such "
                    "rows, or replace the file(s) by fixed ones of the same name")
            log.warning("stream batch %d: dropping %d of %d invalid rows (input.invalid_rows=drop): %s; in %s",
                        batch_id, n_bad, n, detail, shown)
        return n, n_bad, counts, len(row["files"]), valid



# ----------------------------------------------------------------------------------------------
# running the stream


def run_assign_stream(cfg: JobConfig, spark=None, *, landing: Optional[str] = None,
                      checkpoint: Optional[str] = None, trigger: Optional[str] = None) -> StreamResult:
    """Run the streaming assignment until it stops.

    Parameters
    ----------
    cfg : JobConfig
        ``stream``, ``input`` (id column, ``invalid_rows``; ``input.path`` for the default
        schema) and ``output`` (where ``model/latest`` and the ``stream.table`` table are).
    spark : SparkSession, optional
        Default: :func:`clusterlake.session.build_session`.
    landing, checkpoint, trigger : str, optional
        Override ``stream.landing_path``, ``stream.checkpoint_path`` and ``stream.trigger``.
        ``available_now``: process every file not processed yet (in batches of at most
        ``stream.max_files_per_trigger`` files), then return; an interval (``"30 seconds"``):
        run until stopped.

    Raises
    ------
    ClusterlakeError
        No model yet, no landing path, a bad schema, invalid rows under ``invalid_rows: fail``
        (the batch is retried, with the same files, at the next start).
    """
    from clusterlake.session import build_session

    t0 = time.time()
    trig = trigger or cfg.stream.trigger
    trigger_kw = trigger_options(trig)
    land, ckpt = stream_paths(cfg, landing, checkpoint)
    model = _LatestModel(cfg)
    art, _, _ = model.get()  # no model: fail before a query starts
    if spark is None:
        spark = build_session(cfg.spark, f"clusterlake-stream-{cfg.job.name}")
    schema, source = stream_schema(spark, cfg, list(art.prep.feature_names))
    _check_model_columns(art, schema, source)
    _ensure_landing(land)
    table_uri = location(cfg.output.path).child(cfg.stream.table).uri
    result = StreamResult(landing=land.uri, checkpoint=ckpt.uri, table=table_uri, trigger=trig)
    sink = _Sink(cfg, ckpt, model, schema, source, result)
    query = _start(spark, cfg, land, ckpt, schema, sink, trigger_kw)
    result.query_id = str(query.id)
    result.app_id = APP_PREFIX + result.query_id
    log.info("stream %s: %s -> %s (checkpoint %s, trigger %s, schema from %s)", result.query_id, land.uri,
             result.table, ckpt.uri, trig, source)
    try:
        _await(query)
    except KeyboardInterrupt:
        log.warning("stream %s: interrupted; stopping the query (committed batches stay committed, the next "
                    "start resumes from the checkpoint)", result.query_id)
        query.stop()
        raise
    except Exception:
        if sink.error is not None:  # the sink's own exception, not Spark's text of it
            raise sink.error from None
        raise
    finally:
        result.seconds = round(time.time() - t0, 2)
    if sink.error is not None:  # pragma: no cover (awaitTermination raises it)
        raise sink.error
    log.info("stream %s stopped after %d batch(es) (%d skipped as already committed): %d rows read, %d dropped, "
             "%d written in %.1f s", result.query_id, result.batches, result.batches_skipped, result.rows_read,
             result.rows_dropped, result.rows_written, result.seconds)
    return result


def _ensure_landing(land: Location) -> None:
    if not land.exists():
        log.info("stream: creating the landing folder %s (stream.landing_path)", land.uri)
        land.fs.create_dir(land.path, recursive=True)
    elif not land.is_dir():
        raise ConfigError(f"stream.landing_path {land.uri} is a file; it must be a folder")


def _start(spark, cfg: JobConfig, land: Location, ckpt: Location, schema, sink: "_Sink", trigger_kw: dict):
    """Start the streaming query: the landing files with the explicit schema and each row's file
    name, into the sink, checkpointed."""
    from pyspark.sql import functions as F

    from clusterlake.io.columns import col

    src = (spark.readStream.schema(schema)  # explicit: Spark never infers the landing files' schema
           .option("maxFilesPerTrigger", cfg.stream.max_files_per_trigger)
           .parquet(land.uri))
    src = src.select(*[col(c) for c in schema.names], F.col("_metadata.file_path").alias(SOURCE_FILE))
    return (src.writeStream.foreachBatch(sink)
            .option("checkpointLocation", ckpt.uri)
            .trigger(**trigger_kw)
            .start())


def _await(query, poll_seconds: float = 2.0) -> None:
    """Wait until the query ends (``availableNow``: all files done; an interval: stopped).

    SIGINT/SIGTERM only set a flag here, and the wait polls: PySpark's own SIGINT handler calls
    into the JVM from the thread blocked in ``awaitTermination`` and dies with a py4j error
    instead of stopping the query. A signal raises KeyboardInterrupt after the current poll."""
    import signal
    import threading

    stop: list[int] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, frame: stop.append(signum))
    try:
        while not query.awaitTermination(poll_seconds):
            if stop:
                raise KeyboardInterrupt(f"signal {stop[0]}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stream_summary(r: StreamResult) -> str:
    """The summary printed at the end of a run of ``jobs/assign_stream.py``."""
    lines = [
        "",
        "=" * 78,
        f"clusterlake assign_stream {r.query_id}: {r.batches} micro-batch(es) in {r.seconds:.1f} s"
        + (f", {r.batches_skipped} skipped (already committed)" if r.batches_skipped else ""),
        f"rows: {r.rows_read:,} read from {r.files} file(s), {r.rows_dropped:,} dropped, {r.rows_written:,} written",
        f"models: {', '.join(r.model_run_ids) or '-'}",
        f"table:      {r.table}" + (f"  (Delta version {r.table_version})" if r.table_version is not None else ""),
        f"landing:    {r.landing}",
        f"checkpoint: {r.checkpoint}",
        "=" * 78,
    ]
    return "\n".join(lines)
