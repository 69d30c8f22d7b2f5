"""Cluster-quality scores from aggregated statistics (pure numpy/scipy, no Spark).

The internal scores (Calinski-Harabasz, Davies-Bouldin) are computed *exactly*
from per-cluster statistics, so they can be evaluated on billions of rows after
one or two distributed aggregation passes:

1. :func:`clusterlake.kernels.stats.cluster_sums` -> counts and means;
2. :func:`clusterlake.kernels.stats.cluster_moments` with ``centers=means`` ->
   within-cluster SS and mean distance to the mean (or, with any other centers
   such as the model's centroids, combine with
   :func:`within_ss_from_center_moments` to save the second pass for CH).

The label-agreement scores (ARI, NMI) are computed from a dense contingency
table, itself the sum of per-partition tables. They reproduce
``sklearn.metrics.calinski_harabasz_score``, ``davies_bouldin_score``,
``adjusted_rand_score`` and ``normalized_mutual_info_score`` (arithmetic
average), including their special cases.
"""

import numpy as np
from scipy.spatial.distance import cdist

__all__ = [
    "calinski_harabasz_from_stats",
    "davies_bouldin_from_stats",
    "adjusted_rand_from_contingency",
    "normalized_mutual_info_from_contingency",
    "within_ss_from_center_moments",
    "silhouette",
]


def _check_number_of_labels(n_labels, n_samples):
    # Same rule and message as sklearn.metrics.cluster._unsupervised.
    if not 1 < n_labels < n_samples:
        raise ValueError(
            "Number of labels is %d. Valid values are 2 to n_samples - 1 (inclusive)"
            % n_labels
        )


def within_ss_from_center_moments(counts, sum_sq_dist_to_center, centers, means):
    """Exact within-cluster sum of squares around the means, from SS around other centers.

    For the ``n_j`` points ``x_i`` of cluster ``j`` with mean ``m_j`` and any
    point ``c_j``::

        sum_i ||x_i - c_j||^2 = sum_i ||x_i - m_j||^2 + n_j ||m_j - c_j||^2

    because the cross term ``2 (m_j - c_j) . sum_i (x_i - m_j)`` is zero. Hence
    ``W = sum_j (sum_sq_dist_j - n_j ||m_j - c_j||^2)``. This lets the SS be
    accumulated in the same pass as the means (against e.g. the model's
    centroids) instead of a second pass against the means.

    Prior validation of data is assumed: all arrays describe the same ``k``
    clusters and ``sum_sq_dist_to_center`` was computed against ``centers``.

    Parameters
    ----------
    counts : ndarray of shape (k,)
        Number of points per cluster.
    sum_sq_dist_to_center : ndarray of shape (k,)
        ``sum_i ||x_i - centers[j]||^2`` per cluster (e.g. the
        ``'sum_sq_dist'`` of :func:`~clusterlake.kernels.stats.cluster_moments`).
    centers : ndarray of shape (k, p)
        The centers the SS was accumulated against.
    means : ndarray of shape (k, p)
        Cluster means (rows of empty clusters are ignored and may be NaN).

    Returns
    -------
    within_ss : float
        ``sum_j sum_i ||x_i - m_j||^2`` over non-empty clusters. Each cluster's
        term is clipped at 0 to absorb round-off (it is >= 0 exactly).

    Notes
    -----
    Complexity: O(k p). The subtraction loses about
    ``eps * n_j ||m_j - c_j||^2`` of absolute precision, negligible when the
    centers are close to the means (e.g. converged k-means centroids).
    """
    counts = np.asarray(counts, dtype=np.float64)
    ssq = np.asarray(sum_sq_dist_to_center, dtype=np.float64)
    mask = counts > 0
    diff = np.asarray(means, dtype=np.float64)[mask] - np.asarray(centers, dtype=np.float64)[mask]
    shift = counts[mask] * np.einsum("ij,ij->i", diff, diff)
    return float(np.sum(np.maximum(ssq[mask] - shift, 0.0)))


