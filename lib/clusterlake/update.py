"""The incremental update: between full nightly runs, fold only new rows into the current model.

``clusterlake update --config FILE --input PATH`` (or ``spark-submit jobs/update.py ...``):

1. loads the model ``output.path/model/latest`` points at (the last full run, or the last update);
2. reads the new rows from ``PATH`` (a new partition or folder of the input) and validates them
   with the model's feature columns; rows whose id is already assigned in the current state are
   refused (the update takes only new rows, so running it twice on one path fails instead of
   counting rows twice);
3. assigns them with the current model, exactly as the full job would (K-means, and the density
   and hierarchical passes' extension);
4. moves each centroid by the count-weighted mean of its new rows: Sculley's (2010) mini-batch
   K-means with a per-centre learning rate of 1/count, where the count is every row the cluster
   has absorbed since the full run (:func:`clusterlake.algorithms.lineage.minibatch_update`);
5. measures the drift the update caused (scope ``drift``): centroid shifts in radii and the PSI
   of the model's cluster shares before and after; and (scope ``update``) how unlike the model
   the new rows are: the PSI of their cluster shares against the model's, their outlier share,
   their mean distance to the centroid; past
   ``quality.drift`` thresholds it says a full rebuild is due (``warn``) or refuses (``fail``);
6. appends the new rows' assignments, the updated centroids, its metrics and a ``runs`` row
   (``kind = update``) and commits a new model version that records its lineage; nothing of the
   full run is replaced. A failure before the commit leaves the previous model and tables as
   they were (the same staging and publish as the full job).

The next full run starts from the updated model (warm start and stable ids against it).
What the update does not do: refit the scaling/PCA, re-run the density or hierarchical passes,
recompute silhouette or profiles; radii stay the full run's. See docs/drift.md for when a full
rebuild is due.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

import numpy as np

from clusterlake.config import JobConfig
from clusterlake.errors import InputDataError
from clusterlake.pipeline import RunResult, new_run_id, open_output
from clusterlake.stages import Stages

log = logging.getLogger("clusterlake")


def run_update(cfg: JobConfig, input_path: str, spark=None) -> RunResult:
    """Fold the rows under ``input_path`` into the latest model under ``cfg.output.path``."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from clusterlake.algorithms import history, lineage, sample_passes
    from clusterlake.algorithms.passes import assign_rows, cluster_stats
    from clusterlake.io import model_artifact
    from clusterlake.io.reader import read_table, validate
    from clusterlake.faults import pause_point
    from clusterlake.io.columns import col
    from clusterlake.io.tables import make_store, recover_interrupted, staging
    from clusterlake.pipeline import _RUNS_DDL, _centroids_df, _metrics_df, _runs_row, publish
    from clusterlake.quality import gates
    from clusterlake.quality.metrics import Metric
    from clusterlake.session import build_session

    t_start = time.time()
    started_at = dt.datetime.now(dt.timezone.utc)
    run_date = cfg.resolved_run_date.isoformat()
    run_id = new_run_id(run_date)
    stage = Stages()
    log.info("update %s of job %s with the new rows under %s", run_id, cfg.job.name, input_path)
    with open_output(cfg.output.path, run_id) as lock:
        if spark is None:
            spark = build_session(cfg.spark, f"clusterlake-update-{cfg.job.name}")
        store = make_store(spark, cfg.output, run_date, run_id)
        recovered = recover_interrupted(store)
        if recovered:
            log.warning("recovered interrupted run(s) %s", recovered)
        model_root = store.root.child("model")
        base = history.load_latest(model_root)
        if base is None:
            raise InputDataError(
                f"there is no model under {model_root.uri}/latest to update; run the full job first "
                f"(clusterlake run --config ...) with output.path={cfg.output.path}"
            )
        id_col = base.meta.get("id_column") or cfg.input.id_column
        if id_col != cfg.input.id_column:
            raise InputDataError(f"input.id_column is '{cfg.input.id_column}' but the model (run {base.run_id}) "
                                 f"was fitted with '{id_col}'; use the model's id column")
        # the model decides the features; labels and weights play no part in an update
        icfg = cfg.input.model_copy(update={"path": input_path, "feature_columns": list(base.prep.feature_names),
                                            "label_column": None, "weight_column": None})
        prep, C0 = base.prep, np.asarray(base.centroids, dtype=np.float64)
        ids = np.asarray(base.cluster_ids, dtype=np.int32)
        runs = base.assignment_runs

        with stage("read+validate") as note:
            clean, summary = validate(read_table(spark, icfg), icfg, 1, keep_constant=True, model_run=base.run_id)
            clean = clean.persist(StorageLevel.MEMORY_AND_DISK)
            note.update(rows_read=summary.rows_read, rows_used=summary.rows_used, dropped=summary.rows_dropped)
        persisted = [clean]
        try:
            with stage("known-ids") as note:
                old = store.spark_read("assignments", [r for r, _ in runs], [d for _, d in runs], columns=[id_col])
                if old is not None:
                    known = clean.select(col(id_col)).join(old.select(col(id_col)), on=id_col, how="left_semi")
                    examples = known.limit(5).collect()
                    if examples:
                        n_known = known.count()
                        shown = ", ".join(repr(r[id_col]) for r in examples)
                        raise InputDataError(
                            f"{n_known} of {summary.rows_used} rows under {input_path} have ids already assigned "
                            f"by run(s) {[r for r, _ in runs]} (e.g. {shown}; input.id_column '{id_col}'): "
                            "the update takes only new rows. Was this path applied before? Pass a path with "
                            "only new rows, or run the full job"
                        )
                note.update(checked_against=len(runs))

            with stage("assign") as note:
                density, hierarchy = sample_passes.from_artifact(base)
                asg = assign_rows(clean, prep, C0, ids, id_col, density, hierarchy)
                asg = asg.persist(StorageLevel.MEMORY_AND_DISK)
                persisted.append(asg)
                stats = cluster_stats(clean, prep, C0)
                n_new = np.asarray(stats.counts, dtype=np.float64)
                outliers = asg.agg(F.sum(F.col("is_outlier").cast("long")).alias("o")).collect()[0]["o"]
                note.update(rows=int(n_new.sum()))

            with stage("update") as note:
                N0 = history.previous_sizes(base)
                C1, N1 = lineage.minibatch_update(C0, N0, n_new, np.asarray(stats.sum_z, dtype=np.float64),
                                                  spherical=base.distance == "cosine")
                radius = history.previous_radius(base)
                shift = np.sqrt(((C1 - C0) ** 2).sum(1)) / radius
                means_x = base.cluster_stats.get("means_x")
                if means_x is not None:
                    with np.errstate(invalid="ignore", divide="ignore"):
                        means_x = np.where((N1 > 0)[:, None], (N0[:, None] * means_x + stats.sum_x) / N1[:, None], means_x)
                else:
                    means_x = prep.inverse_transform(C1)
                n_rows = int(n_new.sum())
                psi = lineage.psi(N0, N1)  # how far the update moved the model's cluster shares
                arriving = lineage.psi(N0, n_new)  # how unlike the model's shares the new rows are
                metrics = [Metric("drift", "centroid_shift", float(v), int(n), cluster_id=int(c))
                           for c, v, n in zip(ids, shift, n_new) if n > 0]
                metrics += [
                    Metric("drift", "centroid_shift_max", float(shift.max()), n_rows),
                    Metric("drift", "centroid_shift_mean", float(np.average(shift, weights=n_new)) if n_rows else 0.0, n_rows),
                    Metric("drift", "psi", psi, n_rows),
                    Metric("update", "rows", float(n_rows), n_rows),
                    Metric("update", "new_rows_psi", arriving, n_rows),
                    Metric("update", "mean_distance", float(stats.sum_dist.sum() / max(n_rows, 1)), n_rows),
                ]
                if outliers is not None:
                    metrics.append(Metric("update", "outlier_share", float(outliers) / max(n_rows, 1), n_rows))
                note.update(shift_max=round(float(shift.max()), 4), psi=round(psi, 4))

            model_dir = model_root.child(run_id)
            with staging(store, model_dir) as staged:
                with stage("write") as note:
                    cs = dict(base.cluster_stats, sizes=N1, means_x=means_x)
                    cs = {k_: v for k_, v in cs.items() if v is not None}
                    art = model_artifact.ModelArtifact(
                        run_id=run_id, run_date=run_date, prep=prep, centroids=C1, cluster_ids=ids,
                        distance=base.distance, algorithm=base.algorithm,
                        meta=dict(base.meta, update_input=input_path), tree=base.tree, passes=base.passes,
                        extras=base.extras, cluster_stats=cs,
                        lineage={"kind": "update", "previous_run_id": base.run_id,
                                 "base_run_id": base.lineage.get("base_run_id", base.run_id),
                                 "assignment_runs": [list(r) for r in runs] + [[run_id, run_date]],
                                 "next_cluster_id": base.next_cluster_id},
                        quality=base.quality,
                    )
                    _add_members(art, base, clean, prep, C0, ids, id_col, n_new, cfg, model_dir)
                    model_artifact.save(art, model_dir)
                    pause_point("model.saved", run_id=run_id, path=model_dir.uri)
                    parents = _parents(base)
                    full_cs = {"sizes": N1, "means_x": means_x,
                               "radius_mean": cs.get("radius_mean", np.zeros(len(ids))),
                               "radius_rms": cs.get("radius_rms", np.zeros(len(ids))),
                               "radius_max": cs.get("radius_max", np.zeros(len(ids)))}
                    staged.append(store.stage("centroids", _centroids_df(
                        spark, run_id, full_cs, C1, ids, parents, base.meta.get("descriptions")), files=1, append=True))
                    staged.append(store.stage("assignments", asg.withColumn("run_id", F.lit(run_id)), append=True))
                    staged.append(store.stage("metrics", _metrics_df(spark, run_id, metrics, len(ids)), files=1,
                                              append=True))
                    if staged[1].files and staged[1].rows != summary.rows_used:
                        raise RuntimeError(f"assignments has {staged[1].rows} rows but {summary.rows_used} "
                                           "rows were validated")
                    drifted = gates.check_drift(cfg.quality.drift, metrics)
                    if drifted:
                        log.warning("the update moved the clusters past quality.drift: a full rebuild is due "
                                    "(clusterlake run --config ...)")
                        gates.act(drifted, cfg.quality.drift.on_failure, what="drift check")
                    note.update(assignments=staged[1].rows)

                fit = _UpdateFit(C1, len(ids))

                def stage_runs(versions):
                    row = _runs_row(cfg.model_copy(update={"input": icfg}), run_id, run_date, started_at, t_start,
                                    stage.seconds, summary, fit, {}, model_dir.uri, versions, prep,
                                    drifted, "model", lineage=art.lineage)
                    return store.stage("runs", spark.createDataFrame([row], _RUNS_DDL), files=1, append=True)

                with stage("publish"):
                    versions = publish(store, staged, stage_runs, model_root, lock)
        finally:
            for df_ in persisted:
                df_.unpersist()

    sizes = [int(round(v)) for v in N1]
    result = RunResult(
        run_id=run_id, run_date=run_date, output_path=store.root.uri, model_path=model_dir.uri, k=len(ids),
        sizes=sizes, metrics={}, table_versions=versions, rows_read=summary.rows_read,
        rows_used=summary.rows_used, rows_dropped=summary.rows_dropped, seconds=round(time.time() - t_start, 2),
        stage_seconds=stage.seconds, feature_columns=list(prep.feature_names), n_components=prep.n_components,
        descriptions=list(base.meta.get("descriptions") or []), k_selection="model",
        gate_failures=[str(f) for f in drifted], cluster_ids=[int(c) for c in ids], previous_run_id=base.run_id,
        drift={m.metric: m.value for m in metrics if m.cluster_id is None}, kind="update",
    )
    log.info("update %s committed in %.1f s: %d new rows folded into run %s's clusters",
             run_id, result.seconds, summary.rows_used, base.run_id)
    if cfg.report.enabled:
        from clusterlake.pipeline import _report

        result.report_path = _report(store.root.uri, run_id, cfg.report.history_runs)
    return result


