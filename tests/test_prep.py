"""Scaling + PCA fitted from merged moments equals scikit-learn's StandardScaler + PCA."""

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from clusterlake.prep.transform import Moments, fit_preprocessor


def _data(seed=0, n=3000, d=7):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d))
    X = rng.normal(size=(n, d)) @ A + rng.uniform(-1e5, 1e5, size=d)  # correlated, large offsets
    X[:, 0] *= 1e4  # very different scales
    return X


def _moments_in_parts(X, cuts):
    parts = np.split(X, cuts)
    m = Moments.of(parts[0])
    for p in parts[1:]:
        m = m.merge(Moments.of(p))
    return m


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merged_moments_equal_whole(seed):
    X = _data(seed)
    m = _moments_in_parts(X, [1, 500, 501, 2000])  # includes 1-row and empty-adjacent blocks
    assert m.n == len(X)
    np.testing.assert_allclose(m.mean, X.mean(axis=0), rtol=1e-12)
    C = X - X.mean(axis=0)
    np.testing.assert_allclose(m.m2, C.T @ C, rtol=1e-9)


def test_empty_block_merges():
    X = _data(3, n=10)
    m = Moments.of(X[:0]).merge(Moments.of(X)).merge(Moments.of(X[:0]))
    np.testing.assert_allclose(m.mean, X.mean(axis=0))


@pytest.mark.parametrize("variance", [0.5, 0.8, 0.95, 0.999])
def test_standard_scaling_and_pca_match_sklearn(variance):
    X = _data(4)
    prep = fit_preprocessor(_moments_in_parts(X, [700, 1400]), [f"f{i}" for i in range(X.shape[1])],
                            pca_variance=variance)
    Xs = StandardScaler().fit_transform(X)
    ref = PCA(n_components=variance, svd_solver="full").fit(Xs)
    assert prep.n_components == ref.n_components_
    np.testing.assert_allclose(prep.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-8)
    Z, Zref = prep.transform(X), ref.transform(Xs)
    # components are defined up to sign: compare column by column with the sign aligned
    signs = np.sign((Z * Zref).sum(axis=0))
    np.testing.assert_allclose(Z, Zref * signs, atol=1e-8)


def test_fixed_component_count_and_no_pca():
    X = _data(5)
    names = [f"f{i}" for i in range(X.shape[1])]
    m = Moments.of(X)
    assert fit_preprocessor(m, names, pca_components=3).transform(X).shape == (len(X), 3)
    assert fit_preprocessor(m, names, pca_components=99).n_components == X.shape[1]
    plain = fit_preprocessor(m, names, pca_enabled=False)
    np.testing.assert_allclose(plain.transform(X), StandardScaler().fit_transform(X), atol=1e-10)
    ident = fit_preprocessor(m, names, scaling="none", pca_enabled=False)
    np.testing.assert_array_equal(ident.transform(X), X)


def test_component_signs_are_deterministic():
    X = _data(6)
    prep = fit_preprocessor(Moments.of(X), [f"f{i}" for i in range(X.shape[1])], pca_components=4)
    top = np.abs(prep.components).argmax(axis=1)
    assert (prep.components[np.arange(4), top] > 0).all()
