"""The nightly job on an embeddings table (``input.vector_column``): the tables read back, the
exemplars against a brute-force search, serving equal to the batch, the invalid-row policy for
vectors (counted, or an error naming an id and the length), ML vectors and Spark's read path."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from sklearn.metrics import adjusted_rand_score

from clusterlake.errors import InputDataError
from clusterlake.pipeline import run_job
from clusterlake.serving import Assigner
from tests.conftest import job_config

N, D, K = 3000, 16, 4


def embeddings(n=N, d=D, k=K, seed=0):
    """Unit vectors around k directions, a named feature ``price`` and the true topic."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(k, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    y = rng.integers(0, k, n)
    X = dirs[y] + rng.normal(scale=0.15, size=(n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), rng.gamma(2.0, 10.0, n), y


def write(path, X, price, y, vectors=None):
    n, d = X.shape
    emb = vectors if vectors is not None else \
        pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), d).cast(pa.list_(pa.float32()))
    pq.write_table(pa.table({"doc_id": pa.array(np.arange(n, dtype=np.int64) + 100), "emb": emb,
                             "price": pa.array(price), "topic": pa.array(y.astype(np.int32))}),
                   str(path), row_group_size=1000)
    return str(path)


def vector_config(path, out, **over):
    base = {"input.id_column": "doc_id", "input.label_column": "topic", "input.vector_column": "emb",
            "input.feature_columns": "[price]", "kmeans.k": K, "kmeans.distance": "cosine",
            "density.enabled": "false", "hierarchical.enabled": "false", "report.enabled": "false"}
    return job_config(path, out, **{**base, **over})


