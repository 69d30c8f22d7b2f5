"""The grouping steps of the nightly job (issue 22): read and sign the grouping column, group, stage.

:func:`read_signed` reads the input's id and grouping column, checks the column's type against
``grouping.similarity``, signs every row in one pass (:func:`clusterlake.algorithms.grouping.sign`)
and applies ``input.invalid_rows`` to the rows whose set is null or empty (or whose vector is bad),
counted by reason. :func:`group_step` groups the valid rows against the previous run's groups, and
:func:`stage_groups` stages the ``groups`` table. :func:`run_grouping_job` is the job when
``kmeans.enabled`` is false: those three steps, the metrics and the ``runs`` row, committed together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from clusterlake.errors import ConfigError, InputDataError
from clusterlake.io.contract.metrics import Metric
from clusterlake.stages import spark_pass

log = logging.getLogger("clusterlake")

SCOPE = "grouping"


@dataclass
class Signed:
    """The input's valid rows, signed, and what the read found."""

    rows: object  # DataFrame: id, _vid, _payload, _keys (valid rows only; persisted)
    summary: object  # clusterlake.io.reader.InputSummary
    band: object  # clusterlake.algorithms.grouping.Banding
    dim: Optional[int] = None  # a vector column's length


def column_kind(df, column: str) -> tuple[str, Optional[str]]:
    """(``jaccard`` | ``cosine``, the element type) of the grouping column, or a ConfigError
    naming the column, its type and the keys to change."""
    from pyspark.sql import types as T

    if column not in df.columns:
        raise ConfigError(f"grouping.column '{column}' is not a column of the input (columns: {df.columns[:20]})")
    t = df.schema[column].dataType
    if isinstance(t, T.ArrayType) and isinstance(t.elementType, (T.StringType, T.IntegerType, T.LongType,
                                                                   T.ShortType, T.ByteType)):
        return "jaccard", t.elementType.simpleString()
    if (isinstance(t, T.ArrayType) and isinstance(t.elementType, (T.FloatType, T.DoubleType))) or \
            t.typeName() == "vector":
        return "cosine", t.simpleString()
    raise ConfigError(f"grouping.column '{column}' has type {t.simpleString()}; grouping needs a set "
                      "(array<string|int|long>, grouping.similarity: jaccard) or a vector (array<float|double> "
                      "or an ML vector, grouping.similarity: cosine)")


def _check_similarity(gcfg, kind: str, column: str, type_name: str) -> None:
    if gcfg.similarity != kind:
        what = "a set" if kind == "jaccard" else "a vector"
        raise ConfigError(f"grouping.similarity={gcfg.similarity} but grouping.column '{column}' is {what} "
                          f"({type_name}); set grouping.similarity: {kind}")


def _vector_dim(df, column: str) -> int:
    """The most common length among the first 1,000 non-null vectors (as input.vector_size does)."""
    from pyspark.sql import functions as F

    from clusterlake.io.columns import col as c

    v = c(column)
    if df.schema[column].dataType.typeName() == "vector":
        from pyspark.ml.functions import vector_to_array

        v = vector_to_array(v)
    rows = df.select(F.size(v).alias("n")).where(F.col("n") > 0).limit(1000).groupBy("n").count() \
        .orderBy(F.desc("count"), "n").first()
    if rows is None:
        raise InputDataError(f"grouping.column '{column}' has no non-empty vector in the input")
    return int(rows["n"])


