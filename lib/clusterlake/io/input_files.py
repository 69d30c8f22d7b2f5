"""The input's files and their schema, read from every parquet footer before Spark reads a row.

Spark takes a parquet directory's schema from one file (whichever it lists first) unless asked to
merge, and merging refuses ``int`` in one file and ``double`` in another. So a feature column that
turned into a string in tonight's new file, or a file that lacks a column, silently changed the
features, and a truncated file surfaced as a Java stack trace deep inside the first Spark job.

:func:`scan_parquet` reads the footer of every data file (a few KB each, in parallel threads on
the driver; no row is read) and decides once, before Spark starts reading:

* a file that is not readable parquet (truncated, empty, another format) is an
  :class:`~clusterlake.errors.InputDataError` naming the file;
* a column the job uses (the id, label, weight and feature columns; with
  ``input.feature_columns: null`` every column that is numeric in some file) must be in every
  file, with types that unify: integers of any width -> ``long``, integers and floats ->
  ``double``. Anything else (a feature that is a string in some files) is an error naming the
  column, the types and example files;
* when a column's types differ across files, or a column has a type Spark cannot read (e.g.
  ``timestamp[ns]``), the read gets an explicit schema of the usable columns, so Spark neither
  guesses from one file nor trips over a column the job never uses.

Which files: Spark's rules for a directory (recursively; names starting with ``.`` or ``_`` are
skipped unless they are ``name=value`` partition directories). Partition columns come from the
directory names and are left to Spark. Runs on the driver only.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

from clusterlake.config import InputSection
from clusterlake.errors import InputDataError
from clusterlake.io.fs import Location, location

log = logging.getLogger(__name__)

_FOOTER_THREADS = 16


@dataclass
class ParquetInput:
    """What the footers of an input's files say."""

    path: str
    files: list[str]  # data files, relative to ``path`` ("" for a single file)
    types: dict[str, pa.DataType] = field(default_factory=dict)  # column -> unified type
    spark_schema: Optional[str] = None  # DDL to read with; None = Spark's own inference agrees
    groups: list[tuple[str, list[str]]] = field(default_factory=list)
    """When a column's type differs across files: (DDL of the files' own types, file URIs) per
    group of files that agree; each group is read with its DDL and cast to ``spark_schema``'s types
    (Spark's reader cannot read every file type as every wider type, e.g. int64 as double)."""
    ignored: dict[str, str] = field(default_factory=dict)  # column -> why the read leaves it out


def _hidden(name: str) -> bool:
    """Spark's rule for paths it does not read (HadoopFSUtils.shouldFilterOutPathName)."""
    return name.startswith(".") or (name.startswith("_") and "=" not in name) or name.endswith("._COPYING_")


def list_data_files(loc: Location) -> list[str]:
    """The files Spark reads under ``loc`` (relative paths, sorted); ``[""]`` for a single file."""
    if not loc.is_dir():
        return [""]
    base = loc.path.rstrip("/") + "/"
    out = []
    for info in loc.files(recursive=True):
        rel = info.path[len(base):]
        if not any(_hidden(part) for part in rel.split("/")):
            out.append(rel)
    return sorted(out)


def _footer(loc: Location, rel: str):
    """``(rel, schema or None, error text or None)`` of one file's parquet footer."""
    f = loc.child(rel) if rel else loc
    try:
        with f.fs.open_input_file(f.path) as fh:
            return rel, pq.read_schema(fh), None
    except Exception as exc:  # noqa: BLE001 (any unreadable file is reported by name)
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return rel, None, text


def _plain(t: pa.DataType) -> pa.DataType:
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return pa.list_(_plain(t.value_type))  # the item field's name differs between writers
    return t


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _unify(types: set) -> Optional[pa.DataType]:
    """One type for a column seen with ``types`` across files, or None when they conflict."""
    if len(types) == 1:
        return next(iter(types))
    if all(pa.types.is_integer(t) for t in types):
        return pa.int64()
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in types):
        return pa.float64()
    return None


def _spark_type(t: pa.DataType) -> Optional[str]:
    """The Spark SQL type to read a parquet column of arrow type ``t`` as, or None if Spark
    cannot read it (nanosecond timestamps, unsigned 64-bit, ...)."""
    from pyspark.sql.pandas.types import from_arrow_type

    if pa.types.is_timestamp(t) and t.unit == "ns":
        return None
    try:
        return from_arrow_type(t).simpleString()
    except Exception:  # noqa: BLE001 (unsupported by Spark's Arrow conversion)
        return None


