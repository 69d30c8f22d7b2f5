"""Bad input data: the job stops before writing anything, with a message naming the column/id/setting
and the fix; and the policies that let a run go on (invalid_rows=drop, constant columns) are recorded
in the ``runs`` table.

Every table here is a tiny parquet file written with pyarrow; runs use the shared Spark session.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from clusterlake.errors import ClusterlakeError, InputDataError
from clusterlake.pipeline import run_job
from tests.conftest import job_config

NO_LABEL = {"input.label_column": "null"}


# --------------------------------------------------------------------------------------------
# helpers


def write_table(path, columns: dict, schema: pa.Schema | None = None) -> str:
    """Write one parquet file; ``columns`` maps names to lists/arrays (None = null)."""
    table = pa.table(columns) if schema is None else pa.Table.from_pydict(columns, schema=schema)
    pq.write_table(table, str(path))
    return str(path)


def good_columns(n: int = 20, seed: int = 0) -> dict:
    """n rows with distinct ids, two numeric features and a label."""
    rng = np.random.default_rng(seed)
    return {
        "customer_id": pa.array(np.arange(n, dtype=np.int64)),
        "age": pa.array(rng.uniform(20, 70, n)),
        "income": pa.array(rng.uniform(1e4, 1e5, n)),
        "true_segment": pa.array(np.arange(n, dtype=np.int32) % 2),
    }


def with_column(cols: dict, name: str, values, type_=None) -> dict:
    out = dict(cols)
    out[name] = pa.array(values, type=type_)
    return out


def blobs(n: int = 300, seed: int = 5) -> dict:
    """n rows in 3 well-separated blobs (label true_segment = blob)."""
    rng = np.random.default_rng(seed)
    centers = np.array([[25.0, 20_000.0, 2.0], [45.0, 60_000.0, 10.0], [65.0, 120_000.0, 25.0]])
    spread = np.array([1.5, 1_500.0, 0.7])
    seg = np.arange(n) % 3
    X = centers[seg] + rng.normal(size=(n, 3)) * spread
    return {
        "customer_id": np.arange(1000, 1000 + n, dtype=np.int64),
        "age": X[:, 0],
        "income": X[:, 1],
        "visits": X[:, 2],
        "true_segment": seg.astype(np.int32),
    }


def fails(spark, input_path: str, tmp_path, **over) -> str:
    """Run the job, expect InputDataError, check nothing was written; return the message."""
    out = tmp_path / "out"
    over.setdefault("kmeans.k", 2)
    cfg = job_config(input_path, str(out), **over)
    with pytest.raises(InputDataError) as ei:
        run_job(cfg, spark=spark)
    assert not os.path.exists(out), f"a failed run wrote {sorted(os.listdir(out))} under {out}"
    msg = str(ei.value)
    assert "\n" not in msg
    assert isinstance(ei.value, ClusterlakeError) and ei.value.exit_code == 2
    return msg


# --------------------------------------------------------------------------------------------
# columns


def test_missing_feature_column(spark, tmp_path):
    path = write_table(tmp_path / "t.parquet", good_columns())
    msg = fails(spark, path, tmp_path, **{"input.feature_columns": "[age, height]"})
    assert "input.feature_columns" in msg
    assert "'height'" in msg and "'age'" not in msg.split("columns are")[0]
    assert "columns are" in msg and "'income'" in msg  # shows what is there


def test_non_numeric_feature_column(spark, tmp_path):
    cols = with_column(good_columns(), "city", [f"c{i % 3}" for i in range(20)])
    path = write_table(tmp_path / "t.parquet", cols)
    msg = fails(spark, path, tmp_path, **{"input.feature_columns": "[age, city]"})
    assert "'city' has type StringType" in msg
    assert "numeric" in msg and "remove it from input.feature_columns" in msg
    assert "'age'" not in msg


def test_no_numeric_column_to_infer(spark, tmp_path):
    path = write_table(tmp_path / "t.parquet", {
        "customer_id": pa.array(np.arange(10, dtype=np.int64)),
        "city": pa.array([f"c{i}" for i in range(10)]),
    })
    msg = fails(spark, path, tmp_path, **NO_LABEL)
    assert "no numeric feature columns" in msg and "input.feature_columns" in msg


def test_id_column_missing(spark, tmp_path):
    path = write_table(tmp_path / "t.parquet", good_columns())
    msg = fails(spark, path, tmp_path, **{"input.id_column": "cust_id"})
    assert "input.id_column 'cust_id' is not a column" in msg
    assert "columns are" in msg and "'customer_id'" in msg


def test_label_column_missing(spark, tmp_path):
    cols = good_columns()
    del cols["true_segment"]
    path = write_table(tmp_path / "t.parquet", cols)
    msg = fails(spark, path, tmp_path)  # job_config's label column is true_segment
    assert "input.label_column 'true_segment' is not a column" in msg
    assert "columns are" in msg and "'age'" in msg


def test_weight_column_missing(spark, tmp_path):
    path = write_table(tmp_path / "t.parquet", good_columns())
    msg = fails(spark, path, tmp_path, **{"input.weight_column": "w"})
    assert "input.weight_column 'w' is not a column" in msg


def test_weight_column_not_numeric(spark, tmp_path):
    path = write_table(tmp_path / "t.parquet", with_column(good_columns(), "w", ["1"] * 20))
    msg = fails(spark, path, tmp_path, **{"input.weight_column": "w"})
    assert "'w' (input.weight_column) has type StringType" in msg and "numeric" in msg


# --------------------------------------------------------------------------------------------
# invalid values under invalid_rows=fail (the default)


def _hint(msg: str) -> None:
    assert "input.invalid_rows: drop" in msg


def test_nulls_in_feature(spark, tmp_path):
    age = list(np.linspace(20, 70, 20))
    for i in (2, 5, 11):
        age[i] = None
    path = write_table(tmp_path / "t.parquet", with_column(good_columns(), "age", age, pa.float64()))
    msg = fails(spark, path, tmp_path)
    assert "3 of 20 rows" in msg
    assert "'age' 3 null" in msg
    assert "income" not in msg
    _hint(msg)


def test_nulls_in_integer_feature(spark, tmp_path):
    visits = [None if i % 5 == 0 else i for i in range(20)]  # 4 nulls
    path = write_table(tmp_path / "t.parquet", with_column(good_columns(), "visits", visits, pa.int64()))
    msg = fails(spark, path, tmp_path)
    assert "'visits' 4 null" in msg and "4 of 20 rows" in msg
    _hint(msg)


def test_nan_in_feature(spark, tmp_path):
    income = list(np.linspace(1e4, 9e4, 20))
    income[0] = income[7] = float("nan")
    path = write_table(tmp_path / "t.parquet", with_column(good_columns(), "income", income, pa.float64()))
    msg = fails(spark, path, tmp_path)
    assert "'income' 2 nan" in msg and "2 of 20 rows" in msg
    _hint(msg)


def test_positive_inf_in_feature(spark, tmp_path):
    income = list(np.linspace(1e4, 9e4, 20))
    income[3] = float("inf")
    path = write_table(tmp_path / "t.parquet", with_column(good_columns(), "income", income, pa.float64()))
    msg = fails(spark, path, tmp_path)
    assert "'income' 1 inf" in msg and "1 of 20 rows" in msg
    _hint(msg)


def test_negative_inf_in_float32_feature(spark, tmp_path):
    age = np.linspace(20, 70, 20).astype(np.float32)
    age[4] = -np.inf
    path = write_table(tmp_path / "t.parquet", with_column(good_columns(), "age", age, pa.float32()))
    msg = fails(spark, path, tmp_path)
    assert "'age' 1 inf" in msg
    _hint(msg)


def test_mixed_reasons_count_rows_once(spark, tmp_path):
    cols = good_columns()
    age = list(np.linspace(20, 70, 20))
    income = list(np.linspace(1e4, 9e4, 20))
    age[1] = None
    income[1] = float("nan")  # same row: one bad row, two reasons
    income[2] = float("inf")
    cols = with_column(with_column(cols, "age", age, pa.float64()), "income", income, pa.float64())
    msg = fails(spark, write_table(tmp_path / "t.parquet", cols), tmp_path)
    assert "2 of 20 rows" in msg
    assert "'age' 1 null" in msg and "'income' 1 nan" in msg and "'income' 1 inf" in msg


def test_null_id(spark, tmp_path):
    ids = list(range(20))
    ids[9] = None
    path = write_table(tmp_path / "t.parquet", with_column(good_columns(), "customer_id", ids, pa.int64()))
    msg = fails(spark, path, tmp_path)
    assert "'customer_id' 1 null" in msg
    _hint(msg)


def test_negative_weight(spark, tmp_path):
    w = [1.0] * 20
    w[6] = -0.5
    path = write_table(tmp_path / "t.parquet", with_column(good_columns(), "w", w, pa.float64()))
    msg = fails(spark, path, tmp_path, **{"input.weight_column": "w"})
    assert "'w' 1 negative" in msg and "1 of 20 rows" in msg
    _hint(msg)


def test_duplicate_ids(spark, tmp_path):
    ids = list(range(20))
    ids[10] = 3
    ids[11] = 3   # id 3 three times
    ids[12] = 7   # id 7 twice
    path = write_table(tmp_path / "t.parquet", with_column(good_columns(), "customer_id", ids, pa.int64()))
    msg = fails(spark, path, tmp_path)
    assert "'customer_id' (input.id_column)" in msg
    assert "2 duplicated ids" in msg
    assert "3 x3" in msg and "7 x2" in msg  # examples, most repeated first
    assert msg.index("3 x3") < msg.index("7 x2")
    assert "deduplicate" in msg


def test_duplicate_string_ids_are_shown_quoted(spark, tmp_path):
    cols = with_column(good_columns(), "customer_id", [f"c-{i}" for i in range(19)] + ["c-4"])
    msg = fails(spark, write_table(tmp_path / "t.parquet", cols), tmp_path)
    assert "1 duplicated ids" in msg and "'c-4' x2" in msg


def _files(folder, parts: list, row_group_size: int = 50) -> str:
    """One parquet file per list of ids in ``parts`` (blob features), several row groups each."""
    os.makedirs(folder, exist_ok=True)
    for i, ids in enumerate(parts):
        cols = blobs(len(ids), seed=i)
        cols["customer_id"] = np.asarray(ids, dtype=np.int64)
        pq.write_table(pa.table(cols), os.path.join(folder, f"part-{i}.parquet"), row_group_size=row_group_size)
    return str(folder)


def test_sorted_ids_are_checked_by_the_tasks_without_a_spark_pass(spark, tmp_path):
    # disjoint row-group ranges in the footers: no Spark pass over the ids, the tasks check them
    path = _files(tmp_path / "in", [range(0, 150), range(150, 300), range(1000, 1150)])
    res = run_job(job_config(path, str(tmp_path / "out"), **{"kmeans.k": 3}), spark=spark)
    assert set(res.spark_passes["read+validate"]) == {"load rows"}
    assert res.rows_used == 450 and sum(res.sizes) == 450


def test_duplicates_inside_a_row_group_split_between_the_tasks(spark, tmp_path, caplog):
    # one row group of 300 rows, split between the two tasks; its duplicates lie on both sides
    ids = list(range(300))
    ids[10] = ids[290] = ids[200] = 5  # id 5 four times
    ids[20] = 250  # id 250 twice
    path = _files(tmp_path / "in", [ids], row_group_size=300)
    with caplog.at_level(logging.INFO, logger="clusterlake"):
        msg = fails(spark, path, tmp_path, **{"kmeans.num_tasks": 2})
    assert "spark pass load rows" in caplog.text and "spark pass unique ids" not in caplog.text  # the tasks found them
    assert "2 duplicated ids" in msg and "5 x4" in msg and "250 x2" in msg
    assert msg.index("5 x4") < msg.index("250 x2")


def test_duplicates_across_files_whose_ranges_overlap(spark, tmp_path):
    # overlapping footers: the Spark pass over the id column finds the duplicate across files
    path = _files(tmp_path / "in", [range(0, 150), list(range(100, 249)) + [7]])
    msg = fails(spark, path, tmp_path)
    assert "51 duplicated ids" in msg and "7 x2, 100 x2" in msg  # 100..149 and 7


def test_footers_prove_ids_disjoint_only_for_sorted_integer_ranges(tmp_path):
    from clusterlake.io.input_files import disjoint_id_ranges, merge_id_duplicates

    def footer(ids, **kw):
        f = str(tmp_path / f"f{len(os.listdir(tmp_path))}.parquet")
        pq.write_table(pa.table({"id": ids, "x": np.zeros(len(ids))}), f, row_group_size=10, **kw)
        return pq.read_metadata(f)

    assert disjoint_id_ranges([footer(list(range(30))), footer(list(range(30, 60)))], "id")
    assert not disjoint_id_ranges([footer(list(range(30))), footer(list(range(29, 60)))], "id")  # 29 in both
    assert not disjoint_id_ranges([footer([3, 1, 2] * 10)], "id")  # row groups' ranges overlap
    assert not disjoint_id_ranges([footer([f"c{i}" for i in range(30)])], "id")  # strings: not trusted
    assert not disjoint_id_ranges([footer(list(range(30)), write_statistics=False)], "id")
    assert not disjoint_id_ranges([footer(list(range(30)))], "customer_id")
    # a row group read by two tasks counts once; examples: most repeated first, then by id
    merged = merge_id_duplicates([{"a:0": [2, [[5, 4], [9, 2]]]}, {"a:0": [2, [[5, 4], [9, 2]]], "b:1": [1, [[1, 2]]]}])
    assert merged == (3, [(5, 4), (1, 2), (9, 2)])
    assert merge_id_duplicates([{}, {}]) == ()
    assert merge_id_duplicates([{}, None]) is None  # a task that did not check: not a proof


# --------------------------------------------------------------------------------------------
# too little data


def test_empty_input(spark, tmp_path):
    schema = pa.schema([("customer_id", pa.int64()), ("age", pa.float64()), ("income", pa.float64()),
                        ("true_segment", pa.int32())])
    path = write_table(tmp_path / "t.parquet", {n: [] for n in schema.names}, schema=schema)
    assert pq.read_table(path).num_rows == 0
    msg = fails(spark, path, tmp_path)
    assert "has no rows" in msg and path in msg and "input.path" in msg


def test_fewer_rows_than_k(spark, tmp_path):
    path = write_table(tmp_path / "t.parquet", good_columns(n=3))
    msg = fails(spark, path, tmp_path, **{"kmeans.k": 5})
    assert "3 valid rows" in msg and "kmeans.k=5" in msg and "lower kmeans.k" in msg


def test_fewer_valid_rows_than_k_after_drop(spark, tmp_path):
    age = list(np.linspace(20, 70, 6))
    age[0] = age[1] = age[2] = age[3] = None
    cols = with_column(good_columns(n=6), "age", age, pa.float64())
    msg = fails(spark, write_table(tmp_path / "t.parquet", cols), tmp_path,
                **{"kmeans.k": 3, "input.invalid_rows": "drop"})
    assert "2 valid rows" in msg and "kmeans.k=3" in msg


def test_single_valid_row_reports_k_not_constant(spark, tmp_path):
    # one valid row makes every column trivially constant; the real problem is k
    age = [None] * 5 + [33.0]
    cols = with_column(good_columns(n=6), "age", age, pa.float64())
    msg = fails(spark, write_table(tmp_path / "t.parquet", cols), tmp_path, **{"input.invalid_rows": "drop"})
    assert "1 valid rows" in msg and "kmeans.k=2" in msg


def test_every_row_invalid_under_drop(spark, tmp_path):
    cols = with_column(good_columns(n=8), "income", [float("nan")] * 8, pa.float64())
    msg = fails(spark, write_table(tmp_path / "t.parquet", cols), tmp_path, **{"input.invalid_rows": "drop"})
    assert "all 8 input rows are invalid" in msg and "'income' 8 nan" in msg


def test_every_feature_constant(spark, tmp_path):
    cols = with_column(with_column(good_columns(), "age", [30.0] * 20), "income", [5] * 20, pa.int64())
    msg = fails(spark, write_table(tmp_path / "t.parquet", cols), tmp_path)
    assert "every feature column is constant" in msg
    assert "'age'" in msg and "'income'" in msg


def test_input_path_does_not_exist(spark, tmp_path):
    path = str(tmp_path / "missing" / "customers.parquet")
    msg = fails(spark, path, tmp_path)
    assert path in msg and "does not exist" in msg and "input.path" in msg


def test_input_is_not_parquet(spark, tmp_path):
    p = tmp_path / "t.parquet"
    p.write_text("customer_id,age\n1,2\n")
    msg = fails(spark, str(p), tmp_path)
    assert str(p) in msg


# --------------------------------------------------------------------------------------------
# policies that let the run go on


def _runs_row(out: str) -> dict:
    rows = DeltaTable(out + "/runs").to_pyarrow_table().to_pylist()
    assert len(rows) == 1
    return rows[0]


def _assert_blobs_recovered(asg_rows, data) -> None:
    seg = dict(zip(data["customer_id"].tolist(), data["true_segment"].tolist()))
    by_seg: dict[int, set] = {}
    for r in asg_rows:
        by_seg.setdefault(seg[r["customer_id"]], set()).add(r["cluster_id"])
    assert all(len(c) == 1 for c in by_seg.values()), by_seg  # each blob is one cluster
    assert len(set().union(*by_seg.values())) == 3  # and the three clusters differ


def test_drop_invalid_rows_records_counts(spark, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="clusterlake")
    data = blobs()
    age = data["age"].tolist()
    income = data["income"].tolist()
    for i in (0, 1, 2, 40):
        age[i] = None
    for i in (10, 11, 40):  # row 40: null age AND NaN income, dropped once
        income[i] = float("nan")
    income[20] = float("inf")
    cols = {**data, "age": pa.array(age, pa.float64()), "income": pa.array(income, pa.float64())}
    path = write_table(tmp_path / "t.parquet", cols)
    out = str(tmp_path / "out")

    result = run_job(job_config(path, out, **{"kmeans.k": 3, "input.invalid_rows": "drop"}), spark=spark)

    bad_ids = {1000 + i for i in (0, 1, 2, 10, 11, 20, 40)}
    assert (result.rows_read, result.rows_dropped, result.rows_used) == (300, 7, 293)
    assert result.k == 3 and sum(result.sizes) == 293

    runs = _runs_row(out)
    assert runs["status"] == "success"
    assert runs["rows_read"] == 300 and runs["rows_dropped"] == 7 and runs["rows_used"] == 293
    assert dict(runs["invalid_counts"]) == {"age:null": 4, "income:nan": 3, "income:inf": 1}
    assert runs["dropped_columns"] == []
    assert sorted(runs["feature_columns"]) == ["age", "income", "visits"]

    asg = DeltaTable(out + "/assignments").to_pyarrow_table().to_pylist()
    assert len(asg) == runs["rows_read"] - runs["rows_dropped"] == 293
    ids = {r["customer_id"] for r in asg}
    assert len(ids) == 293
    assert ids == set(data["customer_id"].tolist()) - bad_ids
    _assert_blobs_recovered(asg, data)
    assert any("dropping 7 of 300 invalid rows" in r.getMessage() for r in caplog.records)


def test_constant_column_is_dropped_with_warning(spark, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="clusterlake")
    data = blobs(seed=9)
    cols = {**data, "store": np.full(300, 4.0), "flag": np.ones(300, dtype=np.int64)}
    path = write_table(tmp_path / "t.parquet", cols)
    out = str(tmp_path / "out")

    result = run_job(job_config(path, out, **{"kmeans.k": 3}), spark=spark)

    assert sorted(result.feature_columns) == ["age", "income", "visits"]
    runs = _runs_row(out)
    assert sorted(runs["dropped_columns"]) == ["flag", "store"]
    assert sorted(runs["feature_columns"]) == ["age", "income", "visits"]
    assert runs["rows_read"] == 300 and runs["rows_dropped"] == 0 and runs["rows_used"] == 300
    assert not runs["invalid_counts"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "constant" in r.getMessage()]
    assert len(warnings) == 1
    assert "store" in warnings[0].getMessage() and "flag" in warnings[0].getMessage()

    asg = DeltaTable(out + "/assignments").to_pyarrow_table().to_pylist()
    assert len(asg) == 300
    _assert_blobs_recovered(asg, data)


def test_constant_over_the_valid_rows_is_constant_when_invalid_rows_are_dropped(spark, tmp_path):
    # 'store' varies only through a row that is dropped for a NaN elsewhere: over the rows used it
    # is constant (the min/max of the constant check are taken over the valid rows)
    data = blobs(seed=9)
    store = np.full(300, 4.0)
    store[7] = 99.0
    age = np.asarray(data["age"], dtype=np.float64).copy()
    age[7] = np.nan
    path = write_table(tmp_path / "t.parquet", {**data, "age": age, "store": store})
    out = str(tmp_path / "out")

    result = run_job(job_config(path, out, **{"kmeans.k": 3, "input.invalid_rows": "drop"}), spark=spark)

    assert sorted(result.feature_columns) == ["age", "income", "visits"]
    runs = _runs_row(out)
    assert runs["dropped_columns"] == ["store"] and runs["rows_dropped"] == 1 and runs["rows_used"] == 299
    assert dict(runs["invalid_counts"]) == {"age:nan": 1}


def test_fewer_distinct_points_than_k_warns_and_records_k(spark, tmp_path, caplog):
    """12 rows but only 2 distinct points with k=3: a degraded but valid result (like
    scikit-learn's ConvergenceWarning): the run goes on with 2 clusters, says so in the logs and
    records requested and found k."""
    caplog.set_level(logging.WARNING)
    n = 12
    cols = {
        "customer_id": pa.array(np.arange(n, dtype=np.int64)),
        "age": pa.array(np.where(np.arange(n) < 6, 20.0, 60.0)),
        "income": pa.array(np.where(np.arange(n) < 6, 1e4, 9e4)),
    }
    path = write_table(tmp_path / "in.parquet", cols)
    out = str(tmp_path / "out")
    cfg = job_config(path, out, **{"kmeans.k": 3, "input.label_column": "null", "quality.sample_size": 100})
    with pytest.warns(UserWarning, match="found 2 distinct clusters, fewer than kmeans.k=3"):
        run_job(cfg, spark=spark)
    row = _runs_row(out)
    assert row["k_requested"] == 3 and row["k"] == 2
    cen = DeltaTable(out + "/centroids").to_pandas()
    assert sorted(cen["size"]) == [6, 6]
    assert any("fewer than kmeans.k=3" in r.getMessage() for r in caplog.records)


def test_as_many_rows_as_k_runs_and_skips_undefined_metrics(spark, tmp_path, caplog):
    """n == k: every row is its own cluster. Calinski-Harabasz, Davies-Bouldin and the silhouette
    are undefined (they need 2 <= k < n): the run commits without them and says why."""
    caplog.set_level(logging.WARNING)
    cols = {
        "customer_id": pa.array(np.arange(4, dtype=np.int64)),
        "age": pa.array([20.0, 30.0, 50.0, 70.0]),
        "income": pa.array([1e4, 9e4, 3e4, 6e4]),
    }
    path = write_table(tmp_path / "in.parquet", cols)
    out = str(tmp_path / "out")
    run_job(job_config(path, out, **{"kmeans.k": 4, "input.label_column": "null", "quality.sample_size": 100}),
            spark=spark)
    met = DeltaTable(out + "/metrics").to_pandas().set_index("metric")["value"]
    assert met["n_clusters"] == 4 and met["inertia"] == pytest.approx(0.0, abs=1e-9)
    assert not {"calinski_harabasz", "davies_bouldin", "silhouette"} & set(met.index)
    assert any("undefined" in r.getMessage() for r in caplog.records)
