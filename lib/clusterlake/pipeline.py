"""The nightly job: read -> validate -> preprocess -> fit -> assign -> metrics -> publish.

:func:`run_job` wires the library together; ``jobs/cluster.py`` and ``clusterlake run`` call it.
Everything before *publish* writes nothing visible; publish commits the tables one by one and the
``runs`` row last (see :mod:`clusterlake.io.tables`), and moves ``model/latest`` after that.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from clusterlake import __version__
from clusterlake.config import JobConfig
from clusterlake.stages import Stages

log = logging.getLogger("clusterlake")


@dataclass
class RunResult:
    run_id: str
    run_date: str
    output_path: str
    model_path: str
    k: int
    sizes: list[int]
    metrics: dict[str, float]
    table_versions: dict[str, Optional[int]]
    rows_read: int
    rows_used: int
    rows_dropped: int
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    feature_columns: list[str] = field(default_factory=list)
    n_components: int = 0
    passes: dict = field(default_factory=dict)  # "dbscan"/"hdbscan"/"hierarchical@L" -> {metric: value}
    descriptions: list[str] = field(default_factory=list)  # archetype text per cluster (index = cluster id)
    k_selection: str = "fixed"
    gate_failures: list[str] = field(default_factory=list)
    cluster_ids: list[int] = field(default_factory=list)  # stable id of each cluster (index as in sizes)
    previous_run_id: Optional[str] = None
    lineage: dict = field(default_factory=dict)  # event -> count (persist/split/merge/new/retired)
    drift: dict = field(default_factory=dict)  # run-level drift metrics against the previous run
    kind: str = "full"  # full | update
    report_path: Optional[str] = None  # the run's HTML report (None: report.enabled is off, or it failed)


def publish(store, staged, stage_runs, model_root, lock) -> dict:
    """Commit the staged tables and the runs row, then point ``model/latest`` at the run."""
    from clusterlake.io import model_artifact
    from clusterlake.io.tables import publish_run

    return publish_run(store, staged, stage_runs,
                       after_commit=lambda: model_artifact.point_latest(model_root, store.run_id),
                       guard=lock.assert_held)


def new_run_id(run_date: str) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{run_date.replace('-', '')}-{stamp}-{uuid.uuid4().hex[:8]}"


@contextmanager
def open_output(path: str, run_id: str):
    """Check ``output.path`` and hold its run lock (exit 2 / 75 before Spark starts); yields the lock."""
    from clusterlake.io.fs import location
    from clusterlake.io.lock import RunLock
    from clusterlake.io.output_check import check_output_path

    check_output_path(path)
    with RunLock(location(path), run_id) as lock:
        yield lock


def _column_types(df) -> dict[str, str]:
    return {f.name: f.dataType.simpleString() for f in df.schema.fields}


def _versions() -> dict[str, str]:
    import pyspark
    import sklearn

    return {"clusterlake": __version__, "pyspark": pyspark.__version__, "python": platform.python_version(),
            "numpy": np.__version__, "scikit-learn": sklearn.__version__}


def run_job(cfg: JobConfig, spark=None) -> RunResult:
    """Run the whole job once. Raises :class:`~clusterlake.errors.ClusterlakeError` on bad input
    (before anything is written) and leaves the previous run's tables in place on any failure."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from clusterlake.algorithms import history
    from clusterlake.algorithms.kmeans import fit_kmeans, warm_start_centers
    from clusterlake.algorithms.passes import (
        assign_rows, cluster_stats, input_moments, mean_distance_to_means, sample_rows,
    )
    from clusterlake.io import feature_contract, model_artifact
    from clusterlake.io.reader import read_table, validate
    from clusterlake.faults import pause_point
    from clusterlake.io.tables import make_store, recover_interrupted, staging
    from clusterlake.algorithms import sample_passes
    from clusterlake.kernels.hierarchy import centroid_tree
    from clusterlake.memory import check_sample_passes
    from clusterlake.algorithms.auto_k import choose_k
    from clusterlake.quality import gates, profiles
    from clusterlake.kernels.distance import assign
    from clusterlake.prep.transform import fit_preprocessor
    from clusterlake.quality.metrics import full_metrics, sample_silhouette
    from clusterlake.session import build_session

    t_start = time.time()
    started_at = dt.datetime.now(dt.timezone.utc)
    run_date = cfg.resolved_run_date.isoformat()
    run_id = new_run_id(run_date)
    stage = Stages()
    log.info("run %s of job %s for run_date %s", run_id, cfg.job.name, run_date)
    icfg = cfg.input
    k_auto = cfg.kmeans.k == "auto"
    k = cfg.kmeans.auto.min_k if k_auto else int(cfg.kmeans.k)  # auto: the smallest candidate must fit the rows

    # one run per output path: the recovery below must not mistake a live run for a dead one. The
    # path and the lock are checked before Spark starts (seconds, not a JVM start-up)
    with open_output(cfg.output.path, run_id) as lock:
        if spark is None:
            spark = build_session(cfg.spark, f"clusterlake-{cfg.job.name}")
        store = make_store(spark, cfg.output, run_date, run_id)
        recovered = recover_interrupted(store)
        if recovered:
            log.warning("recovered interrupted run(s) %s", recovered)
        model_root = store.root.child("model")

        with stage("read+validate") as note:
            raw = read_table(spark, icfg)
            clean, summary = validate(raw, icfg, k)
            previous_art = history.previous_artifact(model_root, run_date)
            feature_change = feature_contract.check(previous_art, summary, _column_types(raw),
                                                    icfg.allow_feature_change)
            clean = clean.persist(StorageLevel.MEMORY_AND_DISK)
            note.update(rows_read=summary.rows_read, rows_used=summary.rows_used,
                        dropped=summary.rows_dropped, features=len(summary.feature_columns))
        feats = summary.feature_columns
        persisted: list = []  # DataFrames cached by this run, released at the end
        try:
            with stage("preprocess") as note:
                moments = input_moments(clean, feats)
                pcfg = cfg.preprocess
                prep = fit_preprocessor(moments, feats, pcfg.scaling, pcfg.pca.enabled,
                                        pcfg.pca.components, pcfg.pca.variance,
                                        normalize=cfg.kmeans.distance == "cosine")
                if prep.explained_variance_ratio is not None:
                    note.update(components=prep.n_components,
                                variance=round(float(prep.explained_variance_ratio.sum()), 4))
            passes_on = cfg.density.enabled or cfg.hierarchical.enabled
            if passes_on:  # refuse a sample that would not fit before the K-means fit, not after
                check_sample_passes(cfg, prep.n_components, summary.rows_used, len(feats))

            kcfg, auto = cfg.kmeans, None
            if k_auto:
                with stage("auto-k") as note:
                    a = cfg.kmeans.auto
                    ksample = sample_rows(clean, feats, summary.rows_used, min(a.sample_size, summary.rows_used),
                                          cfg.kmeans.seed + 3)
                    Zk = prep.transform(ksample[feats].to_numpy(dtype=np.float64))
                    del ksample
                    auto = choose_k(Zk, a.min_k, a.max_k, a.criterion, seed=cfg.kmeans.seed,
                                    max_iter=cfg.kmeans.max_iter, tol=cfg.kmeans.tol,
                                    silhouette_size=min(cfg.quality.sample_size, 10_000),
                                    min_cluster_share=a.min_cluster_share, percentile=a.percentile,
                                    spherical=cfg.kmeans.distance == "cosine")
                    del Zk
                    k = auto.k
                    kcfg = cfg.kmeans.model_copy(update={"k": k})
                    note.update(k=k, criterion=a.criterion, stability_ari=round(auto.stability_ari, 4))

            previous = history.load_previous(previous_art, prep)
            with stage("kmeans") as note:
                initial = warm_start_centers(previous, prep, k) if cfg.kmeans.init == "previous" else None
                fit = fit_kmeans(clean, prep, kcfg, icfg.weight_column, initial)
                centroids = fit.centroids
                matching = _match(previous, centroids, cfg.lineage.max_distance)
                cluster_ids = matching.ids.astype(np.int32)
                note.update(k=len(centroids), iterations=fit.n_iter, engine=fit.engine, init=fit.init,
                            algorithm=cfg.kmeans.algorithm,
                            **{k_ if k_ in ("tasks", "recoveries") else f"{k_}_s": v
                               for k_, v in fit.timings.items() if v is not None})

            with stage("metrics") as note:
                stats = cluster_stats(clean, prep, centroids, icfg.label_column, x_center=moments.mean)
                sdm = mean_distance_to_means(clean, prep, centroids, stats.means_z)
                metrics = full_metrics(stats, centroids, sdm)
                qsize = min(cfg.quality.sample_size, summary.rows_used)
                sample = sample_rows(clean, feats, summary.rows_used, qsize, cfg.kmeans.seed)
                Zs = prep.transform(sample[feats].to_numpy(dtype=np.float64))
                sample_pos = assign(Zs, centroids)[0]
                sil = sample_silhouette(Zs, sample_pos, cfg.kmeans.seed)
                if sil is not None:
                    metrics.append(sil)
                mdict = {m.metric: m.value for m in metrics}
                note.update({m: round(v, 4) for m, v in mdict.items() if m in ("silhouette", "ari", "davies_bouldin")})
                if auto is not None:
                    metrics += auto.metrics  # every candidate's scores (scope auto_k) and the stability
                prof = profiles.compute(stats.counts, stats.sum_x, stats.sum_sq_dx, moments.mean,
                                        np.diag(moments.m2) / max(moments.n, 1), feats)
                descriptions = prof.descriptions()
                for cid, text in zip(cluster_ids, descriptions):
                    log.info("cluster %d: %s", cid, text)
                tree = fit.tree
                if tree is None and len(centroids) >= 2:  # Ward's tree over the sized centroids: no extra pass
                    tree = centroid_tree(centroids, stats.counts)
                tree, parent_ids = _relabel_tree(tree, cluster_ids)
                quality = {m_: mdict.get(m_) for m_ in ("silhouette", "davies_bouldin", "calinski_harabasz")}

            pfit = sample_passes.PassFit()
            if passes_on:
                with stage("sample-passes") as note:
                    size = max(cfg.density.sample_size if cfg.density.enabled else 0,
                               cfg.hierarchical.sample_size if cfg.hierarchical.enabled else 0)
                    psample = sample_rows(clean, feats, summary.rows_used, min(size, summary.rows_used),
                                          cfg.kmeans.seed + 7)
                    order = np.random.default_rng(cfg.kmeans.seed).permutation(len(psample))
                    Zp = prep.transform(psample[feats].to_numpy(dtype=np.float64)[order])
                    del psample
                    pfit = sample_passes.fit_passes(cfg, Zp, qsize)
                    del Zp
                    note.update(rows=len(order), **{f"{k_}_s": v for k_, v in pfit.seconds.items()})

            report_extras = {}
            if cfg.report.enabled:  # the report's sample lives in the model: the report needs no Spark
                from clusterlake.report.build import sample_arrays

                report_extras = sample_arrays(Zs, sample_pos, cluster_ids, cfg.report.sample_size, pfit.density)
            del Zs
            model_dir = model_root.child(run_id)
            with staging(store, model_dir) as staged:
                with stage("write") as note:
                    cs = cluster_table_stats(stats)
                    pass_art = sample_passes.to_artifact(pfit, cfg)
                    counts = cs["sizes"]
                    art = model_artifact.ModelArtifact(
                        run_id=run_id, run_date=run_date, prep=prep, centroids=centroids,
                        cluster_ids=cluster_ids, distance=cfg.kmeans.distance, algorithm=cfg.kmeans.algorithm,
                        meta={"job": cfg.job.name, "id_column": icfg.id_column, "engine": fit.engine, "init": fit.init,
                              "descriptions": descriptions},
                        tree=tree, passes=pass_art[0], extras={**pass_art[1], **report_extras},
                        cluster_stats=cs,
                        lineage={"kind": "full", "previous_run_id": previous.run_id if previous else None,
                                 "base_run_id": run_id, "assignment_runs": [[run_id, run_date]],
                                 "next_cluster_id": matching.next_id},
                        quality=quality,
                    )
                    cen_df = _centroids_df(spark, run_id, cs, centroids, cluster_ids, parent_ids, descriptions)
                    staged.append(store.stage("centroids", cen_df, files=1))
                    label = icfg.label_column if passes_on else None
                    asg = assign_rows(clean, prep, centroids, cluster_ids, icfg.id_column, pfit.density, pfit.hierarchy, label)
                    # computed once, then summarised (radius quantiles, passes, lineage) and written
                    asg = asg.persist(StorageLevel.MEMORY_AND_DISK)
                    persisted.append(asg)
                    _serving_layout(art, asg, clean, cfg, model_dir)
                    model_artifact.save(art, model_dir)
                    pause_point("model.saved", run_id=run_id, path=model_dir.uri)
                    overlap = None
                    if previous is not None and previous.comparable:
                        overlap = history.overlap_counts(store, asg, icfg.id_column, previous, matching.ids)
                    events, drift = _lineage(previous, matching, centroids, counts, overlap, quality, cfg.lineage,
                                             len(centroids))
                    metrics = metrics + drift
                    if passes_on:
                        pass_metrics = sample_passes.full_pass_metrics(
                            asg, pfit, cfg.density.algorithm, label is not None)
                        metrics = metrics + pfit.metrics + pass_metrics
                        asg = asg.drop("__passthrough")
                    asg = asg.withColumn("run_id", F.lit(run_id))
                    staged.append(store.stage("assignments", asg))
                    staged.append(store.stage("metrics", _metrics_df(spark, run_id, metrics, len(centroids)), files=1))
                    staged.append(store.stage("profiles", spark.createDataFrame(
                        profiles.rows(prof, cluster_ids, run_id), profiles.PROFILES_DDL), files=1))
                    staged.append(store.stage("lineage", _lineage_df(spark, run_id, previous, events), files=1))
                    failures = gates.check(cfg.quality.gates, metrics)
                    if failures:
                        gates.act(failures, cfg.quality.on_gate_failure)  # fail: raises, nothing is committed
                    drifted = gates.check_drift(cfg.quality.drift, metrics)
                    if drifted:
                        gates.act(drifted, cfg.quality.drift.on_failure, what="drift check")
                    failures = failures + drifted
                    note.update(assignments=staged[1].rows)
                    # (SparkDeltaStore stages lazily: its files, and their row count, exist only at commit)
                    if staged[1].files and staged[1].rows != summary.rows_used:
                        raise RuntimeError(
                            f"assignments has {staged[1].rows} rows but {summary.rows_used} rows were validated"
                        )

                def stage_runs(versions):
                    runs = _runs_row(cfg, run_id, run_date, started_at, t_start, stage.seconds, summary,
                                     fit, mdict, model_dir.uri, versions, prep, failures,
                                     f"auto:{cfg.kmeans.auto.criterion}" if auto is not None else "fixed",
                                     lineage=art.lineage, feature_change=feature_change)
                    return store.stage("runs", spark.createDataFrame([runs], _RUNS_DDL), files=1)

                with stage("publish"):
                    versions = publish(store, staged, stage_runs, model_root, lock)
        finally:
            for df_ in [clean, *persisted]:
                df_.unpersist()

        sizes = [int(c) for c in stats.counts]
        result = RunResult(
            run_id=run_id, run_date=run_date, output_path=store.root.uri, model_path=model_dir.uri,
            k=len(centroids), sizes=sizes, metrics=mdict, table_versions=versions,
            rows_read=summary.rows_read, rows_used=summary.rows_used, rows_dropped=summary.rows_dropped,
            seconds=round(time.time() - t_start, 2), stage_seconds=stage.seconds,
            feature_columns=feats, n_components=prep.n_components, passes=_pass_summary(metrics),
            descriptions=descriptions, k_selection=f"auto:{cfg.kmeans.auto.criterion}" if auto is not None else "fixed",
            gate_failures=[str(f) for f in failures], cluster_ids=[int(c) for c in cluster_ids],
            previous_run_id=previous.run_id if previous else None,
            lineage=_event_counts(events), drift={m.metric: m.value for m in drift if m.cluster_id is None},
        )
        log.info("run %s committed in %.1f s", run_id, result.seconds)
    if cfg.report.enabled:
        result.report_path = _report(store.root.uri, run_id, cfg.report.history_runs)
    return result


