"""The nightly job's steps: read -> preprocess -> choose k -> fit -> measure -> sample passes ->
write -> publish. :func:`clusterlake.pipeline.run_job` calls them in order.

Each step is one timed stage of the run (its name in the logs and the ``runs`` table) with typed
inputs and a typed output; none writes anything visible: the tables are staged under the run's
journal by :func:`write` and committed by :meth:`~clusterlake.run.scaffold.Run.publish`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from clusterlake.run import stable_ids
from clusterlake.run.scaffold import Run
from clusterlake.stages import spark_pass

log = logging.getLogger("clusterlake")


@dataclass
class Input:
    """The validated rows, resident in the engine's tasks, and what the read found."""

    clean: object  # DataFrame: id, features (double), label/weight when configured (not cached)
    summary: object  # clusterlake.io.reader.InputSummary
    previous_art: object  # the model tonight compares with (None on the first run)
    feature_change: Optional[str]
    rows_held: object = None  # clusterlake.algorithms.resident.ResidentRows, open from the read to the write
    draw_size: int = 0  # the one uniform sample's size: the largest any step needs
    vector: object = None  # clusterlake.io.reader.VectorInput: the input's vector column, if any
    _draw: Optional[np.ndarray] = None

    def sample(self, size: int, seed: int) -> np.ndarray:
        """The first ``size`` rows (input units) of the run's one seeded uniform draw, taken on the
        first call: each prefix of it is itself a uniform sample."""
        if self._draw is None:
            with spark_pass("sample"):
                self._draw = self.rows_held.sample(max(self.draw_size, size), seed)
        return self._draw[:size]

    @property
    def features(self) -> list[str]:
        return self.summary.feature_columns

    @property
    def rows(self) -> int:
        return self.summary.rows_used

    @property
    def vector_meta(self) -> Optional[dict]:
        """The vector column in the model's metadata (serving and the update job read it)."""
        if self.vector is None:
            return None
        return {"vector_column": self.vector.column, "vector_dim": self.vector.dim,
                "vector_type": self.vector.element_type}


@dataclass
class Prepared:
    moments: object  # clusterlake.prep.transform.Moments of the input
    prep: object  # the fitted Preprocessor


@dataclass
class Fitted:
    fit: object  # clusterlake.algorithms.kmeans.KMeansFit
    previous: object  # clusterlake.algorithms.history.Previous (None on the first run)
    matching: object  # stable ids: clusterlake.algorithms.lineage match result
    auto: object = None  # clusterlake.algorithms.auto_k result (k: auto)
    metric: object = None  # the model's distance when it is not Euclidean (k-medoids): kernels.distances.Metric
    sample_distances: object = None  # k-medoids: its sample's distance matrix, until the silhouette is taken
    mixture: object = None  # a Gaussian mixture's EM result (kmeans.algorithm: gmm): algorithms.gmm.MixtureFit

    @property
    def rule(self) -> dict:
        """How a row picks its cluster, as the assignment rule's keywords (``metric``, ``mixture``)."""
        return {"metric": self.metric, "mixture": self.mixture.mixture if self.mixture is not None else None}

    @property
    def centroids(self) -> np.ndarray:
        return self.fit.centroids

    @property
    def cluster_ids(self) -> np.ndarray:
        return self.matching.ids.astype(np.int32)

    @property
    def k_selection(self) -> str:
        return "fixed" if self.auto is None else f"auto:{self.auto.criterion}"


@dataclass
class Measured:
    stats: object  # clusterlake.algorithms.cluster_stats.ClusterStats over all rows
    metrics: list  # Metric rows of scope full / sample / auto_k
    sample_z: np.ndarray  # the quality sample in model space, and its K-means positions
    sample_pos: np.ndarray
    profiles: object  # clusterlake.quality.profiles.Profiles
    descriptions: list[str]
    tree: Optional[dict]  # the cluster tree, leaves named by stable ids
    parent_ids: Optional[np.ndarray]
    by_name: dict[str, float]  # the run's own metrics (full, and the sampled silhouette) by name
    exemplars: list = field(default_factory=list)  # ids (text) of each cluster's most central rows

    @property
    def quality(self) -> dict:
        d = self.by_name
        return {m: d.get(m) for m in ("silhouette", "davies_bouldin", "calinski_harabasz")}


@dataclass
class Written:
    """What :func:`write` staged and decided."""

    artifact: object  # the saved ModelArtifact
    metrics: list  # every metric row of the run
    events: list[dict]  # lineage events
    drift: list  # drift metrics
    gate_failures: list = field(default_factory=list)
    grouping: list = field(default_factory=list)  # the grouping's metrics (grouping.enabled)


def _k_before_fit(cfg) -> int:
    """The k validation checks the row count against: with ``k: auto`` the smallest candidate."""
    return cfg.kmeans.auto.min_k if cfg.kmeans.k == "auto" else int(cfg.kmeans.k)