def read_signed(run, step: str = "read+validate", check_ids: bool = True, version: Optional[int] = None) -> Signed:
    """Read, check and sign the grouping column; the invalid-row policy and unique ids (in the
    stage ``step``). Beside K-means, whose read checked the ids already, they are not checked again,
    and ``version`` is the Delta version K-means read (the same snapshot)."""
    from pyspark.sql import functions as F

    from clusterlake.algorithms import grouping as G
    from clusterlake.io.columns import col as c
    from clusterlake.io.reader import InputSummary, _raise_duplicates, duplicate_ids, pin_version, read_table

    cfg, gcfg = run.cfg, run.cfg.grouping
    icfg = run.cfg.input.model_copy(update={"version": version}) if version is not None else \
        pin_version(run.spark, run.cfg.input)
    with run.step(step) as note:
        raw = read_table(run.spark, icfg)
        if icfg.id_column not in raw.columns:
            raise InputDataError(f"input.id_column '{icfg.id_column}' is not a column of the input "
                                 f"(columns: {raw.columns[:20]})")
        kind, type_name = column_kind(raw, gcfg.column)
        _check_similarity(gcfg, kind, gcfg.column, type_name)
        band = G.banding(gcfg)
        dim = _vector_dim(raw, gcfg.column) if kind == "cosine" else None
        src = raw
        if dim is not None and raw.schema[gcfg.column].dataType.typeName() == "vector":
            from pyspark.ml.functions import vector_to_array

            src = raw.withColumn(gcfg.column, vector_to_array(c(gcfg.column)))
        dups = duplicate_ids(raw, icfg.id_column) if check_ids else ()
        if dups:
            _raise_duplicates(icfg.id_column, *dups)
        with spark_pass("sign rows"):
            signed = run.cache(G.sign(src, icfg.id_column, gcfg.column, band, dim)
                               .withColumn(G.BAD, F.when(c(icfg.id_column).isNull(), F.lit(f"{icfg.id_column}:null"))
                                           .otherwise(F.col(G.BAD))))
            by_reason = {r[G.BAD]: int(r["n"]) for r in signed.groupBy(G.BAD).agg(F.count("*").alias("n")).collect()}
        n = sum(by_reason.values())
        bad = {k: v for k, v in by_reason.items() if k is not None}
        n_used = _invalid_policy(icfg, gcfg.column, n, bad, signed, G.BAD)
        valid = signed.where(F.col(G.BAD).isNull()).drop(G.BAD) if bad else signed.drop(G.BAD)
        _check_vertex_ids(raw, icfg.id_column, valid, n_used)
        summary = InputSummary(icfg.path, icfg.format, n, n_used, n - n_used, bad, [gcfg.column], [],
                               icfg.id_column, version=icfg.version)
        note.update(rows_read=n, rows_used=n_used, dropped=n - n_used, bands=band.bands, rows_per_band=band.rows)
        log.info("grouping: %s on '%s' at threshold %g: %d bands of %d hashes (recall %.3f for a pair at the "
                 "threshold)", kind, gcfg.column, gcfg.threshold, band.bands, band.rows, band.recall_at_threshold)
    return Signed(valid, summary, band, dim)


def _check_vertex_ids(raw, id_col: str, valid, n_used: int) -> None:
    """A non-integer id becomes a vertex by its 64-bit hash: two ids with one hash (about n^2 / 2^65:
    one chance in 40 at a billion rows) would merge their rows' groups. Counted, and refused."""
    from pyspark.sql import types as T

    from clusterlake.algorithms.grouping import VID

    if isinstance(raw.schema[id_col].dataType, T.IntegralType):
        return
    with spark_pass("vertex ids"):
        distinct = valid.select(VID).distinct().count()
    if distinct != n_used:
        raise InputDataError(f"{n_used - distinct} pairs of distinct values of input.id_column '{id_col}' have the "
                             "same 64-bit hash, which grouping uses as their vertex id; give the rows integer ids "
                             "(e.g. a row number kept upstream) to group them")