def _report(output_path: str, run_id: str, history_runs: int) -> Optional[str]:
    """Write the run's HTML report. The run is committed: a failure here is logged, not raised
    (``clusterlake report --output ... --run ...`` rebuilds it)."""
    from clusterlake.report.build import write_report

    try:
        return write_report(output_path, run_id, history_runs)
    except Exception as exc:  # noqa: BLE001 (the committed run must not fail over its report)
        log.error("run %s is committed but its report could not be written: %s; rebuild it with "
                  "clusterlake report --output %s --run %s", run_id, exc, output_path, run_id, exc_info=True)
        return None


# ----------------------------------------------------------------------------------------------
# table rows


def _serving_layout(art, asg, clean, cfg: JobConfig, model_dir) -> None:
    """What real-time serving reads (docs/serving.md), added to ``art`` before it is saved: each
    cluster's radius quantiles (for the radius outlier rule) and, under ``<model>/members/``, a
    sample of each cluster's rows (for similar-item queries), one parquet file per cluster."""
    from clusterlake.algorithms.passes import member_fractions, radius_quantiles, write_members

    art.cluster_stats.update(radius_quantiles(asg, art.cluster_ids))
    per = cfg.serving.members_per_cluster
    if per == 0:
        art.meta["members"] = {"per_cluster": 0, "runs": []}
        return
    t0 = time.time()
    kept = write_members(clean, art.prep, art.centroids, art.cluster_ids, cfg.input.id_column,
                         member_fractions(art.cluster_stats["sizes"], per), cfg.kmeans.seed,
                         model_dir.child("members").uri)
    art.cluster_stats["members"] = kept
    art.meta["members"] = {"per_cluster": per, "runs": [art.run_id]}
    log.info("serving layout: %d member rows (about %s per cluster) under %s in %.1f s", int(kept.sum()),
             "all" if per is None else per, model_dir.child("members").uri, time.time() - t0)