def _column_types(df) -> dict[str, str]:
    return {f.name: f.dataType.simpleString() for f in df.schema.fields}


def _draw_size(cfg) -> int:
    """The largest sample a step of the run takes (quality, auto-k, the sample passes)."""
    sizes = [cfg.quality.sample_size]
    if cfg.kmeans.algorithm == "kmedoids":
        sizes.append(cfg.kmeans.kmedoids.sample_size)
    elif cfg.kmeans.k == "auto":
        sizes.append(cfg.kmeans.auto.sample_size)
    if cfg.density.enabled:
        sizes.append(cfg.density.sample_size)
    if cfg.hierarchical.enabled:
        sizes.append(cfg.hierarchical.sample_size)
    return int(max(sizes))


def read_input(run: Run) -> Input:
    """Read the input once: the engine's tasks load and validate its rows together
    (:mod:`clusterlake.algorithms.resident`) and keep the valid ones until the assignments are
    written; then the invalid-row policy, constant columns and unique ids are decided, and
    tonight's features checked against the previous model's. The ids: where the footers' row-group
    statistics show no two row groups sharing an id, the tasks check each row group they load;
    else one Spark pass over the id column, before the tasks hold the slots."""
    from clusterlake.algorithms import history
    from clusterlake.faults import pause_point
    from clusterlake.io import feature_contract
    from clusterlake.io.input_files import scan_parquet
    from clusterlake.io.reader import decide, duplicate_ids, pin_version, read_table, resolve_columns, resolve_vector

    cfg, icfg = run.cfg, pin_version(run.spark, run.cfg.input)
    with run.step("read+validate") as note:
        scanned = scan_parquet(icfg) if icfg.format == "parquet" else None  # every footer, once
        raw = read_table(run.spark, icfg, scanned)
        named = resolve_columns(raw, icfg)
        vector = _read_errors(lambda: resolve_vector(raw, icfg), icfg.path)
        feats = named + (vector.names if vector else [])
        source = _read_errors(lambda: _task_source(run, raw, named, scanned, vector), icfg.path)
        by_tasks = source is not None and source.id_column is not None  # the tasks check the ids as they load
        dups = None if by_tasks else \
            _read_errors(lambda: duplicate_ids(raw, icfg.id_column), icfg.path)  # before the tasks hold the slots
        rows = _read_errors(lambda: _load(run, raw, named, source, vector), icfg.path)
        pause_point("rows.loaded", run_id=run.run_id, rows=rows.rows)
        if by_tasks:
            dups = rows.id_duplicates()
            if dups is None:  # a task did not check (cannot happen with a file source): Spark's pass
                with rows.released():
                    dups = _read_errors(lambda: duplicate_ids(raw, icfg.id_column), icfg.path)
        clean, summary = decide(raw, icfg, feats, rows.validity(), _k_before_fit(cfg), dups=dups,
                                spark_free=rows.released, vector=vector)
        previous_art = history.previous_artifact(run.model_root, run.run_date)
        change = feature_contract.check(previous_art, summary, _column_types(raw), icfg.allow_feature_change)
        rows.keep_features(summary.feature_columns)  # without the constant ones, in the model's order
        if cfg.kmeans.engine == "spark-mllib":  # MLlib's fit reads the rows again, through Spark
            from clusterlake.io.reader import output_columns

            clean = run.cache(clean.select(*output_columns(icfg, summary.feature_columns, vector)))
        note.update(rows_read=summary.rows_read, rows_used=summary.rows_used,
                    dropped=summary.rows_dropped, features=len(summary.feature_columns), tasks=rows.stage.n_tasks)
    return Input(clean, summary, previous_art, change, rows, _draw_size(cfg), vector)


def _task_source(run: Run, raw, feats: list[str], scanned=None, vector=None):
    """The input as the engine's tasks read it themselves (a FileSlices), or None: Spark reads it.
    The tasks also check the ids' uniqueness when the footers allow it (``id_column`` set)."""
    from clusterlake.io.input_files import plain_file_scan

    icfg = run.cfg.input
    types = {f.name: f.dataType.simpleString() for f in raw.schema.fields}
    profile = list(icfg.profile_columns or [])
    needed = [icfg.id_column, *feats] + ([vector.column] if vector else []) + \
        [c for c in (icfg.label_column, icfg.weight_column) if c] + profile
    doubles = [c for c in feats + profile if types[c] not in ("float", "double")] + \
        ([icfg.weight_column] if icfg.weight_column else [])
    in_tasks = icfg.read_in_tasks and not (vector and vector.ml_vector)  # an ML vector is Spark's to decode
    source = plain_file_scan(icfg, needed, doubles, scanned, unique_ids=icfg.id_column) if in_tasks else None
    log.info("the engine's tasks read %s", (f"the {len(source.files)} parquet files themselves" if source
                                            else "the input through Spark")
             + ("; the footers show the row groups' ids disjoint: the tasks check them as they load"
                if source is not None and source.id_column else ""))
    return source


