"""Tests for scripts/make_sample_data.py (fast, no Spark)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_sample_data.py"


def _load_module():
    name = "clusterlake_make_sample_data"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


msd = _load_module()

RATE_COLUMNS = ["discount_rate", "return_rate", "mobile_share"]
INT_COLUMNS = {"age", "tenure_months", "support_tickets", "days_since_last_order"}
TARGET_SHARES = [0.30, 0.22, 0.15, 0.12, 0.10, 0.07, 0.04]


@pytest.fixture(scope="module")
def table_50k():
    return msd.generate(50_000, seed=11)


def _features(table):
    return np.column_stack(
        [table.column(c).to_numpy().astype(np.float64) for c in msd.FEATURE_COLUMNS]
    )


def test_public_constants():
    assert msd.ID_COLUMN == "customer_id"
    assert msd.LABEL_COLUMN == "true_segment"
    assert len(msd.FEATURE_COLUMNS) == 12
    assert len(set(msd.FEATURE_COLUMNS)) == 12


def test_deterministic():
    a = msd.generate(5000, seed=3)
    b = msd.generate(5000, seed=3)
    assert a.equals(b, check_metadata=True)
    c = msd.generate(5000, seed=4)
    assert not a.equals(c)


def test_schema_and_dtypes():
    t = msd.generate(2000, seed=1)
    assert t.num_rows == 2000
    expected = ["customer_id", *msd.FEATURE_COLUMNS, "true_segment", "segment_name"]
    assert t.column_names == expected
    assert t.schema.field("customer_id").type == pa.int64()
    assert t.schema.field("true_segment").type == pa.int32()
    assert t.schema.field("segment_name").type == pa.string()
    for c in msd.FEATURE_COLUMNS:
        want = pa.int64() if c in INT_COLUMNS else pa.float64()
        assert t.schema.field(c).type == want, c
    for col in t.columns:
        assert col.null_count == 0


def test_ids_unique_and_not_sequential_from_zero(table_50k):
    ids = table_50k.column("customer_id").to_numpy()
    assert len(np.unique(ids)) == len(ids)
    assert ids.min() >= 1_000_000
    assert not np.all(np.diff(ids) == 1)  # shuffled


def test_segment_shares(table_50k):
    y = table_50k.column("true_segment").to_numpy()
    n = len(y)
    assert set(np.unique(y)) == set(range(7)) | {-1}
    for k, target in enumerate(TARGET_SHARES):
        share = (y == k).sum() / n
        assert abs(share - target) <= 0.02, (k, share, target)
    # names match labels one-to-one
    names = np.asarray(table_50k.column("segment_name").to_pylist(), dtype=object)
    for k in range(-1, 7):
        assert len(set(names[y == k])) == 1


def test_outlier_share(table_50k):
    y = table_50k.column("true_segment").to_numpy()
    share = (y == -1).mean()
    assert 0.007 <= share <= 0.013
    names = table_50k.column("segment_name").to_pylist()
    assert {nm for nm, k in zip(names, y) if k == -1} == {"outlier"}


def test_rows_shuffled(table_50k):
    y = table_50k.column("true_segment").to_numpy()
    # segments are not laid out in contiguous blocks
    assert (np.diff(y) != 0).sum() > len(y) // 4


def test_values_plausible(table_50k):
    for c in RATE_COLUMNS:
        v = table_50k.column(c).to_numpy()
        assert v.min() >= 0.0 and v.max() <= 1.0, c
    x = _features(table_50k)
    assert np.isfinite(x).all()
    assert (x >= 0).all()
    age = table_50k.column("age").to_numpy()
    assert age.min() >= 18 and age.max() <= 90
    tenure = table_50k.column("tenure_months").to_numpy()
    assert (tenure <= (age - 18) * 12 + 1).all()


def test_spend_correlates_with_income(table_50k):
    y = table_50k.column("true_segment").to_numpy()
    keep = y >= 0
    inc = np.log(table_50k.column("annual_income").to_numpy()[keep])
    spend = np.log1p(table_50k.column("monthly_spend").to_numpy()[keep])
    assert np.corrcoef(inc, spend)[0, 1] > 0.3


def test_kmeans_recovers_segments():
    pytest.importorskip("sklearn")
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score
    from sklearn.preprocessing import StandardScaler

    t = msd.generate(20_000, seed=0)
    x = _features(t)
    y = t.column("true_segment").to_numpy()
    z = PCA(n_components=0.95).fit_transform(StandardScaler().fit_transform(x))
    pred = KMeans(n_clusters=7, n_init=4, random_state=0).fit_predict(z)
    keep = y >= 0
    ari = adjusted_rand_score(y[keep], pred[keep])
    assert ari > 0.8, ari


def test_write_parts_and_roundtrip(tmp_path):
    t = msd.generate(1003, seed=5)
    out = tmp_path / "customers.parquet"
    msd.write(t, out, n_files=4)
    parts = sorted(p.name for p in out.iterdir())
    assert parts == [f"part-{i:05d}.parquet" for i in range(4)]
    sizes = [pq.ParquetFile(out / p).metadata.num_rows for p in parts]
    assert sum(sizes) == 1003 and max(sizes) - min(sizes) <= 1
    back = pq.read_table([str(out / p) for p in parts])
    assert back.equals(t)
    # no temporary siblings left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["customers.parquet"]
    # rewriting replaces the dataset atomically
    t2 = msd.generate(500, seed=6)
    msd.write(t2, out, n_files=2)
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["customers.parquet"]


def test_write_is_byte_identical(tmp_path):
    msd.write(msd.generate(3000, seed=2), tmp_path / "a", n_files=3)
    msd.write(msd.generate(3000, seed=2), tmp_path / "b", n_files=3)
    for i in range(3):
        name = f"part-{i:05d}.parquet"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_main_respects_existing_and_force(tmp_path, capsys):
    out = tmp_path / "sample" / "customers.parquet"
    assert msd.main(["--rows", "800", "--seed", "1", "--out", str(out), "--files", "2"]) == 0
    first = capsys.readouterr().out
    assert "800" in first and str(out) in first
    before = (out / "part-00000.parquet").read_bytes()

    assert msd.main(["--rows", "400", "--out", str(out)]) == 0
    assert "exists" in capsys.readouterr().out
    assert (out / "part-00000.parquet").read_bytes() == before

    assert msd.main(["--rows", "400", "--out", str(out), "--force"]) == 0
    capsys.readouterr()
    assert pq.read_table(str(out)).num_rows == 400
