"""Column references that survive any column name.

Spark parses a plain string passed to ``F.col``/``select``/``groupBy`` as an expression: a dot
means a struct field (``spend.monthly``), a backtick or a space can break it. Every reference to a
*user's* column (the id, features, label, weight) goes through :func:`col`, which quotes the name
with backticks, so a parquet column named ``spend.monthly`` is simply that column.
Runs on the driver (builds Spark column expressions only).
"""

from __future__ import annotations


def quoted(name: str) -> str:
    """``name`` as a Spark SQL identifier: in backticks, inner backticks doubled."""
    return "`" + str(name).replace("`", "``") + "`"


def col(name: str):
    """``F.col`` of the column literally named ``name`` (dots, spaces and backticks included)."""
    from pyspark.sql import functions as F

    return F.col(quoted(name))
