"""The run's rows resident in the engine: read once, every later pass a command.

The nightly job loads its validated rows into the engine's barrier tasks once
(:class:`ResidentRows`): each task keeps its rows' features in input units (``raw``, float32 when
every feature column is float32 or a small integer, else float64), the id and label columns as
Arrow, and the weights. Everything the run then needs from all rows is a command on that data
(:class:`RowsWorker`), answered with O(k d) numbers per task, instead of one more Spark job that
reads, converts and ships the rows again:

* ``moments`` -- the input's mean and centred scatter (scaling, PCA);
* ``prepare`` -- the model space (float32, what the K-means fit runs on);
* the K-means/bisecting fit itself (the commands of :class:`~clusterlake.algorithms.kmeans_engine.KMeansWorker`),
  and a Gaussian mixture's EM (:class:`~clusterlake.algorithms.gmm.MixtureWorker`);
* ``sample`` -- one seeded uniform draw (quality, auto-k, the sample passes, the report);
* ``assign`` -- every row's centroid and distance under the one assignment rule, kept by the tasks
  (a mixture's: also the log-likelihood of every row, summed);
* ``cluster_stats``, ``mean_distances`` -- the exact per-cluster statistics the metrics need;
* ``radius_counts`` / ``radius_values`` -- exact per-cluster radius quantiles;
* ``members`` -- the serving layer's per-cluster member sample;
* ``write_assignments`` -- the ``assignments`` parquet files, written by the tasks themselves.

The assignment-side commands work in float64 on the model space recomputed from ``raw`` chunk by
chunk: the same numbers the Spark passes they replace produced. ``prepare`` and ``assign`` change
the tasks' state and are replayed after a lost task (:class:`~clusterlake.engine.stage.BarrierStage`).
"""

from __future__ import annotations

import io
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa

from clusterlake.algorithms.cluster_stats import ClusterStats, PartitionStats
from clusterlake.algorithms.gmm import MixtureWorker
from clusterlake.algorithms.kmeans_engine import KMeansStage
from clusterlake.algorithms.members import id_hash_uniform
from clusterlake.engine.blocks import Block, BlockSource
from clusterlake.engine.spill import describe as describe_memory
from clusterlake.engine.worker import command
from clusterlake.kernels import kmeans as K
from clusterlake.kernels.assignment import AssignmentRule
from clusterlake.prep.transform import Moments, Preprocessor

log = logging.getLogger(__name__)

CHUNK = 65_536
"""Rows per float64 chunk of the assignment-side commands (bounded temporary memory)."""
RADIUS_QUANTILES = {"radius_p50": 0.5, "radius_p90": 0.9, "radius_p99": 0.99}
_SELECT_LIMIT = 50_000  # values per (cluster, quantile) a task may send in the last round
_GRID = 2048  # thresholds per (cluster, quantile) in a counting round


# ----------------------------------------------------------------------------------------------
# Arrow through the collective (which carries numpy arrays): IPC stream bytes as uint8


def table_bytes(table: pa.Table) -> np.ndarray:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return np.frombuffer(sink.getvalue(), dtype=np.uint8)


def bytes_table(buf: np.ndarray) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(np.ascontiguousarray(buf).tobytes())).read_all()


# ----------------------------------------------------------------------------------------------
# the task side


