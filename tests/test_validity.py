"""The invalid-row rule in its two forms: numpy on Arrow batches (the nightly job's load,
clusterlake.io.validity) and Spark expressions (the update job and the stream,
clusterlake.io.reader.row_checks) must count the same rows for the same reasons."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from clusterlake.engine.blocks import BlockSource
from clusterlake.io.reader import row_checks
from clusterlake.io.validity import MAX_ABS_VALUE, Validity, check_batch, reason_names

NAN, INF = float("nan"), float("inf")
ROWS = [  # id, a (double), b (int), w (double weight)
    (1, 1.0, 5, 1.0),
    (2, NAN, 5, 1.0),
    (None, 2.0, 6, 1.0),
    (4, INF, None, 1.0),
    (5, -INF, 7, -2.0),
    (6, 2e100, 7, 1.0),
    (7, 3.0, 8, None),
    (8, 4.0, 9, NAN),
    (9, -1e100, 9, 0.0),  # exactly the bound: valid
    (10, 5.0, 10, 2.5),
]


def _numpy_counts(rows):
    batch = pa.RecordBatch.from_pydict({
        "id": pa.array([r[0] for r in rows], pa.int64()), "a": pa.array([r[1] for r in rows], pa.float64()),
        "b": pa.array([r[2] for r in rows], pa.int32()), "w": pa.array([r[3] for r in rows], pa.float64())})
    src = BlockSource(columns=("a", "b"), weight_column="w", carry=("id",), validate_id="id")
    kept, v, X = src.validated(batch)
    return kept, v, X


def test_numpy_and_spark_rules_count_the_same(spark):
    from pyspark.sql import functions as F

    df = spark.createDataFrame(ROWS, "id long, a double, b int, w double")
    valid, reasons = row_checks("id", ["a", "b"], "w")
    row = df.agg(F.sum(F.when(valid, 0).otherwise(1)).alias("bad"),
                 *[F.sum(F.when(c, 1).otherwise(0)).alias(f"r{i}") for i, c in enumerate(reasons.values())]).first()
    spark_counts = {name: row[f"r{i}"] for i, name in enumerate(reasons) if row[f"r{i}"]}
    kept, v, X = _numpy_counts(ROWS)
    assert list(reasons) == reason_names("id", ["a", "b"], "w")  # the same reasons, in the same order
    assert v.invalid == row["bad"] == 7 and v.rows == len(ROWS)
    assert v.counts == spark_counts
    assert kept.column("id").to_pylist() == [1, 9, 10]
    np.testing.assert_array_equal(X, [[1.0, 5.0], [-MAX_ABS_VALUE, 9.0], [5.0, 10.0]])
    assert list(v.lo) == [-MAX_ABS_VALUE, 5.0] and list(v.hi) == [5.0, 10.0]


def test_validity_merges_and_survives_json():
    a = check_batch(np.array([[1.0], [NAN]]), [np.zeros(2, bool)], np.zeros(2, bool))[1]
    b = check_batch(np.array([[3.0]]), [np.zeros(1, bool)], np.array([True]))[1]
    m = Validity.from_json(a.to_json()).merge(Validity.from_json(b.to_json()))
    assert (m.rows, m.invalid) == (3, 2) and m.counts == {"0:nan": 1, "id:null": 1}
    assert m.lo[0] == m.hi[0] == 1.0  # row 3 has a null id: not among the valid rows
    empty = Validity.from_json(Validity.empty(2).to_json())
    assert math.isinf(empty.lo[0]) and math.isinf(empty.hi[1])


@pytest.mark.parametrize("value", [NAN, INF, 1e101])
def test_a_batch_of_only_invalid_rows_packs_to_nothing(value):
    kept, v, X = _numpy_counts([(1, value, 1, 1.0), (2, value, 2, 1.0)])
    assert kept.num_rows == 0 and X.shape == (0, 2) and v.invalid == 2
