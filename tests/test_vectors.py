"""Vector columns as features (clusterlake.io.vectors): the Arrow -> numpy conversion, the per-row
check, the numpy and Spark forms of the invalid-row rule for a vector, and the loader's blocks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from clusterlake.engine.blocks import BlockSource
from clusterlake.io.validity import MAX_ABS_VALUE, Validity, reason_names
from clusterlake.io.vectors import Features, element_index, element_names, vector_rows

NAN, INF = float("nan"), float("inf")
ROWS = [  # id, emb (3 floats), price
    (1, [1.0, 2.0, 3.0], 5.0),
    (2, [1.0, 2.0], 5.0),  # wrong length
    (3, None, 6.0),  # null vector
    (4, [1.0, NAN, 3.0], 7.0),
    (5, [1.0, INF, 3.0], 7.0),
    (6, [2e100, 0.0, 0.0], 7.0),
    (7, [1.0, None, 3.0], 7.0),  # a null element
    (8, [4.0, 5.0, 6.0, 7.0], 8.0),  # too long
    (None, [1.0, 1.0, 1.0], 8.0),
    (10, [-1e100, 0.5, 0.25], 9.0),  # exactly the bound: valid
    (11, [7.0, 8.0, 9.0], None),
    (12, [1.0, None], 5.0),  # too short and holding a null: null, as Spark's rule says
    (13, [None, INF, 1.0], 5.0),  # a null and an inf: null only
]


def _list(values, typ=pa.float32()):
    return pa.array(values, pa.list_(typ))


@pytest.mark.parametrize("kind", ["list", "large_list", "fixed_size_list", "sliced"])
def test_vector_rows_reshape_every_list_kind(kind):
    X = np.arange(24, dtype=np.float32).reshape(8, 3)
    flat = pa.array(X.ravel())
    arr = {"list": pa.FixedSizeListArray.from_arrays(flat, 3).cast(pa.list_(pa.float32())),
           "large_list": pa.FixedSizeListArray.from_arrays(flat, 3).cast(pa.large_list(pa.float32())),
           "fixed_size_list": pa.FixedSizeListArray.from_arrays(flat, 3),
           "sliced": pa.FixedSizeListArray.from_arrays(flat, 3).cast(pa.list_(pa.float32())).slice(2, 6)}[kind]
    rows = vector_rows(arr, 3)
    want = X[2:] if kind == "sliced" else X
    np.testing.assert_array_equal(rows.X, want)
    assert rows.X.dtype == np.float32 and rows.valid.all()
    assert rows.X.base is not None  # the common case is a view of the list's values, not a copy


def test_vector_rows_reasons_one_per_row():
    arr = _list([r[1] for r in ROWS], pa.float64())
    rows = vector_rows(arr, 3)
    got = {r: np.flatnonzero(m).tolist() for r, m in rows.reasons.items()}
    assert got == {"null": [2, 6, 11, 12], "length": [1, 7], "nan": [3], "inf": [4], "too_large": [5]}
    assert rows.lengths.tolist() == [3, 2, -1, 3, 3, 3, 3, 4, 3, 3, 3, 2, 3]
    np.testing.assert_array_equal(rows.X[[0, 8, 9]], [[1, 2, 3], [1, 1, 1], [-MAX_ABS_VALUE, 0.5, 0.25]])
    assert np.isnan(rows.X[[1, 2, 7]]).all()  # no value is invented for a row that has none


def test_element_names_round_trip_and_features_block_in_model_order():
    assert element_names("e.mb", 3) == ["e.mb[0]", "e.mb[1]", "e.mb[2]"]
    assert element_index("e.mb[12]", "e.mb") == 12 and element_index("e.mb[1]", "emb") is None
    assert element_index("x[1]", None) is None and element_index("emb", "emb") is None
    batch = pa.RecordBatch.from_pydict({"emb": _list([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), "p": [10.0, 20.0]})
    # constant elements dropped, another order: the block follows the names
    f = Features(("emb[2]", "p", "emb[0]"), "emb", 3)
    np.testing.assert_array_equal(f.block(batch.column), [[3, 10, 1], [6, 20, 4]])
    assert f.input_columns == ["p", "emb"] and f.named == ["p"] and f.elements.tolist() == [2, 0]
    np.testing.assert_array_equal(Features.of(["p"], "emb", 3).block(batch.column), [[10, 1, 2, 3], [20, 4, 5, 6]])


def _numpy(rows):
    batch = pa.RecordBatch.from_pydict({
        "id": pa.array([r[0] for r in rows], pa.int64()), "emb": _list([r[1] for r in rows], pa.float64()),
        "price": pa.array([r[2] for r in rows], pa.float64())})
    src = BlockSource(columns=("price",), vector="emb", vector_dim=3, carry=("id",), validate_id="id")
    return src.validated(batch)


def test_the_loader_counts_and_drops_bad_vectors_and_names_an_example():
    kept, v, X = _numpy(ROWS)
    assert v.counts == {"id:null": 1, "price:null": 1, "emb:null": 4, "emb:length": 2, "emb:nan": 1, "emb:inf": 1,
                        "emb:too_large": 1}
    assert kept.column("id").to_pylist() == [1, 10] and v.invalid == 11
    np.testing.assert_array_equal(X, [[5.0, 1, 2, 3], [9.0, -1e100, 0.5, 0.25]])
    assert v.examples == {"emb:length": "id 2 has length 2, expected 3"}
    merged = Validity.from_json(v.to_json()).merge(Validity.from_json(_numpy(ROWS[7:8])[1].to_json()))
    assert merged.examples["emb:length"] == "id 2 has length 2, expected 3"  # the first one seen is kept
    assert merged.counts["emb:length"] == 3


def test_numpy_and_spark_rules_count_the_same_for_vectors(spark):
    from pyspark.sql import functions as F

    from clusterlake.io.reader import VectorInput, row_checks

    df = spark.createDataFrame(ROWS, "id long, emb array<double>, price double")
    feats = ["price"] + element_names("emb", 3)
    valid, reasons = row_checks("id", feats, None, VectorInput("emb", 3, "double"))
    row = df.agg(F.sum(F.when(valid, 0).otherwise(1)).alias("bad"),
                 *[F.sum(F.when(c, 1).otherwise(0)).alias(f"r{i}") for i, c in enumerate(reasons.values())]).first()
    spark_counts = {name: row[f"r{i}"] for i, name in enumerate(reasons) if row[f"r{i}"]}
    _, v, _ = _numpy(ROWS)
    assert list(reasons) == reason_names("id", feats, None, "emb")
    assert v.counts == spark_counts and v.invalid == row["bad"] == 11


def test_float32_vectors_overflow_to_inf_not_too_large():
    rows = vector_rows(_list([[2e100, 0.0], [1.0, 2.0]]), 2)  # float32 cannot hold 2e100: it is inf
    assert rows.reasons["inf"].tolist() == [True, False] and not rows.reasons["too_large"].any()


def test_a_source_that_does_not_validate_refuses_bad_vectors_by_name():
    batch = pa.RecordBatch.from_pydict({"emb": _list([[1.0, 2.0], [1.0]])})
    with pytest.raises(ValueError, match=r"column 'emb' has invalid vectors \{'length': 1\} \(expected 2"):
        BlockSource(vector="emb", vector_dim=2).pack(batch)


def test_the_task_file_loader_builds_the_block_the_packed_path_builds(tmp_path):
    """engine.blocks: a task reading its files assembles its block directly (no packing); it must
    equal unpack() of the same batches packed (the path of rows Spark hands over)."""
    import pyarrow.parquet as pq

    from clusterlake.config import InputSection
    from clusterlake.engine.blocks import _packed, batch_rows, file_loader, unpack
    from clusterlake.io.batches import positions
    from clusterlake.io.input_files import plain_file_scan

    rng = np.random.default_rng(0)
    n = 5000
    vecs = [list(map(float, v)) for v in rng.normal(size=(n, 3)).astype(np.float32)]
    vecs[10], vecs[20] = None, [1.0]
    path = str(tmp_path / "t.parquet")
    pq.write_table(pa.table({"id": pa.array(np.arange(n)), "emb": pa.array(vecs, pa.list_(pa.float32())),
                             "p": pa.array(rng.normal(size=n).astype(np.float32)),
                             "w": pa.array(rng.uniform(0.5, 2, size=n)), "lab": pa.array([f"l{i % 3}" for i in range(n)])}),
                   path, row_group_size=700)
    cfg = InputSection(path=path, id_column="id", vector_column="emb", feature_columns=["p"], label_column="lab",
                       weight_column="w", invalid_rows="drop")
    scan = plain_file_scan(cfg, ["id", "p", "emb", "lab", "w"], ["w"])
    src = BlockSource(columns=("p",), vector="emb", vector_dim=3, weight_column="w", carry=("id", "lab"),
                      validate_id="id")
    slices = scan.split(2)
    direct = [file_loader(scan, src, slices)([pa.RecordBatch.from_pydict({"task": [t]})], t) for t in range(2)]
    pos = positions(src.input_columns)
    local, names = src.positional(pos), {c: pos[c] for c in scan.columns}
    for t, got in enumerate(direct):
        batches = (b.rename_columns([names[c] for c in b.schema.names]) for b in scan.read(slices[t], batch_rows(src.width)))
        want = unpack(list(_packed(local, t, batches)), t)
        assert got.X.dtype == want.X.dtype == np.float32 and got.X.flags.c_contiguous
        np.testing.assert_array_equal(got.X, want.X)
        np.testing.assert_array_equal(got.w, want.w)
        assert got.columns.equals(want.columns) and got.validity == want.validity
    assert sum(b.n for b in direct) == n - 2


def test_a_vector_length_change_is_said_once_not_per_element():
    from types import SimpleNamespace

    from clusterlake.io.feature_contract import describe_change

    now = SimpleNamespace(feature_columns=["price"] + element_names("emb", 768), dropped_constant_columns=[],
                          feature_types={})
    text = describe_change(["price"] + element_names("emb", 384), now, {"price": "double"})
    assert text == ("vector 'emb' had 384 element features, now 768 (its length changed, or constant elements "
                    "were dropped)")
    now.feature_columns = ["visits"] + element_names("emb", 384)
    text = describe_change(["price"] + element_names("emb", 384), now, {"price": "double"})
    assert text == "lost 'price' (not in input.feature_columns); gained 'visits' (?)"
