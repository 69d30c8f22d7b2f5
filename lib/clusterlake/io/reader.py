"""Reading the features table and validating it.

Runs on the driver; validation is two distributed passes (one aggregation over every feature
column, one shuffle of the ids for duplicates) that return only counts and a few example ids.

Policy (``input.invalid_rows``): a row is *invalid* when its id is null, any feature is null, NaN
or +-inf, or its weight is null/NaN/inf/negative. ``fail`` stops the job naming the worst columns
and their counts; ``drop`` removes those rows. Both count every reason, and the counts land in the
``runs`` table. Constant feature columns are dropped with a warning (they carry no information and
break standard scaling); the job fails when nothing is left. Duplicate ids always fail
(``input.duplicate_ids`` accepts only ``fail``), because no other policy is sound
(:func:`duplicate_ids`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from clusterlake.config import InputSection
from clusterlake.errors import InputDataError
from clusterlake.io.validity import MAX_ABS_VALUE, Validity
from clusterlake.stages import spark_pass

log = logging.getLogger(__name__)

_NUMERIC = ("ByteType", "ShortType", "IntegerType", "LongType", "FloatType", "DoubleType", "DecimalType")


@dataclass
class InputSummary:
    """What validation found; recorded in the ``runs`` table."""

    path: str
    format: str
    rows_read: int
    rows_used: int
    rows_dropped: int
    invalid_counts: dict[str, int] = field(default_factory=dict)
    """``"<column>:<null|nan|inf|negative>" -> rows`` for every reason seen (before dropping)."""
    feature_columns: list[str] = field(default_factory=list)
    dropped_constant_columns: list[str] = field(default_factory=list)
    id_column: str = ""
    label_column: Optional[str] = None
    weight_column: Optional[str] = None
    feature_types: dict[str, str] = field(default_factory=dict)
    """Spark type of every resolved feature column (constant ones included), e.g. ``"double"``."""
    version: Optional[int] = None
    """The Delta version read (None for parquet)."""


def pin_version(spark, cfg: InputSection) -> InputSection:
    """``cfg`` with a Delta input's ``version`` resolved (the latest when the config names none):
    every read of the run sees the same snapshot, and ``runs.input_version`` records it."""
    if cfg.format != "delta" or cfg.version is not None:
        return cfg
    from clusterlake.io.delta import current_version

    version = current_version(spark, cfg.path)
    log.info("input %s: Delta version %d", cfg.path, version)
    return cfg.model_copy(update={"version": version})


def read_table(spark, cfg: InputSection, scanned=None):
    """Read the input as a DataFrame (parquet, or Delta through Spark or delta-rs).

    Parquet: every file's footer is checked first (:func:`clusterlake.io.input_files.scan_parquet`:
    unreadable files, columns missing from some files, conflicting types are InputDataErrors naming
    the files), and Spark reads with the unified schema when the files' types differ. ``scanned``:
    that scan, when the caller made it already."""
    if cfg.format == "parquet":
        from clusterlake.io.input_files import scan_parquet

        inp = scanned or scan_parquet(cfg)
        try:
            if inp.groups:
                return _read_groups(spark, cfg.path, inp)
            reader = spark.read if inp.spark_schema is None else spark.read.schema(inp.spark_schema)
            return reader.parquet(cfg.path)
        except Exception as exc:  # AnalysisException: unreadable files, odd layouts
            raise InputDataError(f"cannot read input {cfg.path} as parquet: {_first_line(exc)}") from None
    from clusterlake.io.delta import read_delta

    return read_delta(spark, cfg.path, version=cfg.version)


def _read_groups(spark, path: str, inp):
    """Read each group of files that agree on their types with those types, cast every column to
    the unified type and union them (partition columns kept: ``basePath`` is the input path)."""
    from functools import reduce

    from pyspark.sql.types import _parse_datatype_string

    from clusterlake.io.columns import col

    target = {f.name: f.dataType for f in _parse_datatype_string(inp.spark_schema).fields}
    frames = []
    for ddl, files in inp.groups:
        df = spark.read.schema(ddl).option("basePath", path).parquet(*files)
        frames.append(df.select(*[col(c).cast(target[c]).alias(c) if c in target else col(c) for c in df.columns]))
    return reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True), frames)


_FILE_PROBLEMS = ("FAILED_READ_FILE", "org.apache.parquet", "ParquetDecodingException", "not a Parquet file",
                  "SchemaColumnConvertNotSupported", "cannot be converted", "Encountered error while reading file")


def spark_read_error(exc: Exception, path: str) -> Optional[InputDataError]:
    """A Spark job that failed while reading the input because of a damaged or unconvertible file,
    as one line naming the file if Spark did; None for anything else (a lost executor, an
    unreachable store: infrastructure, exit 1, worth a retry)."""
    import re

    text = str(exc)
    if not any(p in text for p in _FILE_PROBLEMS):
        return None
    m = re.search(r"(?:reading file|file) (\S+?\.parquet\S*)", text)
    where = f"file {m.group(1).rstrip('.,;')}" if m else f"input {path}"
    causes = [ln.split("Caused by:", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Caused by:")]
    detail = causes[0] if causes else _first_line(exc)
    return InputDataError(
        f"Spark could not read {where} ({detail[:300]}); rewrite or remove the damaged file upstream, then rerun"
    )


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:500] if str(exc).strip() else type(exc).__name__


def resolve_columns(df, cfg: InputSection, model_run: Optional[str] = None) -> list[str]:
    """Check the configured columns exist with usable types; return the feature columns.

    ``model_run``: the features are a model's (the update job), not the user's
    ``input.feature_columns``; the messages say so and name the run.

    Raises
    ------
    InputDataError
        naming the column, its type and the fix.
    """
    types = {f.name: type(f.dataType).__name__ for f in df.schema.fields}
    have = list(types)
    for key, col in (("input.id_column", cfg.id_column), ("input.label_column", cfg.label_column),
                     ("input.weight_column", cfg.weight_column)):
        if col is not None and col not in types:
            raise InputDataError(
                f"{key} '{col}' is not a column of {cfg.path}; columns are {have}"
            )
    if cfg.weight_column and types[cfg.weight_column] not in _NUMERIC:
        raise InputDataError(
            f"input column '{cfg.weight_column}' (input.weight_column) has type "
            f"{types[cfg.weight_column]}, expected a numeric type; cast it upstream"
        )
    for c in cfg.profile_columns or []:
        if c not in types:
            raise InputDataError(f"input.profile_columns names '{c}', not a column of {cfg.path}; columns are {have}")
        if types[c] not in _NUMERIC:
            raise InputDataError(f"input column '{c}' (input.profile_columns) has type {types[c]}, expected a "
                                 "numeric type; cast it upstream or leave it out of input.profile_columns")
    special = {c for c in (cfg.id_column, cfg.label_column, cfg.weight_column) if c} | set(cfg.profile_columns or [])
    if cfg.feature_columns is None and cfg.vector_column is not None:
        return []  # the vector's elements are the features (resolve_vector)
    if cfg.feature_columns is not None:
        missing = [c for c in cfg.feature_columns if c not in types]
        if missing and model_run is not None:
            raise InputDataError(
                f"the model of run {model_run} was fitted on feature column(s) {missing}, which "
                f"{cfg.path} lacks (columns are {have}); the new rows need every feature of the model: "
                "add the column(s) upstream, or run the full job (clusterlake run) to refit without them"
            )
        if missing:
            raise InputDataError(
                f"input.feature_columns names {missing}, not columns of {cfg.path}; "
                f"columns are {have}"
            )
        bad = {c: types[c] for c in cfg.feature_columns if types[c] not in _NUMERIC}
        if bad:
            desc = ", ".join(f"'{c}' has type {t}" for c, t in bad.items())
            fix = ("the model of run {model_run} was fitted on it as a number: cast it upstream, or run the "
                   "full job to refit without it").format(model_run=model_run) if model_run is not None else \
                "cast upstream or remove it from input.feature_columns"
            raise InputDataError(f"input feature column {desc}; features must be numeric: {fix}")
        return list(cfg.feature_columns)
    feats = [c for c in have if c not in special and types[c] in _NUMERIC]
    if not feats:
        raise InputDataError(
            f"no numeric feature columns found in {cfg.path} (columns: {have}); "
            "list them in input.feature_columns"
        )
    skipped = [c for c in have if c not in special and c not in feats]
    if skipped:
        log.info("inferred %d numeric feature columns; ignoring non-numeric %s", len(feats), skipped)
    return feats




@dataclass(frozen=True)
class VectorInput:
    """The input's vector column: its name, length, element type (``float``/``double``) and
    whether it is a Spark ML ``Vector`` (read through Spark as ``array<double>``)."""

    column: str
    dim: int
    element_type: str
    ml_vector: bool = False

    @property
    def names(self) -> list[str]:
        from clusterlake.io.vectors import element_names

        return element_names(self.column, self.dim)


_VECTOR_PROBE_ROWS = 1000


def model_vector(art) -> Optional[VectorInput]:
    """The vector column a model (a ModelArtifact) was fitted on, from its metadata; None for a
    model of named columns only."""
    meta = art.meta or {}
    if not meta.get("vector_column"):
        return None
    return VectorInput(meta["vector_column"], int(meta["vector_dim"]), meta.get("vector_type") or "float")


def input_columns(features: list[str], vector: Optional[VectorInput]) -> list[str]:
    """The input columns ``features`` come from: the named ones, then the vector column."""
    from clusterlake.io.vectors import element_index

    named = [c for c in features if element_index(c, vector.column if vector else None) is None]
    return named + ([vector.column] if vector is not None and len(named) < len(features) else [])


def resolve_vector(df, cfg: InputSection, dim: Optional[int] = None) -> Optional[VectorInput]:
    """``input.vector_column``'s type and length (None without one). The length is ``dim`` (the
    model's, in the update job), else ``input.vector_size``, else the most common length among
    the first 1,000 non-null vectors (one small Spark job reading the first rows only).

    Raises
    ------
    InputDataError
        the column is missing, is not an array of floats or an ML vector, or has no non-null vector.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, DoubleType, FloatType

    from clusterlake.io.columns import col as qcol

    name = cfg.vector_column
    if name is None:
        return None
    fields = {f.name: f.dataType for f in df.schema.fields}
    if name not in fields:
        raise InputDataError(f"input.vector_column '{name}' is not a column of {cfg.path}; columns are {list(fields)}")
    t = fields[name]
    ml = type(t).__name__ == "VectorUDT"
    if not ml and not (isinstance(t, ArrayType) and isinstance(t.elementType, (FloatType, DoubleType))):
        raise InputDataError(
            f"input column '{name}' (input.vector_column) has type {t.simpleString()}, expected array<float>, "
            "array<double> or a Spark ML vector; cast it upstream (e.g. .cast('array<float>'))")
    elem = "double" if ml else t.elementType.simpleString()
    from clusterlake.io.vectors import element_index

    clash = [c for c in cfg.feature_columns or [] if element_index(c, name) is not None]
    if clash:
        raise InputDataError(f"input.feature_columns {clash} are named like elements of input.vector_column "
                             f"'{name}' (its elements are the features '{name}[0]', '{name}[1]', ...); rename them")
    dim = dim or cfg.vector_size
    if dim is None:
        size = F.size(_as_array(name, ml))
        with spark_pass("vector length"):
            rows = (df.where(qcol(name).isNotNull()).limit(_VECTOR_PROBE_ROWS).select(size.alias("n"))
                    .groupBy("n").count().collect())
        rows = [r for r in rows if r["n"] is not None and r["n"] > 0]
        if not rows:
            raise InputDataError(f"input column '{name}' (input.vector_column) has no non-empty vector in its "
                                 f"first {_VECTOR_PROBE_ROWS} non-null rows; check the column, or set input.vector_size")
        best = max(rows, key=lambda r: (r["count"], -r["n"]))
        dim = int(best["n"])
        others = {int(r["n"]): int(r["count"]) for r in rows if r["n"] != dim}
        log.info("input.vector_column '%s': vectors of %d %ss%s", name, dim, elem,
                 f" (the first rows also hold lengths {others}: invalid rows)" if others else "")
    return VectorInput(name, int(dim), elem, ml)