def _load(run: Run, raw, feats: list[str], source=None, vector=None):
    """The input's rows loaded into the engine's tasks, validated on the way: the named features
    ``feats`` and the vector column's elements (``vector``, a VectorInput); ``source``: the files
    the tasks read themselves (:func:`_task_source`), None: Spark reads the input."""
    from clusterlake.algorithms.resident import ResidentRows, exact_in_float32
    from clusterlake.io.reader import load_columns

    cfg, icfg = run.cfg, run.cfg.input
    types = {f.name: f.dataType.simpleString() for f in raw.schema.fields}
    profile = list(icfg.profile_columns or [])
    elem_types = [vector.element_type] if vector else []
    rows = ResidentRows(run.spark, source or load_columns(raw, icfg, feats, vector), feats, icfg.id_column,
                        icfg.label_column, icfg.weight_column, exact_in_float32([types[c] for c in feats] + elem_types),
                        cfg.kmeans.num_tasks, cfg.kmeans.recovery_wait_seconds, validate=True,
                        vector=(vector.column, vector.dim) if vector else None, profile_columns=profile,
                        memory_budget=_gb_bytes(cfg.job.task_memory_gb))
    with spark_pass("load rows"):
        return run.hold(rows)


def _gb_bytes(gb: Optional[float]) -> Optional[int]:
    return None if gb is None else int(gb * (1 << 30))


def _read_errors(read, path: str):
    """``read()``; a damaged input file is an input error naming it (exit 2), as any read says."""
    from clusterlake.io.reader import spark_read_error

    try:
        return read()
    except Exception as exc:
        err = next((e for e in (spark_read_error(c, path) for c in _causes(exc)) if e is not None), None)
        if err is None:
            raise
        raise err from None


def _causes(exc: BaseException):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def preprocess(run: Run, inp: Input) -> Prepared:
    """Fit the scaling and PCA on the input's moments (one pass); refuse sample passes that would
    not fit in memory before the K-means fit, not after."""
    from clusterlake.memory import check_sample_passes
    from clusterlake.prep.transform import fit_preprocessor

    cfg = run.cfg
    with run.step("preprocess") as note:
        with spark_pass("moments"):
            moments = inp.rows_held.moments()
        pcfg = cfg.preprocess
        prep = fit_preprocessor(moments, inp.features, pcfg.scaling, pcfg.pca.enabled, pcfg.pca.components,
                                pcfg.pca.variance, normalize=cfg.kmeans.distance == "cosine")
        with spark_pass("model space"):
            inp.rows_held.prepare(prep)
        if prep.explained_variance_ratio is not None:
            note.update(components=prep.n_components, variance=round(float(prep.explained_variance_ratio.sum()), 4))
    if cfg.density.enabled or cfg.hierarchical.enabled:
        check_sample_passes(cfg, prep.n_components, inp.rows, len(inp.features))
    return Prepared(moments, prep)


def _sample_z(run: Run, inp: Input, prep, size: int) -> np.ndarray:
    """A uniform sample of ``size`` rows in model space: the first rows of the run's one draw, so
    the samples of the steps are prefixes of one another."""
    return prep.transform(inp.sample(min(size, inp.rows), run.cfg.kmeans.seed))


def choose_k(run: Run, inp: Input, pre: Prepared):
    """``kmeans.k: auto``: pick k on a sample (None when k is fixed)."""
    from clusterlake.algorithms.auto_k import choose_k as choose

    cfg, km = run.cfg, run.cfg.kmeans
    if km.k != "auto" or km.algorithm == "kmedoids":  # k-medoids: on its sample's distances, in fit()
        return None
    with run.step("auto-k") as note:
        a = km.auto
        Zk = _sample_z(run, inp, pre.prep, a.sample_size)
        sweep_iter = 50 if km.batch_size or not km.max_iter else km.max_iter  # full Lloyd on the sample
        if km.algorithm == "gmm":  # a mixture at every k, by bic or aic
            from clusterlake.algorithms.auto_mixture import choose_components

            from clusterlake.errors import ConfigError

            try:
                auto = choose_components(Zk, a.min_k, a.max_k, a.criterion, km.gmm, km.seed, sweep_iter, km.tol)
            except ValueError as exc:  # a sample too small for the range, an ill-defined covariance
                raise ConfigError(f"kmeans.k=auto with kmeans.algorithm=gmm: {exc}") from exc
        else:
            auto = choose(Zk, a.min_k, a.max_k, a.criterion, seed=km.seed, max_iter=sweep_iter, tol=km.tol,
                          silhouette_size=min(cfg.quality.sample_size, 10_000),
                          min_cluster_share=a.min_cluster_share, percentile=a.percentile,
                          spherical=km.distance == "cosine")
        note.update(k=auto.k, criterion=a.criterion, stability_ari=round(auto.stability_ari, 4))
    return auto


