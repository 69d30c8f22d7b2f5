"""What a run returns (:class:`RunResult`) and the summary it prints at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


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
    spark_passes: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> {Spark pass: seconds}
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
    grouping: dict = field(default_factory=dict)  # the grouping metrics by name (empty: grouping is off)


def pass_summary(metrics) -> dict:
    out: dict = {}
    for m in metrics:
        if m.algorithm == "kmeans":
            continue
        key = m.algorithm if m.algorithm != "hierarchical" else f"hierarchical@{m.k}"
        out.setdefault(key, {})[m.metric if m.scope == "full" else f"{m.metric}_sample"] = m.value
    return out


def grouping_lines(g: dict) -> list[str]:
    """The summary's lines about the near-duplicate groups (empty when grouping is off)."""
    if not g:
        return []
    return [f"near-duplicate groups: {int(g['groups']):,} groups of 2+ rows holding {int(g['grouped_rows']):,} rows "
            f"(the largest {int(g['largest_group']):,}), {int(g['singletons']):,} rows alone",
            f"  {int(g['candidate_pairs']):,} candidate pairs, {int(g['verified_pairs']):,} at similarity >= "
            f"{g['threshold']:g}; {int(g['bands'])} bands x {int(g['rows_per_band'])} hashes, recall at the "
            f"threshold {g['recall_at_threshold']:.3f}"]


def grouping_summary(r: RunResult) -> str:
    """The summary printed at the end of a grouping-only run (``kmeans.enabled: false``)."""
    return "\n".join([
        "", "=" * 78,
        f"clusterlake run {r.run_id}  (run_date {r.run_date})  committed in {r.seconds:.1f} s",
        f"rows: {r.rows_read:,} read, {r.rows_dropped:,} dropped, {r.rows_used:,} grouped",
        *grouping_lines(r.grouping),
        f"tables: {r.output_path}/{{{','.join(r.table_versions)}}}  (versions {r.table_versions})",
        f"near-duplicate index: {r.model_path}/grouping  (clusterlake serve --model {r.model_path})",
        *([f"report: {r.report_path}"] if r.report_path else []),
        "stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in r.stage_seconds.items()),
        "=" * 78])


def summary_text(r: RunResult) -> str:
    """The one-screen summary printed at the end of a run."""
    if r.k == 0:
        return grouping_summary(r)
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
    lines += grouping_lines(r.grouping)
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
        f"tables: {r.output_path}/{{centroids,assignments,metrics,profiles,lineage,{'groups,' if r.grouping else ''}"
        f"runs}}  (versions {r.table_versions})",
        f"model:  {r.model_path}  (latest: {r.output_path}/model/latest)",
        *([f"report: {r.report_path}"] if r.report_path else []),
        "stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in r.stage_seconds.items()),
        "=" * 78,
    ]
    return "\n".join(lines)


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
