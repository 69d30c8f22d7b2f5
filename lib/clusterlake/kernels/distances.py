"""Distances between rows under a named metric, block by block (numpy only; issue 23).

K-means minimises squared Euclidean distances to means; under any other geometry the partition
is k-medoids' (:mod:`clusterlake.kernels.kmedoids`), whose assignment of a row is its nearest
medoid under the metric, and whose fit needs the sample's pairwise distances. This module is
the one definition of each metric, as ``scipy.spatial.distance.cdist`` defines it (the tests
hold every metric to it and to scikit-learn's ``pairwise_distances``, float32 and float64):

================  ==========================================================================
``euclidean``     ``sqrt(sum((x - y)^2))``
``sqeuclidean``   ``sum((x - y)^2)``
``cosine``        ``1 - x.y / (|x| |y|)`` (a zero vector is 1 from everything, itself included)
``manhattan``     ``sum(|x - y|)`` (scipy's ``cityblock``)
``chebyshev``     ``max(|x - y|)``
``minkowski``     ``sum(|x - y|^p)^(1/p)``, ``p >= 1``
``jaccard``       on 0/1 features: the share of disagreeing features among those set in either
                  row (0 when neither row has any set)
``hamming``       the share of features that differ
``mahalanobis``   ``sqrt((x - y)^T VI (x - y))``, ``VI`` the inverse covariance of the input
================  ==========================================================================

Every result is float64, computed in float64 from either input type. The metrics that are inner
products at heart (``euclidean``, ``sqeuclidean``, ``cosine``, ``jaccard``, ``mahalanobis``) are
computed by GEMM (the squared norms ride in it; round-off ~1e-15 relative to the rows' squared
norms, clamped at 0); the others by differences (scipy's compiled ``cdist``), a block of rows at a time within the
memory budget. :func:`nearest` is the assignment: every row's nearest and second-nearest of a few
reference rows (the medoids), exact differences for every metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

__all__ = ["METRICS", "Metric", "custom", "exact", "euclidean_frame", "from_spec", "metric", "nearest", "one_to_many", "pairwise",
           "scipy_name", "sklearn_args", "sklearn_rows", "to_spec"]

METRICS = ("euclidean", "sqeuclidean", "cosine", "manhattan", "chebyshev", "minkowski", "jaccard", "hamming",
           "mahalanobis")
_GEMM = ("euclidean", "sqeuclidean", "cosine", "jaccard", "mahalanobis")
_BUDGET = 64 << 20


@dataclass(frozen=True)
class Metric:
    """A named metric and its parameters: ``p`` (minkowski), ``VI`` (mahalanobis: the inverse
    covariance, ``d x d``). Build it with :func:`metric`, which checks them."""

    name: str
    p: Optional[float] = None
    VI: Optional[np.ndarray] = field(default=None, compare=False, repr=False)
    W: Optional[np.ndarray] = field(default=None, compare=False, repr=False)
    """mahalanobis: ``L`` with ``VI = L L^T``, computed once by :func:`metric`."""
    fn: Optional[Callable] = field(default=None, compare=False, repr=False)
    """A custom distance (:func:`custom`): ``fn(A, B)`` -> the ``(len(A), len(B))`` distances."""

    def __post_init__(self) -> None:
        if self.fn is not None and self.name in METRICS:
            raise ValueError(f"a custom distance cannot take the name of the named distance {self.name!r}: give it another")

    def describe(self) -> str:
        return f"minkowski (p={self.p:g})" if self.name == "minkowski" else self.name


def metric(name: str, p: Optional[float] = None, VI: Optional[np.ndarray] = None) -> Metric:
    """The :class:`Metric` ``name`` (one of :data:`METRICS`; ``cityblock`` is ``manhattan``), its
    parameters checked. Raises ValueError naming what is wrong and what is accepted."""
    name = {"cityblock": "manhattan", "l1": "manhattan", "l2": "euclidean"}.get(name, name)
    if name not in METRICS:
        raise ValueError(f"unknown distance {name!r}; the distances are {', '.join(METRICS)}")
    if name == "minkowski":
        if p is None or not np.isfinite(p) or p < 1:
            raise ValueError(f"the minkowski distance needs p >= 1 (got {p!r}); p=1 is manhattan, p=2 euclidean")
        p = float(p)
    elif p is not None:
        raise ValueError(f"p applies to the minkowski distance only, not {name}")
    if name == "mahalanobis":
        VI = np.asarray(VI, dtype=np.float64) if VI is not None else None
        if VI is None or VI.ndim != 2 or VI.shape[0] != VI.shape[1] or not np.isfinite(VI).all():
            raise ValueError("the mahalanobis distance needs VI, the inverse covariance (a finite square matrix)")
        VI = (VI + VI.T) / 2.0
        w, V = np.linalg.eigh(VI)
        if w.min() < -1e-10 * max(1.0, abs(w).max()):
            raise ValueError("VI (mahalanobis) is not positive semi-definite")
        return Metric(name, None, VI, V * np.sqrt(np.clip(w, 0.0, None)))
    elif VI is not None:
        raise ValueError(f"VI applies to the mahalanobis distance only, not {name}")
    return Metric(name, p, VI)


def custom(fn: Callable, name: str = "custom") -> Metric:
    """A distance given as code by a Python user (``clusterlake.ml``, the kernels; never a config:
    configs are data): ``fn(A, B)`` takes two float64 arrays of rows and returns their
    ``(len(A), len(B))`` distances, vectorised (it is called on blocks of rows, never per pair).
    Its values are checked on every call (shape, finite, >= 0). Nothing about it is assumed: no
    triangle inequality (searches under it measure every pair), no symmetry beyond what the
    algorithms need. It cannot be saved in a model (a model holds data, not code)."""
    if not callable(fn):
        raise ValueError(f"a custom distance must be a callable fn(A, B) -> distances, got {type(fn).__name__}")
    return Metric(str(name), fn=fn)  # (a named distance's name is refused: Metric.__post_init__)


def _custom_block(m: Metric, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    D = np.asarray(m.fn(A, B), dtype=np.float64)
    if D.shape != (len(A), len(B)):
        raise ValueError(f"the custom distance {m.name!r} returned shape {D.shape} for {len(A)} x {len(B)} rows; "
                         f"it must return the ({len(A)}, {len(B)}) array of distances between the two sets of rows")
    if D.size and not (np.isfinite(D).all() and D.min() >= 0):
        raise ValueError(f"the custom distance {m.name!r} returned {'non-finite' if not np.isfinite(D).all() else 'negative'} "
                         "values: distances must be finite and >= 0")
    return D


def to_spec(m: Optional[Metric]) -> Optional[dict]:
    """``m`` as plain JSON data (the model artifact's ``meta.metric``, a task command's argument):
    ``{"name", "p", "VI"}``; None for None. A custom distance (code) is refused."""
    if m is None:
        return None
    if m.fn is not None:
        raise ValueError(f"the custom distance {m.name!r} is code and cannot be saved in a model or sent as data; "
                         "use a named distance (" + ", ".join(METRICS) + ") for a model that is saved")
    return {"name": m.name, "p": m.p, "VI": None if m.VI is None else m.VI.tolist()}


def from_spec(spec: Optional[dict]) -> Optional[Metric]:
    """The :class:`Metric` of :func:`to_spec`'s data (checked again: it may come from a file)."""
    if not spec:
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValueError(f"not a distance: {spec!r}")
    vi = spec.get("VI")
    return metric(spec["name"], p=spec.get("p"), VI=None if vi is None else np.asarray(vi, dtype=np.float64))