def fit(run: Run, inp: Input, pre: Prepared, auto=None) -> Fitted:
    """Fit K-means (or bisecting) on every row; stable ids against the previous model."""
    from clusterlake.algorithms import history
    from clusterlake.algorithms.kmeans import fit_kmeans, warm_start_centers

    cfg = run.cfg
    if cfg.kmeans.algorithm == "kmedoids":
        return _fit_kmedoids(run, inp, pre, history.load_previous(inp.previous_art, pre.prep, "kmedoids",
                                                                  cfg.kmeans.distance))
    k = auto.k if auto is not None else int(cfg.kmeans.k)
    kcfg = cfg.kmeans.model_copy(update={"k": k}) if auto is not None else cfg.kmeans
    previous = history.load_previous(inp.previous_art, pre.prep, cfg.kmeans.algorithm, cfg.kmeans.distance)
    with run.step("kmeans") as note:
        initial = warm_start_centers(previous, pre.prep, k) if cfg.kmeans.init == "previous" else None
        with spark_pass(f"kmeans fit ({cfg.kmeans.engine})"):
            f = _fit_held(inp, pre, kcfg, cfg.input.weight_column, initial)
        mixture = None
        if cfg.kmeans.algorithm == "gmm":  # EM on the resident rows, from the K-means fit
            from clusterlake.algorithms.gmm import refine

            with spark_pass("mixture fit (EM)"):
                f, mixture = refine(inp.rows_held.stage, f, cfg.kmeans.gmm)
            note.update(covariance=cfg.kmeans.gmm.covariance, mean_log_likelihood=round(mixture.log_likelihood, 6),
                        reseeded=mixture.reseeded)
        matching = stable_ids.match(previous, f.centroids, cfg.lineage.max_distance)
        note.update(k=len(f.centroids), iterations=f.n_iter, engine=f.engine, init=f.init,
                    algorithm=cfg.kmeans.algorithm,
                    **{k_ if k_ in ("tasks", "recoveries") else f"{k_}_s": v
                       for k_, v in f.timings.items() if v is not None})
    return Fitted(f, previous, matching, auto, mixture=mixture)


def _fit_kmedoids(run: Run, inp: Input, pre: Prepared, previous) -> Fitted:
    """k-medoids: the medoids chosen on the run's sample under ``kmeans.distance`` (the driver;
    every row is assigned to its nearest medoid by the tasks afterwards); stable ids as K-means'."""
    from clusterlake.algorithms import kmedoids as km
    from clusterlake.memory import driver_budget_bytes

    cfg = run.cfg
    with run.step("kmeans") as note:
        dist = km.distance_of(cfg.kmeans, pre.moments, pre.prep)
        S = _sample_z(run, inp, pre.prep, cfg.kmeans.kmedoids.sample_size)
        f, auto, D = km.fit_kmedoids(S, cfg.kmeans, dist, driver_budget_bytes(cfg.job.driver_memory_gb))
        matching = stable_ids.match(previous, f.centroids, cfg.lineage.max_distance, dist)
        note.update(k=len(f.centroids), algorithm="kmedoids", distance=dist.describe(), sample=len(S),
                    passes=f.n_iter, loss=round(f.training_cost, 6), **f.timings)
    return Fitted(f, previous, matching, auto, dist, D)


def _fit_held(inp: Input, pre: Prepared, kcfg, weight_col, initial):
    """Our engine fits on the resident rows; MLlib (for comparison) reads them through Spark,
    with the tasks' slots free meanwhile."""
    from clusterlake.algorithms.kmeans import fit_kmeans

    if kcfg.engine != "spark-mllib":
        return fit_kmeans(inp.clean, pre.prep, kcfg, weight_col, initial, stage=inp.rows_held.stage)
    with inp.rows_held.released():
        return fit_kmeans(inp.clean, pre.prep, kcfg, weight_col, initial)