def cluster_table_stats(stats) -> dict:
    """The per-cluster figures the centroids table and the model artifact keep (arrays, index =
    position): sizes, means_x (input units), radius_mean/rms/max (model space)."""
    c = np.asarray(stats.counts, dtype=np.float64)
    safe = np.maximum(c, 1.0)
    return {"sizes": c, "means_x": np.asarray(stats.means_x, dtype=np.float64),
            "radius_mean": np.where(c > 0, stats.sum_dist / safe, 0.0),
            "radius_rms": np.where(c > 0, np.sqrt(stats.sum_sq_dist / safe), 0.0),
            "radius_max": np.asarray(stats.max_dist, dtype=np.float64)}


def _centroids_df(spark, run_id, cs: dict, centroids, cluster_ids, parent_ids=None, descriptions=None):
    """One row per cluster from :func:`cluster_table_stats`-shaped arrays ``cs``."""
    sizes = cs["sizes"]
    n = float(sizes.sum())
    rows = []
    for i, cid in enumerate(cluster_ids):
        c = float(sizes[i])
        rows.append((
            int(cid), int(round(c)), c / n,
            [float(v) for v in cs["means_x"][i]] if c > 0 else None,
            [float(v) for v in centroids[i]],
            float(cs["radius_mean"][i]) if c > 0 else None,
            float(cs["radius_rms"][i]) if c > 0 else None,
            float(cs["radius_max"][i]) if c > 0 else None,
            int(parent_ids[i]) if parent_ids is not None and parent_ids[i] >= 0 else None, run_id,
            descriptions[i] if descriptions is not None else None,
        ))
    ddl = ("cluster_id int, size long, share double, centroid array<double>, centroid_model array<double>, "
           "radius_mean double, radius_rms double, radius_max double, parent_id int, run_id string, "
           "description string")
    return spark.createDataFrame(rows, ddl)


