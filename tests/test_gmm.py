"""EM by sufficient statistics (kernels/gmm.py) against scikit-learn's GaussianMixture (issue 24)."""

import warnings

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

from clusterlake.kernels import gmm as G


def _data(seed=0, n=3000, d=4, k=3):
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.multivariate_normal(rng.normal(scale=4, size=d), (A := rng.normal(size=(d, d))) @ A.T / d
                                           + 0.1 * np.eye(d), size=n // k) for _ in range(k)])
    return X[rng.permutation(len(X))] + 50.0  # far from the origin: the shifted moments must not cancel


def _start(X, k, t, seed=1):
    rng = np.random.default_rng(seed)
    d = X.shape[1]
    means = X[rng.choice(len(X), k, replace=False)]
    weights = np.full(k, 1.0 / k)
    cov = {"full": np.stack([np.eye(d)] * k), "tied": np.eye(d), "diag": np.ones((k, d)), "spherical": np.ones(k)}[t]
    return weights, means, cov


def _ours(X, k, t, iters, parts=1, weights=None):
    w0, m0, c0 = _start(X, k, t)
    mix, shift = G.Mixture.of(t, w0, m0, c0), X.mean(axis=0)
    for _ in range(iters):
        chunks = np.array_split(np.arange(len(X)), parts)
        st = G.merge([G.e_step_stats(X[c], mix, shift, None if weights is None else weights[c], block_rows=700)
                      for c in chunks])
        mix = G.m_step(st, t)
    return mix, st.loglik / st.n


@pytest.mark.parametrize("t", G.COVARIANCE_TYPES)
def test_iterations_equal_scikit_learns_from_the_same_start(t):
    X = _data()
    w0, m0, c0 = _start(X, 3, t)
    prec = np.linalg.inv(c0) if t in ("full", "tied") else 1 / c0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 7 iterations: not converged, on purpose
        sk = GaussianMixture(3, covariance_type=t, weights_init=w0, means_init=m0, precisions_init=prec,
                             max_iter=7, tol=0.0, reg_covar=1e-6).fit(X)
    mix, lower = _ours(X, 3, t, 7, parts=3)
    np.testing.assert_allclose(mix.weights, sk.weights_, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(mix.means, sk.means_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(mix.covariances, sk.covariances_, rtol=1e-6, atol=1e-9)
    assert lower == pytest.approx(sk.lower_bound_, rel=1e-9)
    _, R = G.responsibilities(X, mix)
    sk.weights_, sk.means_, sk.precisions_cholesky_ = mix.weights, mix.means, mix.precisions_chol
    np.testing.assert_allclose(R, sk.predict_proba(X), rtol=0, atol=1e-9)


def test_partitions_do_not_change_the_fit_and_integer_weights_are_copies():
    X = _data(2, n=900)
    a, _ = _ours(X, 3, "full", 5, parts=1)
    b, _ = _ours(X, 3, "full", 5, parts=4)
    np.testing.assert_allclose(a.means, b.means, rtol=1e-12)
    np.testing.assert_allclose(a.covariances, b.covariances, rtol=1e-10)
    w = np.random.default_rng(0).integers(1, 4, len(X)).astype(float)
    rep = np.repeat(X, w.astype(int), axis=0)
    shift = X.mean(axis=0)
    mix = G.Mixture.of("full", *_start(X, 3, "full"))
    s1 = G.m_step(G.e_step_stats(X, mix, shift, w), "full")
    s2 = G.m_step(G.e_step_stats(rep, mix, shift), "full")
    np.testing.assert_allclose(s1.means, s2.means, rtol=1e-10)
    np.testing.assert_allclose(s1.covariances, s2.covariances, rtol=1e-9)


def test_a_collapsed_component_is_regularised_and_reported_never_nan():
    rng = np.random.default_rng(0)
    X = np.vstack([np.repeat(rng.normal(size=(1, 3)), 50, axis=0), rng.normal(size=(500, 3)) + 10])
    mix = G.Mixture.of("full", [0.5, 0.25, 0.25], [X[0], X[60], X[0] + 1000.0], np.stack([np.eye(3)] * 3))
    for _ in range(4):
        mix = G.m_step(G.e_step_stats(X, mix, X.mean(axis=0)), "full")
        assert np.isfinite(mix.means).all() and np.isfinite(mix.covariances).all()
    assert mix.degenerate == [2]  # nothing near the third component: mass 0
    assert np.linalg.eigvalsh(mix.covariances[0]).min() > 0  # 50 identical rows: reg_covar keeps it definite
    back = G.reseed(mix, 2, X[100], np.eye(3))
    assert back.degenerate == [] and back.weights.sum() == pytest.approx(1.0)


def test_an_unknown_type_and_an_indefinite_covariance_are_named():
    with pytest.raises(ValueError, match="covariance type 'round': use one of full, tied, diag, spherical"):
        G.Mixture.of("round", [1.0], [[0.0]], [[1.0]])
    with pytest.raises(ValueError, match="ill-defined covariance .* raise reg_covar"):
        G.Mixture.of("full", [1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]])


@pytest.mark.parametrize("t", G.COVARIANCE_TYPES)
def test_the_e_steps_log_likelihood_is_log_probs(t):
    """The full type's E-step expands the Mahalanobis terms about the shift; every type's summed
    log-likelihood must be log-sum-exp of log_prob, the direct definition."""
    from scipy.special import logsumexp

    X = _data(4, n=900)
    mix = _ours(X, 3, t, 2)[0]
    st = G.e_step_stats(X, mix, X.mean(axis=0) + 3.0, block_rows=300)
    assert st.loglik == pytest.approx(float(logsumexp(G.log_prob(X, mix), axis=1).sum()), rel=1e-12)
    assert st.count == 900 and st.n == 900.0


def test_a_tight_component_far_from_the_shift_takes_the_direct_path():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(300, 2)) * 1e-3 + 1e4, rng.normal(size=(300, 2))])
    mix = G.Mixture.of("full", [0.5, 0.5], [[1e4, 1e4], [0.0, 0.0]], np.stack([np.eye(2) * 1e-6, np.eye(2)]))
    st = G.e_step_stats(X, mix, np.zeros(2))
    from scipy.special import logsumexp

    assert st.loglik == pytest.approx(float(logsumexp(G.log_prob(X, mix), axis=1).sum()), rel=1e-12)
    np.testing.assert_allclose(st.nk, [300, 300], rtol=1e-9)