def _example(files: list[str], root: str, n: int = 3) -> str:
    shown = [f"{root.rstrip('/')}/{f}" if f else root for f in files[:n]]
    more = f" and {len(files) - n} more" if len(files) > n else ""
    return ", ".join(shown) + more


def _read_footers(loc: Location, files: list[str], path: str) -> list[tuple[str, pa.Schema]]:
    with ThreadPoolExecutor(max_workers=max(1, min(_FOOTER_THREADS, len(files)))) as pool:
        results = list(pool.map(lambda rel: _footer(loc, rel), files))
    bad = [(rel, err) for rel, schema, err in results if schema is None]
    if bad:
        rel, err = bad[0]
        raise InputDataError(
            f"input file {_example([rel], path, 1)} is not a readable parquet file ({err}); "
            f"{len(bad)} of {len(files)} files under input.path are unreadable "
            f"({_example([b[0] for b in bad], path)}): rewrite or remove them upstream, then rerun"
        )
    return [(rel, schema) for rel, schema, _ in results]


def _columns_used(cfg: InputSection, seen: dict[str, dict]) -> list[str]:
    """The columns the job reads: configured ones, or every column numeric in some file."""
    special = [c for c in (cfg.id_column, cfg.label_column, cfg.weight_column, cfg.vector_column) if c] + \
        list(cfg.profile_columns or [])
    if cfg.feature_columns is not None:
        feats = list(cfg.feature_columns)
    elif cfg.vector_column is not None:
        feats = []
    else:
        feats = [c for c, by_type in seen.items() if c not in special and any(_numeric(t) for t in by_type)]
    return [c for c in special + feats if c in seen]


def _check_column(name: str, by_type: dict, files: list[str], path: str) -> pa.DataType:
    """The unified type of a used column, or an InputDataError naming the conflict."""
    have = {rel for rels in by_type.values() for rel in rels}
    lacking = [rel for rel in files if rel not in have]
    if lacking:
        raise InputDataError(
            f"input column '{name}' is missing from {len(lacking)} of {len(files)} files "
            f"({_example(lacking, path)}) but present in the others (e.g. {_example(sorted(have), path, 1)}); "
            "every file must have the same columns: fix the files upstream, or leave the column out "
            "with input.feature_columns"
        )
    unified = _unify(set(by_type))
    if unified is None:
        desc = "; ".join(f"{t} in {len(rels)} file(s) (e.g. {_example(sorted(rels), path, 1)})"
                         for t, rels in sorted(by_type.items(), key=lambda kv: -len(kv[1])))
        raise InputDataError(
            f"input column '{name}' has conflicting types across files: {desc}; cast it to one numeric "
            "type upstream, or leave it out with input.feature_columns"
        )
    return unified


def scan_parquet(cfg: InputSection) -> ParquetInput:
    """Read every footer under ``cfg.path`` and decide how Spark should read it (see module doc).

    Raises
    ------
    InputDataError
        no such path, no data file, an unreadable file, or a used column missing from some files
        or with conflicting types; the message names the files and the fix.
    """
    loc = location(cfg.path)
    if not loc.exists():
        raise InputDataError(
            f"input path {cfg.path} does not exist; check input.path (for the embedded sample run `make data`)"
        )
    files = list_data_files(loc)
    if not files:
        raise InputDataError(f"input path {cfg.path} has no data files; check input.path and the upstream job")
    seen: dict[str, dict] = {}  # column -> {type: [files]}, in first-seen column order
    per_file: dict[str, dict[str, pa.DataType]] = {}
    for rel, schema in _read_footers(loc, files, cfg.path):
        per_file[rel] = {f.name: _plain(f.type) for f in schema}
        for f in schema:
            seen.setdefault(f.name, {}).setdefault(_plain(f.type), []).append(rel)
    out = ParquetInput(cfg.path, files)
    used = set(_columns_used(cfg, seen))
    for name, by_type in seen.items():
        out.types[name] = _check_column(name, by_type, files, cfg.path) if name in used else \
            (_unify(set(by_type)) or next(iter(by_type)))
    out.spark_schema = _read_schema(out, seen, used)
    if out.spark_schema is not None and any(len(seen[c]) > 1 for c in out.types if c not in out.ignored):
        out.groups = _file_groups(loc, per_file, [c for c in out.types if c not in out.ignored])
    return out