def _metrics_df(spark, run_id, metrics, k):
    rows = [(m.scope, m.algorithm, m.metric, float(m.value), int(k if m.k is None else m.k), int(m.sample_size),
             None if m.cluster_id is None else int(m.cluster_id), run_id)
            for m in metrics]
    ddl = ("scope string, algorithm string, metric string, value double, k int, sample_size long, "
           "cluster_id int, run_id string")
    return spark.createDataFrame(rows, ddl)


# ----------------------------------------------------------------------------------------------
# stable ids, lineage, drift (issue 7; the numpy side is clusterlake.algorithms.lineage)

LINEAGE_DDL = ("run_id string, previous_run_id string, cluster_id int, previous_cluster_id int, event string, "
               "distance double, overlap_previous double, overlap_current double, size long, "
               "previous_size long, basis string")
_LINEAGE_KEYS = ("cluster_id", "previous_cluster_id", "event", "distance", "overlap_previous",
                 "overlap_current", "size", "previous_size", "basis")


def _match(previous, centroids: np.ndarray, max_distance: float):
    """Stable ids for tonight's centroids: the previous run's ids where a centroid is matched
    (Hungarian method, within ``max_distance`` radii), fresh never-used ids otherwise."""
    from clusterlake.algorithms.lineage import match_clusters

    p = centroids.shape[1]
    none = (np.empty((0, p)), np.empty(0, dtype=np.int64), np.empty(0))
    if previous is None:
        return match_clusters(centroids, *none, max_distance, 0)
    nxt = previous.artifact.next_cluster_id
    if not previous.comparable:
        log.warning("stable ids: %s; every cluster gets a new id (from %d)", previous.reason, nxt)
        return match_clusters(centroids, *none, max_distance, nxt)
    m = match_clusters(centroids, previous.centroids, previous.ids, previous.radius, max_distance, nxt)
    kept = int((m.prev_index >= 0).sum())
    log.info("stable ids against run %s: %d of %d clusters keep their id, %d new, %d retired "
             "(lineage.max_distance=%g radii)", previous.run_id, kept, len(centroids), len(centroids) - kept,
             len(m.retired), max_distance)
    return m


