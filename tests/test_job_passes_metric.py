"""The nightly job's density and hierarchical passes under the partition's distance (issue 23):
a k-medoids night under manhattan runs HDBSCAN and average linkage under manhattan, every row's
pass labels are the brute-force ones under manhattan (nearest core point within its reach, nearest
sampled row), the model carries the distance and serving labels new rows as the batch did."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from clusterlake.errors import ConfigError
from clusterlake.io import model_artifact
from clusterlake.io.model_artifact import pass_models
from clusterlake.kernels.distances import metric, nearest
from clusterlake.pipeline import run_job
from tests.conftest import job_config
from tests.test_job_kmedoids import FEATURES, _heavy_tailed


@pytest.fixture(scope="module")
def night(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("passes_metric")
    data = _heavy_tailed(root / "in.parquet", n=2500, seed=3)
    over = {"kmeans.k": 4, "kmeans.kmedoids.sample_size": 1000, "preprocess.pca.enabled": "false",
            "kmeans.algorithm": "kmedoids", "kmeans.distance": "manhattan",
            "density.enabled": "true", "density.sample_size": 1200, "density.min_samples": 8,
            "density.min_cluster_size": 30, "hierarchical.enabled": "true", "hierarchical.linkage": "average",
            "hierarchical.sample_size": 800, "hierarchical.levels": "[3, 6]"}
    res = run_job(job_config(data, str(root / "out"), **over), spark=spark)
    art = model_artifact.load(res.model_path)
    X = pq.read_table(data).to_pandas().set_index("customer_id")
    asg = DeltaTable(f"{root}/out/assignments").to_pyarrow_table().to_pandas().set_index("customer_id").loc[X.index]
    met = DeltaTable(f"{root}/out/metrics").to_pyarrow_table().to_pandas()
    return {"res": res, "art": art, "X": X, "Z": art.prep.transform(X[FEATURES].to_numpy()), "asg": asg, "met": met}


def test_the_passes_run_under_the_partitions_distance(night):
    art = night["art"]
    assert art.passes["density"]["metric"]["name"] == "manhattan"
    assert art.passes["hierarchical"]["metric"]["name"] == "manhattan"
    dens, hier = pass_models(art)
    assert dens.metric.name == hier.metric.name == "manhattan" and dens.n_clusters >= 2


def test_every_rows_density_label_is_its_nearest_core_point_under_manhattan(night):
    dens, _ = pass_models(night["art"])
    i, d, _, _ = nearest(night["Z"], dens.core_points, metric("manhattan"))
    want = np.where(d <= dens.core_reach[i] * (1 + 1e-12), dens.core_labels[i], -1)
    np.testing.assert_array_equal(night["asg"].density_label.to_numpy(), want)
    np.testing.assert_allclose(night["asg"].density_distance.to_numpy(), d, rtol=1e-12)
    assert (want >= 0).mean() > 0.8


def test_every_rows_levels_are_its_nearest_sampled_rows_under_manhattan(night):
    _, hier = pass_models(night["art"])
    i, _, _, _ = nearest(night["Z"], hier.sample_points, metric("manhattan"))
    for lv in (3, 6):
        got = night["asg"].hierarchy.map(lambda h: dict(h)[lv]).to_numpy()
        np.testing.assert_array_equal(got, hier.sample_labels[lv][i])


def test_the_passes_silhouettes_are_under_manhattan(night):
    from clusterlake.kernels.kmedoids import silhouette_samples_of
    from clusterlake.kernels.silhouette import silhouette_scores

    met = night["met"]
    sil = met[(met.scope == "sample") & (met.metric == "silhouette") & met.algorithm.isin(["hdbscan", "hierarchical"])]
    assert set(sil.algorithm) == {"hdbscan", "hierarchical"} and sil.value.between(-1, 1).all()
    # the hierarchy's sample is the first 800 rows of the run's draw, inside the 2,000-row quality sample
    _, hier = pass_models(night["art"])
    for lv in (3, 6):
        got = sil[(sil.algorithm == "hierarchical") & (sil.k == lv)].value.item()
        want = silhouette_samples_of(hier.sample_points, hier.sample_labels[lv], metric("manhattan")).mean()
        assert got == pytest.approx(want, rel=1e-9)
        assert abs(got - silhouette_scores(hier.sample_points, [hier.sample_labels[lv]])[0]) > 1e-4  # not euclidean


def test_serving_labels_new_rows_as_the_batch_did(night):
    from clusterlake.serving.assigner import Assigner

    X = night["X"].head(400)
    a = Assigner.load(night["res"].model_path).assign(X[FEATURES])
    np.testing.assert_array_equal(a.density_label, night["asg"].density_label.to_numpy()[:400])


def test_the_passes_distance_follows_the_partition_unless_set():
    from tests.conftest import job_config as cfg

    def dist(**over):
        c = cfg("in.parquet", "out", **{"density.enabled": "true", "hierarchical.enabled": "true", **over})
        return c.pass_distance("density")[0], c.pass_distance("hierarchical")[0]

    med = {"kmeans.algorithm": "kmedoids", "preprocess.pca.enabled": "false"}
    assert dist() == ("euclidean", "euclidean")
    assert dist(**{"kmeans.distance": "cosine"}) == ("euclidean", "euclidean")  # unit vectors: ranks as cosine
    assert dist(**med, **{"kmeans.distance": "manhattan"}) == ("manhattan", "euclidean")  # ward stays euclidean
    assert dist(**med, **{"kmeans.distance": "manhattan", "hierarchical.linkage": "average"}) == ("manhattan",) * 2
    assert dist(**med, **{"kmeans.distance": "mahalanobis"}) == ("mahalanobis",) * 2  # ward takes it (whitened)
    assert dist(**med, **{"kmeans.distance": "manhattan", "density.metric": "chebyshev"})[0] == "chebyshev"


@pytest.mark.parametrize("over,text", [
    ({"hierarchical.enabled": "true", "hierarchical.metric": "manhattan"},
     "hierarchical.linkage=ward minimises squared euclidean distances; under hierarchical.metric=manhattan use "
     "linkage average, complete or single"),
    ({"density.enabled": "true", "density.metric": "minkowski"}, "density.minkowski_p goes with density.metric: minkowski"),
    ({"density.enabled": "true", "density.metric": "jaccard"}, "density.metric=jaccard compares the features' values"),
    ({"density.enabled": "true", "density.metric": "mahalanobis", "kmeans.distance": "cosine"},
     "density.metric=mahalanobis with kmeans.distance=cosine: the model space's rows are unit vectors"),
])
def test_pass_distances_are_checked(over, text, tmp_path):
    with pytest.raises((ConfigError, ValueError), match=text.replace("(", r"\(").replace(")", r"\)")):
        run_job(job_config(str(tmp_path / "none.parquet"), str(tmp_path / "out"), **over))
