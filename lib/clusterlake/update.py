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

import logging
from dataclasses import dataclass

import numpy as np

from clusterlake.config import JobConfig
from clusterlake.errors import ConfigError, InputDataError
from clusterlake.run.result import RunResult
from clusterlake.run.scaffold import Run, check_model_id_column, open_run
from clusterlake.stages import spark_pass

log = logging.getLogger("clusterlake")


def run_update(cfg: JobConfig, input_path: str, spark=None) -> RunResult:
    """Fold the rows under ``input_path`` into the latest model under ``cfg.output.path``."""
    with open_run(cfg, spark, kind="update", app="clusterlake-update",
                  describe=f"with the new rows under {input_path}") as run:
        base = _load_base(run)
        icfg = _input_section(cfg, base, input_path)
        clean, summary = _read_new_rows(run, icfg, base)
        _refuse_known_ids(run, clean, base, summary.rows_used, input_path)
        asg, stats, outliers = _assign(run, clean, base)
        folded = _fold_in(run, base, stats, outliers)
        with run.staging() as staged:
            art, drifted = _write(run, staged, base, clean, asg, folded, summary, input_path)
            record = _runs_record(run, base, art, folded, drifted)
            versions = run.publish(staged, lambda v: run.runs_row(
                summary, record, v, cfg=cfg.model_copy(update={"input": icfg})))
        result = _result(run, versions, base, summary, folded, drifted)
        log.info("update %s committed in %.1f s: %d new rows folded into run %s's clusters",
                 run.run_id, result.seconds, summary.rows_used, base.run_id)
    result.report_path = run.report()
    return result


def _load_base(run: Run):
    """The model ``model/latest`` shows: what the update folds the new rows into."""
    from clusterlake.algorithms import history

    base = history.load_latest(run.model_root)
    if base is None:
        raise InputDataError(
            f"there is no model under {run.model_root.uri}/latest to update; run the full job first "
            f"(clusterlake run --config ...) with output.path={run.cfg.output.path}"
        )
    check_model_id_column(base, run.cfg.input.id_column)
    if base.algorithm == "kmedoids":
        raise ConfigError(
            f"the model of run {base.run_id} is k-medoids: the update job moves K-means centroids by their "
            "new rows' means, which k-medoids' medoids (rows of the data) are not; refit it with the nightly "
            "job (clusterlake run --config ...), or assign new rows with the stream or serving"
        )
    if base.algorithm == "gmm":
        raise ConfigError(
            f"the model of run {base.run_id} is a Gaussian mixture: the update job moves K-means centroids by "
            "their new rows' means, which would leave the mixture's weights and covariances stale; refit it with "
            "the nightly job (clusterlake run --config ...), or assign new rows with the stream or serving"
        )
    return base


def _input_section(cfg: JobConfig, base, input_path: str):
    """The model decides the features (named columns, and a vector column's length); labels,
    weights and profile columns play no part in an update."""
    from clusterlake.io.reader import input_columns, model_vector

    vec = model_vector(base)
    named = [c for c in input_columns(list(base.prep.feature_names), vec) if vec is None or c != vec.column]
    return cfg.input.model_copy(update={"path": input_path, "feature_columns": (named or None) if vec else named,
                                        "vector_column": vec and vec.column, "vector_size": vec and vec.dim,
                                        "label_column": None, "weight_column": None, "profile_columns": None,
                                        "version": None})  # the full job's pinned version is not the new rows


def _read_new_rows(run: Run, icfg, base):
    from clusterlake.io.reader import pin_version, read_table, validate

    with run.step("read+validate") as note:
        icfg = pin_version(run.spark, icfg)
        clean, summary = validate(read_table(run.spark, icfg), icfg, 1, keep_constant=True, model_run=base.run_id)
        clean = run.cache(clean)
        note.update(rows_read=summary.rows_read, rows_used=summary.rows_used, dropped=summary.rows_dropped)
    return clean, summary


