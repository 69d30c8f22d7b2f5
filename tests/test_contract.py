"""The output contract: the README's table of columns names exactly the columns the schemas in
``clusterlake.io.contract`` define, and the job writes exactly those columns (JVM-free: the
written side is checked against a committed run in tests/test_job_e2e.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clusterlake.io import contract

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_columns() -> dict[str, list[str]]:
    """Table name -> the bold column names in its row of the README's contract table."""
    out = {}
    for line in README.read_text().splitlines():
        m = re.match(r"^\| `(\w+)` \| [^|]+ \| (.*)\|\s*$", line)
        if m and m.group(1) in contract.TABLES:
            out[m.group(1)] = re.findall(r"\*\*(\w+)\*\*", m.group(2))
    return out


def test_readme_names_every_table():
    assert sorted(_readme_columns()) == sorted(contract.TABLES)


@pytest.mark.parametrize("table", contract.TABLES)
def test_readme_columns_are_the_schema(table):
    documented = _readme_columns()[table]
    assert len(documented) == len(set(documented)), f"{table}: a column is named twice in the README"
    # run_id is stated for every table in the sentence above the table
    assert set(documented) | {"run_id"} == set(contract.column_names(contract.schema(table)))


def test_column_names_splits_nested_types():
    assert contract.column_names("a int, m map<int,int>, s struct<x:int,y:array<double>>, z double") == [
        "a", "m", "s", "z"]


def test_unknown_table():
    with pytest.raises(KeyError, match="no table 'nope'"):
        contract.schema("nope")