def test_rows_no_component_explains_are_named():
    mix = G.Mixture.of("diag", [1.0, 0.0], [[0.0], [1.0]], [[1.0], [1.0]])
    with pytest.raises(ValueError, match="1 rows have no finite likelihood under any component"):
        G.e_step_stats(np.array([[0.0], [np.nan]]), mix, np.zeros(1))
    with pytest.raises(ValueError, match="1 rows have no finite likelihood under any component"):
        G.log_posterior(np.array([[0.0], [np.inf]]), mix)  # the assignment's path says the same


def test_mixtures_of_the_wrong_shapes_are_refused():
    with pytest.raises(ValueError, match=r"not a full mixture: weights \(2,\), means \(2, 3\), covariances \(2, 3\)"):
        G.Mixture.of("full", [0.5, 0.5], np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="covariance type 'round'"):
        G.Mixture.of("round", [1.0], np.zeros((1, 2)), np.ones(1))


@pytest.mark.parametrize("t", G.COVARIANCE_TYPES)
def test_parameters_and_criteria_are_scikit_learns(t):
    X = _data(5, n=400)
    sk = GaussianMixture(3, covariance_type=t, random_state=0).fit(X)
    assert G.n_parameters(t, 3, X.shape[1]) == sk._n_parameters()
    ic = G.information_criteria(sk.score(X) * len(X), len(X), t, 3, X.shape[1])
    assert ic["bic"] == pytest.approx(sk.bic(X), rel=1e-12) and ic["aic"] == pytest.approx(sk.aic(X), rel=1e-12)


def test_the_mixture_rule_at_its_edges():
    """k == 1 (no runner-up: -1 and NaN, as K-means' rule), no rows, the posterior on request
    only, the centroids must be the means, no distance."""
    from clusterlake.kernels.assignment import NO_CLUSTER, AssignmentRule
    from clusterlake.kernels.distances import metric

    X = _data(6, n=50)
    one = G.Mixture.of("diag", [1.0], X.mean(axis=0, keepdims=True), X.var(axis=0, keepdims=True))
    a = AssignmentRule(None, np.array([7]), mixture=one)(X)
    assert (a.cluster_id == 7).all() and (a.second_index == NO_CLUSTER).all() and np.isnan(a.margin).all()
    np.testing.assert_allclose(a.probability, 1.0)
    assert not a.has_second.any()
    mix = _ours(X, 2, "full", 1)[0]
    rule = AssignmentRule(mix.means.copy(), mixture=mix)
    empty = rule(np.zeros((0, X.shape[1])))
    assert len(empty) == 0 and empty.probability.shape == (0,) and empty.index.dtype == np.int32
    assert rule(X).posterior is None and rule(X, posterior=True).posterior.shape == (len(X), 2)
    with pytest.raises(ValueError, match="its means"):
        AssignmentRule(mix.means + 1.0, mixture=mix)
    with pytest.raises(ValueError, match="takes no distance"):
        AssignmentRule(None, mixture=mix, metric=metric("manhattan"))
