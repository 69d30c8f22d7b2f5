"""The engine's resident data: how a partition's rows become the numpy block a barrier task keeps.

Rows cross the JVM -> Python boundary once: :func:`pack_task` turns each Arrow batch of the input
into one packed row (float32 bytes of the model-space features, float64 bytes of the weights),
small enough to shuffle when the input has more partitions than the stage has tasks. Each barrier
task then :func:`unpack` s its packed rows into one :class:`Block`, the data every command of its
worker runs against until the stage ends.

Carried columns (the id, the label): :attr:`BlockSource.carry` names them; each packed row holds
that batch's values of them as Arrow IPC bytes, and :func:`unpack` restores them in the same
``(src, seq)`` order as one Arrow table, :attr:`Block.columns`, aligned with the rows of ``X``.
Without ``center`` the block holds the features in input units, in :attr:`BlockSource.dtype`
(float32 where that is exact, float64 otherwise): the run's resident rows
(:mod:`clusterlake.algorithms.resident`) derive the model space from them on the tasks.

Validation (:attr:`BlockSource.validate_id`): each batch's invalid rows are counted by reason and
left out as it is packed (:mod:`clusterlake.io.validity`); the counts ride along and
:attr:`Block.validity` holds them merged.

Files read by the tasks (:func:`files_frame`): for a plain parquet input
(:class:`~clusterlake.io.input_files.FileSlices`) there is no packing job at all: each barrier
task reads its share of the row groups with pyarrow in its own process (:func:`file_loader`),
validates and packs them there, and unpacks them into its block; the rows never pass through the
JVM.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
import pyarrow as pa

from clusterlake.engine.spill import TaskMemory
from clusterlake.io.batches import arrow_input, feature_block
from clusterlake.kernels import kmeans as K


@dataclass
class Block:
    """One barrier task's resident rows.

    ``X`` is C-contiguous float32 (n, d) in the model space, ``w`` the float64 row weights (None:
    every row weighs 1), ``partition`` the task's number (seeds per-task random draws), and
    ``columns`` the carried columns (an Arrow table under the user's names, aligned with the rows
    of ``X``; None when nothing is carried), ``memory`` the task's budget: workers allocate their
    per-row arrays from it (:mod:`clusterlake.engine.spill`).
    """

    X: np.ndarray
    w: Optional[np.ndarray]
    partition: int
    columns: Optional[pa.Table] = None
    validity: Optional[dict] = None  # the load's validation counts (Validity JSON), when it validated
    id_duplicates: Optional[dict] = None  # the row groups' duplicated ids, when the load checked them
    memory: TaskMemory = field(default_factory=TaskMemory)

    @property
    def n(self) -> int:
        return len(self.X)

    @property
    def sum_w(self) -> float:
        """The block's total weight (its row count when unweighted)."""
        return float(self.n if self.w is None else self.w.sum())