def _file_groups(loc: Location, per_file: dict, columns: list[str]) -> list[tuple[str, list[str]]]:
    """Files grouped by their own types of ``columns``, each group as (DDL, file URIs)."""
    from clusterlake.io.columns import quoted

    groups: dict[str, list[str]] = {}
    for rel, types in per_file.items():
        ddl = ", ".join(f"{quoted(c)} {_spark_type(types[c])}" for c in columns if c in types)
        groups.setdefault(ddl, []).append(loc.child(rel).uri if rel else loc.uri)
    return sorted(groups.items())


def _read_schema(inp: ParquetInput, seen: dict[str, dict], used: set) -> Optional[str]:
    """None when Spark's own inference reads every column as the footers agree; otherwise the
    explicit DDL of the readable columns (and ``inp.ignored`` says which were left out)."""
    from clusterlake.io.columns import quoted

    cols, uniform = [], True
    for name, t in inp.types.items():
        st = _spark_type(t)
        agree = len(seen[name]) == 1
        if st is None or (not agree and name not in used and _unify(set(seen[name])) is None):
            if name in used:
                raise InputDataError(
                    f"input column '{name}' has type {t}, which Spark cannot read; cast it upstream "
                    "(e.g. timestamps to microseconds) or leave it out with input.feature_columns"
                )
            inp.ignored[name] = f"type {t}" if st is None else "conflicting types across files"
            uniform = False
            continue
        uniform = uniform and agree
        cols.append(f"{quoted(name)} {st}")
    if inp.ignored:
        log.info("input: not reading column(s) the job does not use: %s",
                 ", ".join(f"'{c}' ({why})" for c, why in inp.ignored.items()))
    return None if uniform else ", ".join(cols)


# ----------------------------------------------------------------------------------------------
# the input read by the engine's tasks themselves


