"""Column names with a dot, a space or a backtick (issue 17): Spark reads a plain ``spend.monthly``
as a struct field, so every reference to a user's column must be quoted
(:mod:`clusterlake.io.columns`), and PySpark's ``mapInArrow`` cannot even take such a column as
input (it refers to each input column as ``df[name]``): the passes hand it positional names.

The id column is ``customer.id``, the features ``spend.monthly``, ``age years`` and ``visits`n``
(a backtick), the label ``segment.true`` and the weight ``weight.row``. The passes are checked
directly on such a DataFrame, then the nightly job (density and hierarchical passes on), a second
night (lineage joins the assignments on the id), the update job, the stream and the ``ml``
estimators end to end. Tiny tables; the shared Spark session.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from clusterlake.config import load_config

ID, LABEL, WEIGHT = "customer.id", "segment.true", "weight.row"
FEATS = ["spend.monthly", "age years", "visits`n"]
CENTERS = np.array([[20.0, 25.0, 2.0], [80.0, 45.0, 10.0], [150.0, 65.0, 25.0]])
SPREAD = np.array([3.0, 1.5, 0.7])
N = 240


def _rows(ids, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    ids = np.asarray(ids, dtype=np.int64)
    seg = np.arange(len(ids)) % 3
    X = CENTERS[seg] + rng.normal(size=(len(ids), 3)) * SPREAD
    cols = {ID: ids, **{f: X[:, j] for j, f in enumerate(FEATS)}, LABEL: seg.astype(np.int32),
            WEIGHT: rng.uniform(0.5, 2.0, len(ids))}
    return pa.table(cols)


def _write(table: pa.Table, path) -> str:
    os.makedirs(path, exist_ok=True)
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), os.path.join(path, "part-0.parquet"))
    pq.write_table(table.slice(half), os.path.join(path, "part-1.parquet"))
    return str(path)


def _cfg(inp, out, run_date="2026-11-20", **over):
    data = {
        "job": {"name": "odd-names", "run_date": run_date},
        "input": {"path": inp, "id_column": ID, "label_column": LABEL, "weight_column": WEIGHT,
                  "feature_columns": FEATS},
        "preprocess": {"pca": {"enabled": False}},
        "kmeans": {"k": 3, "seed": 1, "max_iter": 30},
        "quality": {"sample_size": 200},
        "density": {"enabled": True, "sample_size": 200, "min_cluster_size": 10},
        "hierarchical": {"enabled": True, "sample_size": 200, "levels": [3, 2]},
        "report": {"enabled": False},
        "serving": {"members_per_cluster": 20},
        "output": {"path": out, "delta_writer": "delta-rs"},  # the table tests cover Spark's writer
    }
    return load_config(data=data, overrides=[f"{k}={v}" for k, v in over.items()])


def _table(out, name):
    return DeltaTable(os.path.join(out, name)).to_pyarrow_table().to_pandas()


def _blob_of(ids):
    return np.asarray(ids) % 3  # _rows: row i (ids in order) is blob i % 3


def _agree(a, b) -> bool:
    """The two labelings are the same partition."""
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(a, b) == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------
# the passes on a DataFrame with odd names (no reader involved)


@pytest.fixture(scope="module")
def odd_df(spark):
    return spark.createDataFrame(_rows(np.arange(N), 1).to_pandas()).persist()


def test_passes_take_odd_column_names(spark, odd_df, tmp_path):
    """Every pass on its own (the fit with MLlib here: the job below uses the clusterlake engine)."""
    from clusterlake.algorithms.kmeans import fit_kmeans
    from clusterlake.algorithms.passes import assign_rows, cluster_stats, member_rows
    from clusterlake.prep.transform import Moments, fit_preprocessor

    cfg = _cfg("unused", str(tmp_path), **{"kmeans.engine": "spark-mllib", "density.enabled": "false",
                                           "hierarchical.enabled": "false"})
    moments = Moments.of(odd_df.toPandas()[FEATS].to_numpy())
    assert moments.n == N
    prep = fit_preprocessor(moments, FEATS, "standard", False)
    fit = fit_kmeans(odd_df, prep, cfg.kmeans, WEIGHT)
    C = fit.centroids
    assert C.shape == (3, 3)
    stats = cluster_stats(odd_df, prep, C, LABEL, x_center=moments.mean)
    assert stats.n == N and sum(stats.contingency.values()) == N

    asg = assign_rows(odd_df, prep, C, np.array([7, 8, 9]), ID, passthrough=LABEL)
    assert asg.columns[0] == ID and dict(asg.dtypes)[ID] == "bigint"
    got = asg.toPandas().sort_values(ID)
    assert got[ID].tolist() == list(range(N))
    assert _agree(got["cluster_id"], _blob_of(got[ID])) and _agree(got["__passthrough"], _blob_of(got[ID]))

    members = member_rows(odd_df, prep, C, np.array([7, 8, 9]), ID, np.array([1.0, 1.0, 1.0]), seed=1).toPandas()
    assert sorted(members["id"]) == list(range(N))


# ----------------------------------------------------------------------------------------------
# the jobs end to end


@pytest.fixture(scope="module")
def first(spark, tmp_path_factory):
    """The first night of the full job (density and hierarchical passes, member sample)."""
    from clusterlake.pipeline import run_job

    tmp = tmp_path_factory.mktemp("odd")
    inp = _write(_rows(np.arange(N), 2), tmp / "in")
    out = str(tmp / "out")
    first = run_job(_cfg(inp, out), spark=spark)
    return dict(tmp=tmp, inp=inp, out=out, first=first, first_asg=_table(out, "assignments"))


@pytest.fixture(scope="module")
def nights(spark, first):
    """A second night (without the passes and the member sample: it joins the first night's
    assignments on the id), then an update with new rows of the same shape."""
    from clusterlake.pipeline import run_job
    from clusterlake.update import run_update

    tmp, inp, out = first["tmp"], first["inp"], first["out"]
    lean = {"density.enabled": "false", "hierarchical.enabled": "false", "serving.members_per_cluster": 0}
    second = run_job(_cfg(inp, out, "2026-11-21", **lean), spark=spark)
    new = _write(_rows(np.arange(10_000, 10_060), 3), tmp / "new")
    up = run_update(_cfg(inp, out, "2026-11-21"), new, spark=spark)
    return dict(first, second=second, up=up)


def test_full_job_keeps_the_id_column_and_feature_names(first):
    from clusterlake.io import model_artifact

    asg = first["first_asg"]
    assert ID in asg.columns and str(asg[ID].dtype) == "int64"
    assert sorted(asg[ID]) == list(range(N))
    assert _agree(asg["cluster_id"], _blob_of(asg[ID]))
    assert asg["density_label"].notna().all() and asg["hierarchy"].notna().all()
    art = model_artifact.load(first["first"].model_path)
    assert list(art.prep.feature_names) == FEATS
    assert art.meta["id_column"] == ID
    prof = _table(first["out"], "profiles")
    assert set(prof["feature"]) == set(FEATS)
    runs = _table(first["out"], "runs")
    assert [list(f) for f in runs["feature_columns"]][0] == FEATS


def test_second_night_matches_clusters_by_shared_ids(nights):
    out = nights["out"]
    asg = _table(out, "assignments")
    second = asg[asg.run_id == nights["second"].run_id]
    assert sorted(second[ID]) == list(range(N))
    first = nights["first_asg"].set_index(ID)["cluster_id"]
    # the same rows: the same stable cluster ids, matched through the join on the id column
    assert (second.set_index(ID)["cluster_id"] == first.loc[second[ID]].to_numpy()).all()


def test_update_appends_the_new_ids_once(nights):
    asg = _table(nights["out"], "assignments")
    up = asg[asg.run_id == nights["up"].run_id]
    assert sorted(up[ID]) == list(range(10_000, 10_060))
    state = asg[asg.run_id.isin([nights["second"].run_id, nights["up"].run_id])]
    assert state[ID].is_unique and len(state) == N + 60


def test_stream_assigns_odd_named_files(spark, first):
    from clusterlake.stream import run_assign_stream

    tmp, out = first["tmp"], first["out"]
    landing = tmp / "landing"
    os.makedirs(landing)
    rows = _rows(np.arange(20_000, 20_030), 4)
    pq.write_table(rows, str(landing / "a.parquet"))
    cfg = _cfg(first["inp"], out, "2026-11-21", **{
        "stream.landing_path": str(landing), "stream.checkpoint_path": str(tmp / "ckpt"),
        "stream.trigger": "available_now"})
    res = run_assign_stream(cfg, spark=spark)
    assert res.rows_written == 30
    got = _table(out, cfg.stream.table)
    assert ID in got.columns and sorted(got[ID]) == list(range(20_000, 20_030))


# ----------------------------------------------------------------------------------------------
# the ml estimators


def test_ml_estimator_with_dotted_columns(spark):
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    from clusterlake import ml
    from clusterlake.io.columns import col

    t = _rows(np.arange(N), 5).to_pandas()
    df = spark.createDataFrame(t)
    df = df.select(col(ID), array_to_vector(F.array(*[col(f) for f in FEATS])).alias("f.vec"),
                   col(WEIGHT).alias("w t"))
    est = ml.KMeans(k=3, seed=1, maxIter=20, featuresCol="f.vec", predictionCol="pred.c", weightCol="w t")
    model = est.fit(df)
    assert len(model.clusterCenters()) == 3
    pred = model.transform(df).select(col(ID), col("pred.c")).toPandas()
    assert _agree(pred["pred.c"], _blob_of(pred[ID]))
