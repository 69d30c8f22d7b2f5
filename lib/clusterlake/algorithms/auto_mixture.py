"""Choose a Gaussian mixture's number of components on a driver-side sample (``kmeans.k: auto``
with ``kmeans.algorithm: gmm``, criterion ``bic`` or ``aic``; issue 24).

Every k in ``[min_k, min(max_k, n - 1)]`` is fitted once on the sample ``Z`` (model space, rows in
random order) as the job fits every row: k-means++ seeded with ``(seed, k)`` and Lloyd
(:func:`clusterlake.algorithms.auto_k.sample_fit`), then EM from that partition
(:func:`clusterlake.algorithms.gmm.em_local`, the engine's EM loop on local rows). Each candidate
is scored by the log-likelihood of the sample under its final mixture and the Bayesian and Akaike
information criteria (scikit-learn's ``bic``/``aic``: ``-2 L + p log n``, ``-2 L + 2 p`` with
``p`` the mixture's free parameters); the lowest of the chosen criterion wins. At the chosen k two
more fits (seeds ``seed + 1``, ``seed + 2``) give the stability ARI of their hard labels, as for
K-means. The curve goes to ``metrics`` (scope ``auto_k``: ``bic``, ``aic``,
``mean_log_likelihood`` per k) and the report.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from clusterlake.algorithms.auto_k import STABILITY_WARN, AutoK, conclude, sample_fit
from clusterlake.algorithms.gmm import em_local
from clusterlake.io.contract.metrics import Metric
from clusterlake.kernels import gmm as G
from clusterlake.kernels.kmeans import row_sq_norms

log = logging.getLogger(__name__)

__all__ = ["choose_components"]


def _mixture(Z, x_sq, k: int, rng, section, max_iter: int, tol: float) -> "G.Mixture":
    km = sample_fit(Z, x_sq, k, rng, max_iter, tol, False)
    return em_local(Z, km.centers, section.covariance, section.reg_covar, section.tol, section.max_iter).mixture


def _labels(Z, mix: "G.Mixture") -> np.ndarray:
    from clusterlake.kernels.assignment import AssignmentRule

    return AssignmentRule(None, mixture=mix).partition(Z).index


def _candidates(min_k: int, max_k: int, n: int, p: int, covariance_type: str) -> list[int]:
    """The k a sample of ``n`` rows can score: fewer free parameters than rows, and (full
    covariance) at least ``p + 1`` rows a component on average; else a component holding a few
    rows gets ``reg_covar`` alone as its spread, its likelihood soars, and BIC/AIC pick the
    largest k (with 150 rows x 10 features and 3 clusters, k=19 of [2, 20])."""
    ks = [k for k in range(min_k, max_k + 1) if G.n_parameters(covariance_type, k, p) < n
          and (covariance_type != "full" or k * (p + 1) <= n)]
    skipped = sorted(set(range(min_k, max_k + 1)) - set(ks))
    if skipped:
        log.warning("auto-k: k in %s left out: too many parameters for a sample of %d rows x %d features "
                    "(%s covariance); raise kmeans.auto.sample_size or use diag covariance", skipped, n, p,
                    covariance_type)
    if not ks:
        raise ValueError(f"a sample of {n} rows x {p} features cannot score a {covariance_type} mixture of "
                         f"{min_k} or more components; raise kmeans.auto.sample_size or lower kmeans.auto.min_k")
    return ks


def choose_components(Z: np.ndarray, min_k: int, max_k: int, criterion: str, section, seed: int = 42,
                      max_iter: int = 50, tol: float = 1e-4) -> AutoK:
    """The number of components by ``criterion`` (``bic`` or ``aic``, lowest wins) on the sample
    ``Z``; ``section``: the ``kmeans.gmm`` config (covariance, reg_covar, EM's tol and max_iter);
    ``max_iter``, ``tol``: the K-means start's Lloyd limits. See the module docstring."""
    if criterion not in ("bic", "aic"):
        raise ValueError(f"a mixture's number of components is chosen by bic or aic, not {criterion!r}")
    t0 = time.perf_counter()
    Z = np.ascontiguousarray(Z, dtype=np.float64)
    n, p = Z.shape
    if n < min_k + 1:
        raise ValueError(f"the sample has {n} rows: choosing k in [{min_k}, {max_k}] needs at least {min_k + 1}")
    ks = _candidates(int(min_k), min(int(max_k), n - 1), n, p, section.covariance)
    x_sq = row_sq_norms(Z)
    log.info("auto-k: %s of %s mixtures on %d sampled rows x %d features, k in [%d, %d]", criterion,
             section.covariance, n, p, ks[0], ks[-1])
    scores, metrics = {}, []
    for k in ks:
        mix = _mixture(Z, x_sq, k, np.random.default_rng([seed, k]), section, max_iter, tol)
        total = float(G.log_posterior(Z, mix)[0].sum())
        ic = G.information_criteria(total, n, section.covariance, mix.k, p)
        scores[k] = ic[criterion]
        metrics += [Metric("auto_k", "bic", ic["bic"], n, "kmeans", k), Metric("auto_k", "aic", ic["aic"], n, "kmeans", k),
                    Metric("auto_k", "mean_log_likelihood", total / n, n, "kmeans", k)]
        log.info("auto-k: k=%d bic=%.6g aic=%.6g mean_log_likelihood=%.6f", k, ic["bic"], ic["aic"], total / n)
    chosen = min(scores, key=lambda k: (scores[k], k))
    return conclude(chosen, criterion, metrics, _stability(Z, x_sq, chosen, seed, section, max_iter, tol), n,
                    len(scores), t0)


def _stability(Z, x_sq, k: int, seed: int, section, max_iter: int, tol: float) -> float:
    from sklearn.metrics import adjusted_rand_score

    a, b = (_labels(Z, _mixture(Z, x_sq, k, np.random.default_rng(s), section, max_iter, tol))
            for s in (seed + 1, seed + 2))
    ari = float(adjusted_rand_score(a, b))
    if ari < STABILITY_WARN:
        log.warning("auto-k: k=%d is unstable on the sample: two mixtures (seeds %d, %d) agree with ARI %.3f < %.1f",
                    k, seed + 1, seed + 2, ari, STABILITY_WARN)
    return ari