def _lineage(previous, matching, centroids, sizes, overlap, quality, lcfg, k):
    """The lineage events of this run and its drift metrics (scope drift) against the previous run."""
    from clusterlake.algorithms import lineage

    ids = [int(c) for c in matching.ids]
    if previous is None or not previous.comparable:
        basis = "first run" if previous is None else "features changed"
        events = [dict(cluster_id=c, event="new", size=int(n), basis=basis) for c, n in zip(ids, sizes)]
        if previous is not None:
            events += [dict(previous_cluster_id=int(c), event="retired", previous_size=int(n), basis=basis)
                       for c, n in zip(previous.ids, previous.sizes)]
        return events, []
    events = lineage.lineage_rows(matching, previous.ids, sizes, previous.sizes, overlap=overlap,
                                  min_overlap=lcfg.min_overlap, C=centroids, prev_C=previous.centroids,
                                  prev_radius=previous.radius)
    drift = lineage.drift_metrics(matching, sizes, previous.sizes, previous.ids, overlap=overlap,
                                  quality=quality, prev_quality=previous.artifact.quality, k=k)
    return events, drift


def _lineage_df(spark, run_id, previous, events):
    prev_id = previous.run_id if previous is not None else None

    def val(e, key):
        v = e.get(key)
        if v is None or (isinstance(v, float) and v != v):
            return None
        return int(v) if key in ("cluster_id", "previous_cluster_id", "size", "previous_size") else (
            float(v) if key in ("distance", "overlap_previous", "overlap_current") else str(v))

    rows = [(run_id, prev_id, *(val(e, key) for key in _LINEAGE_KEYS)) for e in events]
    return spark.createDataFrame(rows, LINEAGE_DDL)


