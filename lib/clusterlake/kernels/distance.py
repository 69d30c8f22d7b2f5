"""Nearest-centroid assignment kernel (pure numpy, no Spark).

The kernel is applied per partition / per Arrow batch by the Spark jobs, so its
result for a row must depend only on that row and on the centroids, never on
which other rows happen to share the batch (beyond floating-point round-off of
the BLAS matrix product used for ranking).
"""

import numpy as np

__all__ = ["assign"]


def _exact_dist(B, centroids, idx, buf):
    """Row-wise Euclidean distance between ``B[i]`` and ``centroids[idx[i]]``.

    Computed from explicit differences (no norm expansion), so the result has
    full relative precision even for points very close to their centroid.
    ``buf`` is scratch space of the shape of ``B``.
    """
    np.take(centroids, idx, axis=0, out=buf)
    np.subtract(B, buf, out=buf)
    return np.sqrt(np.einsum("ij,ij->i", buf, buf))


def assign(Z, centroids, block_rows=16384):
    """Nearest and second-nearest centroid of every row, by Euclidean distance.

    Candidates are ranked with the GEMM expansion ``||z||^2 - 2 z.c + ||c||^2``
    (the row-constant ``||z||^2`` dropped), in blocks of ``block_rows`` rows.
    The returned distances are recomputed exactly from the differences
    ``z - c`` (no cancellation), and the two best candidates are re-ordered on
    them (this fixes near-ties that the expansion could mis-rank). The one
    assignment rule (:mod:`clusterlake.kernels.assignment`) is built on this.

    Prior validation of data is assumed: ``Z`` and ``centroids`` are finite,
    2-D, with the same number of columns; ``centroids`` has at least one row.

    Parameters
    ----------
    Z : ndarray of shape (n, p), dtype float64 or float32
        Rows to assign. float32 input is converted to float64 one block at a
        time (all arithmetic is done in float64).
    centroids : ndarray of shape (k, p), dtype float64
        Cluster centres.
    block_rows : int, default=16384
        Number of rows ranked per GEMM. Peak extra memory is about
        ``block_rows * (k + 2 * p) * 8`` bytes. The result does not depend on
        it beyond round-off of the ranking product.

    Returns
    -------
    labels : ndarray of shape (n,), dtype int32
        Index of the nearest centroid; exact ties go to the lowest index.
    dist : ndarray of shape (n,), dtype float64
        Exact Euclidean distance to ``centroids[labels]``.
    second : ndarray of shape (n,), dtype int32
        Index of the second-nearest centroid, ``-1`` when ``k == 1``.
    second_dist : ndarray of shape (n,), dtype float64
        Exact Euclidean distance to ``centroids[second]``, ``nan`` when
        ``k == 1``.

    Notes
    -----
    Complexity: O(n k p) time (one GEMM per block) plus O(n p) for the exact
    distances; O(block_rows * (k + p)) extra memory besides the outputs.
    ``n == 0`` returns empty arrays.
    """
    Z = np.asarray(Z)  # no copy; float32 is converted per block below
    C = np.asarray(centroids, dtype=np.float64)
    n = Z.shape[0]
    block_rows = max(1, int(block_rows))
    out = (np.empty(n, dtype=np.int32), np.empty(n, dtype=np.float64),
           np.full(n, -1, dtype=np.int32), np.full(n, np.nan, dtype=np.float64))
    c_sq = np.einsum("ij,ij->i", C, C)
    # -2 C^T: scaling by a power of two is exact, so B @ CTm2 == -2 (B @ C^T).
    CTm2 = np.ascontiguousarray(C.T) * -2.0
    m_max = min(block_rows, n)
    # Scratch buffers reused across blocks (avoids page-faulting fresh allocations for every block).
    bufs = (np.empty((m_max, C.shape[0]), dtype=np.float64), np.empty((m_max, C.shape[1]), dtype=np.float64))
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        B = np.asarray(Z[start:stop], dtype=np.float64)
        _assign_block(B, C, CTm2, c_sq, bufs, [o[start:stop] for o in out])
    return out


def _assign_block(B, C, CTm2, c_sq, bufs, out):
    """:func:`assign` of the rows ``B`` (m, p) into the views ``out`` (labels, dist, second,
    second_dist), with the scratch buffers ``bufs`` (scores, differences)."""
    m, k = B.shape[0], C.shape[0]
    G = bufs[1][:m]
    # Ranking scores: -2 z.c + ||c||^2 (same order as squared distance).
    S = np.matmul(B, CTm2, out=bufs[0][:m])
    S += c_sq
    lab = np.argmin(S, axis=1)
    d1 = _exact_dist(B, C, lab, G)
    if k > 1:
        S[np.arange(m), lab] = np.inf
        sec = np.argmin(S, axis=1)
        d2 = _exact_dist(B, C, sec, G)
        # Re-order the two best candidates on the exact distances; on an
        # exact tie the lowest centroid index wins.
        swap = (d2 < d1) | ((d2 == d1) & (sec < lab))
        lab, sec = np.where(swap, sec, lab), np.where(swap, lab, sec)
        d1, d2 = np.where(swap, d2, d1), np.where(swap, d1, d2)
        out[2][:] = sec
        out[3][:] = d2
    out[0][:] = lab
    out[1][:] = d1