def _invalid_policy(icfg, column: str, n: int, bad: dict, signed, bad_col: str) -> int:
    """``input.invalid_rows`` for the grouping column: fail naming the reasons and an id, or drop
    (logged, counted). Returns the rows used."""
    from pyspark.sql import functions as F

    if n == 0:
        raise InputDataError(f"input {icfg.path} has no rows; check input.path and the upstream job")
    n_bad = sum(bad.values())
    if not n_bad:
        return n
    detail = ", ".join(f"{v} {k}" for k, v in sorted(bad.items(), key=lambda kv: -kv[1]))
    if icfg.invalid_rows == "fail":
        from clusterlake.io.columns import col as c

        eg = signed.where(F.col(bad_col).isNotNull()).select(c(icfg.id_column)).first()
        raise InputDataError(
            f"input has {n_bad} of {n} rows whose grouping column '{column}' is invalid ({detail}; e.g. "
            f"{icfg.id_column} {eg[0]!r}): a null or empty set, or a bad vector; set input.invalid_rows: drop "
            "to drop them (they are counted), or clean the column")
    if n_bad == n:
        raise InputDataError(f"all {n} input rows are invalid ({detail}); nothing to group")
    log.warning("dropping %d of %d invalid rows (input.invalid_rows=drop): %s", n_bad, n, detail)
    return n - n_bad


@dataclass
class PreviousGroups:
    run_id: str
    groups: object  # DataFrame (id, group_id) of that run, or None when it wrote no groups
    next_group_id: int


def previous_groups(run) -> Optional[PreviousGroups]:
    """The groups tonight's ids are matched with: those of the newest committed run of an earlier
    run_date that grouped (the one that left a ``next_group_id``; a night with grouping off or an
    update is skipped), and that next id. A re-run of a date is compared with what the run it
    replaces was compared with, and numbers its new groups as that run did (as cluster ids are).
    None on the first grouping run."""
    import pyarrow.compute as pc

    from clusterlake.errors import OutputError

    store = run.store
    try:
        runs = store.read("runs").select(["run_id", "run_date", "finished_at"])
        metrics = store.read("metrics").select(["run_id", "scope", "metric", "value"])
    except (OutputError, FileNotFoundError, OSError):
        return None
    nxt = metrics.filter(pc.and_(pc.equal(metrics["scope"], SCOPE), pc.equal(metrics["metric"], "next_group_id")))
    grouped = {r["run_id"]: int(r["value"]) for r in nxt.to_pylist()}
    earlier = [r for r in runs.to_pylist() if str(r["run_date"]) < run.run_date and r["run_id"] in grouped]
    if not earlier:
        return None
    last = max(earlier, key=lambda r: (str(r["run_date"]), r["finished_at"]))
    prev_id = str(last["run_id"])
    groups = store.spark_read("groups", [prev_id], [str(last["run_date"])],
                              columns=[run.cfg.input.id_column, "group_id"])
    log.info("grouping: matching tonight's groups with run %s's (next group id %d)", prev_id, grouped[prev_id])
    return PreviousGroups(prev_id, groups, grouped[prev_id])


def group_step(run, signed: Signed):
    """Group the signed rows (:func:`clusterlake.algorithms.grouping.group`); its metrics."""
    from clusterlake.algorithms import grouping as G

    cfg = run.cfg
    with run.step("grouping") as note:
        prev = previous_groups(run)
        g = G.group(signed.rows, signed.summary.rows_used, cfg.input.id_column, cfg.grouping, signed.band,
                    prev.groups if prev else None, prev.next_group_id if prev else 0, run.cache, spark_pass)
        note.update(**{k: v for k, v in g.counts.items() if k in ("candidate_pairs", "verified_pairs", "groups",
                                                                  "largest_group")})
    return g, grouping_metrics(g, signed)


def grouping_metrics(g, signed: Signed) -> list[Metric]:
    """The run's grouping metrics (scope ``grouping``, algorithm ``lsh-<similarity>``)."""
    n, band = signed.summary.rows_used, signed.band
    algo = f"lsh-{band.kind}"
    vals = dict(g.counts)
    vals.update(recall_at_threshold=band.recall_at_threshold, threshold=band.threshold, bands=band.bands,
                rows_per_band=band.rows, next_group_id=g.next_group_id)
    return [Metric(SCOPE, name, float(v), n, algo, 0) for name, v in vals.items()]


