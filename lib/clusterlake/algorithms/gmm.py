"""Gaussian mixtures on the engine (issue 24): the rows stay in the barrier tasks, one small reply
per EM iteration.

:func:`fit_mixture` loads the rows into a :class:`~clusterlake.algorithms.kmeans_engine.KMeansStage`
(its worker, :class:`MixtureWorker`, adds the two mixture commands to K-means'), fits K-means
there (k-means|| then Lloyd: :func:`~clusterlake.algorithms.kmeans_engine.fit_on`) and runs
:func:`em_on`: the first M-step from the K-means partition (every row wholly in its nearest
centre's component), then EM iterations, each one ``gmm_stats`` call whose replies are the
tasks' sufficient statistics (:mod:`clusterlake.kernels.gmm`: per component the mass, the
weighted sums and outer products, in float64; k x d x d numbers per task), added up on the driver
for the M-step. It stops when the mean log-likelihood changes by less than ``tol`` (as
scikit-learn's ``GaussianMixture``) or after ``max_iter`` iterations. A component that collapses
(less than a thousandth of a row's mass) is re-seeded at the row the mixture explains least, with
a warning. Deterministic for a seed and a partitioning; a lost task is recovered as for K-means
(the stage replays the load; the commands are stateless).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from clusterlake.algorithms.kmeans_engine import EngineFit, KMeansStage, KMeansWorker, fit_on
from clusterlake.engine.worker import command
from clusterlake.errors import ConfigError, InputDataError
from clusterlake.kernels import gmm as G

log = logging.getLogger(__name__)


def _reply(st: "G.Stats") -> dict:
    return {"n": float(st.n), "ll": float(st.loglik), "worst_ll": float(st.worst_ll), "count": int(st.count),
            "nk": st.nk, "sx": st.sx,
            "sxx": st.sxx, "worst": st.worst if st.worst is not None else np.zeros(0)}


class MixtureWorker(KMeansWorker):
    """K-means' worker with the mixture's two commands. Runs in a barrier task."""

    def _rows_of(self, d: int) -> np.ndarray:
        return self.X if self.n else np.zeros((0, d), np.float32)  # (an empty task's block may have no columns)

    @command("gmm_hard_stats")
    def gmm_hard_stats(self, centers: np.ndarray, shift: np.ndarray, covariance_type: str) -> dict:
        return _reply(G.hard_stats(self._rows_of(centers.shape[1]), centers, covariance_type, shift, self.w))

    @command("gmm_stats")
    def gmm_stats(self, weights: np.ndarray, means: np.ndarray, covariances: np.ndarray, shift: np.ndarray,
                  covariance_type: str) -> dict:
        mix = G.Mixture.of(covariance_type, weights, means, covariances)
        return _reply(G.e_step_stats(self._rows_of(means.shape[1]), mix, shift, self.w))


@dataclass
class MixtureFit:
    mixture: "G.Mixture"
    n_iter: int
    converged: bool
    log_likelihood: float  # mean per row (weight), at the last E-step (scikit-learn's lower_bound_)
    rows: float = 0.0  # rows (summed weights): log_likelihood x rows is the total, Spark's logLikelihood
    history: list = field(default_factory=list)  # the mean log-likelihood of every iteration
    seconds: float = 0.0
    em_seconds: float = 0.0
    reseeded: int = 0
    kmeans: Optional[EngineFit] = None
    iter_seconds: list = field(default_factory=list)  # every EM iteration's seconds (one pass each)
    task_peak_rss_mb: float = 0.0  # largest peak RSS of a barrier task's Python worker
    recoveries: int = 0  # lost tasks recovered during the fit (fit_mixture)


def _stats(bc: KMeansStage, op: str, arrays: dict, covariance_type: str, shift: np.ndarray) -> "G.Stats":
    parts = []
    for head, a in bc.call(op, arrays, covariance_type=covariance_type):
        parts.append(G.Stats(head["n"], a["nk"], a["sx"], a["sxx"], head["ll"], shift,
                             a["worst"] if len(a["worst"]) else None, head["worst_ll"], head["count"]))
    return G.merge(parts)


def em_on(bc: KMeansStage, centers: np.ndarray, covariance_type: str = "full", reg_covar: float = 1e-6,
          tol: float = 1e-3, max_iter: int = 100, tol_on_total: bool = False) -> MixtureFit:
    """EM on the rows held by ``bc``, started from the partition of ``centers`` (see the module).
    ``tol`` bounds the change of the mean log-likelihood (scikit-learn), or of the total one with
    ``tol_on_total`` (Spark MLlib's ``GaussianMixture``)."""
    from clusterlake.faults import pause_point

    shift = np.asarray(centers, dtype=np.float64).mean(axis=0)
    done = [0]

    def stats(op: str, arrays: dict) -> "G.Stats":
        if op == "gmm_stats":
            done[0] += 1
            pause_point("engine.em", iteration=done[0], tasks=bc.coord.tasks)
        return _stats(bc, op, arrays, covariance_type, shift)

    return _em(stats, centers, shift, covariance_type, reg_covar, tol, max_iter, tol_on_total)


def em_local(X: np.ndarray, centers: np.ndarray, covariance_type: str = "full", reg_covar: float = 1e-6,
             tol: float = 1e-3, max_iter: int = 100, weights: Optional[np.ndarray] = None) -> MixtureFit:
    """:func:`em_on`'s EM on rows in this process (a driver-side sample: ``k: auto``)."""
    X = np.asarray(X, dtype=np.float64)
    shift = np.asarray(centers, dtype=np.float64).mean(axis=0)

    def stats(op: str, arrays: dict) -> "G.Stats":
        if op == "gmm_hard_stats":
            return G.hard_stats(X, arrays["centers"], covariance_type, shift, weights)
        mix = G.Mixture.of(covariance_type, arrays["weights"], arrays["means"], arrays["covariances"])
        return G.e_step_stats(X, mix, shift, weights)

    return _em(stats, centers, shift, covariance_type, reg_covar, tol, max_iter, quiet=True)


def _em(stats, centers: np.ndarray, shift: np.ndarray, covariance_type: str, reg_covar: float, tol: float,
        max_iter: int, tol_on_total: bool = False, quiet: bool = False) -> MixtureFit:
    """The EM loop over summed statistics: ``stats(op, arrays)`` answers the two commands of
    :class:`MixtureWorker` (on the engine's tasks or on local rows)."""
    t0 = time.time()
    st = stats("gmm_hard_stats", {"centers": np.asarray(centers, np.float64), "shift": shift})
    mix = G.m_step(st, covariance_type, reg_covar)
    history, prev, converged, reseeded, it = [], -np.inf, False, 0, 0
    times = []
    if not st.n > 0:
        raise InputDataError("the rows' weights sum to 0 (input.weight_column): a mixture needs rows of positive "
                             "weight")
    say = log.debug if quiet else log.warning
    for it in range(1, max_iter + 1):
        t_it = time.time()
        arrays = {"weights": mix.weights, "means": mix.means, "covariances": mix.covariances, "shift": shift}
        st = stats("gmm_stats", arrays)
        ll = st.loglik / st.n
        history.append(ll)
        mix = G.m_step(st, covariance_type, reg_covar)
        restarted = bool(mix.degenerate) and it < max_iter  # (not on the last: nothing would refine it)
        if restarted:  # one per iteration: the worst-explained row serves one component
            j = mix.degenerate[0]
            say("mixture: component %d collapsed (mass %.3g); re-seeded at the row the mixture explains least",
                j, st.nk[j])
            mix = G.reseed(mix, j, st.worst, _spread(mix, covariance_type))
            reseeded += 1
        elif mix.degenerate:
            say("mixture: component %d collapsed (mass %.3g) in the last iteration; it keeps reg_covar as its "
                "covariance (raise max_iter to re-seed it)", mix.degenerate[0], st.nk[mix.degenerate[0]])
        times.append(time.time() - t_it)
        if not quiet:
            log.info("mixture: iteration %d, mean log-likelihood %.6f (change %.3g)", it, ll, ll - prev)
        if abs(ll - prev) * (st.n if tol_on_total else 1.0) < tol and not restarted:  # (a restart needs an E-step)
            converged = True
            break
        prev = ll
    if not converged and not quiet:
        log.warning("mixture: not converged after %d iterations (tol=%g on the %s log-likelihood)", it, tol,
                    "total" if tol_on_total else "mean")
    return MixtureFit(mix, it, converged, history[-1] if history else float("nan"), float(st.n), history,
                      em_seconds=time.time() - t0, reseeded=reseeded, iter_seconds=times)


def _spread(mix: "G.Mixture", covariance_type: str) -> np.ndarray:
    """A re-seeded component's covariance: the mean of the others' (its type's shape)."""
    if covariance_type == "tied":
        return mix.covariances
    return mix.covariances.mean(axis=0)


def fit_mixture(spark, df, source, k: int, *, covariance_type: str = "full", reg_covar: float = 1e-6,
                tol: float = 1e-3, max_iter: int = 100, seed: int = 42, kmeans_max_iter: int = 50,
                init_steps: int = 5, num_tasks: Optional[int] = None, memory_budget: Optional[int] = None,
                tol_on_total: bool = False, recovery_wait: float = 30.0) -> MixtureFit:
    """A Gaussian mixture of every row of ``df`` (loaded per ``source``, a
    :class:`~clusterlake.engine.blocks.BlockSource`): K-means on the engine, then EM. A lost
    task is waited for ``recovery_wait`` seconds, then the fit goes on with the tasks there are."""
    t0 = time.time()
    with KMeansStage(spark, df, source, num_tasks=num_tasks, worker=MixtureWorker, memory_budget=memory_budget,
                     recovery_wait=recovery_wait) as bc:
        km = fit_on(bc, k, max_iter=kmeans_max_iter, seed=seed, init_steps=init_steps)
        res = em_on(bc, km.centers, covariance_type, reg_covar, tol, max_iter, tol_on_total)
    res.kmeans, res.seconds, res.task_peak_rss_mb = km, time.time() - t0, bc.task_peak_rss_mb
    res.recoveries = bc.recoveries
    return res


def refine(bc: KMeansStage, fit, section) -> tuple:
    """The nightly job's mixture (``kmeans.algorithm: gmm``): EM on the rows held by ``bc`` from
    the K-means fit ``fit`` (a :class:`~clusterlake.algorithms.kmeans.KMeansFit`), per the
    ``kmeans.gmm`` config ``section``. Returns ``(fit, MixtureFit)``: the fit with the mixture's
    means as its centroids, EM's iterations and convergence, the negative total log-likelihood as
    its training cost, and the EM seconds in its timings."""
    k, d = fit.centroids.shape
    if section.covariance == "full" and d > 128:
        log.warning("mixture: full covariances in %d dimensions: %d x %d x %d numbers, each EM pass O(rows x %d); "
                    "diag covariance or PCA (preprocess.pca) would be much cheaper", d, k, d, d, d * d)
    try:
        res = em_on(bc, fit.centroids, section.covariance, section.reg_covar, section.tol, section.max_iter)
    except ValueError as exc:  # an ill-defined covariance (reg_covar too small for the data)
        raise ConfigError(f"kmeans.algorithm=gmm: {exc}") from exc
    times = {**fit.timings, "em": round(res.em_seconds, 3),
             "em_iteration_median": round(float(np.median(res.iter_seconds)), 4) if res.iter_seconds else None}
    out = replace(fit, centroids=res.mixture.means, n_iter=res.n_iter, converged=res.converged,
                  training_cost=-res.log_likelihood * res.rows, seconds=fit.seconds + res.em_seconds, timings=times)
    log.info("mixture: %d components (%s covariance), %d EM iterations from the K-means fit (%d), mean "
             "log-likelihood %.6f, %s in %.1f s", res.mixture.k, section.covariance, res.n_iter, fit.n_iter,
             res.log_likelihood, "converged" if res.converged else "not converged", res.em_seconds)
    return out, res