def measure(run: Run, inp: Input, pre: Prepared, fitted: Fitted) -> Measured:
    """Exact metrics from per-cluster statistics (two passes), silhouette on a sample, profiles and
    archetypes, the cluster tree."""
    from clusterlake.algorithms.sample_passes import PassFit, sampled_silhouettes
    from clusterlake.kernels.assignment import AssignmentRule
    from clusterlake.quality.metrics import full_metrics

    cfg, C = run.cfg, fitted.centroids
    with run.step("metrics") as note:
        held = inp.rows_held
        with spark_pass("assign"):
            sums = held.assign(C, **fitted.rule)
        with spark_pass("cluster statistics"):
            stats = held.cluster_stats(C, pre.moments.mean)
            sdm = held.mean_distances(stats.means_z)
        metrics = full_metrics(stats, C, sdm) + _mixture_metrics(fitted, sums)
        Zs = _sample_z(run, inp, pre.prep, cfg.quality.sample_size)
        sample_pos = AssignmentRule(C, **fitted.rule)(Zs).index
        if fitted.metric is not None:  # k-medoids: its loss, mean distance and silhouette under its distance
            metrics = [m for m in metrics if m.metric != "mean_distance"] + \
                _distance_metrics(run, held, Zs, sample_pos, fitted, stats)
        elif not _passes_on(cfg):  # else in the passes' step, with theirs: one distance pass
            sil, _ = sampled_silhouettes(Zs, sample_pos, PassFit())
            metrics += [sil] if sil is not None else []
        by_name = {m.metric: m.value for m in metrics}
        note.update({m: round(v, 4) for m, v in by_name.items() if m in ("silhouette", "ari", "davies_bouldin")})
        if fitted.auto is not None:
            metrics += fitted.auto.metrics  # every candidate's scores (scope auto_k) and the stability
        with spark_pass("exemplars"):
            exemplars = held.exemplars(len(C), cfg.quality.exemplars)
        prof = _profiles(inp, pre, stats, list(cfg.input.profile_columns or []))
        descriptions = prof.descriptions(exemplars if inp.vector is not None else None)
        for cid, text in zip(fitted.cluster_ids, descriptions):
            log.info("cluster %d: %s", cid, text)
        tree, parent_ids = stable_ids.relabel_tree(_tree(fitted.fit, C, stats.counts), fitted.cluster_ids)
    return Measured(stats, metrics, Zs, sample_pos, prof, descriptions, tree, parent_ids, by_name, exemplars)


def _mixture_metrics(fitted: Fitted, sums: Optional[dict]) -> list:
    """A Gaussian mixture's figures over every row, each row once (``input.weight_column`` weights
    the fit only, as for every metric), from the assignment pass: the total and mean
    log-likelihood, BIC and AIC (scikit-learn's definitions, the model-space dimension), and the
    mean posterior of the rows' assigned components (how sure the assignments are)."""
    from clusterlake.io.contract.metrics import Metric
    from clusterlake.kernels.gmm import information_criteria

    if sums is None:
        return []
    mix, n, ll = fitted.mixture.mixture, sums["rows"], sums["log_likelihood"]
    ic = information_criteria(ll, n, mix.covariance_type, mix.k, mix.means.shape[1])
    rows = int(round(n))
    return [Metric("full", "log_likelihood", ll, rows), Metric("full", "mean_log_likelihood", ll / n, rows),
            Metric("full", "bic", ic["bic"], rows), Metric("full", "aic", ic["aic"], rows),
            Metric("full", "mean_probability", sums["probability"] / n, rows)]


def _distance_metrics(run: Run, held, Zs: np.ndarray, pos: np.ndarray, fitted: Fitted, stats) -> list:
    """A k-medoids model's figures under its own distance: over every row, its loss (the sum of
    the rows' distances to their medoid, k-medoids' objective) and ``mean_distance``; the cluster
    radii (``stats``' distance sums and maxima) become those distances too, as the
    ``assignments`` table's; on the first ``kmeans.kmedoids.sample_size`` rows of the quality
    sample, the silhouette; and Davies-Bouldin under the distance, ``davies_bouldin_<distance>``
    (each cluster's mean distance to its medoid, the medoids' distances). Inertia,
    Calinski-Harabasz and ``davies_bouldin`` stay scikit-learn's label-based figures in the
    Euclidean model space (computed before)."""
    from clusterlake.algorithms import kmedoids as km
    from clusterlake.io.contract.metrics import Metric
    from clusterlake.memory import driver_budget_bytes

    cfg = run.cfg
    with spark_pass("distance sums"):
        s, ss = held.distance_sums(len(fitted.centroids))
    stats.sum_dist, stats.sum_sq_dist, stats.max_dist = s, ss, np.maximum(held.max_distances, 0.0)
    n = int(stats.counts.sum())
    out = [Metric("full", "loss", float(s.sum()), n), Metric("full", "mean_distance", float(s.sum() / n), n)]
    out += _medoid_davies_bouldin(fitted, stats, n)
    m = min(len(Zs), cfg.kmeans.kmedoids.sample_size)
    # the quality sample and the fit's are prefixes of the run's one draw: the fit's matrix serves
    sil = km.sample_silhouette(Zs[:m], pos[:m], fitted.metric, driver_budget_bytes(cfg.job.driver_memory_gb),
                               fitted.sample_distances)
    fitted.sample_distances = None  # 8 n^2 bytes: not kept for the rest of the run
    if np.isfinite(sil):
        out.append(Metric("sample", "silhouette", float(sil), m))
    else:
        log.warning("k-medoids' silhouette is undefined on a sample of %d rows (fewer than 2 clusters in it)", m)
    return out


def _medoid_davies_bouldin(fitted: Fitted, stats, n: int) -> list:
    """Davies-Bouldin under the k-medoids model's distance, named after it (``davies_bouldin_manhattan``)."""
    from clusterlake.io.contract.metrics import Metric
    from clusterlake.kernels.distances import pairwise
    from clusterlake.kernels.metrics import davies_bouldin_from_distances

    keep = stats.counts > 0
    if keep.sum() < 2:
        return []
    M = np.asarray(fitted.centroids)[keep]
    db = davies_bouldin_from_distances(pairwise(M, M, fitted.metric), stats.sum_dist[keep] / stats.counts[keep])
    return [Metric("full", f"davies_bouldin_{fitted.metric.name}", float(db), n)]