class _UpdateFit:
    """What the runs row reads from a fit, for an update (no K-means fit ran)."""

    def __init__(self, centroids, k):
        self.centroids, self.k_requested = centroids, k
        self.engine, self.n_iter, self.init, self.converged = "update", 0, "previous", True


def _add_members(art, base, clean, prep, C0, ids, id_col, n_new, cfg, model_dir) -> None:
    """The new rows' share of the similar-item sample (same rate as the base run's: about
    ``serving.members_per_cluster`` of each cluster's rows in total), under this version's
    ``members/``; the model's member folders are the base's plus this one. The radius quantiles
    stay the base run's (recomputed by the next full run)."""
    from clusterlake.algorithms.passes import write_members

    info = dict(base.meta.get("members") or {})
    per = info.get("per_cluster", cfg.serving.members_per_cluster)
    if per == 0 or not info.get("runs") or n_new.sum() == 0:
        return
    from clusterlake.algorithms import history
    from clusterlake.algorithms.passes import member_fractions

    # the rate the base run kept of each cluster (about per / N0), applied to the new rows; a
    # cluster empty in the base run samples its new rows as a fresh cluster would
    N0 = history.previous_sizes(base)
    frac = member_fractions(np.where(N0 > 0, N0, n_new), per)
    kept = write_members(clean, prep, C0, ids, id_col, frac, cfg.kmeans.seed, model_dir.child("members").uri)
    prev = np.asarray(base.cluster_stats.get("members", np.zeros(len(ids))), dtype=np.float64)
    art.cluster_stats["members"] = prev + kept
    art.meta["members"] = {"per_cluster": per, "runs": list(info["runs"]) + [art.run_id]}