@dataclass(frozen=True)
class BlockSource:
    """How a task turns Arrow batches into its block. Captured by the task closure: plain values only.

    Either ``array_column`` (one ``array<float|double>`` column, e.g. from ``vector_to_array``)
    or ``columns`` (numeric columns, transformed by the preprocessor arrays when given) and/or the
    vector column ``vector`` of ``vector_dim`` elements (:mod:`clusterlake.io.vectors`: its rows
    are checked, not assumed, and it follows the named columns).
    """

    columns: tuple[str, ...] = ()
    array_column: Optional[str] = None
    vector: Optional[str] = None
    vector_dim: int = 0
    weight_column: Optional[str] = None
    center: Optional[np.ndarray] = None
    scale: Optional[np.ndarray] = None
    components: Optional[np.ndarray] = None
    normalize: bool = False
    carry: tuple[str, ...] = ()
    """Columns carried along as Arrow (ids, labels), not features."""
    dtype: str = "float32"
    """The block's float type (float64 keeps input units exact when they are not float32)."""
    validate_id: Optional[str] = None
    """Set (to the id column, carried): the rows are validated as they are packed
    (:func:`clusterlake.io.validity.check_batch`): invalid rows are counted by reason and left
    out, instead of failing the load."""
    labels: tuple[tuple[str, str], ...] = ()
    """(column as the task sees it, the user's name) pairs, for messages (see :meth:`positional`)."""

    @property
    def input_columns(self) -> list[str]:
        cols = [self.array_column] if self.array_column else list(self.columns) + ([self.vector] if self.vector else [])
        return cols + ([self.weight_column] if self.weight_column else []) + list(self.carry)

    @property
    def width(self) -> int:
        """Values per input row (a vector counts its elements), for sizing batches."""
        return len(self.input_columns) + max(0, self.vector_dim - 1)

    @property
    def features(self):
        """The block's features (:class:`~clusterlake.io.vectors.Features`): the named columns, then
        the vector's elements."""
        from clusterlake.io.vectors import Features

        return Features.of(list(self.columns), self.vector, self.vector_dim)

    def positional(self, pos: dict[str, str]) -> "BlockSource":
        """This source reading the columns under the names ``pos`` gives them
        (:func:`~clusterlake.io.batches.arrow_input`); messages keep the user's names."""
        def p(c):
            return None if c is None else pos[c]

        return replace(self, columns=tuple(pos[c] for c in self.columns), array_column=p(self.array_column),
                       vector=p(self.vector), weight_column=p(self.weight_column), carry=tuple(pos[c] for c in self.carry),
                       validate_id=p(self.validate_id),
                       labels=tuple((a, c) for c, a in pos.items()))

    def arrow_frame(self, df):
        """``df`` reduced to this source's columns under positional names, and the source reading
        them: PySpark's ``mapInArrow`` cannot take a column whose name holds a dot or a backtick."""
        src, pos = arrow_input(df, self.input_columns)
        return src, self.positional(pos)

    def _name(self, column: str) -> str:
        return dict(self.labels).get(column, column)

    def block(self, batch: pa.RecordBatch) -> np.ndarray:
        """One batch as a float64 (n, p) block in the model space."""
        n = batch.num_rows
        if self.array_column:
            col = batch.column(self.array_column)
            if col.null_count:
                raise ValueError(f"column '{self._name(self.array_column)}' has {col.null_count} null vectors")
            flat = col.flatten().to_numpy(zero_copy_only=False)
            if n and flat.size % n:
                raise ValueError(f"column '{self._name(self.array_column)}' holds vectors of different lengths")
            X = flat.reshape(n, -1 if n else 0).astype(np.float64, copy=False)
        elif self.vector:
            X = self._vector_block(batch)
        else:
            X = feature_block(batch, list(self.columns))
        if self.center is not None:
            from clusterlake.prep.transform import Preprocessor

            X = Preprocessor([str(j) for j in range(X.shape[1])], self.center, self.scale, self.components).transform(X)
            # (L2 normalisation for cosine happens in pack(), after the float32 cast)
        return X

    def _exact_dtype(self, batch: pa.RecordBatch):
        """:attr:`dtype` when every feature column of ``batch`` holds values exact in it (float32
        for float / small integer columns), else float64: the checks see the input's own values."""
        if self.dtype != "float32":
            return np.dtype(self.dtype)
        cols = list(self.columns) + ([self.vector] if self.vector else [])
        types = [batch.schema.field(c).type for c in cols]
        types = [t.value_type if hasattr(t, "value_type") else t for t in types]
        exact = all(pa.types.is_float32(t) or pa.types.is_int8(t) or pa.types.is_int16(t) for t in types)
        return np.dtype(np.float32) if exact else np.dtype(np.float64)

    def _vector_block(self, batch: pa.RecordBatch, rows=None, dtype=np.float64) -> np.ndarray:
        """The named columns and the vector's elements; a row whose vector is not ``vector_dim``
        floats fails here (the nightly load validates instead: :meth:`validated`)."""
        from clusterlake.io.vectors import vector_rows

        if rows is None:
            rows = vector_rows(batch.column(self.vector), self.vector_dim)
            if not rows.valid.all():
                bad = {r: int(m.sum()) for r, m in rows.reasons.items() if m.any()}
                raise ValueError(f"column '{self._name(self.vector)}' has invalid vectors {bad} "
                                 f"(expected {self.vector_dim} finite floats per row)")
        return self.features.block(batch.column, rows, dtype)

    def validated(self, batch: pa.RecordBatch):
        """``(the batch's valid rows, their Validity, their features)`` under :attr:`validate_id`."""
        from clusterlake.io.validity import check_batch
        from clusterlake.io.vectors import vector_rows

        def nulls(c):
            col = batch.column(c)
            return col.is_null().to_numpy(zero_copy_only=False) if col.null_count else np.zeros(len(col), bool)

        vector = None
        dtype = self._exact_dtype(batch)
        if self.vector:
            rows = vector_rows(batch.column(self.vector), self.vector_dim)
            vector = (self._name(self.vector), rows)
            X = self._vector_block(batch, rows, dtype)
        else:
            X = feature_block(batch, list(self.columns), dtype)
        w = w_null = None
        if self.weight_column:
            w = batch.column(self.weight_column).to_numpy(zero_copy_only=False).astype(np.float64)
            w_null = nulls(self.weight_column)
        valid, v = check_batch(X, [nulls(c) for c in self.columns], nulls(self.validate_id), w, w_null,
                               [self._name(c) for c in self.columns], self._name(self.validate_id),
                               self._name(self.weight_column) if self.weight_column else "weight",
                               vector=vector, ids=batch.column(self.validate_id))
        if valid.all():
            return batch, v, X
        return batch.filter(pa.array(valid)), v, X[valid]

    def pack(self, batch: pa.RecordBatch, X: Optional[np.ndarray] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """One batch as a checked block (model space, L2-normalised for cosine, when the source
        transforms; else input units) in :attr:`dtype`, and weights. ``X``: the batch's features
        in input units, when already read."""
        X = np.ascontiguousarray(self.block(batch) if X is None or self.center is not None else X, dtype=self.dtype)
        if X.size and not np.isfinite(X).all():
            bad = int((~np.isfinite(X)).any(axis=1).sum())
            raise ValueError(f"{bad} rows have NaN/inf features (in float32); validate or clean the input first")
        if self.normalize and X.size:
            X = K.normalize_rows(X)
        w = None
        if self.weight_column:
            w = batch.column(self.weight_column).cast(pa.float64()).to_numpy(zero_copy_only=False)
            if w.size and (not np.isfinite(w).all() or (w < 0).any()):
                raise ValueError(f"weight column '{self._name(self.weight_column)}' has null, NaN, infinite or negative values")
        return X, w

    def carried_table(self, batch: pa.RecordBatch) -> Optional[pa.Table]:
        """The batch's carried columns under the user's names (None when nothing is carried)."""
        if not self.carry:
            return None
        return pa.table({self._name(c): _plain_column(batch.column(c)) for c in self.carry})

    def carried(self, batch: pa.RecordBatch) -> Optional[bytes]:
        """The batch's carried columns under the user's names, as Arrow IPC stream bytes."""
        t = self.carried_table(batch)
        if t is None:
            return None
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, t.schema) as w:
            w.write_table(t)
        return sink.getvalue().to_pybytes()


