"""Moving the user's columns into ``mapInArrow`` and out of its Arrow batches as numpy blocks.

Every distributed pass (``algorithms.passes``, the engine's loading stage) reads its input
through these two helpers, so a column name Spark would misparse (a dot, a backtick) is handled
in one place.
"""

from __future__ import annotations

import numpy as np

from clusterlake.io.columns import col

__all__ = ["arrow_input", "feature_block", "positions"]


def arrow_input(df, names: list[str], *extra):
    """``df`` reduced to the user's columns ``names`` under positional names (``_0, _1, ...``)
    and the column expressions ``extra``, ready for ``mapInArrow``; returns (that DataFrame,
    {name: positional name}).

    PySpark's ``mapInArrow``/``mapInPandas`` pass every input column as ``df[name]``, which Spark
    parses: a column named ``spend.monthly`` is read as a struct field and a backtick is a syntax
    error, even when the DataFrame was built with quoted names. The executors' functions read the
    positional names; the output schema keeps the original names (``quoted`` in the DDL).
    """
    pos = positions(names)
    return df.select(*[col(n).alias(a) for n, a in pos.items()], *extra), pos


def positions(names: list[str]) -> dict[str, str]:
    """{name: positional name} (``_0, _1, ...``) of the distinct ``names``, in order."""
    pos: dict[str, str] = {}
    for name in names:
        if name not in pos:
            pos[name] = f"_{len(pos)}"
    return pos


def feature_block(batch, names: list[str], dtype=np.float64) -> np.ndarray:
    """Stack the named numeric columns of an Arrow batch into an (n, d) array (float64, or
    ``dtype`` when the caller knows its values are exact in it); nulls are NaN."""
    n = batch.num_rows
    out = np.empty((n, len(names)), dtype=dtype)
    for j, name in enumerate(names):
        out[:, j] = batch.column(name).to_numpy(zero_copy_only=False)
    return out