def _refuse_known_ids(run: Run, clean, base, rows_used: int, input_path: str) -> None:
    """The update takes only new rows: ids already assigned in the model's state are refused, so
    applying one path twice fails instead of counting its rows twice."""
    from clusterlake.io.columns import col

    id_col, runs = run.cfg.input.id_column, base.assignment_runs
    with run.step("known-ids") as note:
        old = run.store.spark_read("assignments", [r for r, _ in runs], [d for _, d in runs], columns=[id_col])
        if old is not None:
            known = clean.select(col(id_col)).join(old.select(col(id_col)), on=id_col, how="left_semi")
            with spark_pass("known ids"):
                examples = known.limit(5).collect()
            if examples:
                shown = ", ".join(repr(r[id_col]) for r in examples)
                raise InputDataError(
                    f"{known.count()} of {rows_used} rows under {input_path} have ids already assigned "
                    f"by run(s) {[r for r, _ in runs]} (e.g. {shown}; input.id_column '{id_col}'): "
                    "the update takes only new rows. Was this path applied before? Pass a path with "
                    "only new rows, or run the full job"
                )
        note.update(checked_against=len(runs))


def _assign(run: Run, clean, base):
    """Assign the new rows with the current model (cached) and sum them per cluster."""
    from pyspark.sql import functions as F

    from clusterlake.algorithms.passes import assign_rows, cluster_stats
    from clusterlake.io.model_artifact import pass_models

    C0 = np.asarray(base.centroids, dtype=np.float64)
    with run.step("assign") as note:
        density, hierarchy = pass_models(base)
        asg = run.cache(assign_rows(clean, base.prep, C0, base.cluster_ids, run.cfg.input.id_column,
                                    density, hierarchy))
        stats = cluster_stats(clean, base.prep, C0)
        with spark_pass("assign + outlier count"):
            outliers = asg.agg(F.sum(F.col("is_outlier").cast("long")).alias("o")).collect()[0]["o"]
        note.update(rows=int(np.asarray(stats.counts).sum()))
    return asg, stats, outliers


@dataclass
class Folded:
    """The model after the update: moved centroids, running counts, input-unit means, metrics."""

    centroids: np.ndarray
    sizes: np.ndarray
    new_rows: np.ndarray  # per cluster
    means_x: np.ndarray
    metrics: list
    shift: np.ndarray  # per cluster, in the model's radii
    psi: float  # of the model's cluster shares, before -> after


def _fold_in(run: Run, base, stats, outliers) -> Folded:
    """Mini-batch K-means (Sculley 2010): each centroid moves by its new rows' count-weighted mean."""
    from clusterlake.algorithms import history, lineage

    C0 = np.asarray(base.centroids, dtype=np.float64)
    with run.step("update") as note:
        N0, n_new = history.previous_sizes(base), np.asarray(stats.counts, dtype=np.float64)
        C1, N1 = lineage.minibatch_update(C0, N0, n_new, np.asarray(stats.sum_z, dtype=np.float64),
                                          spherical=base.distance == "cosine")
        shift = np.sqrt(((C1 - C0) ** 2).sum(1)) / history.previous_radius(base)
        means_x = base.cluster_stats.get("means_x")
        if means_x is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                means_x = np.where((N1 > 0)[:, None], (N0[:, None] * means_x + stats.sum_x) / N1[:, None], means_x)
        else:
            means_x = base.prep.inverse_transform(C1)
        psi = lineage.psi(N0, N1)  # how far the update moved the model's cluster shares
        metrics = _update_metrics(base, N0, n_new, shift, psi, stats, outliers)
        note.update(shift_max=round(float(shift.max()), 4), psi=round(psi, 4))
    return Folded(C1, N1, n_new, means_x, metrics, shift, psi)


def _update_metrics(base, N0, n_new, shift, psi: float, stats, outliers) -> list:
    """Scope ``drift``: how far the update moved the model; scope ``update``: how unlike the model
    the new rows are."""
    from clusterlake.algorithms import lineage
    from clusterlake.io.contract.metrics import Metric

    ids = np.asarray(base.cluster_ids, dtype=np.int32)
    n_rows = int(n_new.sum())
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
    return metrics


