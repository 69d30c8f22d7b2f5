"""k-medoids on a sample by FasterPAM (Schubert & Rousseeuw 2021), numpy only (issue 23).

K-means' centre is a mean, which only squared Euclidean distances make the optimum of. Under any
other distance (:mod:`clusterlake.kernels.distances`) the partition is k-medoids': ``k`` rows of
the data (the medoids) minimising the sum of every row's distance to its nearest medoid. The job
fits it on a uniform sample (its pairwise distances in memory: ``8 n^2`` bytes, 800 MB at 10,000
rows) and assigns every row to its nearest medoid (:func:`clusterlake.kernels.distances.nearest`).

:func:`fasterpam` is FasterPAM's eager swap search as the reference implementation (the
``kmedoids`` package's ``fasterpam`` with ``n_cpu=1``, GPL, used by the tests as the oracle and
not a dependency) does it, step for step: each non-medoid candidate in turn, the change of the
loss of swapping it with each medoid from every row's nearest and second-nearest medoid (the
``O(k)`` improvement: one pass over the rows per candidate, not one per candidate and medoid),
the best swap done at once when it lowers the loss; until a pass over every candidate since the
last swap finds none. The pass over the rows is vectorised; the loop is over candidates.

:func:`init_medoids` seeds it with k-medoids++ (k-means++'s rule on the distances, seeded);
:func:`fit` does both on a distance matrix and returns a :class:`KMedoidsFit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["KMedoidsFit", "choose_k", "fasterpam", "fit", "init_medoids", "silhouette", "silhouette_samples", "silhouette_samples_of"]


@dataclass
class KMedoidsFit:
    medoids: np.ndarray  # (k,) int64: rows of the sample, in the order of the clusters
    labels: np.ndarray  # (n,) int64: each row's nearest medoid (index into medoids)
    loss: float  # sum of every row's distance to its nearest medoid
    n_iter: int  # passes over the candidates
    n_swap: int  # swaps done
    converged: bool = True  # False: max_iter passes ended it while a pass still found a swap


class _Nearest:
    """Every row's nearest and second-nearest medoid (index into the medoids) and distance."""

    def __init__(self, D: np.ndarray, med: np.ndarray):
        n, k = D.shape[0], len(med)
        M = D[:, med]  # (n, k)
        order = np.argsort(M, axis=1, kind="stable")  # ties: the lower medoid index first
        rows = np.arange(n)
        self.near_i, self.near_d = order[:, 0].copy(), M[rows, order[:, 0]].copy()
        if k > 1:
            self.sec_i, self.sec_d = order[:, 1].copy(), M[rows, order[:, 1]].copy()
        else:
            self.sec_i, self.sec_d = np.full(n, -1, np.int64), np.full(n, np.inf)

    def removal_loss(self, k: int) -> np.ndarray:
        """Per medoid: what the loss grows by when it is removed (its rows go to their second)."""
        return np.bincount(self.near_i, weights=self.sec_d - self.near_d, minlength=k)


def _best_swap(dj: np.ndarray, nr: _Nearest, removal: np.ndarray) -> tuple[float, int]:
    """The change of the loss of the best swap of candidate ``j`` (distances ``dj`` to every row)
    with a medoid, and that medoid's index (the first of equal ones)."""
    k = len(removal)
    closer = dj < nr.near_d
    acc = float((dj[closer] - nr.near_d[closer]).sum())
    ploss = removal + np.bincount(nr.near_i[closer], weights=(nr.near_d - nr.sec_d)[closer], minlength=k)
    mid = ~closer & (dj < nr.sec_d)
    ploss += np.bincount(nr.near_i[mid], weights=(dj - nr.sec_d)[mid], minlength=k)
    b = int(np.argmin(ploss))
    return float(ploss[b]) + acc, b