def _as_array(name: str, ml_vector: bool):
    """The vector column as an array column (ML vectors converted to ``array<double>``)."""
    from clusterlake.io.columns import col as qcol

    if not ml_vector:
        return qcol(name)
    from pyspark.ml.functions import vector_to_array

    return vector_to_array(qcol(name), "float64")


def feature_column(name: str, vector: Optional[str] = None, ml_vector: bool = False):
    """The Spark column of feature ``name``: a named column, or element ``j`` of the vector column
    for ``vector[j]`` (:mod:`clusterlake.io.vectors`), as double, named ``name``."""
    from clusterlake.io.columns import col as qcol
    from clusterlake.io.vectors import element_index

    j = element_index(name, vector)
    if j is None:
        return qcol(name).cast("double").alias(name)
    return _as_array(vector, ml_vector).getItem(j).cast("double").alias(name)


def _vector_checks(vector: str, dim: int, ml_vector: bool = False) -> dict:
    """The vector column's reasons (:data:`clusterlake.io.vectors.VECTOR_REASONS`) as Spark conditions."""
    from pyspark.sql import functions as F

    v = _as_array(vector, ml_vector)
    inf = F.lit(float("inf"))
    present = v.isNotNull() & ~F.exists(v, lambda x: x.isNull())
    right = present & (F.size(v) == dim)
    return {
        f"{vector}:null": ~present,
        f"{vector}:length": present & (F.size(v) != dim),
        f"{vector}:nan": right & F.exists(v, lambda x: F.isnan(x)),
        f"{vector}:inf": right & F.exists(v, lambda x: F.abs(x) == inf),
        f"{vector}:too_large": right & F.exists(v, lambda x: (F.abs(x) > F.lit(MAX_ABS_VALUE)) & (F.abs(x) != inf)
                                                & ~F.isnan(x)),  # Spark orders NaN above every number
    }


