"""Gaussian mixtures by EM, as sufficient statistics that add up across tasks (numpy; issue 24).

One EM iteration over rows spread across tasks: every task runs :func:`e_step_stats` on its rows
(responsibilities by log-sum-exp under the current :class:`Mixture`) and returns a
:class:`Stats` of a few small float64 arrays (per component: the summed responsibilities, the
responsibility-weighted sums of the rows and of their outer products, or their diagonals); the
driver adds them up (:func:`merge`) and :func:`m_step` makes the next mixture. The definitions are
scikit-learn's ``GaussianMixture`` (its four covariance types, ``reg_covar`` added to the
diagonals, ``10 eps`` added to every component's mass, the Cholesky factors of the precisions,
the mean log-likelihood as the lower bound): from the same start, the iterations agree with
scikit-learn's to round-off (tests/test_gmm.py).

The second moments are summed about a fixed ``shift`` (the data's mean, from the job's moments)
so that ``S / n_k - mu mu^T`` does not cancel catastrophically on data far from the origin; the
covariances then equal scikit-learn's centred sums to ~1e-12 relative on standardised data. Row
weights multiply the responsibilities (an integer weight is that many copies of the row).

A component that collapses (mass below ``min_mass`` rows) is reported in ``Mixture.degenerate``:
its covariance is ``reg_covar`` alone, never a NaN; the caller re-seeds it (:func:`reseed`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

__all__ = ["COVARIANCE_TYPES", "Mixture", "Stats", "UnexplainedRows", "e_step_stats", "hard_stats", "information_criteria", "log_posterior",
           "log_prob", "m_step", "merge", "n_parameters", "precisions_cholesky", "responsibilities", "reseed"]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
_EPS = float(np.finfo(np.float64).eps)


@dataclass
class Mixture:
    covariance_type: str
    weights: np.ndarray  # (k,)
    means: np.ndarray  # (k, d)
    covariances: Optional[np.ndarray]  # full (k, d, d) | tied (d, d) | diag (k, d) | spherical (k,)
    precisions_chol: np.ndarray  # same shapes: the upper Cholesky factors of the precisions
    degenerate: list = field(default_factory=list)  # components whose mass fell below min_mass

    @property
    def k(self) -> int:
        return int(len(self.weights))

    @classmethod
    def of(cls, covariance_type: str, weights, means, covariances) -> "Mixture":
        """A mixture from its weights, means and covariances (checked: the type, the shapes;
        factored). ValueError naming what does not fit (they may come from a model's files)."""
        _check_type(covariance_type)
        w, mu = np.asarray(weights, np.float64), np.asarray(means, np.float64)
        cov = np.asarray(covariances, dtype=np.float64)
        k, d = mu.shape if mu.ndim == 2 else (-1, -1)
        want = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[covariance_type]
        if k < 1 or w.shape != (k,) or cov.shape != want:
            raise ValueError(f"not a {covariance_type} mixture: weights {w.shape}, means {mu.shape}, covariances "
                             f"{cov.shape} (expected {want})")
        return cls(covariance_type, w, mu, cov, precisions_cholesky(cov, covariance_type))


def _check_type(covariance_type: str) -> None:
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance type {covariance_type!r}: use one of {', '.join(COVARIANCE_TYPES)}")


def precisions_cholesky(cov: np.ndarray, covariance_type: str) -> np.ndarray:
    """The Cholesky factors of the precisions (scikit-learn's ``_compute_precision_cholesky``);
    ValueError naming the fix when a covariance is not positive definite."""
    msg = ("a mixture component has an ill-defined covariance (a collapsed or single-row component, or a feature "
           "constant within it): raise reg_covar (kmeans.gmm.reg_covar in the job, regCovar in clusterlake.ml), "
           "lower the number of components, or scale the features")
    if covariance_type in ("full", "tied"):
        C = cov[None] if covariance_type == "tied" else cov
        out = np.empty_like(C)
        for j in range(len(C)):
            try:
                L = np.linalg.cholesky(C[j])
            except np.linalg.LinAlgError:
                raise ValueError(msg) from None
            out[j] = _solve_lower(L, np.eye(len(L))).T
        return out[0] if covariance_type == "tied" else out
    if np.any(cov <= 0.0):
        raise ValueError(msg)
    return 1.0 / np.sqrt(cov)


def _solve_lower(L: np.ndarray, B: np.ndarray) -> np.ndarray:
    from scipy.linalg import solve_triangular

    return solve_triangular(L, B, lower=True)


def _log_det_chol(pc: np.ndarray, covariance_type: str, d: int) -> np.ndarray:
    if covariance_type == "full":
        return np.log(np.diagonal(pc, axis1=1, axis2=2)).sum(axis=1)
    if covariance_type == "tied":
        return np.log(np.diag(pc)).sum()
    if covariance_type == "diag":
        return np.log(pc).sum(axis=1)
    return d * np.log(pc)


_BLOCK_VALUES = 1 << 22
"""float64 temporaries per block of :func:`log_prob` (32 MB): rows x k x d for full and tied."""


def log_prob(X: np.ndarray, mix: Mixture) -> np.ndarray:
    """``(n, k)``: ``log w_j + log N(x | mu_j, Sigma_j)`` of every row and component, in blocks of
    rows whose ``rows x k x d`` temporaries stay near 32 MB (a 65,536-row chunk at k=50, d=64
    would otherwise hold 1.7 GB)."""
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    step = max(1, _BLOCK_VALUES // max(1, mix.k * d))
    if n <= step:
        return _log_prob_block(X, mix)
    out = np.empty((n, mix.k))
    for s0 in range(0, n, step):
        out[s0:s0 + step] = _log_prob_block(X[s0:s0 + step], mix)
    return out


def _log_prob_block(X: np.ndarray, mix: Mixture) -> np.ndarray:
    n, d = X.shape
    t, mu, pc = mix.covariance_type, mix.means, mix.precisions_chol
    if t == "full":  # every component in one GEMM: [x P_1 | ... | x P_k] - [mu_1 P_1 | ... ]
        P = np.concatenate(list(pc), axis=1)  # (d, k d)
        Y = X @ P
        Y -= np.einsum("kd,kde->ke", mu, pc).reshape(-1)
        Y *= Y
        lp = Y.reshape(n, mix.k, d).sum(axis=2)
    elif t == "tied":
        Y = (X @ pc)[:, None, :] - (mu @ pc)[None, :, :]
        lp = np.einsum("nkd,nkd->nk", Y, Y)
    elif t == "diag":
        prec = pc ** 2
        lp = (mu ** 2 * prec).sum(axis=1) - 2.0 * (X @ (mu * prec).T) + (X ** 2) @ prec.T
    else:
        prec = pc ** 2
        lp = (mu ** 2).sum(axis=1) * prec - 2.0 * (X @ mu.T * prec) + np.outer(np.einsum("ij,ij->i", X, X), prec)
    with np.errstate(divide="ignore"):
        logw = np.log(mix.weights)
    return -0.5 * (d * math.log(2 * math.pi) + lp) + _log_det_chol(pc, t, d) + logw


def log_posterior(X: np.ndarray, mix: Mixture) -> tuple[np.ndarray, np.ndarray]:
    """``(log p(x) (n,), log p(component j | x) (n, k))`` of every row, by log-sum-exp (exp of a
    row of the second sums to 1). A row no component explains (its log density not finite) is
    a ValueError, as in the E-step."""
    lp = log_prob(X, mix)
    if not len(lp):
        return np.zeros(0), lp
    lse = _log_sum_exp(lp)
    return lse, lp - lse[:, None]


class UnexplainedRows(ValueError):
    """Rows no component gives a finite likelihood (``rows``: their positions)."""

    def __init__(self, message: str, rows: np.ndarray):
        super().__init__(message)
        self.rows = rows


def _log_sum_exp(lp: np.ndarray) -> np.ndarray:
    """``log sum_j exp(lp[i, j])`` of every row, about its maximum (no overflow, no 0/0);
    :class:`UnexplainedRows` for rows with no finite term."""
    top = lp.max(axis=1)
    bad = ~np.isfinite(top)
    if bad.any():
        raise UnexplainedRows(f"{int(bad.sum())} rows have no finite likelihood under any component (NaN or "
                              "infinite features, values far beyond the model's range, or every component's "
                              "weight 0): clean the features", np.flatnonzero(bad))
    with np.errstate(under="ignore"):
        return np.log(np.exp(lp - top[:, None]).sum(axis=1)) + top


def n_parameters(covariance_type: str, k: int, d: int) -> int:
    """Free parameters of a k-component mixture in d dimensions (scikit-learn's ``_n_parameters``)."""
    cov = {"full": k * d * (d + 1) / 2.0, "tied": d * (d + 1) / 2.0, "diag": k * d, "spherical": k}[covariance_type]
    return int(cov + k * d + k - 1)


def information_criteria(total_log_likelihood: float, rows: float, covariance_type: str, k: int, d: int) -> dict:
    """``{"bic", "aic"}`` of a mixture whose log-likelihood over ``rows`` rows is the total given
    (scikit-learn's ``bic``/``aic``: ``-2 L + p log n`` and ``-2 L + 2 p``)."""
    p = n_parameters(covariance_type, k, d)
    return {"bic": -2.0 * total_log_likelihood + p * math.log(max(rows, 1.0)),
            "aic": -2.0 * total_log_likelihood + 2.0 * p}


def responsibilities(X: np.ndarray, mix: Mixture) -> tuple[np.ndarray, np.ndarray]:
    """``(log p(x), responsibilities (n, k))`` by log-sum-exp (no underflow to 0/0)."""
    return _normalise(log_prob(X, mix))


def _normalise(lp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log-sum-exp of every row of ``lp`` (:func:`_log_sum_exp`) and ``exp(lp - it)``, the
    responsibilities, in place of ``lp``."""
    if not len(lp):
        return np.zeros(0), lp
    lse = _log_sum_exp(lp)
    lp -= lse[:, None]
    with np.errstate(under="ignore"):
        np.exp(lp, out=lp)
    return lse, lp


@dataclass
class Stats:
    """One task's (or the sum of all tasks') sufficient statistics under the current mixture."""

    n: float  # rows (summed weights)
    nk: np.ndarray  # (k,) summed responsibilities
    sx: np.ndarray  # (k, d) responsibility-weighted sums of (x - shift)
    sxx: np.ndarray  # full (k, d, d) | tied (d, d) | diag/spherical (k, d): of (x - shift)(x - shift)^T
    loglik: float  # summed (weighted) log-likelihood of the rows
    shift: np.ndarray  # (d,)
    worst: Optional[np.ndarray] = None  # the row the mixture explains least (re-seeding a collapsed component)
    worst_ll: float = np.inf  # its log-likelihood
    count: int = 0  # rows (n is their summed weight)


def e_step_stats(X: np.ndarray, mix: Mixture, shift: np.ndarray, weights: Optional[np.ndarray] = None,
                 block_rows: int = 65536) -> Stats:
    """The sufficient statistics of the rows ``X`` (a task's) under ``mix``, a block at a time."""
    if mix.covariance_type != "full":
        return _accumulate(X, mix.k, mix.covariance_type, shift, weights, block_rows,
                           lambda B, C, CC: responsibilities(B, mix))
    Lflat, LmT, mLm, base = _shifted_full(mix, np.asarray(shift, dtype=np.float64))
    if mLm.max(initial=0.0) > 1e8:  # a tight component far from the shift: the expansion would cancel
        return _accumulate(X, mix.k, "full", shift, weights, block_rows, lambda B, C, CC: responsibilities(B, mix))

    def resp(B, C, CC):
        lp = CC @ Lflat
        lp -= 2.0 * (C @ LmT)
        lp += mLm
        np.maximum(lp, 0.0, out=lp)  # (a Mahalanobis distance: the expansion's round-off clamped)
        lp *= -0.5
        lp += base
        return _normalise(lp)

    return _accumulate(X, mix.k, "full", shift, weights, block_rows, resp)


def hard_stats(X: np.ndarray, centers: np.ndarray, covariance_type: str, shift: np.ndarray,
               weights: Optional[np.ndarray] = None, block_rows: int = 65536) -> Stats:
    """The statistics of the rows given wholly to their nearest centre (the start from K-means:
    one-hot responsibilities; log-likelihoods are not defined there and left 0)."""
    from clusterlake.kernels.kmeans import nearest

    C = np.asarray(centers, dtype=np.float64)

    def onehot(B, _C, _CC):
        R = np.zeros((len(B), len(C)))
        R[np.arange(len(B)), nearest(B, C)[0]] = 1.0
        return np.zeros(len(B)), R

    return _accumulate(X, len(C), covariance_type, shift, weights, block_rows, onehot)


def _accumulate(X, k: int, t: str, shift, weights, block_rows: int, resp) -> Stats:
    X = np.asarray(X)
    d = X.shape[1]
    block_rows = int(max(16, min(block_rows, (32 << 20) // (8 * max(1, k * d, d * d)))))  # ~32 MB of temporaries
    shift = np.asarray(shift, dtype=np.float64)
    nk, sx, ll, n, count = np.zeros(k), np.zeros((k, d)), 0.0, 0.0, 0
    sxx = np.zeros((k, d * (d + 1) // 2) if t == "full" else (d, d) if t == "tied" else (k, d))
    worst, worst_ll = None, np.inf
    for s in range(0, len(X), block_rows):
        B = np.asarray(X[s:s + block_rows], dtype=np.float64)
        w = np.ones(len(B)) if weights is None else np.asarray(weights[s:s + block_rows], dtype=np.float64)
        C = B - shift
        CC = _upper_products(C) if t == "full" else None
        norm, R = resp(B, C, CC)
        R *= w[:, None]
        nk += R.sum(axis=0)
        sx += R.T @ C
        if t == "full":  # every component's weighted outer products in one GEMM
            sxx += R.T @ CC
        elif t == "tied":
            sxx += (C * w[:, None]).T @ C
        else:
            sxx += R.T @ (C * C)
        ll += float(w @ norm)
        n += float(w.sum())
        cand = np.where(w > 0, norm, np.inf)  # a row of weight 0 is not a seed
        i = int(np.argmin(cand)) if len(B) else 0
        if len(B) and cand[i] < worst_ll:
            worst, worst_ll = B[i].copy(), float(cand[i])
        count += len(B)
    return Stats(n, nk, sx, _symmetric(sxx, d) if t == "full" else sxx, ll, shift, worst, worst_ll, count)


def _upper_products(C: np.ndarray) -> np.ndarray:
    """Every row's ``c_a c_b`` for ``a <= b`` (the upper triangle of ``c c^T``, row-major), one
    slice product per ``a``: half the columns of the full outer product and no gather. Built
    column-major (each product a contiguous run; 3x faster than strided writes into rows) and
    returned as its transpose, which the GEMMs take as it is."""
    n, d = C.shape
    CT = np.ascontiguousarray(C.T)
    out = np.empty((d * (d + 1) // 2, n))
    pos = 0
    for a in range(d):
        np.multiply(CT[a], CT[a:], out=out[pos:pos + d - a])
        pos += d - a
    return out.T


def _symmetric(T: np.ndarray, d: int) -> np.ndarray:
    """``(k, d, d)`` symmetric matrices from their upper triangles ``(k, d (d + 1) / 2)``."""
    iu, ju = np.triu_indices(d)
    out = np.zeros((len(T), d, d))
    out[:, iu, ju] = T
    out[:, ju, iu] = T
    return out


def _shifted_full(mix: Mixture, shift: np.ndarray):
    """The E-step's Mahalanobis terms for full covariances about ``shift`` (``c = x - shift``,
    ``m_j = mu_j - shift``, ``Lambda_j = P_j P_j^T``): ``(c - m)^T Lambda (c - m) = triu(c c^T) .
    triu'(Lambda) - 2 c . Lambda m + m^T Lambda m`` (off-diagonal terms doubled); the ``c c^T``
    triangles are the ones the M-step's sums need anyway, so the two share one product (E-step on
    500k x 16, k=16, one thread: 1.05 s with the per-component ``x P_j``, 0.85 s with the full
    ``c c^T`` rows, 0.58 s with the triangles, measured)."""
    m = mix.means - shift
    Lam = np.einsum("kab,kcb->kac", mix.precisions_chol, mix.precisions_chol)
    Lm = np.einsum("kab,kb->ka", Lam, m)
    d = m.shape[1]
    base = -0.5 * d * math.log(2 * math.pi) + _log_det_chol(mix.precisions_chol, "full", d)
    with np.errstate(divide="ignore"):
        base = base + np.log(mix.weights)
    iu, ju = np.triu_indices(d)
    tri = Lam[:, iu, ju] * np.where(iu == ju, 1.0, 2.0)  # c^T Lambda c over the upper triangle
    return tri.T, Lm.T, np.einsum("ka,ka->k", m, Lm), base


def merge(parts: list) -> Stats:
    """The sum of the tasks' :class:`Stats` (same shift); the worst-explained row of them all."""
    first = parts[0]
    low = min(parts, key=lambda p: p.worst_ll)
    return Stats(sum(p.n for p in parts), sum(p.nk for p in parts), sum(p.sx for p in parts),
                 sum(p.sxx for p in parts), sum(p.loglik for p in parts), first.shift, low.worst, low.worst_ll,
                 sum(p.count for p in parts))


def m_step(st: Stats, covariance_type: str, reg_covar: float = 1e-6, min_mass: float = 1e-3) -> Mixture:
    """The next mixture from the summed statistics (scikit-learn's M-step, shifted moments). A
    component of less mass than ``min_mass`` rows (of the mean row weight) is degenerate."""
    _check_type(covariance_type)
    nk = st.nk + 10 * _EPS
    mc = st.sx / nk[:, None]  # means about the shift
    d = mc.shape[1]
    if covariance_type == "full":
        cov = st.sxx / nk[:, None, None] - np.einsum("ki,kj->kij", mc, mc)
        cov = (cov + np.transpose(cov, (0, 2, 1))) / 2.0
        cov[:, np.arange(d), np.arange(d)] += reg_covar
    elif covariance_type == "tied":
        cov = (st.sxx - (nk[:, None] * mc).T @ mc) / nk.sum()
        cov = (cov + cov.T) / 2.0
        cov[np.arange(d), np.arange(d)] += reg_covar
    else:
        cov = st.sxx / nk[:, None] - mc ** 2 + reg_covar
        if covariance_type == "spherical":
            cov = cov.mean(axis=1)
    unit = st.n / st.count if st.count else 1.0  # the mean row weight: a weight column may sum to anything
    degenerate = [int(j) for j in np.flatnonzero(st.nk < min_mass * unit)]
    for j in degenerate:  # its moments are round-off: reg_covar alone, never a NaN
        if covariance_type == "full":
            cov[j] = np.eye(d) * reg_covar
        elif covariance_type in ("diag", "spherical"):
            cov[j] = reg_covar
    mix = Mixture.of(covariance_type, nk / nk.sum(), mc + st.shift, cov)
    mix.degenerate = degenerate
    return mix


def reseed(mix: Mixture, j: int, mean: np.ndarray, covariance: np.ndarray) -> Mixture:
    """``mix`` with component ``j`` restarted at ``mean`` with ``covariance`` (its type's shape for
    one component; tied: ignored) and the weight of one row's share, the weights renormalised."""
    means, weights = mix.means.copy(), mix.weights.copy()
    means[j] = mean
    weights[j] = max(weights[j], 1.0 / max(10 * mix.k, 1))
    cov = mix.covariances.copy()
    if mix.covariance_type != "tied":
        cov[j] = covariance
    return Mixture.of(mix.covariance_type, weights / weights.sum(), means, cov)
