"""The run's sampled silhouettes (``algorithms.sample_passes.sampled_silhouettes``): K-means' and
the passes', scored in one distance pass over nested prefixes of one draw, against scikit-learn
on each labeling's own rows. No Spark."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import silhouette_score

from clusterlake.algorithms.sample_passes import PassFit, sampled_silhouettes
from clusterlake.kernels import density as Dk
from clusterlake.kernels import hierarchy as Hk


@pytest.fixture(scope="module")
def draw():
    X, _ = make_blobs(1600, n_features=3, centers=4, cluster_std=1.2, random_state=11)
    rng = np.random.default_rng(0)
    X = np.vstack([X, rng.uniform(-15, 15, size=(80, 3))])  # some noise for the density pass
    return X[rng.permutation(len(X))]  # the draw: random order, every prefix uniform


@pytest.mark.parametrize("quality,density_rows", [(1200, 900), (1200, 1200), (600, 1500)])
def test_each_silhouette_is_scikit_learns_on_its_own_rows(draw, quality, density_rows):
    Zs = draw[:quality]
    pos = np.argmin(((Zs[:, None, :] - np.array([[0, 0, 0], [5, 5, 5], [-5, 0, 5], [9, -9, 0]])[None]) ** 2).sum(-1), 1)
    fit = PassFit(density=Dk.fit_sample(draw[:density_rows], "hdbscan", min_samples=8, min_cluster_size=30),
                  hierarchy=Hk.fit_sample(draw[:400], "ward", [2, 5]))
    km, passes = sampled_silhouettes(Zs, pos, fit, draw[:max(density_rows, 400)], "hdbscan")
    assert km.value == pytest.approx(silhouette_score(Zs, pos), abs=1e-12) and km.sample_size == quality
    dens = [m for m in passes if m.algorithm == "hdbscan"]
    lab = fit.density.sample_labels
    keep = np.flatnonzero(lab >= 0)[:quality]  # the first `quality` non-noise rows of its sample
    assert len(dens) == 1 and dens[0].sample_size == len(keep) and dens[0].k == fit.density.n_clusters
    assert dens[0].value == pytest.approx(silhouette_score(draw[keep], lab[keep]), abs=1e-12)
    for lv in (2, 5):
        (m,) = [m for m in passes if m.algorithm == "hierarchical" and m.k == lv]
        assert m.sample_size == 400
        assert m.value == pytest.approx(silhouette_score(draw[:400], fit.hierarchy.sample_labels[lv]), abs=1e-12)


def test_undefined_silhouettes_are_left_out_with_a_warning(draw, caplog):
    km, passes = sampled_silhouettes(draw[:50], np.zeros(50, int), PassFit())
    assert km is None and passes == []
    assert any("silhouette undefined on a sample of 50 rows" in r.getMessage() for r in caplog.records)
