"""The ``groups`` table (issue 22): one row per valid input row, the id column first, then:

* ``group_id long`` -- the row's near-duplicate group, stable night over night where a group keeps
  most of its members (a new group's id was never given before); a row with no near-duplicate is
  a group of one with an id of its own;
* ``group_size long`` -- the rows in the group;
* ``similarity double`` -- the exact similarity (Jaccard or cosine) of the row to the group's
  representative (1.0 for the representative and for a group of one);
* ``is_representative boolean`` -- the group's representative: its smallest id (for an integer id;
  else the smallest 64-bit hash of the id).
"""

from __future__ import annotations

from clusterlake.io.columns import quoted

DDL = "group_id long, group_size long, similarity double, is_representative boolean"
"""Spark DDL of the columns after the id."""


def ddl(id_column: str, id_type: str) -> str:
    """The whole row's Spark DDL: the id column (its name quoted, its Spark type string) first."""
    return f"{quoted(id_column)} {id_type}, {DDL}"