def _profiles(inp: Input, pre: Prepared, stats, extra_columns: list[str]):
    """Profiles of the named features (a vector's elements, one z-score per dimension, tell
    nobody anything: the clusters of vectors are described by their exemplars), then of
    ``input.profile_columns`` (``extra_columns``: not clustered on, one more pass)."""
    from clusterlake.io.vectors import element_index
    from clusterlake.quality import profiles

    vcol = inp.vector.column if inp.vector is not None else None
    j = np.array([i for i, f in enumerate(inp.features) if element_index(f, vcol) is None], dtype=np.int64)
    m = pre.moments
    prof = profiles.compute(stats.counts, stats.sum_x[:, j], stats.sum_sq_dx[:, j], m.mean[j],
                            np.diag(m.m2)[j] / max(m.n, 1), [inp.features[i] for i in j])
    if not extra_columns:
        return prof
    with spark_pass("profile columns"):
        n, mean, m2 = inp.rows_held.column_moments(len(stats.counts), extra_columns)
    return profiles.combine(prof, profiles.from_moments(n, mean, m2, extra_columns))


def _tree(fit, centroids: np.ndarray, counts: np.ndarray) -> Optional[dict]:
    """Bisecting's split tree, or Ward's tree over the sized centroids (no extra pass)."""
    from clusterlake.kernels.hierarchy import centroid_tree

    if fit.tree is None and len(centroids) >= 2:
        return centroid_tree(centroids, counts)
    return fit.tree


def _passes_on(cfg) -> bool:
    return bool(cfg.density.enabled or cfg.hierarchical.enabled)


def sample_passes(run: Run, inp: Input, pre: Prepared, measured: Measured):
    """The density and hierarchical passes on one sample (a :class:`PassFit`; empty when off), and
    the sampled silhouettes of K-means and of the passes (added to ``measured`` and the fit)."""
    from clusterlake.algorithms import sample_passes as sp

    cfg = run.cfg
    if not _passes_on(cfg):
        return sp.PassFit()
    with run.step("sample-passes") as note:
        size = max(cfg.density.sample_size if cfg.density.enabled else 0,
                   cfg.hierarchical.sample_size if cfg.hierarchical.enabled else 0)
        Zp = _sample_z(run, inp, pre.prep, size)
        pfit = sp.fit_passes(cfg, Zp, sp.pass_distances(cfg, pre.moments, pre.prep))
        t0 = time.time()
        sil, pass_sils = sp.sampled_silhouettes(measured.sample_z, measured.sample_pos, pfit, Zp, cfg.density.algorithm)
        if sil is not None and "silhouette" not in measured.by_name:  # k-medoids scored its own, under its distance
            measured.metrics.append(sil)
            measured.by_name["silhouette"] = sil.value
        pfit.metrics += pass_sils
        note.update(rows=len(Zp), silhouettes_s=round(time.time() - t0, 3),
                    **{f"{k_}_s": v for k_, v in pfit.seconds.items()})
    return pfit


def _artifact(run: Run, inp: Input, pre: Prepared, fitted: Fitted, measured: Measured, pfit):
    """The run's model artifact (what serving and the next run read), before the serving layout."""
    from clusterlake.algorithms import sample_passes as sp
    from clusterlake.io import model_artifact
    from clusterlake.io.contract.centroids import cluster_figures
    from clusterlake.kernels.distances import to_spec

    cfg, prev = run.cfg, fitted.previous
    passes, extras = sp.to_artifact(pfit, cfg)
    extras.update(_mixture_arrays(fitted))
    if cfg.report.enabled:  # the report's sample lives in the model: the report needs no Spark
        from clusterlake.report.build import sample_arrays

        extras = {**extras, **sample_arrays(measured.sample_z, measured.sample_pos, fitted.cluster_ids,
                                            cfg.report.sample_size, pfit.density, fitted.metric)}
    return model_artifact.ModelArtifact(
        run_id=run.run_id, run_date=run.run_date, prep=pre.prep, centroids=fitted.centroids,
        cluster_ids=fitted.cluster_ids, distance=cfg.kmeans.distance, algorithm=cfg.kmeans.algorithm,
        meta={"job": cfg.job.name, "id_column": cfg.input.id_column, "engine": fitted.fit.engine,
              "init": fitted.fit.init, "descriptions": measured.descriptions, "exemplars": measured.exemplars,
              **({"metric": to_spec(fitted.metric)} if fitted.metric is not None else {}),
              **({"mixture": _mixture_meta(fitted.mixture, cfg.kmeans.gmm)} if fitted.mixture is not None else {}),
              **(inp.vector_meta or {})},
        tree=measured.tree, passes=passes, extras=extras, cluster_stats=cluster_figures(measured.stats),
        lineage={"kind": "full", "previous_run_id": prev.run_id if prev else None, "base_run_id": run.run_id,
                 "assignment_runs": [[run.run_id, run.run_date]], "next_cluster_id": fitted.matching.next_id},
        quality=measured.quality,
    )


