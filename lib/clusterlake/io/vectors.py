"""Vector columns (embeddings) as features: one naming rule, one Arrow -> numpy conversion, one row check.

A vector column (``input.vector_column``: ``array<float|double>``, or a dense Spark ML ``Vector``
that Spark turns into one) of length ``dim`` contributes ``dim`` features named
``<column>[0] .. <column>[dim-1]`` (:func:`element_name`). Every later step (moments, scaling,
PCA, the fit, the model artifact, the feature contract across runs) sees plain named features;
only the edges that read rows know that some of them are elements of one column:

* :class:`Features` turns an Arrow batch into the ``(n, d)`` feature block: named columns one by
  one, the vector column as one contiguous block (the list's values reshaped, never an element
  at a time in Python);
* :func:`vector_rows` checks each row's vector once: null (or holding a null element, whatever
  its length), else of another length than ``dim``, else NaN, +-inf, or beyond
  :data:`~clusterlake.io.validity.MAX_ABS_VALUE` in some element (each of these three counted).
  Those are the reasons ``<column>:null|length|nan|inf|too_large`` the invalid-row policy counts
  (one count per row and reason, not per element), exactly as Spark's form of the rule
  (:func:`clusterlake.io.reader.row_checks`) counts them.

Spark-free and driver/executor neutral (numpy and pyarrow only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import pyarrow as pa

__all__ = ["element_name", "element_names", "element_index", "Features", "vector_rows", "is_vector_type",
           "VECTOR_REASONS"]

VECTOR_REASONS = ("null", "length", "nan", "inf", "too_large")
_ELEMENT = re.compile(r"^(?P<col>.*)\[(?P<j>[0-9]+)\]$", re.S)


def element_name(column: str, j: int) -> str:
    """The feature name of element ``j`` of vector column ``column``: ``column[j]``."""
    return f"{column}[{int(j)}]"


def element_names(column: str, dim: int) -> list[str]:
    return [element_name(column, j) for j in range(int(dim))]


def element_index(name: str, column: Optional[str]) -> Optional[int]:
    """``j`` when ``name`` is ``column[j]``, else None (also when there is no vector column)."""
    if column is None:
        return None
    m = _ELEMENT.match(name)
    if m is None or m.group("col") != column:
        return None
    return int(m.group("j"))


def is_vector_type(t: pa.DataType) -> bool:
    """An Arrow list (plain, large or fixed-size) of float32/float64."""
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        return False
    return pa.types.is_floating(t.value_type) and not pa.types.is_float16(t.value_type)


@dataclass
class VectorRows:
    """One batch's vectors: ``X`` (n, dim) (the values' float type; NaN rows where the vector is
    null or of another length), and per-row masks of the reasons (``VECTOR_REASONS``)."""

    X: np.ndarray
    reasons: dict[str, np.ndarray]
    lengths: np.ndarray  # each row's length (-1 for a null vector)

    @property
    def valid(self) -> np.ndarray:
        bad = np.zeros(len(self.X), dtype=bool)
        for m in self.reasons.values():
            bad |= m
        return ~bad


def _starts_lengths(arr) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """(start of each row's values in ``values``, each row's length, values) of a list array."""
    n = len(arr)
    if pa.types.is_fixed_size_list(arr.type):
        size = arr.type.list_size
        starts = (np.arange(n, dtype=np.int64) + arr.offset) * size
        return starts, np.full(n, size, dtype=np.int64), arr.values
    offsets = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return offsets[:-1], np.diff(offsets), arr.values


def vector_rows(arr, dim: int) -> VectorRows:
    """Check and convert one Arrow list column of ``dim``-long float vectors (see the module doc).

    Vectorised: the common case (no null, every length ``dim``, values contiguous) is one reshape
    of the values; otherwise the good rows are gathered with one fancy index."""
    from clusterlake.io.validity import MAX_ABS_VALUE

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    n, dim = len(arr), int(dim)
    null = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else np.zeros(n, dtype=bool)
    starts, lengths, values = _starts_lengths(arr)
    lengths = np.where(null, -1, lengths)
    vnull = values.is_null().to_numpy(zero_copy_only=False) if values.null_count else None
    if vnull is not None:  # a null element makes the row's vector null, whatever its length (as Spark's rule)
        cum = np.concatenate([[0], np.cumsum(vnull, dtype=np.int64)])
        span = np.where(null, 0, lengths)
        null = null | (cum[starts + span] - cum[starts] > 0)
    length_bad = ~null & (lengths != dim)
    ok = ~null & ~length_bad
    vals = values.to_numpy(zero_copy_only=False)  # float; a null element is NaN here
    dtype = vals.dtype if vals.dtype in (np.float32, np.float64) else np.float64
    contiguous = n and ok.all() and int(starts[0]) + n * dim <= len(vals) and \
        (n == 1 or bool((np.diff(starts) == dim).all()))
    if contiguous:
        X = vals[int(starts[0]):int(starts[0]) + n * dim].reshape(n, dim)
        idx = None
    else:
        X = np.full((n, dim), np.nan, dtype=dtype)
        idx = starts[ok][:, None] + np.arange(dim, dtype=np.int64)[None, :]
        if ok.any():
            X[ok] = vals[idx]
    with np.errstate(invalid="ignore"):
        nan = np.isnan(X).any(axis=1) & ok
        a = np.abs(X)
        inf = np.isinf(a).any(axis=1) & ok
        big = ((a > np.float64(MAX_ABS_VALUE)) & ~np.isinf(a)).any(axis=1) & ok if X.dtype == np.float64 else \
            np.zeros(n, dtype=bool)  # float32 holds nothing beyond MAX_ABS_VALUE
    return VectorRows(X, {"null": null, "length": length_bad, "nan": nan, "inf": inf, "too_large": big}, lengths)


@dataclass(frozen=True)
class Features:
    """The model's features as the input holds them: named numeric columns and elements
    ``<vector>[j]`` of one vector column of length ``dim``.

    ``names``: the feature names in model order (constant elements may have been dropped, so the
    elements need not be contiguous or complete)."""

    names: tuple[str, ...]
    vector: Optional[str] = None
    dim: int = 0

    @classmethod
    def of(cls, named: list[str], vector: Optional[str] = None, dim: int = 0) -> "Features":
        """Named columns, then every element of the vector."""
        return cls(tuple(named) + (tuple(element_names(vector, dim)) if vector else ()), vector, int(dim))

    def element(self, name: str) -> Optional[int]:
        return element_index(name, self.vector)

    @property
    def named(self) -> list[str]:
        return [c for c in self.names if self.element(c) is None]

    @property
    def elements(self) -> np.ndarray:
        """The vector's element index of every element feature, in model order."""
        return np.array([j for j in (self.element(c) for c in self.names) if j is not None], dtype=np.int64)

    @property
    def input_columns(self) -> list[str]:
        """The input columns to read: the named features, then the vector column (if any feature uses it)."""
        return self.named + ([self.vector] if self.vector and len(self.elements) else [])

    def input_column(self, name: str) -> str:
        """The input column a feature comes from."""
        return self.vector if self.element(name) is not None else name

    def block(self, column: Callable[[str], "pa.Array"], vectors: Optional[VectorRows] = None,
              dtype=np.float64) -> np.ndarray:
        """The ``(n, d)`` features of a batch, float64 or ``dtype`` (``column(name)`` gives an input
        column; ``vectors``: :func:`vector_rows` of the vector column, when already checked). Rows
        whose vector is invalid hold NaN."""
        named, pos = [], []
        el_pos, el_idx = [], []
        for i, c in enumerate(self.names):
            j = self.element(c)
            if j is None:
                named.append(c)
                pos.append(i)
            else:
                el_pos.append(i)
                el_idx.append(j)
        n = len(column(self.input_columns[0])) if self.input_columns else 0
        X = np.empty((n, len(self.names)), dtype=dtype)
        for i, c in zip(pos, named):
            X[:, i] = column(c).to_numpy(zero_copy_only=False)
        if el_pos:
            V = vectors if vectors is not None else vector_rows(column(self.vector), self.dim)
            el_idx_a = np.asarray(el_idx)
            if el_pos == list(range(el_pos[0], el_pos[0] + len(el_pos))) and \
                    np.array_equal(el_idx_a, np.arange(len(el_idx_a))) and len(el_idx_a) == V.X.shape[1]:
                X[:, el_pos[0]:el_pos[0] + len(el_pos)] = V.X
            else:
                X[:, el_pos] = V.X[:, el_idx_a]
        return X

    def to_json(self) -> dict:
        return {"vector_column": self.vector, "vector_dim": self.dim}
