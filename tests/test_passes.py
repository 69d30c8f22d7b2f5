"""Spark passes of ``clusterlake.algorithms.passes`` that are not covered end to end."""

from __future__ import annotations

import numpy as np

from clusterlake.algorithms.passes import sample_rows


def test_sample_is_spread_over_all_partitions(spark):
    """A sample of half the rows must come from every partition, not the first ones a plain
    ``limit`` would read."""
    n = 10_000
    df = spark.range(0, n, 1, numPartitions=10)  # partition i holds ids [1000 i, 1000 (i + 1))
    got = sample_rows(df, ["id"], n, n // 2, seed=7)["id"].to_numpy()
    assert len(got) <= n // 2 and len(got) > 0.45 * n
    assert len(np.unique(got)) == len(got)
    # every tenth of the id range holds about a tenth of the sample
    share = np.bincount(got * 10 // n, minlength=10) / len(got)
    assert share.min() > 0.07, share


def test_sample_of_everything_returns_every_row(spark):
    got = sample_rows(spark.range(100), ["id"], 100, 500, seed=1)["id"].to_numpy()
    assert sorted(got.tolist()) == list(range(100))