def euclidean_frame(X: np.ndarray, m: Optional[Metric]) -> tuple[np.ndarray, Optional[Metric]]:
    """``(rows, metric)`` to compute with: mahalanobis is the Euclidean distance of the whitened rows
    (``X L``), so it becomes ``(X L, None)``; euclidean ``(X, None)``; any other ``(X, m)``. None
    stands for euclidean, for which the callers have their faster kernels."""
    if m is None or (m.name == "euclidean" and m.fn is None):
        return X, None
    if m.name == "mahalanobis" and m.fn is None:
        return np.asarray(X, dtype=np.float64) @ m.W, None
    return X, m


def sklearn_args(m: Optional[Metric]) -> dict:
    """scikit-learn's spelling of ``m`` for its neighbour searches (``metric``, ``p``: the same
    definitions; its trees where they serve the metric, k-d for manhattan, chebyshev, minkowski);
    {} for euclidean. Give it the rows through :func:`sklearn_rows`. Not for mahalanobis: whiten
    the rows (:func:`euclidean_frame`)."""
    if m is None or (m.name == "euclidean" and m.fn is None):
        return {}
    if m.name == "mahalanobis" or m.fn is not None:
        raise ValueError("whiten the rows for the mahalanobis distance (euclidean_frame); a custom distance has "
                         "no scikit-learn search (use the brute ones here)")
    return {"metric": m.name, **({"p": m.p} if m.name == "minkowski" else {})}