def row_checks(id_col: str, features: list[str], weight_col: Optional[str] = None, vector=None):
    """The invalid-row rule (:mod:`clusterlake.io.validity`, whose numpy form the nightly job's
    load applies) as Spark expressions: ``(valid, reasons)``, ``valid`` true for a row
    with a non-null id, finite features no larger than :data:`MAX_ABS_VALUE` in magnitude and a
    finite non-negative weight; ``reasons`` maps ``"<column>:<null|nan|inf|too_large|negative>"``
    to the condition (counted per reason). ``vector``: the :class:`VectorInput` whose elements
    ``vector[j]`` are among ``features``: checked once per row as a vector."""
    from pyspark.sql import functions as F

    from clusterlake.io.columns import col as qcol
    from clusterlake.io.vectors import element_index

    inf = F.lit(float("inf"))
    reasons = {f"{id_col}:null": qcol(id_col).isNull()}
    valid = qcol(id_col).isNotNull()
    named = [c for c in features if element_index(c, vector.column if vector else None) is None]
    for c in named + ([weight_col] if weight_col else []):
        x = qcol(c).cast("double")
        reasons[f"{c}:null"] = qcol(c).isNull()
        reasons[f"{c}:nan"] = F.isnan(x)
        reasons[f"{c}:inf"] = F.abs(x) == inf
        reasons[f"{c}:too_large"] = (F.abs(x) > F.lit(MAX_ABS_VALUE)) & (F.abs(x) != inf) & ~F.isnan(x)
        valid = valid & x.isNotNull() & ~F.isnan(x) & (F.abs(x) <= F.lit(MAX_ABS_VALUE))
    if weight_col:
        w = qcol(weight_col).cast("double")
        reasons[f"{weight_col}:negative"] = w < 0
        valid = valid & (w >= 0)
    if vector is not None and len(named) < len(features):
        checks = _vector_checks(vector.column, vector.dim, vector.ml_vector)
        reasons.update(checks)
        for cond in checks.values():
            valid = valid & ~cond
    return valid, reasons