@dataclass(frozen=True)
class FileSlices:
    """A plain parquet input (every column the job needs is in every file, with one type) as the
    engine's tasks read it themselves with pyarrow: no JVM scan, no JVM -> Arrow conversion (on
    1M x 32 rows pyarrow reads the files in 0.2 s, Spark's scan and conversion take 7-15 s).
    The executors must reach ``root`` (a shared or object-store path; a local path in local mode).

    ``files``: (path relative to ``root``, rows of each row group); ``columns``: what to read;
    ``as_double``: columns cast to float64 on the way (the features that are not float/double,
    the weight). :meth:`split` cuts the rows into contiguous, equal ranges, one per task.
    """

    root: str
    files: tuple
    columns: tuple
    as_double: tuple = ()
    id_column: Optional[str] = None
    """Set when the footers prove that no two row groups share an id (:func:`disjoint_id_ranges`):
    then the ids are unique if each row group's are, which the tasks check as they load
    (:meth:`id_duplicates`) instead of a Spark pass over the id column."""

    @property
    def rows(self) -> int:
        return sum(sum(rgs) for _, rgs in self.files)

    def split(self, n: int) -> list[list[tuple[str, int, int, int]]]:
        """``n`` (or fewer, never empty) lists of (file, row group, start, stop) slices of about
        ``rows / n`` rows each, in file and row order."""
        total = self.rows
        n = max(1, min(n, total)) if total else 1
        bounds = [total * i // n for i in range(n + 1)]
        out: list[list] = [[] for _ in range(n)]
        at, task = 0, 0
        for rel, rgs in self.files:
            for g, size in enumerate(rgs):
                start = 0
                while start < size:
                    while at + start >= bounds[task + 1] and task < n - 1:
                        task += 1
                    stop = min(size, bounds[task + 1] - at)
                    out[task].append((rel, g, start, stop))
                    start = stop
                at += size
        return [t for t in out if t] or [[]]

    def read(self, slices, batch_rows: int):
        """The Arrow batches of ``slices`` (columns as documented), at most ``batch_rows`` rows each."""
        import pyarrow.compute as pc

        root = location(self.root)
        current, pf = None, None
        try:
            for rel, g, start, stop in slices:
                f = root.child(rel) if rel else root
                if rel != current:
                    if pf is not None:
                        pf.close()
                    pf, current = pq.ParquetFile(f.fs.open_input_file(f.path)), rel
                try:
                    t = pf.read_row_group(g, columns=list(self.columns)).slice(start, stop - start)
                except Exception as exc:  # a damaged file: named, as Spark's read names it (exit 2)
                    raise OSError(f"Encountered error while reading file {f.uri} (row group {g}): "
                                  f"{type(exc).__name__}: {exc}") from exc
                for c in self.as_double:  # unsafe: int64 beyond 2**53 rounds, as Spark's cast does
                    i = t.schema.get_field_index(c)
                    t = t.set_column(i, c, pc.cast(t.column(c), pa.float64(), safe=False))
                yield from t.to_batches(max_chunksize=batch_rows)
        finally:
            if pf is not None:
                pf.close()


    def id_duplicates(self, slices) -> dict:
        """The duplicated ids of every row group ``slices`` touch, each row group read whole (its
        id column alone; a row group split between two tasks is checked by both):
        ``{"file:group": [duplicated ids, [[id, count], ...] up to 5, most repeated first]}`` for
        the row groups that have any. Null ids are left out (they are invalid rows)."""
        import pyarrow.compute as pc

        root, out, groups = location(self.root), {}, {}
        for rel, g, _, _ in slices:
            groups.setdefault(rel, []).append(g)
        for rel, gs in groups.items():
            f = root.child(rel) if rel else root
            with pq.ParquetFile(f.fs.open_input_file(f.path)) as pf:  # each file opened once
                for g in dict.fromkeys(gs):
                    self._row_group_duplicates(pf, rel, g, out)
        return out

    def _row_group_duplicates(self, pf, rel: str, g: int, out: dict) -> None:
        import pyarrow.compute as pc

        ids = pf.read_row_group(g, columns=[self.id_column]).column(0)
        if pc.count_distinct(ids, mode="only_valid").as_py() != pc.count(ids, mode="only_valid").as_py():
            vc = pc.value_counts(ids.drop_null())
            many = pc.greater(vc.field("counts"), 1)
            vals, counts = pc.filter(vc.field("values"), many).to_pylist(), pc.filter(vc.field("counts"), many).to_pylist()
            top = sorted(zip(counts, vals), key=lambda cv: (-cv[0], cv[1]))[:5]
            out[f"{rel}:{g}"] = [len(vals), [[v, c] for c, v in top]]


def merge_id_duplicates(parts) -> Optional[tuple]:
    """The tasks' :meth:`FileSlices.id_duplicates` merged (a row group reported twice counts
    once) as :func:`clusterlake.io.reader.duplicate_ids` answers: ``(duplicated ids, up to 5
    [(id, count)], most repeated first)``, ``()`` when there is none, None when some task did not
    check (its load did not read the files itself: the caller must check another way)."""
    groups = {}
    for part in parts:
        if part is None:
            return None
        groups.update(part)
    if not groups:
        return ()
    examples = sorted((tuple(e) for _, ex in groups.values() for e in ex), key=lambda vc: (-vc[1], vc[0]))[:5]
    return sum(n for n, _ in groups.values()), examples


def _id_range(md, g: int, j: int) -> Optional[tuple[int, int]]:
    """The (min, max) of an integer column ``j`` in row group ``g`` from its statistics, else None."""
    col = md.row_group(g).column(j)
    st = col.statistics
    if st is None or not st.has_min_max or col.physical_type not in ("INT32", "INT64"):
        return None
    lo, hi = st.min, st.max
    return (lo, hi) if isinstance(lo, int) and isinstance(hi, int) else None


def disjoint_id_ranges(footers: list, id_column: str) -> bool:
    """Whether the footers' row-group statistics prove that no two row groups share an id: an
    integer id column with min/max in every non-empty row group, and the ranges pairwise disjoint
    (ids sorted across files and row groups, as auto-increment keys usually are). ``footers``:
    each file's parquet metadata."""
    ranges = []
    for md in footers:
        names = [md.schema.column(i).path for i in range(md.num_columns)]
        if id_column not in names:
            return False
        j = names.index(id_column)
        for g in range(md.num_row_groups):
            if md.row_group(g).num_rows == 0:
                continue
            r = _id_range(md, g, j)
            if r is None:
                return False
            ranges.append(r)
    ranges.sort()
    return all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))