def _event_counts(events) -> dict:
    out: dict = {}
    for e in events:
        out[e["event"]] = out.get(e["event"], 0) + 1
    return out


def _relabel_tree(tree, cluster_ids):
    """The cluster tree with leaves named by stable ids and inner nodes numbered from
    max(cluster_id) + 1; returns (tree, parent id of each cluster)."""
    if tree is None:
        return None, None
    k = len(cluster_ids)
    base = int(np.max(cluster_ids)) + 1 if k else 0

    def name(n):
        n = np.asarray(n, dtype=np.int64)
        leaf = (n >= 0) & (n < k)
        out = np.where(n >= k, base + (n - k), n)
        out[leaf] = np.asarray(cluster_ids, dtype=np.int64)[n[leaf]]
        return out

    node_ids = np.asarray(tree["node_ids"], dtype=np.int64)
    parents = np.asarray(tree["parent_ids"], dtype=np.int64)
    out = dict(tree, node_ids=name(node_ids), parent_ids=name(parents))
    by_node = dict(zip(node_ids.tolist(), out["parent_ids"].tolist()))
    parent_ids = np.array([by_node.get(i, -1) for i in range(k)], dtype=np.int64)
    return out, parent_ids


_RUNS_DDL = (
    "run_id string, job_name string, status string, started_at timestamp, finished_at timestamp, "
    "duration_seconds double, stage_seconds map<string,double>, input_path string, input_format string, "
    "rows_read long, rows_dropped long, rows_used long, invalid_counts map<string,long>, "
    "feature_columns array<string>, dropped_columns array<string>, n_components int, k_requested int, k int, "
    "engine string, iterations int, silhouette double, model_path string, table_versions map<string,long>, "
    "config_json string, versions map<string,string>, algorithm string, distance string, init string, "
    "converged boolean, gate_failures array<string>, k_selection string, kind string, previous_run_id string, "
    "base_run_id string, assignment_run_ids array<string>, feature_change string"
)