def validate(df, cfg: InputSection, k: int, keep_constant: bool = False, model_run: Optional[str] = None):
    """Validate the input and apply the invalid-row policy.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        The raw input.
    cfg : InputSection
    k : int
        The number of clusters requested (the data must have at least k valid rows).
    keep_constant : bool, default False
        Keep constant feature columns (the update job: a small batch of new rows may be constant
        in a feature the model uses).
    model_run : str, optional
        The run whose model decided ``cfg.feature_columns`` (the update job), for the messages.

    Returns
    -------
    clean : pyspark.sql.DataFrame
        id, features (as double, constant columns removed), label (if any), weight (if any);
        invalid rows removed under ``drop``. Not cached: the caller decides.
    summary : InputSummary

    Notes
    -----
    Two distributed passes; collected to the driver: one row of counts/min/max per column and at
    most 5 duplicate ids.
    """
    feats = resolve_columns(df, cfg, model_run)
    vector = resolve_vector(df, cfg)
    feats = feats + (vector.names if vector else [])
    valid, reasons = row_checks(cfg.id_column, feats, cfg.weight_column, vector)
    row = _profile(df, cfg, feats, valid, reasons, vector)
    n, n_bad, counts = _invalid_counts(row, list(reasons))
    v = Validity(n, n_bad, counts, np.array([row[f"lo{i}"] for i in range(len(feats))], dtype=np.float64),
                 np.array([row[f"hi{i}"] for i in range(len(feats))], dtype=np.float64))
    clean, summary = decide(df, cfg, feats, v, k, keep_constant, vector=vector)
    return clean.select(*output_columns(cfg, summary.feature_columns, vector)), summary