_TASK_SCHEMES = ("file://", "s3://", "s3a://", "gs://", "gcs://")
"""Where the tasks read with pyarrow: local paths and the object stores pyarrow reaches with the
executors' own credentials; anything else (hdfs://, dbfs:/, abfss://) is read by Spark."""


def plain_file_scan(cfg: InputSection, columns: list[str], as_double: list[str],
                    scanned: Optional[ParquetInput] = None, unique_ids: Optional[str] = None) -> Optional[FileSlices]:
    """The input as :class:`FileSlices` when it is a plain parquet scan (format parquet, every one
    of ``columns`` in the files' footers with one type across files), else None (Spark reads it).
    ``scanned``: :func:`scan_parquet` of it, when the caller made it already. ``unique_ids``: the
    id column, whose uniqueness the tasks check as they load when the footers allow it
    (:attr:`FileSlices.id_column`)."""
    if cfg.format != "parquet" or ("://" in cfg.path and not cfg.path.startswith(_TASK_SCHEMES)):
        return None
    inp = scanned or scan_parquet(cfg)
    if inp.groups or inp.spark_schema is not None or any(c not in inp.types for c in columns):
        return None
    loc = location(cfg.path)
    files, footers = [], []
    for rel in inp.files:
        f = loc.child(rel) if rel else loc
        with f.fs.open_input_file(f.path) as fh:
            md = pq.read_metadata(fh)
        files.append((rel, tuple(md.row_group(g).num_rows for g in range(md.num_row_groups))))
        footers.append(md)
    ids = unique_ids if unique_ids and disjoint_id_ranges(footers, unique_ids) else None
    return FileSlices(loc.uri, tuple(files), tuple(dict.fromkeys(columns)), tuple(as_double), ids)


def frame_file_scan(df, columns: list[str]) -> Optional[FileSlices]:
    """``df``'s ``columns`` as :class:`FileSlices` when reading them is a plain scan of local
    parquet files: Spark's optimised plan of ``df.select(columns)`` is those columns, unchanged, of
    a parquet relation without partition columns (no filter, no expression, not Delta), and every
    file holds each column under that name with the type Spark reads (an ``array<float>`` column as
    a list of float32, say). Else None: Spark reads it. Used by the ``ml`` estimators, whose input
    is a DataFrame rather than a config; files on other filesystems are left to Spark."""
    from urllib.parse import unquote, urlparse

    from clusterlake.io.columns import col

    plan = df.select(*[col(c) for c in columns])._jdf.queryExecution().optimizedPlan()
    node = plan.child() if plan.nodeName() == "Project" else plan
    if plan.nodeName() == "Project":
        exprs = plan.projectList()
        if any(exprs.apply(i).getClass().getSimpleName() != "AttributeReference" for i in range(exprs.size())):
            return None
    if node.getClass().getSimpleName() != "LogicalRelation":
        return None
    rel = node.relation()
    if (rel.getClass().getSimpleName() != "HadoopFsRelation" or rel.fileFormat().toString() != "Parquet"
            or not rel.partitionSchema().isEmpty() or rel.location().getClass().getSimpleName() != "InMemoryFileIndex"):
        return None
    uris = list(rel.location().inputFiles())
    if not uris or any(urlparse(u).scheme != "file" for u in uris):
        return None
    paths = [unquote(urlparse(u).path) for u in uris]  # Spark's URIs are percent-encoded
    want = {f.name: f.dataType.simpleString() for f in df.schema.fields if f.name in columns}
    sizes = []
    for p in paths:
        try:
            md = pq.read_metadata(p)
        except Exception:  # noqa: BLE001 (unreadable here: Spark reads it, and names what is wrong)
            return None
        schema = md.schema.to_arrow_schema()
        for c in columns:
            i = schema.get_field_index(c)
            if i < 0 or _spark_type(_plain(schema.field(i).type)) != want.get(c):
                return None
        sizes.append(tuple(md.row_group(g).num_rows for g in range(md.num_row_groups)))
    root = os.path.commonpath(paths) if len(paths) > 1 else paths[0]
    rels = [os.path.relpath(p, root) for p in paths] if len(paths) > 1 else [""]
    return FileSlices(location(root).uri, tuple(zip(rels, sizes)), tuple(dict.fromkeys(columns)))