def stage_groups(run, staged: list, g, signed: Signed) -> None:
    """Stage the ``groups`` table (the id column first, then :data:`clusterlake.io.contract.groups.DDL`)
    and save the serving band index under ``<model>/grouping/`` (``grouping.index_rows``)."""
    from pyspark.sql import functions as F

    staged.append(run.store.stage("groups", g.groups.withColumn("run_id", F.lit(run.run_id))))  # "write groups"
    save_grouping(run, g, signed)


def save_grouping(run, g, signed: Signed) -> None:
    """Under the run's model directory (discarded with the run if it fails): the band index for
    serving (``grouping.index_rows``; written by the tasks as parquet), then ``grouping.json``
    (last): the banding that signs a new item, and the group-size distribution and example groups
    the report shows."""
    from clusterlake.serving.duplicates import FOLDER, INDEX, save_meta

    gcfg, band = run.cfg.grouping, signed.band
    folder = run.model_dir.child(FOLDER)
    if gcfg.index_rows:
        with spark_pass("write band index"):
            g.index(signed.rows, signed.summary.rows_used, gcfg.index_rows).write.mode("error") \
                .parquet(folder.child(INDEX).uri)
    with spark_pass("group summary"):
        summary = g.summary()
    save_meta(folder, {"column": gcfg.column, "similarity": band.kind, "bands": band.bands, "rows": band.rows,
                       "seed": band.seed, "threshold": band.threshold, "max_bucket": gcfg.max_bucket,
                       "dim": signed.dim, "id_column": run.cfg.input.id_column, "run_id": run.run_id,
                       "recall_at_threshold": band.recall_at_threshold, "index": bool(gcfg.index_rows),
                       "counts": g.counts, **summary})


def run_grouping_job(cfg, spark=None):
    """The job with ``kmeans.enabled: false``: read and sign, group, then commit ``groups``,
    ``metrics`` and the ``runs`` row together. The run's model directory (``runs.model_path``) holds
    the grouping's summary and band index only: ``model/latest`` stays the last K-means model's."""
    from clusterlake.io.contract import metrics as metrics_table
    from clusterlake.io.contract.runs import FitFacts, RunRecord
    from clusterlake.run.result import RunResult
    from clusterlake.run.scaffold import open_run

    with open_run(cfg, spark, kind="full", app="clusterlake") as run:
        signed = read_signed(run)
        g, metrics = group_step(run, signed)
        with run.staging() as staged:
            with run.step("write"):
                stage_groups(run, staged, g, signed)
                staged.append(run.stage_rows("metrics", metrics_table.rows(run.run_id, metrics, 0),
                                             metrics_table.DDL))
            model_path = run.model_dir.uri
            record = RunRecord(kind="full", fit=FitFacts.no_fit(), n_components=0, model_path=model_path,
                               k_selection="none")
            versions = run.publish(staged, lambda v: run.runs_row(signed.summary, record, v), move_latest=False)
        s = signed.summary
        log.info("run %s committed in %.1f s", run.run_id, run.seconds)
        result = RunResult(
            run_id=run.run_id, run_date=run.run_date, output_path=run.store.root.uri, model_path=model_path, k=0,
            sizes=[], metrics={m.metric: m.value for m in metrics}, table_versions=versions, rows_read=s.rows_read,
            rows_used=s.rows_used, rows_dropped=s.rows_dropped, seconds=round(run.seconds, 2),
            stage_seconds=run.step.seconds, spark_passes=run.step.passes, feature_columns=[],
            n_components=0, passes={}, descriptions=[], k_selection="none", gate_failures=[], cluster_ids=[],
            previous_run_id=None, lineage={}, drift={}, grouping={m.metric: m.value for m in metrics})
    result.report_path = run.report()
    return result
