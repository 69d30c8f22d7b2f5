"""The output contract: every table's schema and row builder, in one place.

One module per table (``centroids``, ``assignments``, ``metrics``, ``profiles``, ``lineage``,
``groups``, ``runs``); the README's table of columns is checked against these schemas by
``tests/test_contract.py``. Writers, the update job and the stream build their rows here and
nowhere else, so a column is added or renamed in exactly one place.
"""

TABLES = ("centroids", "assignments", "metrics", "profiles", "lineage", "groups", "runs")
"""Every table a run (full or update) writes, in commit order: ``runs`` last."""


def schema(table: str) -> str:
    """The table's columns as Spark DDL (``run_date``, the partition column, is added by the
    store; ``assignments`` and ``groups`` start with the input's id column, not listed here)."""
    import importlib

    if table not in TABLES:
        raise KeyError(f"no table {table!r} in the output contract; the tables are {TABLES}")
    mod = importlib.import_module(f"clusterlake.io.contract.{table}")
    return mod.DDL + (", run_id string" if table in ("assignments", "groups") else "")


def column_names(ddl: str) -> list[str]:
    """The column names of a DDL string (types may hold commas: ``map<int,int>``)."""
    names, depth, start = [], 0, 0
    for i, ch in enumerate(ddl + ","):
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "," and depth == 0:
            names.append(ddl[start:i].strip().split(" ", 1)[0])
            start = i + 1
    return names
