"""Quality metrics of a fitted clustering.

Exact on all rows, from per-cluster statistics (no O(n^2)): inertia, Calinski-Harabasz,
Davies-Bouldin (both with scikit-learn's definitions, labels = the assignment), cluster share
min/max, and ARI / NMI against the label column from the (label x cluster) contingency table.
The sampled silhouettes (scikit-learn's Euclidean definition, not Spark's squared one) are
:func:`clusterlake.algorithms.sample_passes.sampled_silhouettes`.
Runs on the driver over small arrays.
"""

from __future__ import annotations

import logging

import numpy as np

from clusterlake.algorithms.cluster_stats import ClusterStats
from clusterlake.io.contract.metrics import Metric  # noqa: F401  (re-exported)
from clusterlake.kernels.metrics import (
    adjusted_rand_from_contingency,
    calinski_harabasz_from_stats,
    davies_bouldin_from_stats,
    normalized_mutual_info_from_contingency,
    within_ss_from_center_moments,
)

log = logging.getLogger(__name__)


def full_metrics(stats: ClusterStats, centroids: np.ndarray, sum_dist_to_means: np.ndarray) -> list[Metric]:
    """Metrics computed exactly over all ``stats.n`` rows."""
    n = stats.n
    nonempty = stats.counts > 0
    means = stats.means_z
    overall = stats.sum_z.sum(axis=0) / n
    within = within_ss_from_center_moments(
        stats.counts[nonempty], stats.sum_sq_dist[nonempty], centroids[nonempty], means[nonempty]
    )
    k_eff = int(nonempty.sum())
    out = [
        Metric("full", "inertia", float(stats.sum_sq_dist.sum()), n),
        Metric("full", "n_clusters", float(k_eff), n),
        Metric("full", "min_cluster_share", float(stats.counts.min() / n), n),
        Metric("full", "max_cluster_share", float(stats.counts.max() / n), n),
        Metric("full", "mean_distance", float(stats.sum_dist.sum() / n), n),
    ]
    if 2 <= k_eff < n:
        out.append(Metric("full", "calinski_harabasz", float(calinski_harabasz_from_stats(
            stats.counts[nonempty], means[nonempty], overall, within)), n))
        out.append(Metric("full", "davies_bouldin", float(davies_bouldin_from_stats(
            means[nonempty], sum_dist_to_means[nonempty] / stats.counts[nonempty])), n))
    else:
        log.warning("%d non-empty clusters for %d rows: Calinski-Harabasz and Davies-Bouldin are undefined "
                    "(they need 2 <= clusters < rows)", k_eff, n)
    if stats.contingency:
        labels = sorted({lv for lv, _ in stats.contingency})
        li = {lv: i for i, lv in enumerate(labels)}
        C = np.zeros((len(labels), len(centroids)), dtype=np.int64)
        for (lv, ci), c in stats.contingency.items():
            C[li[lv], ci] += c
        C = C[:, C.sum(axis=0) > 0]
        out.append(Metric("full", "ari", float(adjusted_rand_from_contingency(C)), n))
        out.append(Metric("full", "nmi", float(normalized_mutual_info_from_contingency(C)), n))
    return out