def _second_excluding(D: np.ndarray, med: np.ndarray, rows: np.ndarray, near: np.ndarray, b: int,
                      dj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The second-nearest medoid of ``rows`` whose nearest is ``near``: the new medoid ``b`` (at
    ``dj``) unless another is strictly closer (the lowest index among equals)."""
    M = D[np.ix_(rows, med)]
    M[np.arange(len(rows)), near] = np.inf
    M[:, b] = np.inf
    i = np.argmin(M, axis=1)
    d = M[np.arange(len(rows)), i]
    keep_b = ~(d < dj[rows])
    return np.where(keep_b, b, i), np.where(keep_b, dj[rows], d)


def _swap(D: np.ndarray, med: np.ndarray, nr: _Nearest, b: int, j: int) -> None:
    """Make row ``j`` the medoid ``b`` and update every row's nearest and second (in place)."""
    med[b] = j
    dj = D[j]
    gone = nr.near_i == b
    # the nearest medoid was removed: the new one if it beats the second, else the second moves up
    up = gone & ~(dj < nr.sec_d)
    now_b = gone & (dj < nr.sec_d)
    nr.near_d[now_b] = dj[now_b]
    rows = np.flatnonzero(up)
    if rows.size:
        nr.near_i[rows], nr.near_d[rows] = nr.sec_i[rows], nr.sec_d[rows]
        nr.sec_i[rows], nr.sec_d[rows] = _second_excluding(D, med, rows, nr.near_i[rows], b, dj)
    # the nearest stays: the new medoid may become the nearest or the second
    kept = ~gone
    first = kept & (dj < nr.near_d)
    second = kept & ~first & (dj < nr.sec_d)
    redo = kept & ~first & ~second & (nr.sec_i == b)
    nr.sec_i[first], nr.sec_d[first] = nr.near_i[first], nr.near_d[first]
    nr.near_i[first], nr.near_d[first] = b, dj[first]
    nr.sec_i[second], nr.sec_d[second] = b, dj[second]
    rows = np.flatnonzero(redo)
    if rows.size:
        nr.sec_i[rows], nr.sec_d[rows] = _second_excluding(D, med, rows, nr.near_i[rows], b, dj)
    # the medoid itself
    if nr.near_i[j] != b:
        nr.sec_i[j], nr.sec_d[j] = nr.near_i[j], nr.near_d[j]
    nr.near_i[j], nr.near_d[j] = b, 0.0


def fasterpam(D: np.ndarray, medoids: np.ndarray, max_iter: int = 100) -> KMedoidsFit:
    """FasterPAM from the initial ``medoids`` (row indices) on the square distance matrix ``D``
    (float64, or float32 for a large sample: read as is, every sum in float64)."""
    D = np.asarray(D)
    if D.dtype not in (np.float32, np.float64):
        D = D.astype(np.float64)
    n = D.shape[0]
    med = np.array(medoids, dtype=np.int64)
    k = len(med)
    if D.ndim != 2 or D.shape[1] != n:
        raise ValueError(f"the distances must be a square matrix, got shape {D.shape}")
    if not 1 <= k <= n or len(np.unique(med)) != k or med.min() < 0 or med.max() >= n:
        raise ValueError(f"{k} initial medoids must be distinct rows of the {n}")
    nr = _Nearest(D, med)
    removal = nr.removal_loss(k)
    loss = float(nr.near_d.sum())
    last, swaps, it, converged = n, 0, 0, False
    while it < max_iter:
        it += 1
        before, last_loss = swaps, loss
        for j in range(n):
            if j == last:
                break
            if j == med[nr.near_i[j]]:
                continue  # already a medoid
            change, b = _best_swap(D[j], nr, removal)
            if change >= 0:
                continue
            swaps += 1
            last = j
            _swap(D, med, nr, b, j)
            loss = float(nr.near_d.sum())
            removal = nr.removal_loss(k)
        if swaps == before or loss >= last_loss:
            converged = True
            break
    return KMedoidsFit(med, nr.near_i.astype(np.int64), float(nr.near_d.sum()), it, swaps, converged)


def init_medoids(D: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-medoids++: the first medoid uniform, each next one drawn with probability proportional to
    its squared distance to the nearest medoid so far (k-means++'s rule on ``D``), seeded."""
    rng = np.random.default_rng(seed)
    n = D.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} medoids need 1 <= k <= {n} rows")
    med = [int(rng.integers(n))]
    closest = np.asarray(D[med[0]], dtype=np.float64).copy()
    for _ in range(1, k):
        w = closest * closest
        w[med] = 0.0
        total = w.sum()
        c = int(rng.choice(n, p=w / total)) if total > 0 else \
            int(rng.choice(np.setdiff1d(np.arange(n), med)))
        med.append(c)
        np.minimum(closest, D[c], out=closest)
    return np.array(med, dtype=np.int64)


def fit(D: np.ndarray, k: int, seed: int = 0, max_iter: int = 100) -> KMedoidsFit:
    """k-medoids++ then FasterPAM on the distance matrix ``D`` of a sample."""
    return fasterpam(D, init_medoids(D, k, seed), max_iter)


def choose_k(D: np.ndarray, ks, seed: int = 0, max_iter: int = 100) -> tuple[int, dict, dict]:
    """``k: auto`` for k-medoids: a fit for every candidate ``k`` of ``ks`` on the one distance
    matrix, scored by the mean silhouette under the same distance; the best score wins (the
    smaller k on a tie). Returns ``(k, {k: silhouette}, {k: KMedoidsFit})``."""
    scores, fits = {}, {}
    for k in sorted(set(int(v) for v in ks)):
        fits[k] = fit(D, k, seed, max_iter)
        scores[k] = silhouette(D, fits[k].labels)
    valid = {k: v for k, v in scores.items() if np.isfinite(v)}
    if not valid:
        raise ValueError(f"no candidate k of {sorted(scores)} has a defined silhouette on {D.shape[0]} rows")
    best = max(valid, key=lambda k: (valid[k], -k))
    return best, scores, fits


def silhouette(D: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette of ``labels`` from the distance matrix ``D`` (scikit-learn's
    ``silhouette_score(D, labels, metric="precomputed")``: a row alone in its cluster scores 0);
    NaN unless 2 <= clusters <= rows - 1."""
    s = silhouette_samples(D, labels)
    return float("nan") if s is None else float(s.mean())


def silhouette_samples(D: np.ndarray, labels: np.ndarray) -> Optional[np.ndarray]:
    """Every row's silhouette from the distance matrix ``D`` (scikit-learn's
    ``silhouette_samples(D, labels, metric="precomputed")``); None unless 2 <= clusters <= rows - 1."""
    D = np.asarray(D)
    return _silhouettes(len(D), [labels], lambda s0, s1: np.asarray(D[s0:s1], dtype=np.float64))[0]


def silhouette_samples_of(X: np.ndarray, labels: np.ndarray, metric) -> Optional[np.ndarray]:
    """:func:`silhouette_samples` of the rows ``X`` under ``metric`` (a
    :class:`~clusterlake.kernels.distances.Metric`), their distances a block of rows at a time
    (never the whole matrix)."""
    return silhouette_samples_many(X, [labels], metric)[0]


def silhouette_samples_many(X: np.ndarray, labelings: list, metric) -> list:
    """:func:`silhouette_samples_of` of several labelings of the same rows (a hierarchy's levels):
    each block of distance rows is measured once and summed per cluster of every labeling."""
    from clusterlake.kernels.distances import exact

    return _silhouettes(len(X), labelings, lambda s0, s1: exact(X[s0:s1], X, metric))


def _silhouettes(n: int, labelings: list, rows) -> list:
    """Every row's silhouette for each labeling (None where 2 <= clusters <= rows - 1 fails),
    ``rows(s0, s1)`` giving rows s0:s1 of the distance matrix (one block for every labeling)."""
    labs, ks = [], []
    for labels in labelings:
        lab = np.unique(np.asarray(labels), return_inverse=True)[1].reshape(-1)
        labs.append(lab)
        ks.append(int(lab.max()) + 1 if len(lab) else 0)
    todo = [j for j, k in enumerate(ks) if 2 <= k <= n - 1]
    out: list = [None] * len(labelings)
    if not todo:
        return out
    offs = np.cumsum([0] + [ks[j] for j in todo])
    H = np.zeros((n, int(offs[-1])))
    for j, o in zip(todo, offs):
        H[np.arange(n), o + labs[j]] = 1.0
    T = np.empty((n, H.shape[1]))  # every row's summed distance to every cluster, a block of rows at a time
    step = max(1, (32 << 20) // (8 * n))
    for s0 in range(0, n, step):
        T[s0:s0 + step] = rows(s0, min(n, s0 + step)) @ H
    for j, o, e in zip(todo, offs[:-1], offs[1:]):
        out[j] = _from_sums(T[:, o:e], H[:, o:e], labs[j])
    return out


def _from_sums(T: np.ndarray, H: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """Silhouettes from every row's summed distance to each cluster ``T`` (one labeling)."""
    n = len(lab)
    cnt = H.sum(axis=0)
    own = T[np.arange(n), lab]
    with np.errstate(divide="ignore", invalid="ignore"):
        a = own / (cnt[lab] - 1.0)
        mean_to = T / cnt
    mean_to[np.arange(n), lab] = np.inf
    b = mean_to.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(cnt[lab] > 1, (b - a) / np.maximum(a, b), 0.0)
    return np.nan_to_num(s)