def _plain_column(col: pa.Array) -> pa.Array:
    """Dictionary-encoded and large string/binary columns as their plain type: files written
    differently (a pandas Categorical here, plain strings there) concatenate into one column."""
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if pa.types.is_large_string(col.type):
        col = col.cast(pa.string())
    elif pa.types.is_large_binary(col.type):
        col = col.cast(pa.binary())
    return col


# packed blocks: one row per Arrow batch of the input (float32 bytes), small enough to shuffle
PACKED_DDL = "src long, seq long, n long, d long, x binary, w binary, c binary, v string"
_PACKED_SCHEMA = pa.schema([("src", pa.int64()), ("seq", pa.int64()), ("n", pa.int64()), ("d", pa.int64()),
                            ("x", pa.binary()), ("w", pa.binary()), ("c", pa.binary()), ("v", pa.string())])


def _checked(source: BlockSource, batches):
    """Input batches -> (kept batch, its block, weights, Validity or None), validated on the way
    when the source says so; empty batches are skipped."""
    for b in batches:
        if not b.num_rows:
            continue
        v = X = None
        if source.validate_id is not None:
            b, v, X = source.validated(b)
        X, w = source.pack(b, X)
        yield b, X, w, v


def _packed(source: BlockSource, src: int, batches):
    """Input batches -> packed rows (validated on the way when the source says so)."""
    import json

    for seq, (b, X, w, v) in enumerate(_checked(source, batches)):
        yield pa.RecordBatch.from_pydict(
            {"src": [src], "seq": [seq], "n": [X.shape[0]], "d": [X.shape[1]], "x": [X.tobytes()],
             "w": [None if w is None else w.tobytes()], "c": [source.carried(b)],
             "v": [None if v is None else json.dumps(v.to_json())]},
            schema=_PACKED_SCHEMA)


def pack_task(source: BlockSource):
    """Executor function: input rows -> packed blocks (the one JVM -> Python conversion)."""

    def run(batches):
        from pyspark import TaskContext

        yield from _packed(source, TaskContext.get().partitionId(), batches)

    return run