def decide(df, cfg: InputSection, feats: list[str], v: Validity, k: int, keep_constant: bool = False,
           dups=None, spark_free=None, vector: Optional[VectorInput] = None):
    """What validation concludes from the counts ``v`` over the input ``df``: the invalid-row
    policy (an error under ``fail``), at least ``k`` valid rows, constant features dropped, unique
    ids among the valid rows. Returns (the valid rows of ``df``, the summary). The nightly job
    counts ``v`` as it loads the rows, the update job by :func:`validate`.

    ``dups``: :func:`duplicate_ids` of every row's id, found before (the nightly job: no Spark job
    can run while the engine's tasks hold the rows); only when some are found and some rows are
    invalid is the check made again over the valid rows, inside ``spark_free()`` (a context that
    frees the task slots meanwhile). None: one Spark pass over the valid rows' ids here.
    ``vector``: the input's vector column, whose elements are among ``feats``."""
    from clusterlake.io.vectors import element_index

    n_used = _apply_invalid_policy(cfg, v.rows, v.invalid, v.counts, k, v.examples)
    constant = [] if keep_constant else [c for i, c in enumerate(feats) if v.lo[i] == v.hi[i]]
    kept = _kept_features(feats, constant)
    clean = df.filter(row_checks(cfg.id_column, feats, cfg.weight_column, vector)[0]) if v.invalid else df
    if dups is None:
        dups = duplicate_ids(clean, cfg.id_column)
    elif dups and v.invalid:  # are they among the valid rows?
        with spark_free():
            dups = duplicate_ids(clean, cfg.id_column)
            if dups:  # raised with the rows released: a failing run loads nothing again
                _raise_duplicates(cfg.id_column, *dups)
    if dups:
        _raise_duplicates(cfg.id_column, *dups)
    summary = InputSummary(
        path=cfg.path, format=cfg.format, rows_read=v.rows, rows_used=n_used, rows_dropped=v.invalid,
        invalid_counts=dict(v.counts), feature_columns=kept, dropped_constant_columns=constant,
        id_column=cfg.id_column, label_column=cfg.label_column, weight_column=cfg.weight_column,
        feature_types={c: (df.schema[c].dataType.simpleString() if element_index(c, vector and vector.column) is None
                           else vector.element_type) for c in feats}, version=cfg.version,
    )
    return clean, summary