@pytest.fixture(scope="module")
def run(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vectors")
    X, price, y = embeddings()
    path = write(tmp / "emb.parquet", X, price, y)
    out = str(tmp / "out")
    result = run_job(vector_config(path, out, **{"report.enabled": "true"}), spark=spark)
    asg = DeltaTable(f"{out}/assignments").to_pandas().set_index("doc_id").sort_index()
    return {"result": result, "out": out, "X": X, "price": price, "y": y, "asg": asg, "path": path, "tmp": tmp}


def _table(run, name):
    return DeltaTable(f"{run['out']}/{name}").to_pandas()


def test_every_row_clustered_on_the_vector_and_the_named_column(run):
    asg, res = run["asg"], run["result"]
    assert len(asg) == N and list(asg.index) == list(range(100, 100 + N))
    assert res.feature_columns == ["price"] + [f"emb[{j}]" for j in range(D)]
    # the topics are the vectors' directions: price (noise) must not break them
    assert adjusted_rand_score(run["y"], asg["cluster_id"]) > 0.95
    assert Assigner.load(f"{run['out']}/model/latest").artifact.meta["vector_dim"] == D


def test_exemplars_are_the_rows_nearest_each_centroid(run):
    asg = run["asg"].reset_index()
    cen = _table(run, "centroids").sort_values("cluster_id")
    for cid, ex, desc in zip(cen["cluster_id"], cen["exemplar_ids"], cen["description"]):
        mine = asg[asg["cluster_id"] == cid].sort_values("distance")
        assert list(ex) == [str(v) for v in mine["doc_id"][:5]]  # brute force over the table
        assert desc.endswith("most central: " + ", ".join(list(ex)[:3]))


def test_profiles_describe_the_named_columns_not_each_dimension(run):
    prof = _table(run, "profiles")
    assert set(prof["feature"]) == {"price"} and len(prof) == K
    html = open(os.path.join(run["out"], "reports", f"{run['result'].run_id}.html")).read()
    assert "most central rows (ids)" in html


def test_serving_takes_the_vector_and_equals_the_batch(run):
    a = Assigner.load(f"{run['out']}/model/latest")
    rows = [{"emb": run["X"][i].tolist(), "price": float(run["price"][i])} for i in range(200)]
    got = a.assign(rows)
    want = run["asg"].iloc[:200]
    np.testing.assert_array_equal(got.cluster_id, want["cluster_id"])
    np.testing.assert_allclose(got.distance, want["distance"], rtol=1e-6, atol=1e-9)
    cols = a.assign({"emb": run["X"][:200], "price": run["price"][:200]})  # columns: an (n, dim) array
    np.testing.assert_array_equal(cols.cluster_id, want["cluster_id"])
    from clusterlake.serving.assigner import RowError

    with pytest.raises(RowError, match=r"row 1 feature 'emb' has length 15, expected 16"):
        a.assign([rows[0], {**rows[1], "emb": rows[1]["emb"][:15]}])
    with pytest.raises(RowError, match=r"^row 2 feature 'price' is 'x' \(str\)") as ei:
        a.assign([rows[0], rows[1], {**rows[2], "price": "x"}])
    assert ei.value.row == 2


def test_spark_read_path_and_ml_vectors_give_the_same_clusters(run, spark):
    from pyspark.ml.functions import array_to_vector

    same = run_job(vector_config(run["path"], str(run["tmp"] / "spark"), **{"input.read_in_tasks": "false"}),
                   spark=spark)
    asg = DeltaTable(same.output_path + "/assignments").to_pandas().set_index("doc_id").sort_index()
    # other tasks hold other rows (the seeding draws differ): the same clusters, maybe numbered otherwise
    assert adjusted_rand_score(asg["cluster_id"], run["asg"]["cluster_id"]) > 0.999
    ml_path = str(run["tmp"] / "ml.parquet")
    spark.read.parquet(run["path"]).withColumn("emb", array_to_vector("emb")).write.parquet(ml_path)
    ml = run_job(vector_config(ml_path, str(run["tmp"] / "ml")), spark=spark)
    asg_ml = DeltaTable(ml.output_path + "/assignments").to_pandas().set_index("doc_id").sort_index()
    assert adjusted_rand_score(asg_ml["cluster_id"], run["asg"]["cluster_id"]) > 0.999
    assert ml.feature_columns == run["result"].feature_columns


def _bad_table(tmp_path):
    X, price, y = embeddings(n=600)
    vecs = [list(map(float, v)) for v in X]
    vecs[17] = vecs[17][:15]  # doc_id 117: one element short
    vecs[40] = None
    vecs[41] = vecs[41][:3] + [float("nan")] + vecs[41][4:]
    return write(tmp_path / "bad.parquet", X, price, y, vectors=pa.array(vecs, pa.list_(pa.float32())))


def test_a_bad_vector_fails_naming_an_id_and_its_length(spark, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InputDataError) as ei:
        run_job(vector_config(_bad_table(tmp_path), str(out)), spark=spark)
    msg = str(ei.value)
    assert "3 of 600 rows" in msg and "'emb' 1 length" in msg and "'emb' 1 null" in msg and "'emb' 1 nan" in msg
    assert "e.g. doc_id 117 has length 15, expected 16" in msg and "input.invalid_rows: drop" in msg
    assert not os.path.exists(out)


def test_bad_vectors_dropped_and_counted(spark, tmp_path):
    out = str(tmp_path / "out")
    res = run_job(vector_config(_bad_table(tmp_path), out, **{"input.invalid_rows": "drop"}), spark=spark)
    assert (res.rows_read, res.rows_used, res.rows_dropped) == (600, 597, 3)
    runs = DeltaTable(f"{out}/runs").to_pandas()
    counts = dict(runs["invalid_counts"].iloc[0])
    assert counts == {"emb:null": 1, "emb:length": 1, "emb:nan": 1}
    asg = DeltaTable(f"{out}/assignments").to_pandas()
    assert len(asg) == 597 and not {117, 140, 141} & set(asg["doc_id"])


def test_vector_column_of_another_type_is_named(spark, tmp_path):
    X, price, y = embeddings(n=50)
    path = write(tmp_path / "t.parquet", X, price, y, vectors=pa.array([str(v) for v in range(50)]))
    with pytest.raises(InputDataError, match=r"input column 'emb' \(input.vector_column\) has type string, "
                                             r"expected array<float>"):
        run_job(vector_config(path, str(tmp_path / "out")), spark=spark)


def test_the_update_job_folds_in_new_vectors_as_serving_assigns_them(run, spark, tmp_path):
    import shutil

    from clusterlake.update import run_update

    out = str(tmp_path / "out")
    shutil.copytree(run["out"], out, symlinks=True)
    X, price, y = embeddings(n=300, seed=1)
    new = write(tmp_path / "new.parquet", X, price, y)  # ids 100..399 are taken: renumber them
    t = pq.read_table(new)
    t = t.set_column(0, "doc_id", pa.array(np.arange(300, dtype=np.int64) + 50_000))
    pq.write_table(t, new)
    before = Assigner.load(f"{out}/model/latest")
    # (profile columns play no part in an update: one the new rows lack is no error)
    up = run_update(vector_config(run["path"], out, **{"input.profile_columns": "[visits]"}), new, spark=spark)
    asg = DeltaTable(f"{out}/assignments").to_pandas()
    mine = asg[asg["run_id"] == up.run_id].set_index("doc_id").sort_index()
    assert list(mine.index) == list(range(50_000, 50_300))
    want = before.assign([{"emb": X[i].tolist(), "price": float(price[i])} for i in range(300)])
    np.testing.assert_array_equal(mine["cluster_id"], want.cluster_id)
    assert up.feature_columns == run["result"].feature_columns


def test_the_stream_assigns_landing_vectors_as_the_batch_did(run, spark, tmp_path):
    from clusterlake.stream import run_assign_stream

    landing = tmp_path / "landing"
    os.makedirs(landing)
    part = pq.read_table(run["path"]).slice(0, 400)
    bad = part.slice(0, 1).set_column(1, "emb", pa.array([[0.5] * 3], pa.list_(pa.float32())))
    pq.write_table(part, str(landing / "a.parquet"))
    pq.write_table(bad.set_column(0, "doc_id", pa.array([99_999])), str(landing / "b.parquet"))
    cfg = vector_config(run["path"], run["out"], **{"stream.landing_path": str(landing), "stream.table": "emb_stream",
                                                    "stream.checkpoint_path": str(tmp_path / "ckpt"),
                                                    "input.invalid_rows": "drop"})
    res = run_assign_stream(cfg, spark=spark)
    assert (res.rows_read, res.rows_dropped, res.rows_written) == (401, 1, 400)
    assert res.invalid_counts == {"emb:length": 1}
    got = DeltaTable(f"{run['out']}/emb_stream").to_pandas().set_index("doc_id").sort_index()
    np.testing.assert_array_equal(got["cluster_id"], run["asg"]["cluster_id"].iloc[:400])
    np.testing.assert_allclose(got["distance"], run["asg"]["distance"].iloc[:400], rtol=1e-9, atol=1e-12)


def test_profile_columns_are_profiled_not_clustered_and_their_nulls_drop_nothing(spark, tmp_path):
    import pandas as pd

    X, price, y = embeddings(n=1500)
    price = price + 40.0 * (y == 2)  # topic 2 is expensive
    path = write(tmp_path / "t.parquet", X, price, y)
    t = pq.read_table(path)
    visits = pa.array([None if i % 7 == 0 else float(i % 13) for i in range(1500)], pa.float64())
    pq.write_table(t.append_column("visits", visits), path)
    out = str(tmp_path / "out")
    res = run_job(vector_config(path, out, **{"input.feature_columns": "null",
                                              "input.profile_columns": "[price, visits]"}), spark=spark)
    assert res.feature_columns == [f"emb[{j}]" for j in range(D)] and res.rows_used == 1500
    prof = _table({"out": out}, "profiles").set_index(["cluster_id", "feature"]).sort_index()
    asg = DeltaTable(f"{out}/assignments").to_pandas()
    df = pq.read_table(path).to_pandas().merge(asg[["doc_id", "cluster_id"]], on="doc_id")
    for col in ("price", "visits"):
        g = df.groupby("cluster_id")[col]
        mine = prof.xs(col, level="feature")
        np.testing.assert_allclose(mine["mean"], g.mean(), rtol=1e-12)
        np.testing.assert_allclose(mine["std"], g.std(ddof=0), rtol=1e-9)
        np.testing.assert_allclose(mine["population_std"], df[col].std(ddof=0), rtol=1e-9)
    expensive = int(pd.Series(asg["cluster_id"].to_numpy())[df.sort_values("doc_id")["topic"].to_numpy() == 2].mode()[0])
    cen = _table({"out": out}, "centroids").set_index("cluster_id")
    assert cen.loc[expensive, "description"].startswith("high price (+")
    assert "most central: " in cen.loc[expensive, "description"]


def test_http_service_takes_vectors_and_names_a_wrong_length(run):
    from tests.test_serving import _start, _stop

    proc, client = _start(f"{run['out']}/model/latest")
    try:
        rows = [{"emb": run["X"][i].tolist(), "price": float(run["price"][i])} for i in range(50)]
        status, got = client.call("POST", "/assign", {"rows": rows})
        assert status == 200
        assert [a["cluster_id"] for a in got["assignments"]] == run["asg"]["cluster_id"].iloc[:50].tolist()
        status, err = client.call("POST", "/assign", {"row": {**rows[0], "emb": rows[0]["emb"][:7]}})
        assert status == 400 and err["feature"] == "emb" and "has length 7, expected 16" in err["error"]
    finally:
        _stop(proc)


def test_seeding_only_assigns_every_row_to_its_nearest_seed(spark, tmp_path):
    X, price, y = embeddings(n=2000, seed=3)
    path = write(tmp_path / "t.parquet", X, price, y)
    out = str(tmp_path / "out")
    res = run_job(vector_config(path, out, **{"kmeans.max_iter": 0, "kmeans.init": "kmeans||"}), spark=spark)
    runs = DeltaTable(f"{out}/runs").to_pandas()
    assert int(runs["iterations"].iloc[0]) == 0 and not bool(runs["converged"].iloc[0])
    asg = DeltaTable(f"{out}/assignments").to_pandas().set_index("doc_id").sort_index()
    a = Assigner.load(f"{out}/model/latest")  # the seeds are the model: the batch is their nearest-centre rule
    got = a.assign([{"emb": X[i].tolist(), "price": float(price[i])} for i in range(300)])
    np.testing.assert_array_equal(got.cluster_id, asg["cluster_id"].iloc[:300])
    assert adjusted_rand_score(y, asg["cluster_id"]) > 0.8  # k-means|| alone, on well separated topics
    assert res.k == K


def test_rows_spilled_to_disk_give_the_same_tables(run, spark, tmp_path, caplog):
    """A task budget far below the rows: every task's rows and model space are memory-mapped from
    local disk, and every table is the in-memory run's."""
    out = str(tmp_path / "out")
    with caplog.at_level("INFO", logger="clusterlake"):
        run_job(vector_config(run["path"], out, **{"report.enabled": "true", "job.task_memory_gb": 1e-6}),
                spark=spark)
    assert "spilled to local disk" in caplog.text
    asg = DeltaTable(f"{out}/assignments").to_pandas().set_index("doc_id").sort_index()
    np.testing.assert_array_equal(asg["cluster_id"], run["asg"]["cluster_id"])
    np.testing.assert_array_equal(asg["distance"], run["asg"]["distance"])
    for name, key in (("centroids", "cluster_id"), ("metrics", "metric")):
        mine = DeltaTable(f"{out}/{name}").to_pandas().sort_values(key).reset_index(drop=True)
        ref = _table(run, name).sort_values(key).reset_index(drop=True)
        cols = [c for c in ref.columns if c not in ("run_id", "run_ts", "created_at", "run_date")]
        assert mine[cols].astype(str).equals(ref[cols].astype(str)), name


def test_mini_batch_fit_and_the_member_cap_in_the_job(spark, tmp_path, caplog):
    """kmeans.batch_size: the job fits mini-batch K-means on the embeddings (cosine): the topics
    found, every row assigned to its nearest centroid, the steps recorded as iterations. And
    serving.max_members caps the member sample: 4 clusters share 400 rows."""
    X, price, y = embeddings(n=3000, seed=5)
    path = write(tmp_path / "t.parquet", X, price, y)
    out = str(tmp_path / "out")
    with caplog.at_level("INFO", logger="clusterlake"):
        run_job(vector_config(path, out, **{"kmeans.batch_size": 300, "kmeans.max_iter": 5,
                                            "input.feature_columns": "null", "serving.max_members": 400}),
                spark=spark)
    assert "mini-batch: " in caplog.text and "steps of 300 rows" in caplog.text
    art = Assigner.load(f"{out}/model/latest").artifact
    assert art.meta["members"]["per_cluster"] == 100  # not members_per_cluster's 10,000: all 3,000 rows
    members = np.asarray(art.cluster_stats["members"])
    assert 300 <= members.sum() <= 500 and (members > 40).all()
    runs = DeltaTable(f"{out}/runs").to_pandas()
    assert 1 <= int(runs["iterations"].iloc[0]) <= 5 * 3000 // 300
    asg = DeltaTable(f"{out}/assignments").to_pandas().set_index("doc_id").sort_index()
    assert adjusted_rand_score(y, asg["cluster_id"]) > 0.95
    got = Assigner.load(f"{out}/model/latest").assign([{"emb": X[i].tolist()} for i in range(200)])
    np.testing.assert_array_equal(got.cluster_id, asg["cluster_id"].iloc[:200])