def _artifact(run: Run, base, folded: Folded, input_path: str):
    from clusterlake.io import model_artifact

    cs = {k_: v for k_, v in dict(base.cluster_stats, sizes=folded.sizes, means_x=folded.means_x).items()
          if v is not None}
    return model_artifact.ModelArtifact(
        run_id=run.run_id, run_date=run.run_date, prep=base.prep, centroids=folded.centroids,
        cluster_ids=np.asarray(base.cluster_ids, dtype=np.int32), distance=base.distance, algorithm=base.algorithm,
        meta=dict(base.meta, update_input=input_path), tree=base.tree, passes=base.passes,
        extras=base.extras, cluster_stats=cs,
        lineage={"kind": "update", "previous_run_id": base.run_id,
                 "base_run_id": base.lineage.get("base_run_id", base.run_id),
                 "assignment_runs": [list(r) for r in base.assignment_runs] + [[run.run_id, run.run_date]],
                 "next_cluster_id": base.next_cluster_id},
        quality=base.quality,
    )


def _write(run: Run, staged: list, base, clean, asg, folded: Folded, summary, input_path: str):
    """Save the updated model, append the centroids, assignments and metrics (never replacing a
    full run's rows); past ``quality.drift`` a full rebuild is due."""
    from pyspark.sql import functions as F

    from clusterlake.faults import pause_point
    from clusterlake.io import model_artifact
    from clusterlake.io.contract import centroids, metrics as metrics_table
    from clusterlake.quality import gates

    ids = np.asarray(base.cluster_ids, dtype=np.int32)
    with run.step("write") as note:
        art = _artifact(run, base, folded, input_path)
        _add_members(art, base, clean, base.prep, np.asarray(base.centroids, dtype=np.float64), ids,
                     run.cfg.input.id_column, folded.new_rows, run.cfg, run.model_dir)
        model_artifact.save(art, run.model_dir)
        pause_point("model.saved", run_id=run.run_id, path=run.model_dir.uri)
        zeros = np.zeros(len(ids))
        figures = {"sizes": folded.sizes, "means_x": folded.means_x,
                   **{r: art.cluster_stats.get(r, zeros) for r in ("radius_mean", "radius_rms", "radius_max")}}
        staged.append(run.stage_rows("centroids", centroids.rows(
            run.run_id, figures, folded.centroids, ids, _parents(base), base.meta.get("descriptions")),
            centroids.DDL, append=True))
        staged.append(run.store.stage("assignments", asg.withColumn("run_id", F.lit(run.run_id)), append=True))
        staged.append(run.stage_rows("metrics", metrics_table.rows(run.run_id, folded.metrics, len(ids)),
                                     metrics_table.DDL, append=True))
        staged[1].check_rows(summary.rows_used, "rows were validated")
        drifted = gates.check_drift(run.cfg.quality.drift, folded.metrics)
        if drifted:
            log.warning("the update moved the clusters past quality.drift: a full rebuild is due "
                        "(clusterlake run --config ...)")
            gates.act(drifted, run.cfg.quality.drift.on_failure, what="drift check")
        note.update(assignments=staged[1].rows)
    return art, drifted


def _runs_record(run: Run, base, art, folded: Folded, drifted: list):
    from clusterlake.io.contract.runs import FitFacts, RunRecord

    return RunRecord(kind="update", fit=FitFacts.for_update(len(folded.centroids)),
                     n_components=base.prep.n_components, model_path=run.model_dir.uri,
                     gate_failures=drifted, k_selection="model", lineage=art.lineage)


def _result(run: Run, versions: dict, base, summary, folded: Folded, drifted: list) -> RunResult:
    return RunResult(
        run_id=run.run_id, run_date=run.run_date, output_path=run.store.root.uri, model_path=run.model_dir.uri,
        k=len(base.cluster_ids), sizes=[int(round(v)) for v in folded.sizes], metrics={}, table_versions=versions,
        rows_read=summary.rows_read, rows_used=summary.rows_used, rows_dropped=summary.rows_dropped,
        seconds=round(run.seconds, 2), stage_seconds=run.step.seconds, spark_passes=run.step.passes,
        feature_columns=list(base.prep.feature_names), n_components=base.prep.n_components,
        descriptions=list(base.meta.get("descriptions") or []), k_selection="model",
        gate_failures=[str(f) for f in drifted], cluster_ids=[int(c) for c in base.cluster_ids],
        previous_run_id=base.run_id, drift={m.metric: m.value for m in folded.metrics if m.cluster_id is None},
        kind="update",
    )


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
