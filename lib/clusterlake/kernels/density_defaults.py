"""HDBSCAN's ``min_samples`` and ``min_cluster_size`` chosen on the sample (issue 23).

Fixed defaults (``min_samples`` 10, ``min_cluster_size`` a thousandth of the sample) are coarser
than HDBSCAN's usual ones and lose shapes that smaller values find; smaller ones shatter large,
noisy sets. When the user sets neither, :func:`choose` tries a small grid on the sample itself and
keeps the labeling of the highest DBCV score (:mod:`clusterlake.kernels.dbcv`; the density-based
validity of Moulavi et al. 2014: dense clusters, well separated, little noise):

* ``min_samples`` in (5, 10, 20): the neighbours are searched once (the largest k), the
  mutual-reachability tree is built once per value;
* ``min_cluster_size`` in (sample / 2000, / 1000, / 250), at least 5, 10 and 20 rows: each is one
  condensation of its tree (scikit-learn's, cheap);
* every labeling is scored on the sample's first ``score_rows`` rows (the sample is a uniform
  draw in random order, so any prefix is uniform): DBCV's cost grows with the square of the rows;
  labelings that agree on those rows share one score;
* a sample above ``GRID_ROWS`` is searched on its first ``GRID_ROWS`` rows (each tree costs the
  square of the rows: ~0.5 s at 10,000, ~25 s at 100,000); the chosen ``min_cluster_size`` is then
  scaled to the whole sample (it counts rows) by the caller, which fits once more.

The former defaults (10, sample / 1000 but at least 10) are tried first and win ties. The choice,
its score and every candidate's are returned for the ``metrics`` table and the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from clusterlake.kernels.density import condense, neighbour_search, spanning_tree
from clusterlake.kernels.distances import Metric

__all__ = ["Choice", "GRID_MIN_SAMPLES", "cluster_size_grid", "choose"]

GRID_MIN_SAMPLES = (10, 5, 20)  # the former default first: it wins ties
SCORE_ROWS = 3000
GRID_ROWS = 10_000


def cluster_size_grid(n: int) -> tuple[int, ...]:
    """The ``min_cluster_size`` candidates for a sample of ``n`` rows, the former default first."""
    out = []
    for v in (max(10, n // 1000), max(5, n // 2000), max(20, n // 250)):
        v = int(min(max(2, v), max(2, n)))
        if v not in out:
            out.append(v)
    return tuple(out)


@dataclass
class Choice:
    min_samples: int
    min_cluster_size: int
    score: float  # DBCV of the chosen labeling on the scored rows (NaN: no labeling had 2 clusters)
    labels: np.ndarray  # the chosen labeling of every sample row
    knn: np.ndarray  # every row's distances to its max(2, min_samples) nearest rows (itself included)
    scored_rows: int
    candidates: list[dict] = field(default_factory=list)  # min_samples, min_cluster_size, n_clusters, dbcv


def choose(X: np.ndarray, metric: Optional[Metric] = None, score_rows: int = SCORE_ROWS) -> Choice:
    """The grid's best HDBSCAN labeling of the sample ``X`` (rows in the frame the kernels compute
    in: see :func:`~clusterlake.kernels.distances.euclidean_frame`) by DBCV under ``metric``."""
    from clusterlake.kernels.dbcv import dbcv

    n = len(X)
    grid_ms = [m for m in GRID_MIN_SAMPLES if m <= n] or [max(1, n)]
    knn_all, near = neighbour_search(X, max(2, max(grid_ms)), metric)
    rows = int(min(n, score_rows))
    best: Optional[Choice] = None
    cands, scored = [], {}  # scored: labels of the scored rows -> DBCV (candidates often agree there)
    for ms in grid_ms:
        tree = spanning_tree(X, knn_all[:, ms - 1], metric, near, ms)
        for mcs in cluster_size_grid(n):
            labels = condense(n, tree, mcs)
            key = labels[:rows].tobytes()
            score = scored[key] if key in scored else scored.setdefault(key, dbcv(X[:rows], labels[:rows], metric))
            cands.append({"min_samples": ms, "min_cluster_size": mcs, "n_clusters": int(labels.max() + 1),
                          "dbcv": score})
            if best is None or _better(score, best.score):
                best = Choice(ms, mcs, score, labels, knn_all[:, :max(2, ms)], rows)
    best.candidates = cands
    return best


def _better(score: float, than: float) -> bool:
    """A higher score; an undefined one (NaN: fewer than two clusters) never wins."""
    return not np.isnan(score) and (np.isnan(than) or score > than)
