"""Cluster profiles and archetype texts (issue 6): what each cluster *is*, in the input's units.

From the per-cluster sums the job's statistics pass already collects (one distributed
aggregation: count, sum and centred sum of squares of every input feature per cluster) and the
population moments of the preprocessing pass, with no further pass over the rows:

* ``mean``, ``std`` of every feature in every cluster (original units, population std);
* ``z`` = (cluster mean - population mean) / population std: how many population standard
  deviations the cluster sits from everyone;
* ``rank`` of the feature within the cluster by ``|z|`` (1 = the most distinctive).

:func:`describe` turns a cluster's top features into a short text, e.g.
``"high monthly_spend (+2.1 sd), low churn_rate (-1.4 sd), 12% of rows"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_Z = 0.5  # a feature closer than this to the population mean is not "high" or "low"
TOP = 3


@dataclass
class Profiles:
    features: list[str]
    mean: np.ndarray  # (k, d)
    std: np.ndarray  # (k, d)
    z: np.ndarray  # (k, d)
    rank: np.ndarray  # (k, d) int, 1 = largest |z| in the cluster
    pop_mean: np.ndarray  # (d,)
    pop_std: np.ndarray  # (d,)
    share: np.ndarray  # (k,)

    def descriptions(self, exemplars=None) -> list[str]:
        """One text per cluster; ``exemplars`` (ids per cluster) are named in it when given (the
        clusters of a vector column, whose elements say nothing by name)."""
        return [describe(self.features, self.z[i], self.share[i], exemplars[i] if exemplars else None)
                for i in range(len(self.share))]


def compute(counts: np.ndarray, sum_x: np.ndarray, sum_sq_dx: np.ndarray, pop_mean: np.ndarray,
            pop_var: np.ndarray, features: list[str]) -> Profiles:
    """``sum_sq_dx[c, j]`` = sum over the cluster's rows of ``(x_j - pop_mean_j)^2`` (centred, so
    the variance does not cancel catastrophically for features far from zero)."""
    counts = np.asarray(counts, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sum_x / counts[:, None]
        dm = mean - pop_mean
        var = np.maximum(sum_sq_dx / counts[:, None] - dm * dm, 0.0)
        pop_std = np.sqrt(np.maximum(pop_var, 0.0))
        z = np.where(pop_std > 0, dm / np.where(pop_std > 0, pop_std, 1.0), 0.0)
    empty = counts <= 0
    mean[empty], var[empty], z[empty] = np.nan, np.nan, 0.0
    order = np.argsort(-np.abs(z), axis=1, kind="stable")
    rank = np.empty_like(order)
    rows = np.arange(len(z))[:, None]
    rank[rows, order] = np.arange(1, z.shape[1] + 1)[None, :]
    n = counts.sum()
    return Profiles(list(features), mean, np.sqrt(var), z, rank, np.asarray(pop_mean, dtype=np.float64), pop_std,
                    counts / n if n > 0 else counts)


def describe(features: list[str], z: np.ndarray, share: float, exemplars=None) -> str:
    """The cluster's (at most 3) most distinctive features with ``|z| >= 0.5``, and its share;
    then its most central rows' ids when ``exemplars`` is given."""
    order = np.argsort(-np.abs(z), kind="stable")[:TOP]
    parts = [f"{'high' if z[j] > 0 else 'low'} {features[j]} ({z[j]:+.1f} sd)" for j in order if abs(z[j]) >= MIN_Z]
    if not parts and len(features):
        parts = ["close to the population average on every feature"]
    text = ", ".join(parts + [f"{_pct(share)} of rows"])
    if exemplars:
        text += "; most central: " + ", ".join(str(e) for e in exemplars[:TOP])
    return text


def _pct(share: float) -> str:
    pct = 100.0 * float(share)
    return f"{pct:.0f}%" if pct >= 1 or pct == 0 else f"{pct:.1g}%"


def from_moments(n: np.ndarray, mean: np.ndarray, m2: np.ndarray, features: list[str]) -> Profiles:
    """Profiles of columns summarised per cluster as (count, mean, sum of squared deviations),
    each (k, c), counting each column's own valid values (``input.profile_columns``: a null, NaN
    or +-inf leaves the row out of that column only). The population figures are the clusters'
    merged (NaN for a column without any valid value)."""
    from clusterlake.kernels.stats import merge_mean_m2

    n, mean, m2 = (np.asarray(v, dtype=np.float64) for v in (n, mean, m2))
    pop = (n[0], mean[0], m2[0])
    for i in range(1, len(n)):
        pop = merge_mean_m2(pop, (n[i], mean[i], m2[i]))
    pn, pmean, pm2 = pop
    with np.errstate(invalid="ignore", divide="ignore"):
        pop_var = np.where(pn > 0, pm2 / np.where(pn > 0, pn, 1.0), 0.0)
    # compute() takes sums: the centred sum of squares of a cluster about the population mean
    sum_x = mean * n
    sum_sq_dx = m2 + n * (mean - pmean) ** 2
    p = compute(np.ones(len(n)), sum_x / np.where(n > 0, n, 1.0), sum_sq_dx / np.where(n > 0, n, 1.0), pmean,
                pop_var, features)
    p.mean[n <= 0], p.std[n <= 0], p.z[n <= 0] = np.nan, np.nan, 0.0
    p.pop_mean[pn <= 0], p.pop_std[pn <= 0] = np.nan, np.nan  # a column with no value at all
    return p


def combine(a: Profiles, b: Profiles) -> Profiles:
    """The features of ``a`` then ``b`` (same clusters; ``a``'s shares), ranks recomputed over both."""
    z = np.hstack([a.z, b.z])
    order = np.argsort(-np.abs(z), axis=1, kind="stable")
    rank = np.empty_like(order)
    rank[np.arange(len(z))[:, None], order] = np.arange(1, z.shape[1] + 1)[None, :]
    return Profiles(a.features + b.features, np.hstack([a.mean, b.mean]), np.hstack([a.std, b.std]), z, rank,
                    np.concatenate([a.pop_mean, b.pop_mean]), np.concatenate([a.pop_std, b.pop_std]), a.share)
