"""Mini-batch K-means on the engine (Sculley, 2010): for data too large for many full passes.

Each step, every task draws its share of ``batch_size`` rows uniformly (with replacement, as
scikit-learn draws its batches) and sends the k x d statistics of their nearest centres; the
driver moves every centre towards its batch rows' mean with the learning rate 1 / its weight seen
so far (:func:`~clusterlake.kernels.kmeans.minibatch_update`, scikit-learn's step). A step costs
``batch_size`` rows, not ``n``: the fit touches a few epochs' worth of rows at most, then one full
pass measures the sizes and inertia at the centres it returns (as Lloyd's last pass does) and
re-seeds a cluster no row chose from the farthest rows.

Stopping follows scikit-learn's: after ``max_iter`` epochs (``max_iter * n / batch_size`` steps),
when the smoothed batch inertia (its exponentially weighted average over about one epoch of steps,
from the second step on) has not improved for ``MAX_NO_IMPROVEMENT`` steps, or when the summed
squared centre shift of a step is at most ``tol_abs``. (``MiniBatchKMeans`` leaves that last rule
off by default, ``tol=0``; the job keeps ``kmeans.tol``, 1e-4 relative by default, whose shift
rarely gets that small in a mini-batch step.) The quality it costs against full Lloyd is measured
with ``scripts/bench_embeddings.py --batch-size`` in docs/scaling.md.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from clusterlake.algorithms.kmeans_engine import MAX_FAR_ROWS, KMeansStage, LloydFit
from clusterlake.kernels import kmeans as K

log = logging.getLogger(__name__)

MAX_NO_IMPROVEMENT = 10
"""Steps without a lower smoothed batch inertia before the fit stops (scikit-learn's default)."""


def batch_shares(task_rows: list[int], batch_size: int) -> list[dict]:
    """Each task's rows of a batch, proportional to the rows it holds, summing to ``batch_size``
    (largest remainders), as ``per_task`` params of the ``minibatch_stats`` command."""
    n = sum(task_rows)
    if n == 0:
        return [{"rows": 0} for _ in task_rows]
    exact = np.asarray(task_rows, dtype=np.float64) * batch_size / n
    share = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - share), kind="stable")[: batch_size - int(share.sum())]:
        share[i] += 1
    return [{"rows": int(s)} for s in share]


def minibatch(bc: KMeansStage, C0: np.ndarray, batch_size: int, max_iter: int, tol_abs: float, seed: int,
              spherical: bool = False) -> LloydFit:
    """Mini-batch K-means from ``C0`` on the stage's rows (``max_iter`` in epochs). ``n_iter`` of
    the result counts steps; its history holds each step's batch inertia per unit weight."""
    C = np.array(C0, dtype=np.float64)
    n = int(sum(bc.rows))
    batch = int(min(batch_size, n))
    steps = max(1, (int(max_iter) * n) // batch)
    alpha = min(1.0, 2.0 * batch / (n + 1))  # scikit-learn's smoothing of the batch inertia
    weight_sums = np.zeros(len(C))
    ewa, best, since_best, converged, step = None, np.inf, 0, False, 0
    times, hist = [], []
    for step in range(1, steps + 1):
        t0 = time.time()
        ps = bc.stats(C, op="minibatch_stats", per_task=lambda stage: batch_shares(stage.rows, batch),
                      seed=int(seed), step=step)
        C_new, weight_sums = K.minibatch_update(C, weight_sums, ps.sums, ps.counts, spherical)
        shift = K.center_shift_sq(C, C_new)
        C = C_new
        inertia = float(ps.inertia) / max(float(ps.counts.sum()), 1e-300)
        times.append(time.time() - t0)
        hist.append({"iteration": step, "inertia": inertia, "shift": float(shift)})
        if step == 1:  # the first batch's inertia is the seeding's, not the fit's (scikit-learn skips it too)
            continue
        ewa = inertia if ewa is None else ewa * (1 - alpha) + inertia * alpha
        if tol_abs > 0 and shift <= tol_abs:
            converged = True
            log.info("mini-batch: converged at step %d (centre shift %.3g <= %.3g)", step, shift, tol_abs)
            break
        if ewa < best:
            best, since_best = ewa, 0
        else:
            since_best += 1
        if since_best >= MAX_NO_IMPROVEMENT:
            converged = True
            log.info("mini-batch: stopped at step %d: the smoothed batch inertia has not improved for %d steps",
                     step, MAX_NO_IMPROVEMENT)
            break
    C, final, repaired = _final_pass(bc, C)
    log.info("mini-batch: %d steps of %d rows (%.3f s each): %.2f epochs' worth of rows (at most %d)",
             step, batch, float(np.median(times)) if times else 0.0, step * batch / max(n, 1), max_iter)
    return LloydFit(C, final.counts, float(final.inertia), step, converged, repaired, times, hist)


def _final_pass(bc: KMeansStage, C: np.ndarray):
    """The sizes and inertia at ``C`` over every row; a centre no row chose is re-seeded from
    the farthest rows (and measured again)."""
    final = bc.stats(C, n_far=min(len(C), MAX_FAR_ROWS))
    empty = final.counts <= 0
    if not empty.any():
        return C, final, 0
    C, fixed = K.repair_empty(C, empty, final.far_points, final.far_d2)
    log.info("mini-batch: re-seeded %d clusters no row chose from the farthest rows", fixed)
    return C, bc.stats(C), fixed
