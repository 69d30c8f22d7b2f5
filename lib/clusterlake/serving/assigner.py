"""Assigning new points to a run's clusters, in-process, exactly as the batch job did.

``Assigner`` loads the JSON + .npy model artifact (no pickle, no Spark) and applies the same
``Preprocessor.transform`` and the same assignment rule (:mod:`clusterlake.kernels.assignment`)
the job ran on every row, so the same raw row gets the same ``cluster_id`` (the stable id),
distance, second cluster and margin as in the ``assignments`` table (k == 1: no second cluster,
null in JSON as in the table). A Gaussian mixture model (``algorithm: gmm``) assigns a row to its
most probable component and adds ``probability`` (that component's posterior, the table's column)
and ``log_likelihood`` (the row's log density under the mixture); ``assign(rows, posterior=True)``
also returns every component's posterior. ``is_outlier`` follows one policy, chosen when the
Assigner is built:

* ``density``: the density pass's rule (noise = not within the reach of any core point of the
  sample): exactly the batch job's ``is_outlier`` column. Needs a model with the density pass.
* ``radius``: farther from the centroid than the cluster's ``radius_p99`` (or ``radius_p90`` /
  ``radius_max``): the distance beyond which 1% of the cluster's own rows lay last night.
* ``auto`` (default): ``density`` when the model has the density pass, else ``radius``.

Input: an (n, d) or (d,) array in :attr:`Assigner.feature_names` order, a mapping of feature
name to value (one row) or to a column of values, or a list of such one-row mappings (records,
e.g. parsed JSON). Extra keys are ignored. A missing feature, a null, a bool or string, NaN/inf,
or a wrong row length raises :class:`RowError` naming the row and the feature.

A model fitted on a vector column (``input.vector_column``, e.g. ``emb``) takes the vector under
its column name, as the table holds it: ``{"emb": [0.1, ...], "price": 3.0}`` (a list, or an
(n, dim) array for n rows), or records of such mappings; a vector of another length is a
:class:`RowError` naming the row and the length. The (n, d) array form takes the features in
:attr:`Assigner.feature_names` order (``emb[0]``, ``emb[1]``, ...).
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np

from clusterlake.errors import ClusterlakeError
from clusterlake.io import model_artifact
from clusterlake.kernels import assignment as rule_kernel

Rows = Union[np.ndarray, Mapping, Sequence]
_NONE = object()
OUTLIER_RULES = ("auto", "density", "radius")
RADIUS_STATS = ("radius_p99", "radius_p90", "radius_max")


class RowError(ClusterlakeError, ValueError):
    """A row cannot be assigned: names the row (0-based) and the feature, and what is wrong."""

    def __init__(self, message: str, row: Optional[int] = None, feature: Optional[str] = None):
        super().__init__(message)
        self.row = row
        self.feature = feature


class Assignment(rule_kernel.Assignment):
    """The assignment rule's result (:class:`clusterlake.kernels.assignment.Assignment`: arrays of
    length n) with ``is_outlier`` by the Assigner's policy; ``density_label`` is None unless the
    policy is ``density``."""

    @classmethod
    def of(cls, result: rule_kernel.Assignment, is_outlier: np.ndarray) -> "Assignment":
        """``result`` (its arrays shared, not copied) with ``is_outlier`` by the serving policy."""
        out = cls.__new__(cls)
        out.__dict__.update(vars(result), is_outlier=is_outlier)
        return out

    def records(self, cluster_ids: Optional[np.ndarray] = None) -> list[dict[str, Any]]:
        """JSON-ready dicts, one per row (no second cluster: ``second_cluster_id``/``margin`` null).
        A mixture's rows add ``probability`` and ``log_likelihood``, and with the posterior asked
        for, ``posterior``: cluster id (as text, a JSON key) -> probability (``cluster_ids``: the
        model's ids, in the order of the posterior's columns)."""
        has2 = self.has_second.tolist()
        cid, dist, sec, margin = (a.tolist() for a in (self.cluster_id, self.distance, self.second_cluster_id,
                                                       self.margin))
        out = [{"cluster_id": cid[i], "distance": dist[i], "second_cluster_id": sec[i] if has2[i] else None,
                "margin": margin[i] if has2[i] else None, "is_outlier": o}
               for i, o in enumerate(self.is_outlier.tolist())]
        if self.density_label is not None:
            for r, lab in zip(out, self.density_label.tolist()):
                r["density_label"] = lab
        if self.probability is not None:
            for r, p, ll in zip(out, self.probability.tolist(), self.log_likelihood.tolist()):
                r["probability"], r["log_likelihood"] = p, ll
        if self.posterior is not None and cluster_ids is not None:
            keys = [str(int(c)) for c in cluster_ids]
            for r, row in zip(out, self.posterior.tolist()):
                r["posterior"] = dict(zip(keys, row))
        return out


def _describe(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, (bool, np.bool_)):
        return f"{v!r} (a boolean)"
    if isinstance(v, _NUMBER_TYPES):
        return repr(float(v))
    return f"{v!r} ({type(v).__name__})"


_NUMBER_TYPES = (float, int, np.floating, np.integer)  # concrete types: much faster than the Real ABC


def _is_number(v: Any) -> bool:
    return isinstance(v, _NUMBER_TYPES) and not isinstance(v, bool)


def _only_numbers(values) -> bool:
    """True when every value is a Python float or int (not bool): one pass over the types (what
    parsed JSON holds); anything else goes to the slower per-value check that names it."""
    return set(map(type, values)) <= {float, int}


class Assigner:
    """Nearest-centroid assignment with a run's model (thread-safe: it holds no mutable state).

    Parameters
    ----------
    artifact : ModelArtifact
    outlier_rule : {"auto", "density", "radius"}
    radius_stat : {"radius_p99", "radius_p90", "radius_max"}
        The per-cluster threshold of the ``radius`` rule.

    Examples
    --------
    >>> a = Assigner.load("out/local/model/latest")          # doctest: +SKIP
    >>> a.assign({"age": 34, "annual_income": 52.0, ...}).cluster_id  # doctest: +SKIP
    """

    def __init__(self, artifact: model_artifact.ModelArtifact, outlier_rule: str = "auto",
                 radius_stat: str = "radius_p99"):
        if outlier_rule not in OUTLIER_RULES:
            raise ClusterlakeError(f"outlier_rule must be one of {OUTLIER_RULES}, got {outlier_rule!r}")
        if radius_stat not in RADIUS_STATS:
            raise ClusterlakeError(f"radius_stat must be one of {RADIUS_STATS}, got {radius_stat!r}")
        self.artifact = artifact
        self._prep = artifact.prep
        self._names = list(self._prep.feature_names)
        self._vector = artifact.meta.get("vector_column")
        self._vector_dim = int(artifact.meta.get("vector_dim") or 0)
        self._centroids = np.ascontiguousarray(artifact.centroids, dtype=np.float64)
        self._c_sq = np.einsum("ij,ij->i", self._centroids, self._centroids)
        self._ids = np.asarray(artifact.cluster_ids, dtype=np.int32)
        density, _ = model_artifact.pass_models(artifact)
        self.outlier_rule = self._choose_rule(outlier_rule, density is not None)
        if self.outlier_rule == "density":
            density.nearest_core(np.zeros((1, self._centroids.shape[1])))  # build its index now
        else:
            density = None  # the radius policy needs no density search
        self.metric = artifact.metric()  # a k-medoids model's distance; None: Euclidean
        self.mixture = artifact.mixture()  # a Gaussian mixture model's components; None: nearest centroid
        self._rule = rule_kernel.AssignmentRule(self._centroids, self._ids, density, small_search=True,
                                                metric=self.metric, mixture=self.mixture)
        self.radius_stat, self._threshold = self._radius_threshold(radius_stat)

    def _choose_rule(self, outlier_rule: str, has_density: bool) -> str:
        """``auto`` resolved: ``density`` when the model has the density pass, else ``radius``."""
        if outlier_rule == "auto":
            return "density" if has_density else "radius"
        if outlier_rule == "density" and not has_density:
            raise ClusterlakeError(
                f"model {self.artifact.run_id} has no density pass: use outlier_rule='radius' or run the "
                "job with density.enabled: true")
        return outlier_rule

    def _radius_threshold(self, radius_stat: str) -> tuple[str, Optional[np.ndarray]]:
        """(the radius statistic used, its per-cluster threshold): ``radius_max`` for a model saved
        before the quantiles existed (warned about when the radius policy is in force)."""
        art, stats = self.artifact, self.artifact.cluster_stats
        used = radius_stat if radius_stat in stats else "radius_max"
        if used != radius_stat and self.outlier_rule == "radius":
            import logging

            logging.getLogger(__name__).warning(
                "model %s has no %s (written since issue 9): the radius rule uses radius_max, which flags "
                "almost nothing; re-run the job for the quantiles", art.run_id, radius_stat)
        if self.outlier_rule == "radius" and used not in stats:
            raise ClusterlakeError(
                f"model {art.run_id} has no per-cluster radius statistics (written since clusterlake "
                "0.1 issue 7/9); re-run the job, or use outlier_rule='density'")
        return used, (np.asarray(stats[used], dtype=np.float64) * (1 + 1e-12) if used in stats else None)

    @classmethod
    def load(cls, path: str, **kw) -> "Assigner":
        return cls(model_artifact.load(path), **kw)

    # ------------------------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        """The input columns, in the order ``assign`` expects them."""
        return list(self._names)

    @property
    def run_id(self) -> str:
        return self.artifact.run_id

    @property
    def rule(self) -> rule_kernel.AssignmentRule:
        """The model's assignment rule (what ``assign`` applies, before the outlier policy)."""
        return self._rule

    @property
    def k(self) -> int:
        return int(self._centroids.shape[0])

    @property
    def cluster_ids(self) -> np.ndarray:
        return self._ids.copy()

    # ------------------------------------------------------------------------------------------
    def matrix(self, rows: Rows) -> np.ndarray:
        """Validate ``rows`` and return them as an (n, d) float64 array in feature order."""
        try:
            return self._matrix(rows)
        except OverflowError:  # a Python int beyond float64 (e.g. 10**400 from JSON)
            raise RowError("a feature value is out of the float64 range (beyond ~1.8e308)") from None

    def _matrix(self, rows: Rows) -> np.ndarray:
        names = self._names
        if isinstance(rows, np.ndarray):
            return self._check(self._array(rows))
        if self._vector is not None and not isinstance(rows, (str, bytes)):
            if isinstance(rows, Mapping) and self._vector in rows:
                return self._check(self._vector_rows([rows], one_mapping=True))
            if isinstance(rows, Sequence) and len(rows) and all(isinstance(r, Mapping) for r in rows):
                return self._check(self._vector_rows(rows))
        if isinstance(rows, Mapping) or hasattr(rows, "columns"):  # a dict or a pandas DataFrame
            return self._check(self._columns(rows))
        if isinstance(rows, (str, bytes)):
            raise RowError(f"expected rows (an array, a mapping of feature -> value, or a list of "
                           f"mappings), got a {type(rows).__name__}")
        if isinstance(rows, Sequence):
            if len(rows) == 0:
                raise RowError("no rows to assign")
            if isinstance(rows[0], Mapping):
                return self._check(self._records(rows))
            if isinstance(rows[0], (list, tuple)) and all(isinstance(r, (list, tuple)) and len(r) == len(names)
                                                          for r in rows):
                # parsed JSON: only floats and ints may pass (np.asarray would turn true into 1.0)
                if _only_numbers(v for r in rows for v in r):
                    return self._check(np.array(rows, dtype=np.float64))
                return self._check(self._ragged(rows))
            try:
                X = np.asarray(rows)
            except ValueError:  # ragged
                X = np.asarray(rows, dtype=object)
            if X.dtype == object or X.ndim == 2 and X.shape[1] != len(names) or X.ndim > 2:
                return self._check(self._ragged(rows))
            return self._check(self._array(X))
        raise RowError(f"expected rows (an array, a mapping of feature -> value, or a list of mappings), "
                       f"got a {type(rows).__name__}")

    def _array(self, X: np.ndarray) -> np.ndarray:
        names = self._names
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if X.ndim != 2 or X.shape[1] != len(names):
            raise RowError(f"expected rows of {len(names)} features {names}, got an array of shape {X.shape}")
        if X.dtype.kind not in "iuf":
            if X.dtype.kind == "O":
                return self._ragged(X.tolist())
            raise RowError(f"features must be numbers, got an array of {X.dtype} "
                           f"({'booleans' if X.dtype.kind == 'b' else 'non-numbers'})")
        return np.ascontiguousarray(X, dtype=np.float64)

    def _ragged(self, rows: Sequence) -> np.ndarray:
        names = self._names
        for i, r in enumerate(rows):
            if not isinstance(r, (Sequence, np.ndarray)) or isinstance(r, (str, bytes)):
                raise RowError(f"row {i} is {_describe(r)}, expected a list of {len(names)} numbers", row=i)
            if len(r) != len(names):
                raise RowError(f"row {i} has {len(r)} values, expected {len(names)} features {names}", row=i)
            for j, v in enumerate(r):
                if not _is_number(v):
                    raise RowError(f"row {i} feature '{names[j]}' is {_describe(v)}; features must be numbers",
                                   row=i, feature=names[j])
        return np.asarray(rows, dtype=np.float64)

    def _columns(self, rows, names: Optional[list] = None) -> np.ndarray:
        names = self._names if names is None else names
        missing = [c for c in names if c not in rows]
        if missing:
            raise RowError(f"missing feature(s) {missing}; the model expects {names}", feature=missing[0])
        vals = [rows[c] for c in names]
        if all(_is_number(v) for v in vals):  # one row of scalars: the common, fast case
            return np.array([vals], dtype=np.float64)
        cols = []
        for c, v in zip(names, vals):
            if hasattr(v, "to_numpy"):  # a pandas Series
                v = v.to_numpy()
            if isinstance(v, np.ndarray):
                if v.dtype.kind in "iuf":
                    cols.append(v.astype(np.float64).reshape(-1))
                    continue
                items = v.reshape(-1).tolist()
            elif isinstance(v, (list, tuple)):
                items = list(v)
                if _only_numbers(items):
                    cols.append(np.asarray(items, dtype=np.float64))
                    continue
            else:
                items = [v]
            for row, x in enumerate(items):
                if not _is_number(x):
                    raise RowError(f"row {row} feature '{c}' is {_describe(x)}; features must be numbers",
                                   row=row, feature=c)
            cols.append(np.asarray(items, dtype=np.float64).reshape(-1))
        lengths = {len(a) for a in cols}
        if len(lengths) > 1:
            raise RowError(f"feature columns have different lengths {sorted(lengths)}")
        return np.column_stack(cols)

    def _records(self, rows: Sequence[Mapping]) -> np.ndarray:
        names = self._names
        try:
            vals = [[r[c] for c in names] for r in rows]
        except (KeyError, TypeError):
            for i, r in enumerate(rows):
                if not isinstance(r, Mapping):
                    raise RowError(f"row {i} is {_describe(r)}, expected a mapping of feature -> value",
                                   row=i) from None
                missing = [c for c in names if c not in r]
                if missing:
                    raise RowError(f"row {i}: missing feature(s) {missing}; the model expects {names}",
                                   row=i, feature=missing[0]) from None
            raise
        if not _only_numbers(v for r in vals for v in r):
            for i, r in enumerate(vals):
                for j, v in enumerate(r):
                    if not _is_number(v):
                        raise RowError(f"row {i} feature '{names[j]}' is {_describe(v)}; features must be numbers",
                                       row=i, feature=names[j])
        return np.array(vals, dtype=np.float64)

    def _vector_rows(self, rows: Sequence[Mapping], one_mapping: bool = False) -> np.ndarray:
        """Rows of a vector model: mappings holding the vector column (and the named features).
        ``one_mapping``: ``rows[0]`` is one mapping whose values may be columns (n rows)."""
        from clusterlake.io.vectors import element_index

        vec, dim = self._vector, self._vector_dim
        named = [c for c in self._names if element_index(c, vec) is None]
        elem = [(i, element_index(c, vec)) for i, c in enumerate(self._names) if element_index(c, vec) is not None]
        vectors, scalars = [], []
        for i, r in enumerate(rows):
            if not isinstance(r, Mapping):
                raise RowError(f"row {i} is {_describe(r)}, expected a mapping of feature -> value", row=i)
            missing = [c for c in [vec] + named if c not in r]
            if missing:
                raise RowError(f"row {i}: missing feature(s) {missing}; the model expects {[vec] + named}",
                               row=i, feature=missing[0])
            vectors.append(self._vector_of(r[vec], i, one_mapping))
            scalars.append(self._named_of(r, named, i, one_mapping) if named else None)
        V = np.concatenate(vectors) if one_mapping else np.stack([v[0] for v in vectors])
        n = len(V)
        X = np.empty((n, len(self._names)), dtype=np.float64)
        if named:
            S = np.concatenate(scalars)
            if len(S) != n:
                raise RowError(f"'{vec}' holds {n} vectors but the named features {len(S)} rows")
            X[:, [self._names.index(c) for c in named]] = S
        X[:, [i for i, _ in elem]] = V[:, [j for _, j in elem]]
        return X

    def _named_of(self, r: Mapping, named: list, row: int, many: bool) -> np.ndarray:
        """One record's named features (or, ``many``, columns of them); errors name record ``row``."""
        try:
            return self._columns(r, named)
        except RowError as exc:
            if many:
                raise
            text = re.sub(r"^row \d+ ", f"row {row} ", str(exc))
            raise RowError(text, row=row, feature=exc.feature) from None

    def _vector_of(self, v, row: int, many: bool) -> np.ndarray:
        """One row's vector (or, ``many``, a column of them) as an (m, dim) float64 array."""
        vec, dim = self._vector, self._vector_dim
        if hasattr(v, "to_numpy"):
            v = v.to_numpy()
        if isinstance(v, np.ndarray) and v.dtype.kind in "iuf":
            a = v.astype(np.float64)
        elif isinstance(v, (list, tuple, np.ndarray)) and not isinstance(v, (str, bytes)):
            items = list(v)
            flat = [x for it in items for x in (it if isinstance(it, (list, tuple, np.ndarray)) else [it])]
            bad = next((x for x in flat if not _is_number(x)), _NONE)
            if bad is not _NONE:
                raise RowError(f"row {row} feature '{vec}' holds {_describe(bad)}; its values must be numbers",
                               row=row, feature=vec)
            try:
                a = np.asarray(items, dtype=np.float64)
            except ValueError:
                raise RowError(f"row {row} feature '{vec}' holds vectors of different lengths; each must have "
                               f"{dim} values", row=row, feature=vec) from None
        else:
            raise RowError(f"row {row} feature '{vec}' is {_describe(v)}, expected a list of {dim} numbers",
                           row=row, feature=vec)
        a = a.reshape(1, -1) if a.ndim == 1 else a
        if a.ndim != 2 or a.shape[1] != dim:
            raise RowError(f"row {row} feature '{vec}' has length {a.shape[-1] if a.ndim else 0}, expected {dim}",
                           row=row, feature=vec)
        if not many and len(a) != 1:
            raise RowError(f"row {row} feature '{vec}' holds {len(a)} vectors, expected one", row=row, feature=vec)
        return a

    def _check(self, X: np.ndarray) -> np.ndarray:
        if X.shape[0] == 0:
            raise RowError("no rows to assign")
        if not np.isfinite(X).all():
            r, c = np.argwhere(~np.isfinite(X))[0]
            v = float(X[r, c])
            raise RowError(f"row {int(r)} feature '{self._names[c]}' is {v if not math.isnan(v) else 'NaN'}; "
                           "features must be finite numbers", row=int(r), feature=self._names[c])
        return X

    # ------------------------------------------------------------------------------------------
    def transform(self, rows: Rows) -> np.ndarray:
        """Validated rows in the model space (n, p)."""
        X = rows if isinstance(rows, np.ndarray) and rows.dtype == np.float64 and rows.ndim == 2 \
            and rows.shape[1] == len(self._names) and np.isfinite(rows).all() else self.matrix(rows)
        with np.errstate(over="ignore", invalid="ignore"):
            Z = self._prep.transform(X)
            # finite inputs far beyond the training range (|x| ~ 1e154 and up) overflow the distances
            sq = np.einsum("ij,ij->i", Z, Z)
        if not np.isfinite(sq).all():
            r = int(np.flatnonzero(~np.isfinite(sq))[0])
            raise RowError(f"row {r} has feature values too large to compare with the clusters "
                           f"(e.g. {float(np.abs(X[r]).max()):.3g}); check the units of the input", row=r)
        return Z

    def assign(self, rows: Rows, posterior: bool = False) -> Assignment:
        """Assign raw rows: see the module docstring for the accepted forms. ``posterior``: a
        mixture model also returns every component's posterior (``Assignment.posterior``, (n, k),
        columns in :attr:`cluster_ids` order); other models ignore it."""
        return self.assign_model_space(self.transform(rows), posterior)

    def assign_model_space(self, Z: np.ndarray, posterior: bool = False) -> Assignment:
        """Model-space rows by the assignment rule (exactly the batch job's columns), with
        ``is_outlier`` by this Assigner's policy: the rule's own (density) or the radius threshold."""
        res = self.explained(lambda: self._rule(Z, posterior=posterior and self.mixture is not None))
        if self.outlier_rule == "density":
            return Assignment.of(res, res.is_outlier)
        return Assignment.of(res, res.distance > self._threshold[res.index])

    @staticmethod
    def explained(run):
        """``run()``; a row a mixture cannot explain (its likelihood overflows under every
        component: values far beyond the model's range) is the client's :class:`RowError`."""
        from clusterlake.kernels.gmm import UnexplainedRows

        try:
            return run()
        except UnexplainedRows as exc:
            r = int(exc.rows[0])
            raise RowError(f"row {r} has feature values too far from every mixture component to give a "
                           "likelihood; check the units of the input", row=r) from None

    def nearest(self, rows: Rows, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` nearest clusters of every row: (cluster ids (rows, n), distances (rows, n)),
        nearest first, distances exact (computed from the differences). A mixture model ranks its
        components as ``assign`` does, most probable first (the distances are to their means)."""
        Z = self.transform(rows)
        n = max(1, min(int(n), self.k))
        if self.mixture is not None:
            from clusterlake.kernels.gmm import log_posterior

            order = np.argsort(-self.explained(lambda: log_posterior(Z, self.mixture)[1]), axis=1, kind="stable")[:, :n]
            diff = Z[:, None, :] - self._centroids[order]
            return self._ids[order], np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
        if self.metric is not None:  # a k-medoids model: every medoid under its distance, as assign() ranks them
            from clusterlake.kernels.distances import exact

            d = exact(Z, self._centroids, self.metric)
            order = np.argsort(d, axis=1, kind="stable")[:, :n]
            return self._ids[order], np.take_along_axis(d, order, 1)
        # rank with the GEMM expansion, then recompute the candidates exactly and re-sort
        score = self._c_sq[None, :] - 2.0 * (Z @ self._centroids.T)
        m = min(self.k, n + 2)  # two spare candidates absorb round-off near-ties at the cut
        cand = np.argpartition(score, m - 1, axis=1)[:, :m] if m < self.k else np.tile(np.arange(self.k), (len(Z), 1))
        cand = np.sort(cand, axis=1)  # exact ties then go to the lowest index, as in assign()
        diff = Z[:, None, :] - self._centroids[cand]
        d = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
        order = np.argsort(d, axis=1, kind="stable")[:, :n]
        return self._ids[np.take_along_axis(cand, order, 1)], np.take_along_axis(d, order, 1)


def json_id(v):
    """A JSON-safe id: numbers and strings as they are, dates as ISO text, bytes as hex, anything
    else as text."""
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or isinstance(v, (bool, int, str)) or isinstance(v, float) and np.isfinite(v):
        return v
    if isinstance(v, (_dt.date, _dt.datetime)):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.hex()
    return str(v)