def sklearn_rows(X: np.ndarray, m: Optional[Metric]) -> np.ndarray:
    """``X`` as scikit-learn's, scipy's and fastcluster's jaccard take it (booleans: set or not;
    checked to be 0/1 first), else ``X`` itself."""
    if m is not None and m.name == "jaccard":
        _check_binary(m, X)
        return np.asarray(X) != 0
    return X


def scipy_name(m: Metric) -> str:
    """scipy's name of ``m`` (``cdist``, ``pdist``)."""
    return _SCIPY.get(m.name, m.name)


def one_to_many(m: Metric, x: np.ndarray, Y: np.ndarray, y_sq: Optional[np.ndarray] = None) -> np.ndarray:
    """Distances from the row ``x`` to every row of ``Y`` (float64 rows, unchecked: the inner step of
    loops that add one row at a time, as Prim's tree does); ``y_sq``: ``Y``'s squared norms, which
    the GEMM metrics need (computed when None). Not for mahalanobis (:func:`euclidean_frame`)."""
    if m.fn is not None:
        return _custom_block(m, x[None, :], Y)[0]
    if m.name == "mahalanobis":
        raise ValueError("whiten the rows for the mahalanobis distance (euclidean_frame)")
    if m.name in _GEMM:
        y_sq = np.einsum("ij,ij->i", Y, Y) if y_sq is None else y_sq
        return _gemm_block(m, x[None, :], Y, np.array([x @ x]), y_sq)[0]
    return _diff_block(m, x[None, :], Y)[0]


def _as64(A: np.ndarray) -> np.ndarray:
    A = np.asarray(A)
    if A.ndim != 2:
        raise ValueError(f"rows must be a 2-D array, got shape {A.shape}")
    return np.ascontiguousarray(A, dtype=np.float64)


def _whiten(m: Metric, A: np.ndarray) -> np.ndarray:
    """Rows mapped so that the mahalanobis distance is their euclidean one: ``A @ L`` with
    ``VI = L L^T`` (an eigen-decomposition, made once by :func:`metric`: VI may be only
    semi-definite)."""
    return A @ m.W