def calinski_harabasz_from_stats(counts, means, overall_mean, within_ss):
    """Calinski-Harabasz score from per-cluster counts and means.

    Same definition as ``sklearn.metrics.calinski_harabasz_score``::

        B = sum_j n_j ||m_j - m||^2          (between-cluster dispersion)
        CH = B (n - k) / (W (k - 1))

    where ``W`` is ``within_ss`` and only clusters with ``n_j > 0`` count
    toward ``k``.

    Prior validation of data is assumed: ``means[j]`` is the mean of cluster
    ``j`` for every non-empty cluster and ``overall_mean`` the mean of all
    points.

    Parameters
    ----------
    counts : ndarray of shape (k,)
        Points per cluster (empty clusters are ignored).
    means : ndarray of shape (k, p)
        Cluster means (rows of empty clusters are ignored and may be NaN).
    overall_mean : ndarray of shape (p,)
        Mean of all points (``sum_j n_j m_j / n``).
    within_ss : float
        Total sum of squared distances of the points to their cluster mean
        (see :func:`within_ss_from_center_moments`).

    Returns
    -------
    score : float
        ``1.0`` when ``within_ss == 0`` (as scikit-learn).

    Raises
    ------
    ValueError
        If the number of non-empty clusters is not in ``[2, n - 1]`` (same
        message as scikit-learn).

    Notes
    -----
    Complexity: O(k p).
    """
    counts = np.asarray(counts, dtype=np.float64)
    mask = counts > 0
    n_samples = counts.sum()
    n_labels = int(mask.sum())
    _check_number_of_labels(n_labels, n_samples)
    diff = np.asarray(means, dtype=np.float64)[mask] - np.asarray(overall_mean, dtype=np.float64)
    extra_disp = float(np.sum(counts[mask] * np.einsum("ij,ij->i", diff, diff)))
    within_ss = float(within_ss)
    if within_ss <= 0.0:
        return 1.0
    return float(extra_disp * (n_samples - n_labels) / (within_ss * (n_labels - 1.0)))


def davies_bouldin_from_stats(means, mean_dist_to_mean):
    """Davies-Bouldin score from cluster means and mean intra-cluster distances.

    Same definition as ``sklearn.metrics.davies_bouldin_score``: with
    ``s_j`` the mean Euclidean distance of cluster ``j``'s points to its mean
    and ``d_ij = ||m_i - m_j||``, ``DB = mean_i max_{j != i} (s_i + s_j) / d_ij``.

    Prior validation of data is assumed: pass **non-empty clusters only**
    (e.g. ``means[counts > 0]``); ``mean_dist_to_mean[j]`` is
    ``sum_dist / count`` of :func:`~clusterlake.kernels.stats.cluster_moments`
    computed with ``centers=means``.

    Parameters
    ----------
    means : ndarray of shape (k, p)
        Means of the non-empty clusters.
    mean_dist_to_mean : ndarray of shape (k,)
        Mean distance of each cluster's points to its mean.

    Returns
    -------
    score : float
        ``0.0`` when all ``mean_dist_to_mean`` or all centroid distances are
        close to 0 (``np.isclose(., 0)``, i.e. ``<= 1e-8``), as scikit-learn.
        Pairs of coincident means (distance exactly 0) are skipped (their
        distance is treated as infinite), as scikit-learn.

    Raises
    ------
    ValueError
        If fewer than 2 clusters are given.

    Notes
    -----
    Complexity: O(k^2 p) time, O(k^2) memory. Centroid distances are exact
    (``scipy.spatial.distance.cdist``), whereas scikit-learn uses the norm
    expansion; results agree to round-off.
    """
    means = np.asarray(means, dtype=np.float64)
    return davies_bouldin_from_distances(cdist(means, means), mean_dist_to_mean)


def davies_bouldin_from_distances(centroid_distances, mean_dist_to_centre) -> float:
    """:func:`davies_bouldin_from_stats` from the representatives' pairwise distances under any
    distance (k-medoids: its medoids and its members' mean distance to them, both under the
    model's distance; the same definition with ``d_ij`` that distance)."""
    centroid_distances = np.array(centroid_distances, dtype=np.float64)
    intra_dists = np.asarray(mean_dist_to_centre, dtype=np.float64)
    if centroid_distances.shape[0] < 2:
        raise ValueError(
            "Number of labels is %d. Valid values are 2 to n_samples - 1 (inclusive)"
            % centroid_distances.shape[0]
        )
    if np.all(np.isclose(intra_dists, 0.0)) or np.all(np.isclose(centroid_distances, 0.0)):
        return 0.0
    np.fill_diagonal(centroid_distances, np.inf)  # (computed distances may leave round-off there)
    centroid_distances[centroid_distances == 0] = np.inf
    combined_intra_dists = intra_dists[:, None] + intra_dists
    scores = np.max(combined_intra_dists / centroid_distances, axis=1)
    return float(np.mean(scores))


def _nonempty_contingency(C):
    """Drop all-zero rows and columns (classes / clusters without any point)."""
    C = np.asarray(C)
    if C.ndim != 2:
        raise ValueError("contingency table must be 2-D, got shape %r" % (C.shape,))
    C = C.astype(np.int64, copy=False)
    return C[C.sum(axis=1) > 0][:, C.sum(axis=0) > 0]