def _runs_row(cfg, run_id, run_date, started_at, t_start, stage_seconds, summary, fit, mdict, model_path,
              versions, prep, gate_failures=(), k_selection="fixed", lineage=None, feature_change=None):
    lineage = lineage or {}
    now = dt.datetime.now(dt.timezone.utc)
    return (
        run_id, cfg.job.name, "success", started_at, now,  # tz-aware: stored as UTC whatever the TZ
        round(time.time() - t_start, 3), dict(stage_seconds), summary.path, summary.format,
        summary.rows_read, summary.rows_dropped, summary.rows_used, dict(summary.invalid_counts),
        list(summary.feature_columns), list(summary.dropped_constant_columns), int(prep.n_components),
        fit.k_requested, int(len(fit.centroids)), fit.engine, fit.n_iter, mdict.get("silhouette"),
        model_path, {k: v for k, v in versions.items() if v is not None}, cfg.to_json(redact=True), _versions(),
        cfg.kmeans.algorithm, cfg.kmeans.distance, fit.init, bool(fit.converged),
        [str(f) for f in gate_failures], k_selection, lineage.get("kind", "full"), lineage.get("previous_run_id"),
        lineage.get("base_run_id", run_id), [r for r, _ in lineage.get("assignment_runs", [[run_id, run_date]])],
        feature_change,
    )