def _gemm_block(m: Metric, A: np.ndarray, B: np.ndarray, a_sq: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    G = A @ B.T
    if m.name == "cosine":
        na, nb = np.sqrt(a_sq), np.sqrt(b_sq)
        with np.errstate(divide="ignore", invalid="ignore"):
            cos = G / np.outer(na, nb)
        cos[(na == 0)[:, None] | (nb == 0)[None, :]] = 0.0
        return 1.0 - np.clip(cos, -1.0, 1.0)
    if m.name == "jaccard":  # 0/1 rows: |x|^2 = the count set, x.y = both set
        union = a_sq[:, None] + b_sq[None, :] - G
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(union > 0, (union - G) / union, 0.0)
        return out
    D = a_sq[:, None] + b_sq[None, :] - 2.0 * G
    np.maximum(D, 0.0, out=D)
    return D if m.name == "sqeuclidean" else np.sqrt(D, out=D)


_SCIPY = {"manhattan": "cityblock", "chebyshev": "chebyshev", "minkowski": "minkowski", "hamming": "hamming",
          "euclidean": "euclidean", "sqeuclidean": "sqeuclidean", "cosine": "cosine", "jaccard": "jaccard"}


def _diff_block(m: Metric, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Distances by differences, scipy's compiled ``cdist`` (its definitions, float64)."""
    from scipy.spatial.distance import cdist

    if A.shape[1] == 0:
        return np.zeros((len(A), len(B)))
    return cdist(A, B, _SCIPY[m.name], **({"p": m.p} if m.name == "minkowski" else {}))


def _check_binary(m: Metric, *arrays: np.ndarray) -> None:
    if m.name == "jaccard" and m.fn is None:
        for A in arrays:
            if A.size and not np.isin(A, (0.0, 1.0)).all():
                raise ValueError("the jaccard distance on numeric columns needs 0/1 features "
                                 "(for sets of tokens, give the set column: grouping.column)")


def pairwise(X: np.ndarray, Y: np.ndarray, m: Metric, budget_bytes: int = _BUDGET, dtype=np.float64) -> np.ndarray:
    """The ``(len(X), len(Y))`` distances under ``m`` (as ``cdist(X, Y, m.name)``), computed in
    float64 and stored as ``dtype`` (float32 halves a large sample's matrix: 10 GB at 50,000)."""
    X, Y = _as64(X), _as64(Y)
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"the rows have {X.shape[1]} and {Y.shape[1]} columns")
    _check_binary(m, X, Y)
    if m.name == "mahalanobis":
        X, Y = _whiten(m, X), _whiten(m, Y)
    n, k, d = len(X), len(Y), X.shape[1]
    out = np.empty((n, k), dtype=dtype)
    if m.fn is not None:
        step = int(max(1, budget_bytes // (8 * 2 * max(1, k))))
        for s in range(0, n, step):
            out[s:s + step] = _custom_block(m, X[s:s + step], Y)
    elif m.name in _GEMM:
        x_sq, y_sq = np.einsum("ij,ij->i", X, X), np.einsum("ij,ij->i", Y, Y)
        step = int(max(1, budget_bytes // (8 * 3 * max(1, k))))
        for s in range(0, n, step):
            out[s:s + step] = _gemm_block(m, X[s:s + step], Y, x_sq[s:s + step], y_sq)
    else:
        step = int(max(1, budget_bytes // (8 * max(1, k))))
        for s in range(0, n, step):
            out[s:s + step] = _diff_block(m, X[s:s + step], Y)
    return out


def nearest(X: np.ndarray, R: np.ndarray, m: Metric, budget_bytes: int = _BUDGET
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every row's nearest and second-nearest of the reference rows ``R`` (the medoids) under
    ``m``: ``(index, distance, second index, second distance)``; ties go to the lower index; with
    one reference row the second is ``-1`` at distance ``inf``. Exact differences for every
    metric (no GEMM round-off at the decision), ``R`` a few hundred rows at most in practice."""
    X, R = _as64(X), _as64(R)
    _check_binary(m, X, R)
    if m.name == "mahalanobis":
        X, R = _whiten(m, X), _whiten(m, R)
    exact = Metric("euclidean") if m.name == "mahalanobis" else m
    n, k, d = len(X), len(R), X.shape[1]
    i1, i2 = np.zeros(n, np.int64), np.full(n, -1, np.int64)
    d1, d2 = np.full(n, np.inf), np.full(n, np.inf)
    if k == 0 or n == 0:
        return np.full(n, -1, np.int64), d1, i2, d2
    step = int(max(1, budget_bytes // (8 * k * max(1, d))))  # the exact cosine/jaccard temporaries
    for s in range(0, n, step):
        D = _exact_block(exact, X[s:s + step], R)
        order = np.argsort(D, axis=1, kind="stable")[:, :2]
        rows = np.arange(len(D))
        i1[s:s + step], d1[s:s + step] = order[:, 0], D[rows, order[:, 0]]
        if k > 1:
            i2[s:s + step], d2[s:s + step] = order[:, 1], D[rows, order[:, 1]]
    return i1, d1, i2, d2


def exact(X: np.ndarray, R: np.ndarray, m: Metric, budget_bytes: int = _BUDGET) -> np.ndarray:
    """The ``(len(X), len(R))`` distances under ``m`` computed as :func:`nearest` computes them
    (from the differences, no GEMM round-off): for a few reference rows (medoids, one cluster's
    members), where a ranking must agree with the assignment's."""
    X, R = _as64(X), _as64(R)
    _check_binary(m, X, R)
    if m.name == "mahalanobis":
        X, R = _whiten(m, X), _whiten(m, R)
        m = Metric("euclidean")
    out = np.empty((len(X), len(R)))
    width = 2 if m.fn is not None else max(1, X.shape[1])  # (the exact cosine/jaccard temporaries: rows x R x d)
    step = int(max(1, budget_bytes // (8 * max(1, len(R)) * width)))
    for s in range(0, len(X), step):
        out[s:s + step] = _exact_block(m, X[s:s + step], R)
    return out


def _exact_block(m: Metric, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    if m.fn is not None:
        return _custom_block(m, A, B)
    if m.name == "cosine":
        return _cosine_exact(A, B)
    if m.name == "jaccard":
        return _jaccard_exact(A, B)
    return _diff_block(m, A, B)


def _cosine_exact(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(A, axis=1), np.linalg.norm(B, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.einsum("id,kd->ik", A, B) / np.outer(na, nb)
    cos[(na == 0)[:, None] | (nb == 0)[None, :]] = 0.0
    return 1.0 - np.clip(cos, -1.0, 1.0)


def _jaccard_exact(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    a, b = A[:, None, :] != 0, B[None, :, :] != 0
    union = (a | b).sum(axis=2)
    differ = (a ^ b).sum(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, differ / union, 0.0)
