"""The per-run HTML report: what the job keeps for it, and rebuilding it from the output alone.

The job keeps a small sample for the report in the model artifact (``report_*.npy``: the first
two model-space components, stable cluster ids, per-point silhouette, density noise flags), so
:func:`write_report` needs nothing but ``output.path``: the ``runs``, ``centroids``, ``metrics``,
``profiles`` and ``lineage`` tables (read with delta-rs or pyarrow, no Spark) and the run's model
directory. :mod:`clusterlake.report.render` draws it.

Runs on the driver (or anywhere with the output's files); reads one run's small tables, never
``assignments``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

REPORT_ARRAYS = ("report_points", "report_cluster", "report_silhouette", "report_noise")


def sample_arrays(Z: np.ndarray, positions: np.ndarray, cluster_ids: np.ndarray, size: int,
                  density=None, metric=None) -> dict:
    """The report's sample (artifact extras) from the metrics sample ``Z`` (model space, already
    a uniform random sample) and each row's nearest-centroid position.

    Per-point silhouette is scikit-learn's ``silhouette_samples`` on the first ``size`` rows, by
    the GEMM kernel (:func:`clusterlake.kernels.silhouette.silhouette_samples`, 1.4 s -> 0.1 s on
    5,000 rows); noise is the density pass's extension of
    those rows (``density`` = its model, or None)."""
    from clusterlake.kernels.silhouette import silhouette_samples

    m = min(int(size), len(Z))
    Zr = np.asarray(Z[:m], dtype=np.float64)
    pos = np.asarray(positions[:m])
    pts = np.zeros((m, 2))
    pts[:, : min(2, Zr.shape[1])] = Zr[:, :2]
    out = {"report_points": pts, "report_cluster": np.asarray(cluster_ids, dtype=np.int32)[pos]}
    if 2 <= len(np.unique(pos)) < m and metric is not None:  # a k-medoids model: under its distance
        from clusterlake.kernels.kmedoids import silhouette_samples_of

        out["report_silhouette"] = silhouette_samples_of(Zr, pos, metric)
    elif 2 <= len(np.unique(pos)) < m:
        out["report_silhouette"] = silhouette_samples(Zr, pos)
    if density is not None:
        from clusterlake.kernels.density import extend

        out["report_noise"] = (extend(Zr, density)[0] == -1).astype(np.int8)
    return out


def plane_covariances(mix) -> np.ndarray:
    """Each component's covariance restricted to the first two model-space dimensions (k, 2, 2)
    (one dimension: the other axis 0): the ellipses the report draws for a Gaussian mixture."""
    k, p = mix.means.shape
    q = min(2, p)
    full = {"full": lambda: mix.covariances, "tied": lambda: np.repeat(mix.covariances[None], k, axis=0),
            "diag": lambda: np.stack([np.diag(c) for c in mix.covariances]),
            "spherical": lambda: mix.covariances[:, None, None] * np.eye(p)[None]}[mix.covariance_type]()
    out = np.zeros((k, 2, 2))
    out[:, :q, :q] = full[:, :q, :q]
    return out


# ----------------------------------------------------------------------------------------------
# reading the output


def _read_table(root: str, name: str):
    """A table as pandas (the current version), or None when it does not exist."""
    path = os.path.join(root, name)
    if os.path.isdir(os.path.join(path, "_delta_log")) or "://" in root:
        from deltalake import DeltaTable

        if not DeltaTable.is_deltatable(path):
            return None
        return DeltaTable(path).to_pyarrow_table().to_pandas()
    if not os.path.isdir(path):
        return None
    import pyarrow.dataset as ds

    return ds.dataset(path, format="parquet", partitioning="hive").to_table().to_pandas()


def _config_gates(config_json: Optional[str]) -> list[str]:
    try:
        cfg = json.loads(config_json or "{}")
    except ValueError:
        return []
    q = cfg.get("quality", {}) or {}
    names = [f"quality.gates.{k}" for k, v in (q.get("gates") or {}).items() if v is not None]
    names += [f"quality.drift.{k}" for k, v in (q.get("drift") or {}).items()
              if v is not None and k != "on_failure"]
    return names


def _run_row(output_path: str, run_id: Optional[str]):
    """The successful runs (oldest first) and the row of ``run_id`` (None: the newest)."""
    from clusterlake.errors import ClusterlakeError

    runs = _read_table(output_path, "runs")
    if runs is None or runs.empty:
        raise ClusterlakeError(f"no runs table under {output_path}; run the job first (clusterlake run --config ...)")
    runs = runs[runs.status == "success"].sort_values("finished_at").reset_index(drop=True)
    if run_id is None:
        return runs, runs.iloc[-1]
    hit = runs[runs.run_id == run_id]
    if hit.empty:
        shown = ", ".join(runs.run_id.tolist()[-5:])
        raise ClusterlakeError(f"run {run_id} is not a committed run under {output_path} (latest: {shown})")
    return runs, hit.iloc[-1]


def load_report_data(output_path: str, run_id: Optional[str] = None, history_runs: int = 14):
    """Everything the report shows for ``run_id`` (default: the newest successful run), read from
    the output's tables and the run's model artifact."""
    import pandas as pd

    from clusterlake.io import model_artifact
    from clusterlake.report.render import ReportData

    runs, row = _run_row(output_path, run_id)
    rid = row.run_id

    def of_run(name, which=rid):
        t = _read_table(output_path, name)
        return None if t is None else t[t.run_id == which].reset_index(drop=True)

    cen = of_run("centroids")
    if cen is None:  # a grouping-only run (kmeans.enabled: false): no clusters
        cen = pd.DataFrame({"cluster_id": [], "size": [], "share": [], "description": []})
    cen = cen.sort_values("cluster_id").reset_index(drop=True)
    met = of_run("metrics")
    km = met[(met.algorithm == "kmeans") & met.scope.isin(["full", "sample"])]
    if "cluster_id" in km:
        km = km[km.cluster_id.isna()]
    metrics = dict(zip(km.metric, km.value.astype(float)))
    base_id = row.get("base_run_id") or rid
    if not metrics and base_id != rid:  # an update: the quality is the full run's
        bm = of_run("metrics", base_id)
        bm = bm[(bm.algorithm == "kmeans") & bm.scope.isin(["full", "sample"])]
        metrics = dict(zip(bm.metric, bm.value.astype(float)))
    auto = met[met.scope == "auto_k"][["k", "metric", "value"]]
    prof = of_run("profiles", base_id)
    lin = of_run("lineage")

    art = model_artifact.load(row.model_path) if _has_model(row.model_path) else None
    x = art.extras if art is not None else {}
    pts, cl = x.get("report_points"), x.get("report_cluster")
    c2, e2 = _centroids_2d(art, cen.cluster_id) if art is not None else (None, None)
    hier = (art.passes.get("hierarchical") or {}) if art is not None else {}

    hist = _drift_history(output_path, runs, rid, history_runs)

    invalid = row.invalid_counts
    invalid = dict(invalid) if invalid is not None else {}
    stage_s = row.stage_seconds
    stage_s = {k: float(v) for k, v in (dict(stage_s) if stage_s is not None else {}).items()}
    return ReportData(
        job_name=row.job_name, run_id=rid, run_date=str(row.get("run_date", "")), kind=row.get("kind") or "full",
        rows_read=int(row.rows_read), rows_dropped=int(row.rows_dropped), rows_used=int(row.rows_used),
        invalid_counts={k: int(v) for k, v in invalid.items()}, k=int(row.k),
        k_selection=row.get("k_selection") or "fixed",
        gate_failures=list(row.gate_failures) if row.get("gate_failures") is not None else [],
        gates_configured=_config_gates(row.config_json) if int(row.k) else [], stage_seconds=stage_s,
        seconds=float(row.duration_seconds),
        clusters=cen[["cluster_id", "size", "share", "description"] + (["exemplar_ids"] if "exemplar_ids" in cen else [])],
        metrics=metrics,
        sample_points=pts, sample_cluster=cl, sample_silhouette=x.get("report_silhouette"),
        sample_noise=x.get("report_noise").astype(bool) if x.get("report_noise") is not None else None,
        centroids_2d=c2, ellipses_2d=e2, auto_k=auto.reset_index(drop=True) if len(auto) else None,
        dendrogram=x.get("hier_linkage"), dendrogram_levels=list(hier.get("levels", []) or []),
        profiles=prof[["cluster_id", "feature", "z"]] if prof is not None and len(prof) else None,
        drift_history=hist, lineage=lin if lin is not None and len(lin) else None,
        output_path=output_path, grouping=_grouping_summary(row.model_path),
    )


def _centroids_2d(art, cluster_ids) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The centroids in the plane of the first two model-space dimensions, row i = cluster
    ``cluster_ids[i]``, and a Gaussian mixture's covariances in that plane (else None)."""
    order = {int(c): i for i, c in enumerate(art.cluster_ids)}
    rows = [order[int(c)] for c in cluster_ids]
    C = np.asarray(art.centroids, dtype=np.float64)
    c2 = np.zeros((len(rows), 2))
    c2[:, : min(2, C.shape[1])] = C[rows, :2]
    mix = art.mixture()
    return c2, (plane_covariances(mix)[rows] if mix is not None else None)