def load_columns(df, cfg: InputSection, feats: list[str], vector: Optional[VectorInput] = None):
    """The input's columns the nightly job loads, as the engine's tasks validate them: id, the
    named features (float columns as they are, half the bytes of a double; other numbers as
    double), the vector column (an ML vector as ``array<double>``), label, weight (double).
    Nothing is filtered: the tasks count and drop invalid rows."""
    from clusterlake.io.columns import col as qcol

    types = {f.name: f.dataType.simpleString() for f in df.schema.fields}
    cols = [qcol(cfg.id_column)]
    cols += [qcol(c) if types[c] in ("float", "double") else qcol(c).cast("double").alias(c) for c in feats]
    if vector is not None:
        cols.append(_as_array(vector.column, vector.ml_vector).alias(vector.column))
    if cfg.label_column and cfg.label_column != cfg.id_column:
        cols.append(qcol(cfg.label_column))
    if cfg.weight_column:
        cols.append(qcol(cfg.weight_column).cast("double").alias(cfg.weight_column))
    cols += [qcol(c).cast("double").alias(c) for c in cfg.profile_columns or []]
    return df.select(*cols)


def _profile(df, cfg: InputSection, feats: list[str], valid, reasons: dict, vector=None) -> dict:
    """Rows, invalid rows, rows per invalid reason (``r<i>``) and the min/max of every feature over
    the valid rows (``lo<i>``/``hi<i>``, for the constant check).

    One aggregation when every row is valid (the usual night): rows, invalid rows and the plain
    min/max of each column, which are then the valid rows' min/max. Only when some row is invalid
    does a second aggregation count the reasons and take the min/max over the valid rows (one
    aggregation doing both every night, the validity condition copied into each of its 2d + 2
    aggregates, cost 11 s instead of 2 on 1M x 32 rows). This is the first Spark job that reads
    every input file, so a damaged file surfaces here."""
    from pyspark.sql import functions as F

    from clusterlake.io.columns import col as qcol

    vcol, ml = (vector.column, vector.ml_vector) if vector else (None, False)
    xs = [feature_column(c, vcol, ml) for c in feats]
    aggs = [F.count(F.lit(1)).alias("__n"), F.sum(F.when(valid, 0).otherwise(1)).alias("__bad")]
    aggs += [a for i, x in enumerate(xs) for a in (F.min(x).alias(f"lo{i}"), F.max(x).alias(f"hi{i}"))]
    try:
        with spark_pass("validate"):
            row = df.agg(*aggs).collect()[0].asDict()
        row.update({f"r{i}": 0 for i in range(len(reasons))})
        if row["__bad"]:
            aggs = [F.sum(F.when(cond, 1).otherwise(0)).alias(f"r{i}") for i, cond in enumerate(reasons.values())]
            aggs += [a for i, x in enumerate(xs)
                     for a in (F.min(F.when(valid, x)).alias(f"lo{i}"), F.max(F.when(valid, x)).alias(f"hi{i}"))]
            with spark_pass("invalid rows"):
                row.update(df.agg(*aggs).collect()[0].asDict())
        return row
    except Exception as exc:
        err = spark_read_error(exc, cfg.path)
        if err is None:
            raise
        raise err from None


def _invalid_counts(row, names: list[str]) -> tuple[int, int, dict[str, int]]:
    """``(rows read, invalid rows, {reason: rows})`` from :func:`_profile`'s row, reasons seen only."""
    n = int(row["__n"])
    n_bad = int(row["__bad"] or 0)
    counts = {name: int(row[f"r{i}"] or 0) for i, name in enumerate(names)}
    return n, n_bad, {k_: v for k_, v in counts.items() if v}


