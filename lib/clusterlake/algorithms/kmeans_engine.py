"""K-means on the engine: the task side (:class:`KMeansWorker`) and the drivers.

:class:`KMeansWorker` is the k-means algorithm's :class:`~clusterlake.engine.worker.Worker`:
every barrier task holds its rows as one float32 block (model space, optionally L2-normalised for
cosine) and answers these commands; :class:`KMeansStage` is the
:class:`~clusterlake.engine.stage.BarrierStage` serving it. The drivers below run on the driver and
send the commands:

* :func:`init_kmeans_parallel` -- k-means|| (Bahmani et al. 2012): a few rounds that oversample
  ~``l`` rows each with probability proportional to w * D^2, then a weighted k-means++ recluster
  (plus local Lloyd) of the candidates on the driver, the same recipe as Spark MLlib's init;
* :func:`init_kmeans_plusplus_sample` -- greedy k-means++ on a uniform sample;
* :func:`init_random` -- k distinct random rows;
* :func:`lloyd` -- Lloyd iterations, one pass each returning k x d sums, counts and inertia;
  empty clusters re-seeded from the globally farthest rows, so exactly k centres come back;
* :func:`bisecting` -- bisecting K-means (split the leaf with the largest SSE, like
  scikit-learn's ``bisecting_strategy="biggest_inertia"``), returning every centre's parent.

Determinism: replies are reduced in partition order and every random draw is seeded from the
fit's seed (and the partition number), so a fixed seed and partitioning give the same result.

Lost tasks: ``kpar_update`` (k-means|| distances) and ``bisect_split`` (the rows' leaves) build
state on the tasks, so they are ``stateful`` commands, replayed by the stage after a loss; the
driver holds everything else (the centres, the split tree).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from clusterlake.engine.blocks import Block, BlockSource
from clusterlake.engine.stage import BarrierStage
from clusterlake.engine.worker import Worker, command
from clusterlake.faults import pause_point
from clusterlake.kernels import kmeans as K

log = logging.getLogger(__name__)


class FewerClustersWarning(UserWarning):
    """The fit could not find k distinct centres (the data has fewer distinct points than k)."""


# ----------------------------------------------------------------------------------------------
# the task side


def _stats_reply(ps: "K.PartialStats") -> dict:
    return {"inertia": float(ps.inertia), "sums": ps.sums, "counts": ps.counts,
            "far_points": ps.far_points, "far_d2": ps.far_d2}


class KMeansWorker(Worker):
    """Executes the k-means drivers' commands against one task's block. Runs in a barrier task."""

    def __init__(self, block: Block):
        super().__init__(block)
        X = block.X
        self.x_sq = K.row_sq_norms(X) if X.size else np.zeros(0)
        self.d2: Optional[np.ndarray] = None  # k-means|| distances to the candidates so far
        self.near: Optional[np.ndarray] = None  # k-means||: each row's nearest candidate so far (int32)
        self.leaf = np.zeros(len(X), dtype=np.int32)  # bisecting: the leaf of every row
        self._sub: Optional[tuple] = None  # bisecting: (leaf, rows, X, w, x_sq) of the leaf being split

    @property
    def n(self) -> int:
        return len(self.X)

    def _rows(self, idx) -> dict:
        idx = np.asarray(idx, dtype=np.int64)
        return {"n": int(len(idx)), "x": self.X[idx].astype(np.float64), "w": self.weights(idx)}

    def _leaf_block(self, leaf: int):
        if self._sub is None or self._sub[0] != leaf:
            rows = np.flatnonzero(self.leaf == leaf)
            if len(rows) == self.n:  # the root: the block itself, not a copy of it (it may be spilled)
                Xs = self.X
            else:  # a copy within the task's budget (on disk past it), filled block by block
                Xs = self.block.memory.empty((len(rows), self.X.shape[1]), self.X.dtype, "leaf")
                for s0 in range(0, len(rows), 65_536):
                    Xs[s0:s0 + 65_536] = self.X[rows[s0:s0 + 65_536]]
            self._sub = (leaf, rows, Xs, None if self.w is None else self.w[rows], self.x_sq[rows])
        return self._sub

    @command("info")
    def info(self) -> dict:
        """Row count, total weight, weighted column sums and sums of squares."""
        n = self.n
        d = self.X.shape[1] if self.X.size else 0
        w = self.weights()
        sx, sxx = np.zeros(d), np.zeros(d)
        for s0 in range(0, n, 65536):  # float64 in chunks: no full-size copy of the block
            Xd = self.X[s0:s0 + 65536].astype(np.float64)
            ws = w[s0:s0 + 65536]
            sx += ws @ Xd
            sxx += ws @ (Xd * Xd)
        return {"n": int(n), "sum_w": float(w.sum()), "sum_wx": sx, "sum_wxx": sxx}

    @command("stats")
    def stats(self, centers: np.ndarray, n_far: int = 0) -> dict:
        """One Lloyd pass: per-centre sums, counts, inertia and the farthest rows."""
        if not self.n:
            return _stats_reply(K.PartialStats.zeros(*centers.shape))
        return _stats_reply(K.partial_stats(self.X, centers, self.w, self.x_sq, n_far=int(n_far)))

    @command("minibatch_stats")
    def minibatch_stats(self, centers: np.ndarray, rows: int, seed: int, step: int, n_far: int = 0) -> dict:
        """A mini-batch step's statistics: ``rows`` rows drawn uniformly with replacement (as
        scikit-learn draws its batches), seeded by the step and the task (no far rows: ``n_far``
        is ignored; the final full pass repairs empty clusters)."""
        if not self.n or rows <= 0:
            return _stats_reply(K.PartialStats.zeros(*centers.shape))
        idx = np.sort(np.random.default_rng([int(seed), int(step), self.partition]).integers(0, self.n, int(rows)))
        w = None if self.w is None else self.w[idx]
        return _stats_reply(K.partial_stats(np.ascontiguousarray(self.X[idx]), centers, w, self.x_sq[idx]))

    @command("pick")
    def pick(self, u: float) -> dict:
        """The row where the cumulative weight passes ``u``."""
        if not self.n:
            return self._rows([])
        cw = np.cumsum(self.weights())
        return self._rows([int(min(np.searchsorted(cw, float(u), side="right"), self.n - 1))])

    @command("sample")
    def sample(self, fraction: float, seed: int, leaf: Optional[int] = None) -> dict:
        """A Bernoulli sample of the rows (of one bisecting leaf's rows when ``leaf`` is given)."""
        rows = np.arange(self.n) if leaf is None else np.flatnonzero(self.leaf == int(leaf))
        return self._rows(rows[self.rng(seed).random(len(rows)) < float(fraction)])

    @command("kpar_update", stateful=True)
    def kpar_update(self, centers: np.ndarray, offset: int = 0) -> dict:
        """k-means||: fold new candidates (numbered from ``offset`` among all so far) into every
        row's distance and nearest candidate; the cost phi."""
        if self.n:
            lab, d2 = K.nearest(self.X, centers, self.x_sq)
            lab = lab.astype(np.int32) + np.int32(offset)
            if self.d2 is None or offset == 0:  # a new seeding (an earlier one cut short is dropped)
                self.d2, self.near = d2, lab
            else:  # strictly nearer: a tie keeps the earlier candidate
                better = d2 < self.d2
                self.d2 = np.where(better, d2, self.d2)
                self.near[better] = lab[better]
        return {"phi": float(self.weights() @ self.d2) if self.n else 0.0}

    @command("kpar_weights")
    def kpar_weights(self, m: int) -> dict:
        """k-means||: the weight of the rows nearest to each of the ``m`` candidates, from the
        rounds' own nearest candidates (no pass over the rows)."""
        if not self.n:
            return {"weights": np.zeros(int(m))}
        return {"weights": np.bincount(self.near, weights=self.weights(), minlength=int(m)).astype(np.float64)}

    @command("kpar_sample")
    def kpar_sample(self, l: float, phi: float, seed: int) -> dict:  # noqa: E741 (the paper's name)
        """k-means||: oversample rows with probability proportional to w * D^2."""
        if not self.n:
            return self._rows([])
        idx = K.kmeans_parallel_sample(self.X, self.d2, self.weights(), float(l), float(phi), self.rng(seed))
        return self._rows(idx)

    @command("forget_d2")
    def forget_d2(self) -> None:
        """k-means|| is over: free the n distances and nearest candidates."""
        self.d2 = self.near = None

    @command("bisect_stats")
    def bisect_stats(self, centers: np.ndarray, leaf: int, n_far: int = 0) -> dict:
        """A Lloyd pass over one leaf's rows."""
        _, _, Xs, ws, xs = self._leaf_block(int(leaf))
        if not len(Xs):
            return _stats_reply(K.PartialStats.zeros(*centers.shape))
        return _stats_reply(K.partial_stats(Xs, centers, ws, xs, n_far=int(n_far)))

    @command("bisect_split", stateful=True)
    def bisect_split(self, centers: np.ndarray, leaf: int, left: int, right: int) -> None:
        """Move a leaf's rows to its two children (the nearer of ``centers``)."""
        _, rows, Xs, _, xs = self._leaf_block(int(leaf))
        if len(rows):
            lab, _ = K.nearest(Xs, centers, xs)
            self.leaf[rows] = np.where(lab == 0, int(left), int(right))
        self._sub = None
        self.block.memory.release("leaf")


class KMeansStage(BarrierStage):
    """The barrier stage serving :class:`KMeansWorker`, with the k-means drivers' reductions.

    Runs on the driver; see :class:`~clusterlake.engine.stage.BarrierStage` for the stage's life
    and its recovery from lost tasks.
    """

    def __init__(self, spark, df, source: BlockSource, num_tasks: Optional[int] = None,
                 worker: type[KMeansWorker] = KMeansWorker, **kw):
        super().__init__(spark, df, source, worker, num_tasks=num_tasks, **kw)

    def stats(self, C: np.ndarray, n_far: int = 0, op: str = "stats", **params) -> "K.PartialStats":
        """Sum the tasks' partial statistics for centres ``C`` (in partition order)."""
        total = K.PartialStats.zeros(*C.shape)
        for head, a in self.call(op, {"centers": np.asarray(C, np.float64)}, n_far=n_far, **params):
            total = total.merge(K.PartialStats(a["sums"], a["counts"], head["inertia"], a["far_points"], a["far_d2"]))
        return total

    def gather_rows(self, op: str, **params) -> tuple[np.ndarray, np.ndarray]:
        """The rows (and weights) the tasks return for ``op``, concatenated in partition order."""
        xs, ws = [], []
        for _, a in self.call(op, **params):
            if len(a["x"]):
                xs.append(a["x"])
                ws.append(a["w"])
        if not xs:
            return np.empty((0, 0)), np.empty(0)
        return np.concatenate(xs), np.concatenate(ws)


@dataclass
class DataInfo:
    n: int
    sum_w: float
    mean: np.ndarray
    var: np.ndarray  # weighted, per column
    task_sum_w: list[float] = field(default_factory=list)


def data_info(bc: KMeansStage) -> DataInfo:
    """One pass: row count, total weight, weighted column means and variances."""
    replies = bc.call("info")
    n = sum(h["n"] for h, _ in replies)
    sw = sum(h["sum_w"] for h, _ in replies)
    sx = sum(a["sum_wx"] for h, a in replies if h["n"])  # an empty partition does not know d
    sxx = sum(a["sum_wxx"] for h, a in replies if h["n"])
    mean = sx / sw if sw else np.zeros_like(sx)
    var = np.maximum(sxx / sw - mean * mean, 0.0) if sw else np.zeros_like(sx)
    bc.task_sum_w = [float(h["sum_w"]) for h, _ in replies]
    return DataInfo(int(n), float(sw), mean, var, list(bc.task_sum_w))


# ----------------------------------------------------------------------------------------------
# initialisation


def _pick(bc: KMeansStage, rng: np.random.Generator) -> np.ndarray:
    """One row drawn with probability proportional to its weight."""
    u = rng.random()
    chosen = {}

    def per_task(cluster: KMeansStage) -> list[dict]:  # again after a recovery: the layout may differ
        sums_w = cluster.task_sum_w
        cum = np.cumsum(sums_w)
        v = u * float(cum[-1])
        t = int(min(np.searchsorted(cum, v, side="right"), len(cum) - 1))
        chosen["t"] = t
        v_local = v - (cum[t - 1] if t else 0.0)
        return [{"u": v_local} if i == t else {"u": 0.0} for i in range(cluster.n_tasks)]

    replies = bc.call("pick", per_task=per_task)
    return replies[chosen["t"]][1]["x"][0]


def init_random(bc: KMeansStage, k: int, info: DataInfo, seed: int) -> np.ndarray:
    """k distinct rows chosen uniformly (from a sample of ~20 k rows)."""
    frac = min(1.0, 20.0 * k / max(info.n, 1))
    X, _ = bc.gather_rows("sample", fraction=frac, seed=seed)
    X = np.unique(X, axis=0) if len(X) else X
    rng = np.random.default_rng(seed)
    if len(X) < k:
        X, _ = bc.gather_rows("sample", fraction=1.0, seed=seed)
        X = np.unique(X, axis=0)
    idx = rng.choice(len(X), size=min(k, len(X)), replace=False)
    return X[np.sort(idx)]


def init_kmeans_plusplus_sample(bc: KMeansStage, k: int, info: DataInfo, seed: int,
                                sample_size: int = 200_000) -> np.ndarray:
    """Greedy (weighted) k-means++ on a uniform sample of about ``sample_size`` rows (driver)."""
    frac = min(1.0, sample_size / max(info.n, 1))
    X, w = bc.gather_rows("sample", fraction=frac, seed=seed)
    if len(X) < k:
        X, w = bc.gather_rows("sample", fraction=1.0, seed=seed)
    C, _ = K.kmeans_plusplus(X, k, weights=w, random_state=seed)
    return C


def init_kmeans_parallel(bc: KMeansStage, k: int, info: DataInfo, seed: int, steps: int = 2,
                         oversampling: float = 2.0, max_candidates: int = 100_000,
                         restarts: int = 10) -> np.ndarray:
    """k-means|| (Bahmani et al. 2012): ``steps`` rounds oversampling ~``oversampling * k`` rows
    each (probability proportional to w * D^2), then the candidates, weighted by the weight of
    the rows nearest to each, are reclustered on the driver: weighted greedy k-means++ and Lloyd,
    ``restarts`` times, keeping the lowest weighted inertia. (MLlib reclusters once; on blobs a
    single recluster lands in a visibly worse optimum for some seeds, ten restarts on a few
    hundred candidates cost milliseconds -- see the README's performance section.)

    Passes over the data: 2 per round + 1 (each row's nearest candidate is kept through the
    rounds, so the candidates' weights cost no pass). Collected: the candidates (about
    ``1 + steps * oversampling * k`` rows).
    """
    rng = np.random.default_rng(seed)
    first = _pick(bc, rng)[None, :]
    cands = [first]
    phi = sum(h["phi"] for h, _ in bc.call("kpar_update", {"centers": first}, offset=0))
    l = oversampling * k
    for r in range(steps):
        if phi <= 0:
            break
        new, _ = bc.gather_rows("kpar_sample", l=l, phi=phi, seed=seed * 1000 + r + 1)
        if not len(new):
            continue
        offset = sum(len(c) for c in cands)
        cands.append(new)
        phi = sum(h["phi"] for h, _ in bc.call("kpar_update", {"centers": new}, offset=offset))
        if offset + len(new) > max_candidates:
            log.warning("k-means|| stopped after round %d: %d candidates", r + 1, offset + len(new))
            break
    # every row's nearest candidate is known from the rounds: the weights need no pass of their own
    drawn = np.concatenate(cands)
    C, inverse = np.unique(drawn, axis=0, return_inverse=True)
    per_drawn = sum(a["weights"] for _, a in bc.call("kpar_weights", m=len(drawn)))
    weights = np.bincount(np.ravel(inverse), weights=per_drawn, minlength=len(C))
    bc.call("forget_d2")
    bc.forget("kpar_update")  # a recovery from here on need not rebuild the distances
    log.info("k-means||: %d candidates from %d rounds", len(C), len(cands) - 1)
    if len(C) <= k:
        if len(C) < k:  # top up with uniformly drawn rows
            extra = init_random(bc, k, info, seed + 7)
            C = np.unique(np.concatenate([C, extra]), axis=0)[: max(k, len(C))]
            if len(C) > k:
                C = C[:k]
        return C
    keep = weights > 0
    return _recluster(C[keep], weights[keep], k, seed, restarts, rng)


def _recluster(C: np.ndarray, weights: np.ndarray, k: int, seed: int, restarts: int,
               rng: np.random.Generator) -> np.ndarray:
    """The k-means|| candidates (weighted) reclustered into ``k`` centres on the driver, within
    :data:`RECLUSTER_FLOPS`: the best of ``restarts`` weighted k-means++ + Lloyd runs."""
    if len(C) <= k:
        return C
    restarts, iters, m = recluster_budget(len(C), k, C.shape[1], restarts)
    if m < len(C):  # too many candidates for the budget: a weighted draw of them
        pick = np.sort(rng.choice(len(C), size=m, replace=False, p=weights / weights.sum()))
        C, weights = C[pick], weights[pick]
    best = None
    for r in range(restarts):
        C0, _ = K.kmeans_plusplus(C, k, weights=weights, random_state=seed * 7919 + r)
        fit_r = K.lloyd(C, C0, weights=weights, max_iter=iters, tol=1e-6)
        if best is None or fit_r.inertia < best.inertia:
            best = fit_r
    return best.centers


RECLUSTER_FLOPS = 2e11
"""The driver's budget for reclustering the k-means|| candidates (~4 s of BLAS on 2 cores)."""


def recluster_budget(m: int, k: int, d: int, restarts: int, max_iter: int = 50,
                     min_iter: int = 10) -> tuple[int, int, int]:
    """(restarts, Lloyd iterations, candidates kept) for reclustering ``m`` candidates of ``d``
    dimensions into ``k``, within :data:`RECLUSTER_FLOPS`: ``restarts`` x ``max_iter`` on every
    candidate while that fits (every case up to k ~ 100 on 100 dimensions), then fewer restarts,
    then fewer iterations down to ``min_iter``, then a weighted draw of the candidates (never fewer
    than 2k). One Lloyd iteration costs ~2 m k d flops and k-means++ about as much: k=1,000 on
    384 dimensions (~10,000 candidates) would otherwise take ~80 s per restart."""
    per_iter = 2.0 * m * k * d
    restarts = max(1, restarts)
    fit = int(RECLUSTER_FLOPS // (per_iter * (max_iter + 1)))
    if fit >= 1:
        chosen = (min(restarts, fit), max_iter, m)
    elif RECLUSTER_FLOPS // per_iter - 1 >= min_iter:
        chosen = (1, int(min(max_iter, RECLUSTER_FLOPS // per_iter - 1)), m)
    else:
        keep = int(RECLUSTER_FLOPS // (2.0 * k * d * (min_iter + 1)))
        chosen = (1, min_iter, int(min(m, max(2 * k, keep))))
    if chosen != (restarts, max_iter, m):
        log.info("k-means||: %d candidates x k=%d x %d dimensions: recluster %d of them with %d restart(s) of up "
                 "to %d iterations (budget %.0e flops)", m, k, d, chosen[2], chosen[0], chosen[1], RECLUSTER_FLOPS)
    return chosen


# ----------------------------------------------------------------------------------------------
# Lloyd


@dataclass
class LloydFit:
    centers: np.ndarray
    counts: np.ndarray  # weighted sizes at the final centres
    inertia: float  # at the final centres
    n_iter: int
    converged: bool
    n_repaired: int
    iter_seconds: list[float] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)


MAX_FAR_ROWS = 256
"""Each task's farthest rows shipped per iteration to re-seed empty clusters: k of them at most,
and no more than this (k=5,000 on 1,536 dimensions would ship 61 MB per task and iteration);
more empty clusters than that are re-seeded over the next iterations (the fit does not stop while
one is empty)."""


def lloyd(bc: KMeansStage, C0: np.ndarray, max_iter: int, tol_abs: float, spherical: bool = False,
          op: str = "stats", label: str = "kmeans", **params) -> LloydFit:
    """Distributed Lloyd from ``C0``: one pass per iteration (k x d statistics collected).

    Stops when the summed squared centre shift is at most ``tol_abs`` (scikit-learn's rule; an
    unchanged assignment gives a zero shift) or after ``max_iter`` iterations. Empty clusters are
    re-seeded from the farthest rows of the whole data. A last pass computes the sizes and
    inertia at the returned centres.
    """
    C = np.array(C0, dtype=np.float64)
    k = len(C)
    n_far = min(k, MAX_FAR_ROWS)
    converged, repaired, it = False, 0, 0
    times, hist = [], []
    for it in range(1, max_iter + 1):
        pause_point("engine.lloyd", label=label, iteration=it, tasks=bc.coord.tasks)
        t0 = time.time()
        ps = bc.stats(C, n_far=n_far, op=op, **params)
        C_new, empty = K.centers_from_stats(ps.sums, ps.counts, C, spherical=spherical)
        if empty.any():
            C_new, fixed = K.repair_empty(C_new, empty, ps.far_points, ps.far_d2)
            repaired += fixed
            log.info("%s iteration %d: re-seeded %d empty clusters from the farthest rows", label, it, fixed)
        shift = K.center_shift_sq(C, C_new)
        C = C_new
        times.append(time.time() - t0)
        hist.append({"iteration": it, "inertia": float(ps.inertia), "shift": float(shift)})
        log.debug("%s iteration %d: inertia %.6g, shift %.3g, %.3f s", label, it, ps.inertia, shift, times[-1])
        if shift <= tol_abs and not empty.any():
            converged = True
            break
    final = bc.stats(C, n_far=0, op=op, **params)
    return LloydFit(C, final.counts, float(final.inertia), it, converged, repaired, times, hist)


# ----------------------------------------------------------------------------------------------
# bisecting


@dataclass
class BisectFit:
    centers: np.ndarray  # (k, d) leaves
    parents: np.ndarray  # (k,) int: index into ``tree_centers`` of each leaf's parent, -1 for the root
    tree_centers: np.ndarray  # (2k - 1, d): every node, root first; leaves are tree_centers[leaf_nodes]
    tree_parents: np.ndarray  # (2k - 1,) parent node of every node (-1 for the root)
    leaf_nodes: np.ndarray  # (k,) node ids of the leaves, in the order of ``centers``
    counts: np.ndarray
    inertia: float
    n_iter: int  # total Lloyd iterations over all splits


def bisecting(bc: KMeansStage, k: int, info: DataInfo, max_iter: int, tol_abs: float, seed: int,
              spherical: bool = False, sample_size: int = 20_000) -> BisectFit:
    """Bisecting K-means: start with one cluster, repeatedly split the leaf with the largest SSE
    in two (2-means++ on a sample of that leaf, then distributed Lloyd on its rows), until k
    leaves. Every split costs a handful of passes over the leaf's rows only."""
    root = info.mean.copy()
    if spherical:
        nrm = np.linalg.norm(root)
        root = root / nrm if nrm > 0 else root
    nodes = [root]
    parents = [-1]
    leaves = {0: None}  # node id -> (count, sse); the root's SSE is filled below
    root_stats = bc.stats(root[None, :], op="bisect_stats", leaf=0)
    leaves[0] = (float(root_stats.counts[0]), float(root_stats.inertia))
    total_iter = 0
    rng = np.random.default_rng(seed)
    while len(leaves) < k:
        splittable = {n: v for n, v in leaves.items() if v[0] >= 2 and v[1] > 0}
        if not splittable:
            msg = f"bisecting K-means found {len(leaves)} divisible clusters, fewer than k={k}"
            warnings.warn(msg, FewerClustersWarning, stacklevel=2)
            log.warning(msg)
            break
        node = max(splittable, key=lambda n: (splittable[n][1], -n))
        count = splittable[node][0]
        frac = min(1.0, sample_size / max(count, 1.0))
        S, w = bc.gather_rows("sample", fraction=frac, seed=int(rng.integers(2**31)), leaf=node)
        if len(np.unique(S, axis=0)) < 2:
            S, w = bc.gather_rows("sample", fraction=1.0, seed=0, leaf=node)
        if len(np.unique(S, axis=0)) < 2:
            leaves[node] = (count, 0.0)  # all rows identical: cannot be split
            continue
        C0, _ = K.kmeans_plusplus(S, 2, weights=w, random_state=int(rng.integers(2**31)))
        fit = lloyd(bc, C0, max_iter, tol_abs, spherical, op="bisect_stats", label=f"bisect node {node}", leaf=node)
        total_iter += fit.n_iter
        left, right = len(nodes), len(nodes) + 1
        bc.call("bisect_split", {"centers": fit.centers}, leaf=node, left=left, right=right)
        nodes += [fit.centers[0], fit.centers[1]]
        parents += [node, node]
        del leaves[node]
        for child, c in ((left, fit.centers[0]), (right, fit.centers[1])):
            st = bc.stats(c[None, :], op="bisect_stats", leaf=child)
            leaves[child] = (float(st.counts[0]), float(st.inertia))
        log.info("bisecting: split node %d (%d rows) into %d + %d rows", node, int(count),
                 int(leaves[left][0]), int(leaves[right][0]))
    leaf_nodes = np.array(sorted(leaves), dtype=np.int64)
    tree = np.asarray(nodes)
    tparents = np.asarray(parents, dtype=np.int64)
    counts = np.array([leaves[n][0] for n in leaf_nodes])
    inertia = float(sum(leaves[n][1] for n in leaf_nodes))
    return BisectFit(tree[leaf_nodes], tparents[leaf_nodes], tree, tparents, leaf_nodes, counts, inertia, total_iter)


# ----------------------------------------------------------------------------------------------
# the whole fit


@dataclass
class EngineFit:
    centers: np.ndarray
    counts: np.ndarray
    inertia: float
    n_iter: int
    converged: bool
    init_seconds: float
    load_seconds: float
    fit_seconds: float
    iter_seconds: list[float]
    n_tasks: int
    parents: Optional[np.ndarray] = None  # bisecting: parent node of each centre
    tree_centers: Optional[np.ndarray] = None
    tree_parents: Optional[np.ndarray] = None
    leaf_nodes: Optional[np.ndarray] = None
    n_repaired: int = 0
    task_peak_rss_mb: float = 0.0  # largest peak RSS of a barrier task's Python worker
    recoveries: int = 0  # times the stage was restarted after a lost task


def fit(spark, df, source: BlockSource, k: int, *, algorithm: str = "kmeans", init: str = "kmeans||",
        initial_centers: Optional[np.ndarray] = None, max_iter: int = 50, tol: float = 1e-4, seed: int = 42,
        init_steps: int = 2, num_tasks: Optional[int] = None, recovery_wait: float = 30.0,
        max_recoveries: int = 3, memory_budget: Optional[int] = None, batch_size: Optional[int] = None) -> EngineFit:
    """Fit K-means (or bisecting K-means) with our engine on every row of ``df``.

    ``tol`` is relative, as in scikit-learn: the fit stops when the summed squared centre shift
    is at most ``tol`` times the mean per-column (weighted) variance. Runs on the driver; the
    passes are distributed; collected: k x d statistics per pass, samples for initialisation.
    A lost task (executor or worker died) is recovered from, and rows past ``memory_budget``
    bytes per task are spilled to local disk: see :class:`~clusterlake.engine.stage.BarrierStage`.
    """
    t0 = time.time()
    bc = KMeansStage(spark, df, source, num_tasks=num_tasks, recovery_wait=recovery_wait,
                      max_recoveries=max_recoveries, memory_budget=memory_budget)
    with bc:
        res = fit_on(bc, k, algorithm=algorithm, init=init, initial_centers=initial_centers, max_iter=max_iter,
                     tol=tol, seed=seed, init_steps=init_steps, spherical=source.normalize, t0=t0,
                     batch_size=batch_size)
    res.task_peak_rss_mb = bc.task_peak_rss_mb
    return res


def fit_on(bc: KMeansStage, k: int, *, algorithm: str = "kmeans", init: str = "kmeans||",
           initial_centers: Optional[np.ndarray] = None, max_iter: int = 50, tol: float = 1e-4, seed: int = 42,
           init_steps: int = 2, spherical: bool = False, t0: Optional[float] = None,
           batch_size: Optional[int] = None) -> EngineFit:
    """:func:`fit` on a stage already holding the rows in the model space (``spherical``: they
    are L2-normalised, the fit is cosine). ``batch_size``: mini-batch steps of that many rows
    instead of Lloyd's full passes (:mod:`clusterlake.algorithms.minibatch`; ``max_iter`` then
    counts epochs)."""
    res = _fit(bc, k, algorithm, init, initial_centers, max_iter, tol, seed, init_steps,
               time.time() if t0 is None else t0, spherical, batch_size)
    res.recoveries = bc.recoveries
    res.n_tasks = bc.n_tasks
    return res


def _fit(bc: KMeansStage, k, algorithm, init, initial_centers, max_iter, tol, seed, init_steps, t0,
         spherical, batch_size=None) -> EngineFit:
    info = data_info(bc)
    if info.n < k:
        raise ValueError(f"n_samples={info.n} should be >= k={k}")
    tol_abs = float(tol * info.var.mean()) if tol > 0 else 0.0
    t_init = time.time()
    if algorithm == "bisecting":
        b = bisecting(bc, k, info, max_iter, tol_abs, seed, spherical)
        return EngineFit(b.centers, b.counts, b.inertia, b.n_iter, True, 0.0, bc.load_seconds,
                         time.time() - t0, [], bc.n_tasks, b.parents, b.tree_centers, b.tree_parents,
                         b.leaf_nodes)
    C0 = _initial_centers(bc, k, info, init, initial_centers, seed, init_steps, spherical)
    init_seconds = time.time() - t_init
    log.info("engine: init %s took %.2f s", "given centres" if initial_centers is not None else init, init_seconds)
    if batch_size and max_iter > 0:
        from clusterlake.algorithms.minibatch import minibatch

        lf = minibatch(bc, C0, batch_size, max_iter, tol_abs, seed, spherical)
    else:
        lf = lloyd(bc, C0, max_iter, tol_abs, spherical)
    its = lf.iter_seconds
    log.info("engine: %d %s (%s), %.3f s each, inertia %.6g", lf.n_iter,
             "mini-batch steps" if batch_size else "iterations", "converged" if lf.converged else "max_iter reached",
             float(np.median(its)) if its else math.nan, lf.inertia)
    return EngineFit(lf.centers, lf.counts, lf.inertia, lf.n_iter, lf.converged, init_seconds, bc.load_seconds,
                     time.time() - t0, its, bc.n_tasks, n_repaired=lf.n_repaired)


def _initial_centers(bc: KMeansStage, k: int, info: DataInfo, init: str, initial_centers, seed: int,
                     init_steps: int, spherical: bool) -> np.ndarray:
    """Lloyd's starting centres: the given ones (checked) or seeded by ``init``; a warning when
    the data has fewer than k distinct points."""
    if initial_centers is not None:
        C0 = np.asarray(initial_centers, dtype=np.float64)
        if C0.shape != (k, info.mean.shape[0]):
            raise ValueError(f"initial centres have shape {C0.shape}, expected {(k, info.mean.shape[0])}")
        if spherical:
            C0 = K.normalize_rows(C0)
    elif init == "kmeans||":
        C0 = init_kmeans_parallel(bc, k, info, seed, steps=init_steps)
    elif init == "kmeans++":
        C0 = init_kmeans_plusplus_sample(bc, k, info, seed)
    elif init == "random":
        C0 = init_random(bc, k, info, seed)
    else:
        raise ValueError(f"unknown init {init!r}")
    if len(C0) < k:
        msg = f"found only {len(C0)} distinct starting centres, fewer than k={k}: the input has too few distinct points"
        warnings.warn(msg, FewerClustersWarning, stacklevel=3)
        log.warning(msg)
    return K.normalize_rows(C0) if spherical else C0