class RowsWorker(MixtureWorker):
    """One barrier task's rows for the whole run. Runs in a barrier task."""

    def __init__(self, block: Block):
        super().__init__(block)
        self.raw = block.X  # input units; block.X becomes the float32 model space on `prepare`
        self.table = block.columns if block.columns is not None else pa.table({})
        self.prep: Optional[Preprocessor] = None
        self.lab: Optional[np.ndarray] = None  # `assign`: each row's centroid (index) and distance
        self.dist: Optional[np.ndarray] = None
        self.assigned: Optional[tuple] = None  # `assign`: (its model's key, the rest of each row's partition columns)
        self._by_cluster: Optional[tuple] = None  # (order, starts): rows sorted by (centroid, distance)

    # -- helpers
    def chunks(self):
        for s0 in range(0, len(self.raw), CHUNK):
            yield s0, min(s0 + CHUNK, len(self.raw))

    def raw64(self, s0: int, s1: int) -> np.ndarray:
        return np.asarray(self.raw[s0:s1], dtype=np.float64)

    def z64(self, s0: int, s1: int) -> np.ndarray:
        """Rows s0:s1 in the model space, float64 (as the Spark passes computed it)."""
        return self.prep.transform(self.raw64(s0, s1))

    def column(self, name: str, s0: int = 0, s1: Optional[int] = None) -> pa.Array:
        c = self.table.column(name)
        c = c.slice(s0, (s1 if s1 is not None else len(c)) - s0)
        return c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c

    # -- the read
    @command("validity")
    def validity(self) -> dict:
        """What validating the rows while loading them counted (JSON of a Validity)."""
        return {"validity": self.block.validity}

    @command("id_duplicates")
    def id_duplicates(self) -> dict:
        """The duplicated ids the load found in the row groups it read (None: it did not check)."""
        return {"dups": self.block.id_duplicates}

    @command("keep_features", stateful=True)
    def keep_features(self, columns: np.ndarray) -> dict:
        """Keep only these feature columns (the constant ones are dropped after the read)."""
        if self.raw.ndim == 2 and self.raw.shape[1]:
            cols = np.asarray(columns, dtype=np.int64)
            kept = self.block.memory.empty((len(self.raw), len(cols)), self.raw.dtype, "rows")
            for s0, s1 in self.chunks():
                kept[s0:s1] = self.raw[s0:s1, cols]
            self.raw = kept
            self.block = replace(self.block, X=kept)
        self.assigned = None  # (other rows: nothing assigned before holds)
        return {}

    # -- preprocessing
    @command("moments")
    def moments(self) -> dict:
        """The rows' mean and centred scatter, float64, chunk by chunk."""
        d = self.raw.shape[1] if self.raw.ndim == 2 else 0
        acc = Moments(0, np.zeros(d), np.zeros((d, d)))
        for s0, s1 in self.chunks():
            acc = acc.merge(Moments.of(self.raw64(s0, s1)))
        return {"n": int(acc.n), "mean": acc.mean, "m2": acc.m2}

    @command("prepare", stateful=True)
    def prepare(self, center: np.ndarray, scale: np.ndarray, components: Optional[np.ndarray] = None,
                normalize: bool = False) -> dict:
        """Keep the rows in the model space (float32, L2-normalised for cosine) for the fit."""
        names = [str(j) for j in range(len(center))]
        self.prep = Preprocessor(names, center, scale, components, normalize=bool(normalize))
        plain = Preprocessor(names, center, scale, components)
        p = plain.transform(np.zeros((1, len(center)))).shape[1]
        memory, need = self.block.memory, len(self.raw) * p * 4
        if not memory.fits(need) and memory.fits(need, without="rows") and memory.address_limit is None:
            # every iteration reads the model space, the input rows are read again at the end:
            # the rows make room on disk (under an address-space limit a mapping frees nothing)
            self.raw = memory.to_disk("rows", self.raw)
            self.block = replace(self.block, X=self.raw)  # the in-memory rows are dropped
        Z = memory.empty((len(self.raw), p), np.float32, "model")
        for s0, s1 in self.chunks():
            Z[s0:s1] = plain.transform(self.raw64(s0, s1))
            if normalize:  # row by row: the same as normalising the whole, chunk by chunk
                Z[s0:s1] = K.normalize_rows(Z[s0:s1])
        self.block = replace(self.block, X=Z)
        self.x_sq = K.row_sq_norms(self.X) if self.X.size else np.zeros(0)
        self.leaf = np.zeros(len(self.X), dtype=np.int32)
        self._sub = None
        self.assigned = None  # another model space: nothing assigned before holds
        return {"memory": self.block.memory.report()}

    @command("sample_raw")
    def sample_raw(self, fraction: float, seed: int, id_column: str) -> dict:
        """The rows whose key, uniform from a hash of the id and ``seed``, is below ``fraction``,
        with their keys (input units, float64): the same rows whatever the tasks' layout."""
        u = id_hash_uniform(self.column(id_column), seed) if len(self.raw) else np.zeros(0)
        idx = np.flatnonzero(u < float(fraction))
        return {"key": u[idx], "x": np.asarray(self.raw[idx], dtype=np.float64)}

    # -- the assignment and what is measured on it
    @command("assign", stateful=True)
    def assign(self, centers: np.ndarray, metric: Optional[dict] = None, mixture_type: Optional[str] = None,
               mixture_weights: Optional[np.ndarray] = None, mixture_covariances: Optional[np.ndarray] = None) -> dict:
        """Every row's centroid (index) and distance by the one rule, kept for the commands below
        (``metric``: the model's distance when it is not Euclidean, as ``distances.to_spec``;
        ``mixture_*``: a Gaussian mixture (its covariance type, weights and covariances; its means
        are ``centers``), whose rows' log-likelihoods and posteriors are summed, each row once,
        into ``sums``). A mixture's or a distance's partition columns are kept for the
        assignments file (:func:`~clusterlake.algorithms.assignment_files.write_task_file`);
        K-means' are cheap to compute again."""
        from clusterlake.algorithms.assignment_files import model_key
        from clusterlake.kernels.distances import from_spec
        from clusterlake.kernels.gmm import Mixture

        mixture = Mixture.of(mixture_type, mixture_weights, centers, mixture_covariances) if mixture_type else None
        rule = AssignmentRule(centers, metric=from_spec(metric), mixture=mixture)
        n = len(self.raw)
        self.lab, self.dist = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.float64)
        kept = {"second_index": np.empty(n, np.int32), "margin": np.empty(n)} if rule.mixture or rule.metric else {}
        if mixture is not None:
            kept.update(probability=np.empty(n), log_likelihood=np.empty(n))
        sums = np.zeros(3)  # a mixture's: rows, log-likelihood, posterior of the assigned component (each row once)
        for s0, s1 in self.chunks():
            a = rule.partition(self.z64(s0, s1))
            self.lab[s0:s1], self.dist[s0:s1] = a.index, a.distance
            for name, arr in kept.items():
                arr[s0:s1] = getattr(a, name)
            if a.log_likelihood is not None:
                sums += (s1 - s0, a.log_likelihood.sum(), a.probability.sum())
        self.assigned = (model_key(centers, metric, mixture_type, mixture_weights, mixture_covariances), kept) \
            if kept else None
        self._by_cluster = None
        k = len(centers)
        far = np.full(k, -np.inf)
        np.maximum.at(far, self.lab, self.dist)
        return {"max": far, "sums": sums}

    @command("cluster_stats")
    def cluster_stats(self, centers: np.ndarray, x_center: np.ndarray, label: Optional[str] = None) -> dict:
        acc = PartitionStats(np.asarray(centers, np.float64), len(x_center), np.asarray(x_center, np.float64))
        for s0, s1 in self.chunks():
            acc.add(self.raw64(s0, s1), self.z64(s0, s1), self.lab[s0:s1],
                    self.column(label, s0, s1) if label else None)
        a = acc.acc
        keys = list(a.contingency)
        return {"cnt": a.counts, "sz": a.sum_z, "sx": a.sum_x, "sq": a.sum_sq_dx, "sd": a.sum_dist,
                "ssd": a.sum_sq_dist, "mx": a.max_dist, "cl": [kk[0] for kk in keys],
                "ci": [int(kk[1]) for kk in keys], "cc": [int(a.contingency[kk]) for kk in keys]}

    @command("distance_sums")
    def distance_sums(self, k: int) -> dict:
        """Per cluster: the sum, the sum of squares and the maximum of the rows' assignment
        distances (under the model's distance: k-medoids' radii)."""
        return {"s": np.bincount(self.lab, weights=self.dist, minlength=k),
                "ss": np.bincount(self.lab, weights=self.dist * self.dist, minlength=k)}

    @command("mean_distances")
    def mean_distances(self, means: np.ndarray) -> dict:
        """Per cluster, the sum of its rows' distances to the cluster mean ``means`` (Davies-Bouldin)."""
        k = len(means)
        acc = np.zeros(k)
        for s0, s1 in self.chunks():
            lab = self.lab[s0:s1]
            dist = np.sqrt(((self.z64(s0, s1) - means[lab]) ** 2).sum(axis=1))
            acc += np.bincount(lab, weights=dist, minlength=k)
        return {"s": acc}

    def _sorted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The distances sorted within each cluster, where each cluster starts, and the rows in
        that order."""
        if self._by_cluster is None:
            order = np.lexsort((self.dist, self.lab))
            k = int(self.lab.max()) + 1 if len(self.lab) else 0
            starts = np.searchsorted(self.lab[order], np.arange(k + 1))
            self._by_cluster = (self.dist[order], starts, order)
        return self._by_cluster

    def _cluster_dists(self, c: int) -> np.ndarray:
        d, starts, _ = self._sorted()
        return d[starts[c]:starts[c + 1]] if c + 1 < len(starts) else d[:0]

    @command("radius_counts")
    def radius_counts(self, clusters: np.ndarray, thresholds: np.ndarray) -> dict:
        """For each request i: how many rows of cluster ``clusters[i]`` lie at distance <= each of
        ``thresholds[i]``."""
        out = np.zeros(thresholds.shape, dtype=np.int64)
        for i, c in enumerate(clusters):
            out[i] = np.searchsorted(self._cluster_dists(int(c)), thresholds[i], side="right")
        return {"counts": out}

    @command("radius_values")
    def radius_values(self, clusters: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> dict:
        """For each request i: the distances in (lo[i], hi[i]] of cluster ``clusters[i]``."""
        vals, sizes = [], []
        for c, a, b in zip(clusters, lo, hi):
            d = self._cluster_dists(int(c))
            v = d[np.searchsorted(d, a, side="right"):np.searchsorted(d, b, side="right")]
            vals.append(v)
            sizes.append(len(v))
        return {"values": np.concatenate(vals) if vals else np.zeros(0), "sizes": np.asarray(sizes, np.int64)}

    @command("column_moments")
    def column_moments(self, k: int, columns: list) -> dict:
        """Per cluster (k) and carried numeric column: count, mean and sum of squared deviations
        of its valid (non-null, finite) values."""
        n, mean, m2 = (np.zeros((k, len(columns))) for _ in range(3))
        for j, c in enumerate(columns):
            x = self.column(c).cast(pa.float64()).to_numpy(zero_copy_only=False)
            ok = np.isfinite(x)
            lab, v = self.lab[ok], x[ok]
            n[:, j] = np.bincount(lab, minlength=k)
            s = np.bincount(lab, weights=v, minlength=k)
            mean[:, j] = np.divide(s, n[:, j], out=np.zeros(k), where=n[:, j] > 0)
            m2[:, j] = np.bincount(lab, weights=(v - mean[lab, j]) ** 2, minlength=k)
        return {"n": n, "mean": mean, "m2": m2}

    @command("exemplars")
    def exemplars(self, per_cluster: int, id_column: str) -> dict:
        """Each cluster's ``per_cluster`` rows nearest its centroid here: (centroid index, distance,
        id as text), by cluster then distance."""
        d, starts, order = self._sorted()
        picks = [np.arange(starts[c], min(starts[c + 1], starts[c] + per_cluster)) for c in range(len(starts) - 1)]
        at = np.concatenate(picks) if picks else np.zeros(0, np.int64)
        rows = order[at]
        ids = self.column(id_column).take(pa.array(rows)).cast(pa.string()) if len(rows) else pa.array([], pa.string())
        return {"pos": self.lab[rows].astype(np.int64), "distance": d[at], "ids": table_bytes(pa.table({"id": ids}))}

    @command("members")
    def members(self, fractions: np.ndarray, seed: int, id_column: str) -> dict:
        """The rows kept as serving members: ``u(id) < fractions[cluster]``."""
        if not len(self.raw):
            return {"n": 0}
        keep = id_hash_uniform(self.column(id_column), seed) < fractions[self.lab]
        idx = np.flatnonzero(keep)
        z = np.empty((len(idx), self.prep.n_components), np.float32)  # only the kept rows are transformed
        for s0 in range(0, len(idx), CHUNK):
            z[s0:s0 + CHUNK] = self.prep.transform(np.asarray(self.raw[idx[s0:s0 + CHUNK]], dtype=np.float64))
        ids = pa.table({"id": self.column(id_column).take(pa.array(idx))})
        return {"n": int(len(idx)), "ids": table_bytes(ids), "pos": self.lab[idx], "distance": self.dist[idx],
                "z": np.ascontiguousarray(z)}

    @command("write_assignments")
    def write_assignments(self, dest: str, prefix: str, centers: np.ndarray, cluster_ids: np.ndarray,
                          id_column: str, run_id: str, label: Optional[str] = None,
                          passes: Optional[np.ndarray] = None, metric: Optional[dict] = None,
                          mixture_type: Optional[str] = None, mixture_weights: Optional[np.ndarray] = None,
                          mixture_covariances: Optional[np.ndarray] = None) -> dict:
        """Write this task's ``assignments`` rows as one parquet file under ``dest`` (a temporary
        name renamed into place when complete); returns its name, rows and the pass counts."""
        from clusterlake.algorithms.assignment_files import write_task_file

        return write_task_file(self, dest, prefix, centers, cluster_ids, id_column, run_id, label, passes, metric,
                               (mixture_type, mixture_weights, mixture_covariances))



# ----------------------------------------------------------------------------------------------
# the driver side


def exact_in_float32(spark_types: list[str]) -> bool:
    """Whether float32 holds every value of columns of these Spark types exactly."""
    return all(t in ("float", "tinyint", "smallint") for t in spark_types)


class ResidentRows:
    """The run's validated rows loaded once into the engine's barrier tasks (runs on the driver).

    ``df``: the validated rows (id, features as double, label, weight). Use as a context manager
    (or :meth:`open` / :meth:`close`): the rows stay on the tasks until it closes. Then
    :meth:`moments`, :meth:`prepare` (the model space), the fit (``stage`` is a
    :class:`~clusterlake.algorithms.kmeans_engine.KMeansStage`), :meth:`sample`, :meth:`assign`
    and what is measured and written on the assignment.
    """

    def __init__(self, spark, df, features: list[str], id_column: str, label_column: Optional[str] = None,
                 weight_column: Optional[str] = None, exact_float32: bool = False, num_tasks: Optional[int] = None,
                 recovery_wait: float = 30.0, validate: bool = False, vector: Optional[tuple[str, int]] = None,
                 profile_columns: Sequence[str] = (), memory_budget: Optional[int] = None):
        carry = tuple(dict.fromkeys([c for c in (id_column, label_column) if c] + list(profile_columns)))
        vcol, vdim = vector or (None, 0)
        source = BlockSource(columns=tuple(features), weight_column=weight_column, carry=carry,
                             vector=vcol, vector_dim=int(vdim), dtype="float32" if exact_float32 else "float64",
                             validate_id=id_column if validate else None)
        # the tasks wait for the driver through every step of the run, driver-only ones included
        # (auto-k, HDBSCAN on the sample, ...): a generous idle limit (a dead driver ends them anyway)
        self.stage = KMeansStage(spark, df, source, num_tasks=num_tasks, worker=RowsWorker, recovery_wait=recovery_wait,
                                 command_timeout=12 * 3600.0, memory_budget=memory_budget)
        self.features = list(source.features.names)
        self.vector = vcol
        self.id_column, self.label_column, self.weight_column = id_column, label_column, weight_column
        self.rows = 0
        self._max_dist: Optional[np.ndarray] = None
        self._open = False

    # -- life
    def open(self) -> "ResidentRows":
        self.stage.__enter__()
        self._open = True
        self.rows = int(sum(self.stage.rows))
        return self

    def close(self, exc: Optional[BaseException] = None) -> None:
        if self._open:
            self._open = False
            self.stage.__exit__(type(exc) if exc else None, exc, None)

    def __enter__(self) -> "ResidentRows":
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exc)

    @contextmanager
    def released(self):
        """Free the task slots for a while (a Spark job must run meanwhile, e.g. MLlib's fit),
        then load the rows again and replay what was done to them; not when the block raised
        (the run is failing: its error must not wait for, or be replaced by, a reload)."""
        self.close()
        yield
        self.stage.resume_after_restart()
        self.open()

    @property
    def load_seconds(self) -> float:
        return self.stage.load_seconds

    # -- the read
    def validity(self):
        """The validation counts of every task's load, merged (a
        :class:`~clusterlake.io.validity.Validity`, reasons in the rule's order)."""
        from clusterlake.io.validity import Validity, reason_names

        total = Validity.empty(len(self.features))
        for h, _ in self.stage.call("validity"):
            if h["validity"] is not None:
                total = total.merge(Validity.from_json(h["validity"]))
        order = reason_names(self.id_column, self.features, self.weight_column, self.vector)
        total.counts = {k: total.counts[k] for k in order if total.counts.get(k)}
        return total

    def id_duplicates(self) -> Optional[tuple]:
        """The duplicated ids the tasks found as they loaded the row groups, merged as
        :func:`clusterlake.io.reader.duplicate_ids` answers (``()``: none). Only meaningful when
        the input's footers proved the row groups' ids disjoint
        (:attr:`clusterlake.io.input_files.FileSlices.id_column`)."""
        from clusterlake.io.input_files import merge_id_duplicates

        return merge_id_duplicates(h["dups"] for h, _ in self.stage.call("id_duplicates"))

    def keep_features(self, kept: list[str]) -> None:
        """Keep the feature columns ``kept``, in that order, on the tasks' rows."""
        if kept == self.features:
            return
        idx = np.array([self.features.index(c) for c in kept], dtype=np.int64)
        self.stage.call("keep_features", {"columns": idx})
        self.features = list(kept)

    # -- before the fit
    def moments(self) -> Moments:
        d = len(self.features)
        total = Moments(0, np.zeros(d), np.zeros((d, d)))
        for h, a in self.stage.call("moments"):
            if h["n"]:
                total = total.merge(Moments(int(h["n"]), a["mean"], a["m2"]))
        return total

    def prepare(self, prep) -> None:
        """The tasks keep the rows in ``prep``'s model space (float32) for the fit."""
        arrays = {"center": np.asarray(prep.center, np.float64), "scale": np.asarray(prep.scale, np.float64)}
        if prep.components is not None:
            arrays["components"] = np.asarray(prep.components, np.float64)
        replies = self.stage.call("prepare", arrays, normalize=bool(prep.normalize))
        log.info("engine: model space prepared; %s", describe_memory([h.get("memory") for h, _ in replies]))

    def sample(self, size: int, seed: int) -> np.ndarray:
        """A uniform random sample of ``min(size, rows)`` rows in input units (float64), in a
        random order: its first m rows are themselves a uniform sample of m rows. Each row gets a
        uniform key from a hash of its id and ``seed`` (:func:`~clusterlake.algorithms.members.id_hash_uniform`),
        so the sample depends on the ids and the seed only, not on how the rows are spread over
        the tasks (a run that lost a task draws the same sample); the ``size`` smallest keys win
        (a pre-selection below a threshold keeps what the tasks send small)."""
        size = min(int(size), self.rows)
        d = len(self.features)
        if size <= 0:
            return np.zeros((0, d))
        frac = 1.0 if size >= self.rows else min(1.0, (size + 8 * math.sqrt(size) + 64) / self.rows)
        keys, xs = [], []
        for _, a in self.stage.call("sample_raw", fraction=frac, seed=int(seed), id_column=self.id_column):
            if len(a["key"]):
                keys.append(a["key"])
                xs.append(a["x"])
        if not keys:
            return np.zeros((0, d))
        key, X = np.concatenate(keys), np.concatenate(xs)
        return X[np.argsort(key, kind="stable")[:size]]

    # -- on the fitted model
    def assign(self, centroids: np.ndarray, metric=None, mixture=None) -> Optional[dict]:
        """Every row's cluster and distance by the one rule, kept on the tasks (``metric``: the
        model's distance, a ``distances.Metric``, None: Euclidean; ``mixture``: a Gaussian
        mixture, a ``gmm.Mixture``). Returns a mixture's figures over every row, each once (as
        every metric: ``input.weight_column`` weights the fit only): ``{"rows", "log_likelihood",
        "probability"}`` (the rows, the sums of their log densities and of their assigned
        components' posteriors); else None."""
        from clusterlake.kernels.distances import to_spec

        far, sums = None, np.zeros(3)
        arrays, kind = _with_mixture({"centers": np.asarray(centroids, np.float64)}, mixture)
        for _, a in self.stage.call("assign", arrays, metric=to_spec(metric), mixture_type=kind):
            far = a["max"] if far is None else np.maximum(far, a["max"])
            sums += a["sums"]
        self._max_dist = far
        return dict(zip(("rows", "log_likelihood", "probability"), sums.tolist())) if mixture is not None else None

    def cluster_stats(self, centroids: np.ndarray, x_center: np.ndarray) -> ClusterStats:
        """:class:`ClusterStats` of the assignment (with the label contingency when a label column
        is carried)."""
        C = np.asarray(centroids, np.float64)
        k, p, d = C.shape[0], C.shape[1], len(self.features)
        replies = self.stage.call("cluster_stats", {"centers": C, "x_center": np.asarray(x_center, np.float64)},
                                  label=self.label_column)
        return ClusterStats.merge(({**h, **a} for h, a in replies), k, p, d, self.label_column is not None)

    @property
    def max_distances(self) -> np.ndarray:
        """Per cluster, the largest assignment distance of its rows (-inf for an empty one), from
        :meth:`assign`."""
        return self._max_dist

    def distance_sums(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Per cluster: the sum and the sum of squares of the rows' assignment distances (under
        the model's distance). Needs :meth:`assign`."""
        replies = [a for _, a in self.stage.call("distance_sums", k=int(k))]
        return np.sum([a["s"] for a in replies], axis=0), np.sum([a["ss"] for a in replies], axis=0)

    def mean_distances(self, means: np.ndarray) -> np.ndarray:
        M = np.nan_to_num(np.asarray(means, dtype=np.float64))
        return np.sum([a["s"] for _, a in self.stage.call("mean_distances", {"means": M})], axis=0)

    def radius_quantiles(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        """Exact per-cluster quantiles of the rows' distance to their centroid
        (``radius_p50/p90/p99``, row i = centroid i; 0 for an empty cluster): the value of rank
        ``ceil(q n)`` (Spark's ``percentile_approx`` rule, without its approximation), found by
        counting rounds on the tasks' sorted distances and one last round that ships the few
        values of the bracket holding that rank."""
        return exact_quantiles(self.stage, np.asarray(counts, np.float64), self._max_dist, RADIUS_QUANTILES)

    def column_moments(self, k: int, columns: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per cluster and carried column (``input.profile_columns``): the count of its non-null,
        non-NaN values, their mean and sum of squared deviations (k, c) each, merged over the
        tasks exactly (Chan et al.'s pairwise rule). Needs :meth:`assign`."""
        from clusterlake.kernels.stats import merge_mean_m2

        total = None
        for h, a in self.stage.call("column_moments", k=int(k), columns=list(columns)):
            part = (a["n"], a["mean"], a["m2"])
            total = part if total is None else merge_mean_m2(total, part)
        return total

    def exemplars(self, k: int, per_cluster: int) -> list[list[str]]:
        """The ids (as text) of each centroid's ``per_cluster`` nearest rows, nearest first (ties:
        in task order); row i = centroid i. Needs :meth:`assign`. Ships k x per_cluster rows per
        task at most."""
        pos, dist, ids = [], [], []
        if per_cluster > 0:
            for h, a in self.stage.call("exemplars", per_cluster=int(per_cluster), id_column=self.id_column):
                pos.append(a["pos"])
                dist.append(a["distance"])
                ids += bytes_table(a["ids"]).column("id").to_pylist()
        out: list[list[str]] = [[] for _ in range(k)]
        if pos:
            p, d = np.concatenate(pos), np.concatenate(dist)
            order = np.lexsort((d, p))
            starts = np.searchsorted(p[order], np.arange(k + 1))
            for c in range(k):
                out[c] = [ids[i] for i in order[starts[c]:min(starts[c + 1], starts[c] + per_cluster)]]
        return out

    def members(self, fractions: np.ndarray, seed: int) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]:
        """The serving member sample: (ids, centroid index, distance, z float32)."""
        ids, pos, dist, zs = [], [], [], []
        for h, a in self.stage.call("members", {"fractions": np.asarray(fractions, np.float64)}, seed=int(seed),
                                    id_column=self.id_column):
            if h["n"]:
                ids.append(bytes_table(a["ids"]))
                pos.append(a["pos"])
                dist.append(a["distance"])
                zs.append(a["z"])
        if not ids:
            return pa.table({"id": pa.array([])}), np.zeros(0, np.int32), np.zeros(0), np.zeros((0, 0), np.float32)
        return pa.concat_tables(ids), np.concatenate(pos), np.concatenate(dist), np.concatenate(zs)

    def write_assignments(self, folder, centroids: np.ndarray, cluster_ids: np.ndarray, run_id: str,
                          density=None, hierarchy=None, metric=None, mixture=None) -> dict:
        """Every task writes its ``assignments`` file into ``folder`` (a Location); returns the
        pass counts (:func:`~clusterlake.algorithms.assignment_files.merge_pass_counts`).
        ``metric``: the model's distance (k-medoids), None: Euclidean; ``mixture``: a Gaussian
        mixture's ``gmm.Mixture`` (rows by posterior)."""
        import uuid

        from clusterlake.algorithms import assignment_files as files
        from clusterlake.kernels.distances import to_spec

        arrays, kind = _with_mixture({"centers": np.asarray(centroids, np.float64),
                                      "cluster_ids": np.asarray(cluster_ids, np.int32)}, mixture)
        passes = files.pack_passes(density, hierarchy)
        if passes is not None:
            arrays["passes"] = passes
        t0 = time.time()
        replies = self.stage.call("write_assignments", arrays, dest=folder.uri, prefix=uuid.uuid4().hex[:12],
                                  id_column=self.id_column, run_id=run_id, label=self.label_column,
                                  metric=to_spec(metric), mixture_type=kind)
        names = {h["file"] for h, _ in replies if h["file"]}
        stale = files.keep_only(folder, names)
        if stale:
            log.warning("assignments: removed %d files a lost task left in %s: %s", len(stale), folder.uri, stale)
        log.info("assignments: %d tasks wrote %s rows in %.1f s", len(names), f"{sum(h['rows'] for h, _ in replies):,}",
                 time.time() - t0)
        return files.merge_pass_counts(replies)


def _with_mixture(arrays: dict, mixture) -> tuple[dict, Optional[str]]:
    """A command's arrays with a mixture's weights and covariances (binary, as every array the
    collective carries: k x p x p numbers are no JSON header), and its covariance type."""
    if mixture is None:
        return arrays, None
    return {**arrays, "mixture_weights": mixture.weights,
            "mixture_covariances": np.asarray(mixture.covariances, np.float64)}, mixture.covariance_type


def exact_quantiles(stage, counts: np.ndarray, max_dist: np.ndarray, quantiles: dict[str, float]) -> dict:
    """See :meth:`ResidentRows.radius_quantiles`."""
    k = len(counts)
    out = {name: np.zeros(k) for name in quantiles}
    reqs = [(c, name, max(1, math.ceil(q * counts[c]))) for c in range(k) if counts[c] > 0
            for name, q in quantiles.items()]
    if not reqs:
        return out
    cl = np.array([c for c, _, _ in reqs], dtype=np.int64)
    rank = np.array([r for _, _, r in reqs], dtype=np.int64)
    lo = np.full(len(reqs), -1e-300)
    hi = np.asarray(max_dist, np.float64)[cl]
    below = np.zeros(len(reqs), dtype=np.int64)  # rows at distance <= lo
    inside = counts[cl].astype(np.int64)  # rows in (lo, hi]
    done = np.zeros(len(reqs), dtype=bool)
    for _ in range(8):
        todo = np.flatnonzero(~done & (inside > _SELECT_LIMIT))
        if not len(todo):
            break
        t = np.linspace(lo[todo], hi[todo], _GRID + 1, axis=1)[:, 1:]
        t[:, -1] = hi[todo]
        cum = sum(a["counts"] for _, a in stage.call("radius_counts", {"clusters": cl[todo], "thresholds": t}))
        for j, i in enumerate(todo):
            b = int(np.searchsorted(cum[j], rank[i], side="left"))  # first threshold with >= rank rows
            new_below = int(cum[j][b - 1]) if b else int(below[i])
            new_lo = float(t[j][b - 1]) if b else float(lo[i])
            lo[i], hi[i], inside[i], below[i] = new_lo, float(t[j][b]), int(cum[j][b]) - new_below, new_below
            if np.nextafter(lo[i], np.inf) >= hi[i]:  # (lo, hi] holds one float: every row in it is hi
                done[i] = True
                out[reqs[i][1]][cl[i]] = hi[i]
    todo = np.flatnonzero(~done)
    if len(todo):
        replies = stage.call("radius_values", {"clusters": cl[todo], "lo": lo[todo], "hi": hi[todo]})
        parts: list[list[np.ndarray]] = [[] for _ in todo]
        for _, a in replies:
            for j, chunk in enumerate(np.split(a["values"], np.cumsum(a["sizes"])[:-1])):
                parts[j].append(chunk)
        for j, i in enumerate(todo):
            vals = np.sort(np.concatenate(parts[j]))
            out[reqs[i][1]][cl[i]] = float(vals[rank[i] - below[i] - 1])
    return out