def _apply_invalid_policy(cfg: InputSection, n: int, n_bad: int, counts: dict[str, int], k: int,
                          examples: Optional[dict] = None) -> int:
    """``input.invalid_rows``: fail naming the worst columns, or warn and go on without the
    invalid rows; then check enough rows remain. Returns the rows used."""
    if n == 0:
        raise InputDataError(f"input {cfg.path} has no rows; check input.path and the upstream job")
    if n_bad:
        worst = sorted(counts.items(), key=lambda kv: -kv[1])[:5]
        detail = ", ".join(f"'{k_.rsplit(':', 1)[0]}' {v} {k_.rsplit(':', 1)[1]}" for k_, v in worst)
        eg = "; ".join(f"e.g. {t}" for r, t in (examples or {}).items() if r in dict(worst))
        detail += f" ({eg})" if eg else ""
        if cfg.invalid_rows == "fail":
            what = "null, NaN, inf, |value| > %g, or a negative weight" % MAX_ABS_VALUE
            if cfg.vector_column:
                what += f"; a '{cfg.vector_column}' vector null or of another length"
            raise InputDataError(
                f"input has {n_bad} of {n} rows with invalid values ({detail}; {what}); "
                "set input.invalid_rows: drop to drop them (they are counted), or clean the columns"
            )
        log.warning("dropping %d of %d invalid rows (input.invalid_rows=drop): %s", n_bad, n, detail)
        if n_bad == n:
            raise InputDataError(f"all {n} input rows are invalid ({detail}); nothing to cluster")
    n_used = n - n_bad
    # before the constant check: with fewer rows than k (e.g. one) every column looks constant
    if n_used < k:
        raise InputDataError(
            f"input has {n_used} valid rows, fewer than kmeans.k={k}; lower kmeans.k or check the input"
        )
    return n_used


def _kept_features(feats: list[str], constant: list[str]) -> list[str]:
    """The features without the ``constant`` ones (zero variance carries no information and
    breaks standard scaling); an error when none is left."""
    kept = [c for c in feats if c not in constant]
    if constant:
        if not kept:
            raise InputDataError(
                f"every feature column is constant ({constant}); there is nothing to cluster on"
            )
        log.warning("dropping constant feature columns %s (zero variance carries no information)", constant)
    return kept


def duplicate_ids(df, id_column: str):
    """``(how many ids occur more than once, up to 5 of them with their counts, the most repeated
    first)``, or an empty tuple when ``id_column`` is unique in ``df`` (null ids are not counted:
    they are invalid rows). One Spark pass over the id column alone.

    Duplicates always fail (:func:`decide`); there is no other policy: every table keys its rows
    by the id (one assignment per id, the id join that carries cluster ids and lineage from one run
    to the next, the update job's known-id check), and no rule could pick one of two rows with the
    same id reproducibly."""
    from pyspark.sql import functions as F

    from clusterlake.io.columns import col as qcol

    dups = df.where(qcol(id_column).isNotNull()).groupBy(qcol(id_column)).count().filter(F.col("count") > 1)
    with spark_pass("unique ids"):
        examples = dups.orderBy(F.col("count").desc(), qcol(id_column)).limit(5).collect()
    if not examples:
        return ()
    return dups.count(), [(r[id_column], r["count"]) for r in examples]


def _raise_duplicates(id_column: str, n_dup: int, examples: list) -> None:
    shown = ", ".join(f"{v!r} x{c}" for v, c in examples)
    raise InputDataError(
        f"input column '{id_column}' (input.id_column) has {n_dup} duplicated ids (e.g. {shown}); "
        "ids must be unique: deduplicate the input upstream"
    )


def output_columns(cfg: InputSection, kept: list[str], vector: Optional[VectorInput] = None) -> list:
    """The validated table's columns: id, kept features as double (a vector's elements as
    columns ``vector[j]``), label, weight as double."""
    from clusterlake.io.columns import col as qcol

    vcol, ml = (vector.column, vector.ml_vector) if vector else (None, False)
    cols = [qcol(cfg.id_column)] + [feature_column(c, vcol, ml) for c in kept]
    if cfg.label_column:
        cols.append(qcol(cfg.label_column))
    if cfg.weight_column:
        cols.append(qcol(cfg.weight_column).cast("double").alias(cfg.weight_column))
    return cols