def _mixture_arrays(fitted: Fitted) -> dict:
    """A mixture's weights and covariances as artifact arrays (the means are the centroids)."""
    if fitted.mixture is None:
        return {}
    mix = fitted.mixture.mixture
    return {"mixture_weights": mix.weights, "mixture_covariances": np.asarray(mix.covariances, np.float64)}


def _mixture_meta(mf, section) -> dict:
    """What model.json says of a mixture: its covariance type and how EM ran."""
    return {"covariance_type": mf.mixture.covariance_type, "reg_covar": section.reg_covar, "tol": section.tol,
            "iterations": mf.n_iter, "converged": mf.converged, "reseeded": mf.reseeded,
            "em_mean_log_likelihood": mf.log_likelihood}  # at EM's last E-step (scikit-learn's lower_bound_)


def serving_layout(art, held, cfg, model_dir) -> None:
    """What real-time serving reads (docs/serving.md), added to ``art`` before it is saved: each
    cluster's radius quantiles (for the radius outlier rule) and, under ``<model>/members/``, a
    sample of each cluster's rows (for similar-item queries), one parquet file per cluster. Both
    from the resident rows (``held``), whose assignment is the model's."""
    import time

    from clusterlake.algorithms.members import member_fractions, members_per_cluster, write_member_files

    with spark_pass("radius quantiles"):
        art.cluster_stats.update(held.radius_quantiles(art.cluster_stats["sizes"]))
    sv = cfg.serving
    per = members_per_cluster(sv.members_per_cluster, sv.max_members, len(art.cluster_ids))
    if per != sv.members_per_cluster:
        log.info("serving layout: about %d member rows per cluster, not serving.members_per_cluster=%s: "
                 "%d clusters share serving.max_members=%d", per, sv.members_per_cluster, len(art.cluster_ids),
                 sv.max_members)
    if per == 0:
        art.meta["members"] = {"per_cluster": 0, "runs": []}
        return
    t0 = time.time()
    with spark_pass("member sample"):
        ids, pos, dist, z = held.members(member_fractions(art.cluster_stats["sizes"], per), cfg.kmeans.seed)
        kept = write_member_files(model_dir.child("members"), art.cluster_ids, ids, pos, dist, z)
    art.cluster_stats["members"] = kept
    art.meta["members"] = {"per_cluster": per, "runs": [art.run_id]}
    log.info("serving layout: %d member rows (about %s per cluster) under %s in %.1f s", int(kept.sum()),
             "all" if per is None else per, model_dir.child("members").uri, time.time() - t0)


def _assign_and_save(run: Run, staged: list, inp: Input, fitted: Fitted, pfit, art) -> dict:
    """The tasks write every row's assignment (staged: ``assignments``), the model is saved with
    its serving layout, and the resident rows are released. Returns the pass counts."""
    from clusterlake.faults import pause_point
    from clusterlake.io import model_artifact

    held = inp.rows_held
    serving_layout(art, held, run.cfg, run.model_dir)

    def write(folder):
        return held.write_assignments(folder, fitted.centroids, fitted.cluster_ids, run.run_id,
                                      pfit.density, pfit.hierarchy, **fitted.rule)

    with spark_pass("write assignments"):
        st, counts = run.store.stage_files("assignments", write)
    staged.append(st)
    model_artifact.save(art, run.model_dir)
    pause_point("model.saved", run_id=run.run_id, path=run.model_dir.uri)
    run.release(held)  # the task slots are Spark's again: the small tables and the lineage join
    return counts


def _lineage(run: Run, staged_asg, fitted: Fitted, measured: Measured):
    """Lineage events and drift metrics against the previous model (row overlap where comparable)."""
    from clusterlake.algorithms import history

    prev, overlap = fitted.previous, None
    if prev is not None and prev.comparable:
        asg = run.spark.read.parquet(staged_asg.staged.uri)  # tonight's ids and clusters, as staged
        overlap = history.overlap_counts(run.store, asg, run.cfg.input.id_column, prev, fitted.matching.ids)
    counts = np.asarray(measured.stats.counts, dtype=np.float64)
    return stable_ids.events_and_drift(prev, fitted.matching, fitted.centroids, counts, overlap, measured.quality,
                                       run.cfg.lineage, len(fitted.centroids), fitted.metric)


def _gates(cfg, metrics: list) -> list:
    """Quality gates, then drift thresholds: ``fail`` raises (nothing is committed), ``warn``
    returns the failures for the runs row."""
    from clusterlake.quality import gates

    failures = gates.check(cfg.quality.gates, metrics)
    if failures:
        gates.act(failures, cfg.quality.on_gate_failure)
    drifted = gates.check_drift(cfg.quality.drift, metrics)
    if drifted:
        gates.act(drifted, cfg.quality.drift.on_failure, what="drift check")
    return failures + drifted