def _has_model(model_path: Optional[str]) -> bool:
    """Whether the run saved a K-means model (a grouping-only run's directory has none)."""
    from clusterlake.io.fs import location

    return bool(model_path) and location(model_path).child("model.json").exists()


def _grouping_summary(model_path: Optional[str]) -> Optional[dict]:
    """The run's ``<model>/grouping/grouping.json`` (grouping on), else None; a damaged one is
    logged and left out (the rest of the report is drawn)."""
    import json

    from clusterlake.io.fs import location

    if not model_path:
        return None
    f = location(model_path).child("grouping", "grouping.json")
    try:
        return json.loads(f.read_bytes()) if f.exists() else None
    except (OSError, ValueError) as exc:
        log.warning("report: %s could not be read (%s); the near-duplicates section is left out", f.uri, exc)
        return None


def _drift_history(output_path: str, runs, rid: str, history_runs: int):
    """This run and the ones before it (at most ``history_runs``): silhouette and run-level drift."""
    import pandas as pd

    upto = runs.iloc[: int(runs.index[runs.run_id == rid][-1]) + 1].tail(history_runs)
    allm = _read_table(output_path, "metrics")
    dm = allm[(allm.scope == "drift") & allm.run_id.isin(upto.run_id)]
    if "cluster_id" in dm:
        dm = dm[dm.cluster_id.isna()]
    piv = dm.pivot_table(index="run_id", columns="metric", values="value", aggfunc="first") if len(dm) else pd.DataFrame()
    hist = pd.DataFrame({"run_id": upto.run_id.values, "run_date": upto.run_date.astype(str).values
                         if "run_date" in upto else upto.run_id.values,
                         "silhouette": upto.silhouette.astype(float).values})
    for col in ("changed_share", "centroid_shift_max"):
        hist[col] = [float(piv.at[r, col]) if col in piv and r in piv.index else np.nan for r in hist.run_id]
    return hist


def report_location(output_path: str, run_id: str):
    from clusterlake.io.fs import location

    return location(output_path).child("reports", f"{run_id}.html")


def write_report(output_path: str, run_id: Optional[str] = None, history_runs: int = 14) -> str:
    """Render the report of ``run_id`` (default: the newest run) to
    ``<output_path>/reports/<run_id>.html`` (written whole, then renamed into place on a local
    disk) and return its location."""
    from clusterlake.report.render import render

    data = load_report_data(output_path, run_id, history_runs)
    html = render(data).encode("utf-8")
    dest = report_location(output_path, data.run_id)
    if dest.is_local:
        os.makedirs(os.path.dirname(dest.path), exist_ok=True)
        tmp = dest.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(html)
        os.replace(tmp, dest.path)
    else:
        dest.write_bytes(html)
    log.info("report of run %s: %s (%.0f KB)", data.run_id, dest.uri, len(html) / 1024)
    return dest.uri