def _parents(art) -> np.ndarray | None:
    tree = art.tree
    if tree is None or tree.get("node_ids") is None:
        return None
    by_node = dict(zip(np.asarray(tree["node_ids"]).tolist(), np.asarray(tree["parent_ids"]).tolist()))
    return np.array([by_node.get(int(c), -1) for c in art.cluster_ids], dtype=np.int64)


def update_summary(r: RunResult) -> str:
    """The summary printed at the end of an update."""
    d = r.drift
    n = max(sum(r.sizes), 1)
    lines = [
        "",
        "=" * 78,
        f"clusterlake update {r.run_id}  (run_date {r.run_date}) of run {r.previous_run_id}: committed in {r.seconds:.1f} s",
        f"new rows: {r.rows_read:,} read, {r.rows_dropped:,} dropped, {r.rows_used:,} assigned and folded in",
        "clusters now: " + ", ".join(f"{c}: {s:,} ({s / n:.1%})" for c, s in zip(r.cluster_ids, r.sizes)),
        f"drift of the update: centroid shift max {d.get('centroid_shift_max', 0):.3f} radii, "
        f"PSI of the cluster shares {d.get('psi', 0):.3f}",
    ]
    lines += [f"DRIFT (committed: on_failure=warn; a full rebuild is due): {f}" for f in r.gate_failures]
    lines += [f"model:  {r.model_path}  (latest: {r.output_path}/model/latest)",
              *([f"report: {r.report_path}"] if r.report_path else []), "=" * 78]
    return "\n".join(lines)