def write(run: Run, staged: list, inp: Input, pre: Prepared, fitted: Fitted, measured: Measured, pfit) -> Written:
    """Save the model and stage every table of the run (assignments, centroids, metrics,
    profiles, lineage, and with ``grouping.enabled`` the groups, once the engine's tasks have
    freed their slots); the gates decide before anything is committed."""
    from clusterlake.algorithms import sample_passes as sp
    from clusterlake.io.contract import centroids, lineage, metrics as metrics_table, profiles

    cfg, ids = run.cfg, fitted.cluster_ids
    with run.step("write") as note:
        art = _artifact(run, inp, pre, fitted, measured, pfit)
        counts = _assign_and_save(run, staged, inp, fitted, pfit, art)
        staged_asg = staged[0]
        grouped = _grouping(run, staged, inp.summary.version) if cfg.grouping.enabled else []
        staged.append(run.stage_rows("centroids", centroids.rows(
            run.run_id, art.cluster_stats, fitted.centroids, ids, measured.parent_ids, measured.descriptions,
            measured.exemplars or None, _mixture_arrays(fitted).get("mixture_weights")), centroids.DDL))
        events, drift = _lineage(run, staged_asg, fitted, measured)
        metrics = measured.metrics + drift + grouped
        if cfg.density.enabled or cfg.hierarchical.enabled:
            metrics = metrics + pfit.metrics + sp.full_pass_metrics(counts, pfit, cfg.density.algorithm,
                                                                    cfg.input.label_column is not None)
        prev_id = fitted.previous.run_id if fitted.previous is not None else None
        staged.append(run.stage_rows("metrics", metrics_table.rows(run.run_id, metrics, len(ids)), metrics_table.DDL))
        staged.append(run.stage_rows("profiles", profiles.rows(measured.profiles, ids, run.run_id), profiles.DDL))
        staged.append(run.stage_rows("lineage", lineage.rows(run.run_id, prev_id, events), lineage.DDL))
        failures = _gates(cfg, metrics)
        note.update(assignments=staged_asg.rows)
        # (SparkDeltaStore stages lazily: its files, and their row count, exist only at commit)
        staged_asg.check_rows(inp.rows, "rows were validated")
    return Written(art, metrics, events, drift, failures, grouped)


def _grouping(run: Run, staged: list, version: Optional[int]) -> list:
    """The near-duplicate groups beside K-means: the grouping column read and signed (its own
    invalid rows counted under its own reasons; a Delta input at the version K-means read), grouped,
    the ``groups`` table staged. Returns the grouping's metrics."""
    from clusterlake.run import grouping

    signed = grouping.read_signed(run, step="grouping: read+sign", check_ids=False, version=version)
    g, metrics = grouping.group_step(run, signed)
    grouping.stage_groups(run, staged, g, signed)
    return metrics


def runs_record(run: Run, pre: Prepared, fitted: Fitted, measured: Measured, written: Written, inp: Input):
    """What the ``runs`` row says of this run."""
    from clusterlake.io.contract.runs import FitFacts, RunRecord

    return RunRecord(kind="full", fit=FitFacts.of(fitted.fit), n_components=pre.prep.n_components,
                     model_path=run.model_dir.uri, silhouette=measured.by_name.get("silhouette"),
                     gate_failures=written.gate_failures, k_selection=fitted.k_selection,
                     lineage=written.artifact.lineage, feature_change=inp.feature_change)


def result(run: Run, versions: dict, inp: Input, pre: Prepared, fitted: Fitted, measured: Measured,
           written: Written):
    """The :class:`~clusterlake.run.result.RunResult` of a committed run."""
    from clusterlake.run.result import RunResult, pass_summary

    s, prev = inp.summary, fitted.previous
    return RunResult(
        run_id=run.run_id, run_date=run.run_date, output_path=run.store.root.uri, model_path=run.model_dir.uri,
        k=len(fitted.centroids), sizes=[int(c) for c in measured.stats.counts], metrics=measured.by_name,
        table_versions=versions, rows_read=s.rows_read, rows_used=s.rows_used, rows_dropped=s.rows_dropped,
        seconds=round(run.seconds, 2), stage_seconds=run.step.seconds, spark_passes=run.step.passes,
        feature_columns=inp.features,
        n_components=pre.prep.n_components, passes=pass_summary(written.metrics),
        descriptions=measured.descriptions, k_selection=fitted.k_selection,
        gate_failures=[str(f) for f in written.gate_failures], cluster_ids=[int(c) for c in fitted.cluster_ids],
        previous_run_id=prev.run_id if prev else None, lineage=stable_ids.event_counts(written.events),
        drift={m.metric: m.value for m in written.drift if m.cluster_id is None},
        grouping={m.metric: m.value for m in written.grouping},
    )
