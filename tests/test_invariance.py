"""Same input, config and seed give the same clustering; row order and file/partition layout do
not change the clustering of well-separated data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable
from sklearn.metrics import adjusted_rand_score

from clusterlake.pipeline import run_job
from tests.conftest import job_config


def _write(path, table, n_files):
    path.mkdir(parents=True)
    for i, idx in enumerate(np.array_split(np.arange(table.num_rows), n_files)):
        pq.write_table(table.take(pa.array(idx)), path / f"part-{i:05d}.parquet")


def _assignments(out):
    return DeltaTable(f"{out}/assignments").to_pandas().set_index("customer_id").sort_index()


def test_row_order_and_partitioning_do_not_change_the_clustering(spark, tmp_path):
    rng = np.random.default_rng(5)
    centers = rng.uniform(-20, 20, size=(4, 5))
    lab = np.repeat(np.arange(4), [300, 200, 150, 100])
    X = centers[lab] + rng.normal(size=(len(lab), 5))
    ids = rng.permutation(len(lab)).astype(np.int64) + 500
    table = pa.table({"customer_id": ids, **{f"f{j}": X[:, j] for j in range(5)}, "true_segment": lab})
    a_in, b_in = tmp_path / "a", tmp_path / "b"
    _write(a_in, table, 1)
    _write(b_in, table.take(pa.array(rng.permutation(table.num_rows))), 3)  # shuffled, 3 files

    over = {"kmeans.k": 4, "quality.sample_size": 200}
    ra = run_job(job_config(str(a_in), str(tmp_path / "oa"), **over), spark=spark)
    ra2 = run_job(job_config(str(a_in), str(tmp_path / "oa2"), **over), spark=spark)
    rb = run_job(job_config(str(b_in), str(tmp_path / "ob"), **over), spark=spark)

    A, A2, B = (_assignments(tmp_path / o) for o in ("oa", "oa2", "ob"))
    # idempotent: same input + config + seed -> the same labels and centroids
    assert (A["cluster_id"] == A2["cluster_id"]).all()
    ca = DeltaTable(f"{tmp_path}/oa/centroids").to_pandas().sort_values("cluster_id")
    ca2 = DeltaTable(f"{tmp_path}/oa2/centroids").to_pandas().sort_values("cluster_id")
    np.testing.assert_array_equal(np.stack(ca["centroid_model"]), np.stack(ca2["centroid_model"]))
    # another order and layout: the same partition of the rows (labels may be permuted)
    assert adjusted_rand_score(A["cluster_id"], B["cluster_id"]) == 1.0
    assert ra.metrics["ari"] == rb.metrics["ari"] == 1.0
    assert ra2.run_id != ra.run_id
