"""Connected components on Spark (large-star / small-star) against scipy's on the same graphs."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components as scipy_components

from clusterlake.algorithms.components import connected_components

SCHEMA = "src long, dst long"


def expected(src, dst) -> dict[int, int]:
    """{vertex: smallest id of its component} by scipy, for every vertex that ends an edge."""
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    ids, inv = np.unique(np.concatenate([src, dst]), return_inverse=True)
    n, m = len(ids), len(src)
    graph = sp.coo_matrix((np.ones(m), (inv[:m], inv[m:])), shape=(n, n))
    _, labels = scipy_components(graph, directed=False)
    smallest = np.full(labels.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(smallest, labels, ids)  # ids are sorted, but say it anyway
    return dict(zip(ids.tolist(), smallest[labels].tolist()))


def computed(df, *args, **kw) -> dict[int, int]:
    out = connected_components(df, *args, **kw)
    assert out.schema.simpleString() == "struct<id:bigint,component:bigint>"
    rows = out.collect()
    got = {r["id"]: r["component"] for r in rows}
    assert len(got) == len(rows), "one row per vertex"
    return got


def frame(spark, src, dst, partitions=None):
    import pandas as pd

    df = spark.createDataFrame(pd.DataFrame({"src": np.asarray(src, np.int64), "dst": np.asarray(dst, np.int64)}),
                               SCHEMA)
    return df if partitions is None else df.repartition(partitions)


def rounds_logged(caplog) -> int:
    done = [m for m in caplog.messages if re.search(r"components, \d+ rounds", m)]
    assert len(done) == 1, caplog.messages
    return int(re.search(r"(\d+) rounds", done[0]).group(1))


@pytest.fixture(scope="module")
def random_graph():
    """~2,000 vertex ids, 1,500 edges: many small components and a few larger ones."""
    rng = np.random.default_rng(7)
    ids = rng.choice(10**9, size=2000, replace=False) - 5 * 10**8
    src, dst = ids[rng.integers(0, 2000, 1500)], ids[rng.integers(0, 2000, 1500)]
    return src, dst, expected(src, dst)


def test_random_graph(spark, random_graph, caplog):
    src, dst, want = random_graph
    with caplog.at_level(logging.INFO, logger="clusterlake"):
        got = computed(frame(spark, src, dst))
    assert got == want
    assert len(set(want.values())) > 100  # many components
    assert rounds_logged(caplog) <= 12


@pytest.mark.parametrize("partitions", [1, 4])
def test_partitioning_does_not_matter(spark, random_graph, partitions):
    src, dst, want = random_graph
    assert computed(frame(spark, src, dst, partitions)) == want


def test_long_path_with_shuffled_labels(spark, caplog, tmp_path):
    """A path of 1,000 vertices, numbered at random: label propagation would need ~1,000 rounds.
    Every third round written to files, the others persisted."""
    rng = np.random.default_rng(3)
    labels = rng.permutation(1000) + 10
    src, dst = labels[:-1], labels[1:]
    flip = rng.random(999) < 0.5  # either direction
    src, dst = np.where(flip, dst, src), np.where(flip, src, dst)
    with caplog.at_level(logging.INFO, logger="clusterlake"):
        got = computed(frame(spark, src, dst), checkpoint_dir=str(tmp_path), checkpoint_every=3)
    assert got == expected(src, dst) == {int(v): 10 for v in labels}
    rounds = rounds_logged(caplog)
    assert 3 <= rounds <= 20  # O(log^2 n), not O(n)
    assert sum("written to" in m for m in caplog.messages) == rounds // 3
    assert [p.name for p in next(tmp_path.iterdir()).iterdir()] == ["result"]


def test_star_duplicates_self_loops_and_checkpoint_dir(spark, tmp_path):
    """A star around a vertex that is not its smallest, repeated and reversed edges, self loops
    (one on a vertex with no other edge), and the lineage cut to files every round."""
    centre, leaves = 500, np.arange(1, 300)
    src = np.concatenate([np.full(299, centre), leaves[:50], [centre, 7, 900, 900], [1000, 1001, 1001]])
    dst = np.concatenate([leaves, np.full(50, centre), [centre, 7, 900, 901], [1001, 1000, 1000]])
    got = computed(frame(spark, src, dst), checkpoint_dir=str(tmp_path / "cc"), checkpoint_every=1)
    want = expected(src, dst)
    assert got == want
    assert got[centre] == 1 and got[900] == 900 and got[901] == 900 and got[1001] == 1000
    runs = list((tmp_path / "cc").iterdir())
    assert len(runs) == 1 and [p.name for p in runs[0].iterdir()] == ["result"]  # the rounds are gone


def test_ids_near_the_long_limits(spark):
    big = 2**62
    src = np.array([-big, -big + 5, big, big - 1, big + 3, -big - 7, 0], dtype=np.int64)
    dst = np.array([big, 3, big - 1, big + 3, -big + 5, -big - 7, -1], dtype=np.int64)
    got = computed(frame(spark, src, dst))
    assert got == expected(src, dst)
    assert got[big + 3] == -big and got[-big - 7] == -big - 7 and got[0] == -1


def test_empty_edges(spark):
    out = connected_components(spark.createDataFrame([], SCHEMA))
    assert out.schema.simpleString() == "struct<id:bigint,component:bigint>"
    assert out.count() == 0


def test_other_column_names_and_no_convergence(spark):
    df = spark.createDataFrame([(1, 2), (2, 3), (3, 4), (9, 8)], "a int, b int")
    assert computed(df, "a", "b") == {1: 1, 2: 1, 3: 1, 4: 1, 8: 8, 9: 8}
    with pytest.raises(RuntimeError, match="max_iterations=1"):
        connected_components(df, "a", "b", max_iterations=1)
    with pytest.raises(TypeError):
        connected_components(df.selectExpr("cast(a as string) a", "b"), "a", "b")