def adjusted_rand_from_contingency(C):
    """Adjusted Rand index from a contingency table.

    Equals ``sklearn.metrics.adjusted_rand_score(labels_true, labels_pred)``
    for the label arrays whose ``contingency_matrix`` is ``C``. The pair
    confusion counts are computed with Python integers, so there is no int64
    overflow of ``n^2`` even for billions of points.

    Prior validation of data is assumed: ``C`` holds non-negative integer
    counts.

    Parameters
    ----------
    C : array-like of shape (n_classes, n_clusters), integer
        ``C[i, j]`` = number of points of true class ``i`` in cluster ``j``.
        All-zero rows/columns are allowed and have no effect.

    Returns
    -------
    ari : float
        ``1.0`` when the pair confusion has no disagreement (``fn == fp ==
        0``), which covers empty data, identical partitions and both
        labelings being a single cluster (scikit-learn's special case).

    Notes
    -----
    Complexity: O(n_classes * n_clusters).
    """
    C = _nonempty_contingency(C)
    nz = C[C != 0].astype(object)
    n_samples = int(nz.sum()) if nz.size else 0
    sum_squares = int((nz * nz).sum()) if nz.size else 0
    n_c = C.sum(axis=1).astype(object)
    n_k = C.sum(axis=0).astype(object)
    sum_sq_rows = int((n_c * n_c).sum()) if n_c.size else 0
    sum_sq_cols = int((n_k * n_k).sum()) if n_k.size else 0
    # sklearn.metrics.cluster.pair_confusion_matrix, in exact integers.
    tp = sum_squares - n_samples
    fp = sum_sq_cols - sum_squares
    fn = sum_sq_rows - sum_squares
    tn = n_samples * n_samples - fp - fn - sum_squares
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def _entropy_from_counts(pi):
    # sklearn.metrics.cluster._supervised._entropy on the class counts.
    pi = np.asarray(pi, dtype=np.float64)
    pi = pi[pi > 0]
    if pi.size == 1:
        return 0.0
    pi_sum = np.sum(pi)
    return float(-np.sum((pi / pi_sum) * (np.log(pi) - np.log(pi_sum))))


def _mutual_info_from_contingency(C):
    # sklearn.metrics.mutual_info_score(contingency=C) with log(pi * pj)
    # computed as log(pi) + log(pj) so the int64 product cannot overflow.
    nzx, nzy = np.nonzero(C)
    nz_val = C[nzx, nzy].astype(np.float64)
    pi = C.sum(axis=1).astype(np.float64)
    pj = C.sum(axis=0).astype(np.float64)
    if pi.size == 1 or pj.size == 1:
        return 0.0
    contingency_sum = pi.sum()
    log_sum = np.log(contingency_sum)
    log_contingency_nm = np.log(nz_val)
    contingency_nm = nz_val / contingency_sum
    log_outer = -(np.log(pi)[nzx] + np.log(pj)[nzy]) + log_sum + log_sum
    mi = contingency_nm * (log_contingency_nm - log_sum) + contingency_nm * log_outer
    mi = np.where(np.abs(mi) < np.finfo(mi.dtype).eps, 0.0, mi)
    return float(np.clip(mi.sum(), 0.0, None))


def normalized_mutual_info_from_contingency(C):
    """Normalized mutual information (arithmetic mean normalisation) from a contingency table.

    Equals ``sklearn.metrics.normalized_mutual_info_score(labels_true,
    labels_pred)`` (default ``average_method='arithmetic'``) for the label
    arrays whose ``contingency_matrix`` is ``C``: ``MI / ((H(true) +
    H(pred)) / 2)`` with natural logarithms.

    Prior validation of data is assumed: ``C`` holds non-negative integer
    counts.

    Parameters
    ----------
    C : array-like of shape (n_classes, n_clusters), integer
        ``C[i, j]`` = number of points of true class ``i`` in cluster ``j``.
        All-zero rows/columns (classes/clusters without points) are dropped
        first, as they do not exist for scikit-learn.

    Returns
    -------
    nmi : float
        scikit-learn's special cases: ``1.0`` when both labelings have a
        single (non-empty) cluster or there is no data at all; ``0.0`` when
        the mutual information is 0 otherwise (e.g. only one side is a single
        cluster).

    Notes
    -----
    Complexity: O(n_classes * n_clusters).
    """
    C = _nonempty_contingency(C)
    n_classes, n_clusters = C.shape
    if n_classes == n_clusters == 1 or n_classes == n_clusters == 0:
        return 1.0
    mi = _mutual_info_from_contingency(C)
    if mi == 0:
        return 0.0
    h_true = _entropy_from_counts(C.sum(axis=1))
    h_pred = _entropy_from_counts(C.sum(axis=0))
    normalizer = np.mean([h_true, h_pred])
    return float(mi / normalizer)


def silhouette(X, labels):
    """Mean silhouette of ``labels`` on the rows ``X`` (scikit-learn's Euclidean definition), or
    None when it is undefined (fewer than 2 clusters, or as many clusters as rows).

    Exact and O(n^2): meant for a sample. Undefined is None rather than scikit-learn's error so
    that a degenerate sample (one cluster drawn) skips the metric instead of failing the run.
    """
    from clusterlake.kernels.silhouette import silhouette_scores

    labels = np.asarray(labels)
    uniq, codes = np.unique(labels, return_inverse=True)
    if len(uniq) < 2 or len(uniq) >= len(labels):
        return None
    return float(silhouette_scores(np.asarray(X, dtype=np.float64), [codes])[0])
