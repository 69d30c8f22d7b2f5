"""The invalid-row rule on Arrow batches (numpy), for the nightly job's one read of its input.

The nightly job validates its rows as the engine's tasks load them (:mod:`clusterlake.engine.blocks`),
so the input is read once: each batch's invalid rows are counted by reason and left out of the
block, and the valid rows' min/max per feature (the constant-column check) come along.
:func:`clusterlake.io.reader.row_checks` states the same rule as Spark expressions for the jobs
that validate through Spark (the update job, the stream); ``tests/test_validity.py`` holds the two
to the same counts on hostile data.

A row is invalid when its id is null, a feature or the weight is null, NaN, +-inf or beyond
:data:`MAX_ABS_VALUE` in magnitude, or the weight is negative; a vector column
(:mod:`clusterlake.io.vectors`) when it is null, of another length than the others, or holds a
null, NaN, inf or too large element (one count per row). Reasons are
``"<column>:<null|length|nan|inf|too_large|negative>"``, in :func:`reason_names` order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

MAX_ABS_VALUE = 1e100
"""Finite values beyond this magnitude are invalid (reason ``too_large``): the job sums squares of
the features in float64 (moments, variances, distances) and 1e100 squared leaves room for the sum
over any number of rows, while a value near 1e154 squares to inf and silently drops the feature
from the model. No real feature is that large; it is a unit or parsing error upstream."""

_VALUE_REASONS = ("null", "nan", "inf", "too_large")


def reason_names(id_col: str, features: list[str], weight_col: Optional[str] = None,
                 vector: Optional[str] = None) -> list[str]:
    """Every reason a row can be invalid for, in the order the counts are reported (the elements
    ``vector[j]`` of the vector column ``vector`` share the vector's reasons)."""
    from clusterlake.io.vectors import VECTOR_REASONS, element_index

    names = [f"{id_col}:null"]
    named = [c for c in features if element_index(c, vector) is None]
    for c in named + ([weight_col] if weight_col else []):
        names += [f"{c}:{r}" for r in _VALUE_REASONS]
    if vector is not None and len(named) < len(features):
        names += [f"{vector}:{r}" for r in VECTOR_REASONS]
    if weight_col:
        names.append(f"{weight_col}:negative")
    return names


@dataclass
class Validity:
    """Counts over some rows: rows, invalid rows, rows per reason, each feature's min/max over the
    valid rows (+inf/-inf when there is none). Mergeable."""

    rows: int
    invalid: int
    counts: dict[str, int]
    lo: np.ndarray
    hi: np.ndarray
    extra: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)
    """reason -> one example row, as text (``"id 17: length 127"``), for the reasons whose count
    alone does not say what to fix (a vector of the wrong length)."""

    @classmethod
    def empty(cls, d: int) -> "Validity":
        return cls(0, 0, {}, np.full(d, np.inf), np.full(d, -np.inf))

    def merge(self, other: "Validity") -> "Validity":
        counts = dict(self.counts)
        for k, v in other.counts.items():
            counts[k] = counts.get(k, 0) + v
        return Validity(self.rows + other.rows, self.invalid + other.invalid, counts,
                        np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi),
                        examples={**other.examples, **self.examples})

    def to_json(self) -> dict:
        return {"rows": self.rows, "invalid": self.invalid, "counts": self.counts,
                "lo": [None if not np.isfinite(v) else float(v) for v in self.lo],
                "hi": [None if not np.isfinite(v) else float(v) for v in self.hi],
                "examples": self.examples}

    @classmethod
    def from_json(cls, d: dict) -> "Validity":
        return cls(int(d["rows"]), int(d["invalid"]), {k: int(v) for k, v in d["counts"].items()},
                   np.array([np.inf if v is None else v for v in d["lo"]], dtype=np.float64),
                   np.array([-np.inf if v is None else v for v in d["hi"]], dtype=np.float64),
                   examples=dict(d.get("examples") or {}))


def _value_checks(x: np.ndarray, null: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(valid, reason -> rows) of one numeric column as float64 (nulls as NaN) and its null mask."""
    with np.errstate(invalid="ignore"):
        nan = np.isnan(x) & ~null
        inf = np.isinf(x)
        big = (np.abs(x) > np.float64(MAX_ABS_VALUE)) & ~inf  # (a float32 x is compared in float64)
    return ~(null | nan | inf | big), {"null": null, "nan": nan, "inf": inf, "too_large": big}


def check_batch(X: np.ndarray, nulls: list[np.ndarray], id_null: np.ndarray, w: Optional[np.ndarray] = None,
                w_null: Optional[np.ndarray] = None, names: Optional[list[str]] = None,
                id_name: str = "id", weight_name: str = "weight", vector=None,
                ids=None) -> tuple[np.ndarray, Validity]:
    """The rule on one batch: ``X`` (n, d) float64 features (nulls as NaN), ``nulls[j]`` the null
    mask of named column j (the first ``len(nulls)`` columns of ``X``), ``id_null`` the id's,
    ``w``/``w_null`` the weight's; ``vector``: ``(name, VectorRows)`` of the vector column, whose
    elements are the other columns of ``X``; ``ids``: the batch's id column, to name an example
    row of a wrong-length vector. Returns (valid rows, Validity)."""
    n, d = X.shape
    names = names or [str(j) for j in range(d)]
    valid = ~id_null
    counts = {f"{id_name}:null": int(id_null.sum())}
    examples = {}
    m = len(nulls)
    # the usual batch (no null, every value finite and in range) in one pass: max |x| is NaN when
    # some value is, and above the bound when some value is infinite or too large
    clean = m == 0 or n == 0 or (not any(nl.any() for nl in nulls)
                                 and float(np.abs(X[:, :m]).max()) <= MAX_ABS_VALUE)
    cols = [] if clean else [(names[j], X[:, j], nulls[j]) for j in range(m)]
    if w is not None:
        cols.append((weight_name, w, w_null))
    for name, x, null in cols:
        ok, why = _value_checks(x, null)
        valid &= ok
        for r, mask in why.items():
            c = int(mask.sum())
            if c:
                counts[f"{name}:{r}"] = c
    if w is not None:
        with np.errstate(invalid="ignore"):
            neg = (w < 0) & ~w_null
        valid &= ~neg
        if neg.any():
            counts[f"{weight_name}:negative"] = int(neg.sum())
    if vector is not None:
        vname, vrows = vector
        for r, mask in vrows.reasons.items():
            c = int(mask.sum())
            if c:
                counts[f"{vname}:{r}"] = c
        valid &= vrows.valid
        bad_len = np.flatnonzero(vrows.reasons["length"])
        if len(bad_len):
            i = int(bad_len[0])
            who = f"{id_name} {ids[i].as_py()!r}" if ids is not None else f"row {i}"
            examples[f"{vname}:length"] = f"{who} has length {int(vrows.lengths[i])}, expected {vrows.X.shape[1]}"
    counts = {k: v for k, v in counts.items() if v}
    good = X if valid.all() else X[valid]
    lo = good.min(axis=0) if len(good) else np.full(d, np.inf)
    hi = good.max(axis=0) if len(good) else np.full(d, -np.inf)
    return valid, Validity(n, int(n - valid.sum()), counts, lo, hi, examples=examples)