def batch_rows(width: int) -> int:
    """Rows per Arrow batch for a load of ``width`` columns (bigger batches load faster)."""
    return int(min(200_000, max(10_000, 4_000_000 // max(1, width))))


def files_frame(spark, scan, source: BlockSource, n_tasks: int):
    """A :class:`~clusterlake.io.input_files.FileSlices` input for a barrier stage of up to
    ``n_tasks`` tasks: (a DataFrame of one row per task, the number of tasks, the loader each
    barrier task runs on its row). The barrier task reads its files itself (pyarrow), validates
    and packs in its own process: the rows never pass through the JVM."""
    slices = scan.split(n_tasks)
    tasks = spark.sparkContext.parallelize([(i,) for i in range(len(slices))], len(slices))
    return spark.createDataFrame(tasks, "task int"), len(slices), file_loader(scan, source, slices)


def file_loader(scan, source: BlockSource, slices):
    """The barrier task's loader (``loader(batches, partition, memory) -> Block``) for ``slices``
    of ``scan``: ``batches`` hold the task's number."""
    from clusterlake.io.batches import positions

    pos = positions(source.input_columns)
    local = source.positional(pos)
    names = {c: pos[c] for c in scan.columns}
    rows = batch_rows(source.width)

    def load(batches, partition: int, memory: Optional[TaskMemory] = None) -> Block:
        tasks = [t for b in batches for t in b.column(0).to_pylist()]
        capacity = sum(stop - start for task in tasks for _, _, start, stop in slices[task])
        parts = (part for task in tasks for part in _checked(local, (
            t.rename_columns([names[c] for c in t.schema.names]) for t in scan.read(slices[task], rows))))
        block = _assemble(local, parts, partition, capacity, memory or TaskMemory())
        if scan.id_column is not None:  # the footers proved the row groups' ids disjoint
            block.id_duplicates = scan.id_duplicates([s for task in tasks for s in slices[task]])
        return block

    return load


def _assemble(source: BlockSource, parts, partition: int, capacity: int, memory: TaskMemory) -> Block:
    """The block of :func:`_checked`'s parts, in order, without packing them: the rows are copied
    once, into one array of ``capacity`` rows allocated up front (a fresh allocation of the data's
    size pays its page faults again, ~0.3 s per GB on this machine) from the task's ``memory``
    (on local disk when over its budget: the rows stream there batch by batch): the same
    :class:`Block` as :func:`unpack` of the same parts packed."""
    X, at, ws, tables, validity = None, 0, [], [], None
    for b, Xb, wb, vb in parts:
        if X is None:
            X = memory.empty((capacity, Xb.shape[1]), Xb.dtype, "rows")
        X[at:at + len(Xb)] = Xb
        at += len(Xb)
        ws.append(wb)
        tables.append(source.carried_table(b))
        validity = vb if validity is None else validity.merge(vb) if vb is not None else validity
    if X is None:
        return Block(np.empty((0, 0), dtype=np.float32), None, partition, memory=memory)
    columns = None if tables[0] is None else pa.concat_tables(tables)
    return Block(X[:at], None if ws[0] is None else np.concatenate(ws), partition, columns,
                 None if validity is None else validity.to_json(), memory)


def unpack(batches, partition: int = 0, memory: Optional[TaskMemory] = None) -> Block:
    """Packed rows -> one :class:`Block` (C-contiguous features, float64 weights, carried columns),
    in (src, seq) order so the block does not depend on the order the shuffle delivered them in.
    The features are copied into an array from the task's ``memory`` (spilled when over its
    budget; the packed rows received are held until then)."""
    memory = memory or TaskMemory()
    items = []
    for b in batches:
        small = {k: b.column(k).to_pylist() for k in ("src", "seq", "n", "d", "v")}
        # the binary columns as zero-copy buffers (to_pydict copied every block into a bytes object:
        # 0.7 s per 1M x 32 rows)
        big = {k: [None if v is None else v.as_buffer() for v in b.column(k)] for k in ("x", "w", "c")}
        items += list(zip(small["src"], small["seq"], small["n"], small["d"], big["x"], big["w"], big["c"],
                          small["v"]))
    items.sort(key=lambda t: (t[0], t[1]))
    if not items:
        return Block(np.empty((0, 0), dtype=np.float32), None, partition, memory=memory)
    sized = [it for it in items if it[2] * it[3]]
    dtype = np.float64 if sized and sized[0][4].size == 8 * sized[0][2] * sized[0][3] else np.float32
    X = memory.empty((sum(it[2] for it in items), max(it[3] for it in items)), dtype, "rows")
    at = 0
    for _, _, n, d, x, *_ in items:
        X[at:at + n] = np.frombuffer(x, dtype=dtype).reshape(n, d)
        at += n
    ws = [it[5] for it in items]
    w = None if ws[0] is None else np.concatenate([np.frombuffer(v, dtype=np.float64) for v in ws])
    cs = [it[6] for it in items]
    columns = None
    if cs[0] is not None:
        columns = pa.concat_tables([pa.ipc.open_stream(c).read_all() for c in cs])
    return Block(X, w, partition, columns, _validity([it[7] for it in items]), memory)


def _validity(texts: list) -> Optional[dict]:
    """The packed batches' validation counts merged (JSON), in (src, seq) order; None when the
    rows were not validated while loading."""
    import json

    from clusterlake.io.validity import Validity

    if not texts or texts[0] is None:
        return None
    out = None
    for t in texts:
        v = Validity.from_json(json.loads(t))
        out = v if out is None else out.merge(v)
    return out.to_json()