def _pass_summary(metrics) -> dict:
    out: dict = {}
    for m in metrics:
        if m.algorithm == "kmeans":
            continue
        key = m.algorithm if m.algorithm != "hierarchical" else f"hierarchical@{m.k}"
        out.setdefault(key, {})[m.metric if m.scope == "full" else f"{m.metric}_sample"] = m.value
    return out


def summary_text(r: RunResult) -> str:
    """The one-screen summary printed at the end of a run."""
    order = np.argsort(r.sizes)[::-1]
    n = max(sum(r.sizes), 1)
    ids = r.cluster_ids or list(range(len(r.sizes)))
    sizes = ", ".join(f"{ids[i]}: {r.sizes[i]:,} ({r.sizes[i] / n:.1%})" for i in order)
    m = r.metrics
    fmt = lambda key: f"{m[key]:.4f}" if key in m and m[key] is not None else "n/a"  # noqa: E731
    lines = [
        "",
        "=" * 78,
        f"clusterlake run {r.run_id}  (run_date {r.run_date})  committed in {r.seconds:.1f} s",
        f"rows: {r.rows_read:,} read, {r.rows_dropped:,} dropped, {r.rows_used:,} clustered",
        f"features: {len(r.feature_columns)} -> {r.n_components} model dimensions",
        f"k = {r.k}{' (' + r.k_selection + ')' if r.k_selection != 'fixed' else ''}; sizes: {sizes}",
        f"silhouette (sample) {fmt('silhouette')}   Davies-Bouldin {fmt('davies_bouldin')}   "
        f"Calinski-Harabasz {fmt('calinski_harabasz')}",
    ]
    if "ari" in m:
        lines.append(f"against the label column: ARI {fmt('ari')}   NMI {fmt('nmi')}")
    for name, pm in r.passes.items():
        f2 = lambda key: f"{pm[key]:.4f}" if pm.get(key) is not None else "n/a"  # noqa: E731
        head = (f"density ({name}): {int(pm.get('n_clusters', 0))} clusters, noise {pm.get('noise_share', 0):.1%}"
                if not name.startswith("hierarchical") else
                f"hierarchical, {name.split('@')[1]} clusters: shares {pm.get('min_cluster_share', 0):.1%}"
                f"..{pm.get('max_cluster_share', 0):.1%}")
        tail = f"   ARI vs label {f2('ari')}" if "ari" in pm else ""
        lines.append(f"{head}; silhouette (sample) {f2('silhouette_sample')}   ARI vs K-means {f2('ari_vs_kmeans')}{tail}")
    lines += [f"  cluster {ids[i]}: {text}" for i, text in enumerate(r.descriptions)]
    if r.previous_run_id:
        ev = ", ".join(f"{v} {k}" for k, v in sorted(r.lineage.items()))
        d = r.drift
        dv = lambda key, f: f(d[key]) if d.get(key) is not None else "n/a"  # noqa: E731
        lines.append(f"since run {r.previous_run_id}: clusters {ev}; centroid shift max "
                     f"{dv('centroid_shift_max', lambda v: f'{v:.2f}')} radii, PSI {dv('psi', lambda v: f'{v:.3f}')}, "
                     f"ids changing cluster {dv('changed_share', lambda v: f'{v:.1%}')}")
    lines += [f"{'DRIFT' if f.startswith('drift ') else 'QUALITY GATE'} FAILED (committed: on_failure=warn): {f}"
              for f in r.gate_failures]
    lines += [
        f"tables: {r.output_path}/{{centroids,assignments,metrics,profiles,lineage,runs}}  (versions {r.table_versions})",
        f"model:  {r.model_path}  (latest: {r.output_path}/model/latest)",
        *([f"report: {r.report_path}"] if r.report_path else []),
        "stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in r.stage_seconds.items()),
        "=" * 78,
    ]
    return "\n".join(lines)


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_clusterlake", False) for h in root.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        h._clusterlake = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(level)
    for noisy in ("py4j", "pyspark"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def dumps(r: RunResult) -> str:
    return json.dumps(r.__dict__, default=str, indent=2)
