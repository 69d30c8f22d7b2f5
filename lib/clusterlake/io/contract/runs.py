"""The ``runs`` table: one row per committed run (``kind`` full or update), written last.

A reader goes through ``runs`` to find complete runs (README, "How a reader finds the latest
complete run"), so this row is the run's commit record: what was read, what was fitted, the
table versions it committed, the config and the library versions.
"""

from __future__ import annotations

import datetime as dt
import platform
from dataclasses import dataclass, field
from typing import Optional

DDL = (
    "run_id string, job_name string, status string, started_at timestamp, finished_at timestamp, "
    "duration_seconds double, stage_seconds map<string,double>, input_path string, input_format string, "
    "rows_read long, rows_dropped long, rows_used long, invalid_counts map<string,long>, "
    "feature_columns array<string>, dropped_columns array<string>, n_components int, k_requested int, k int, "
    "engine string, iterations int, silhouette double, model_path string, table_versions map<string,long>, "
    "config_json string, versions map<string,string>, algorithm string, distance string, init string, "
    "converged boolean, gate_failures array<string>, k_selection string, kind string, previous_run_id string, "
    "base_run_id string, assignment_run_ids array<string>, feature_change string, input_version long, "
    "table_writer string"
)


@dataclass
class FitFacts:
    """What the run's model fit did, as the runs row reports it (an update fits nothing: see
    :meth:`for_update`)."""

    k_requested: int
    k: int
    engine: str
    iterations: int
    init: str
    converged: bool

    @classmethod
    def of(cls, fit) -> "FitFacts":
        """From a :class:`~clusterlake.algorithms.kmeans.KMeansFit`."""
        return cls(int(fit.k_requested), int(len(fit.centroids)), fit.engine, int(fit.n_iter), fit.init,
                   bool(fit.converged))

    @classmethod
    def no_fit(cls) -> "FitFacts":
        """A run without K-means (``kmeans.enabled: false``: grouping only)."""
        return cls(0, 0, "none", 0, "none", True)

    @classmethod
    def for_update(cls, k: int) -> "FitFacts":
        """An update moves the model's k centroids; no fit ran."""
        return cls(k, k, "update", 0, "previous", True)


@dataclass
class RunRecord:
    """Everything the runs row says beyond the run's identity, its input summary and its config."""

    kind: str  # full | update
    fit: FitFacts
    n_components: int
    model_path: str
    silhouette: Optional[float] = None
    gate_failures: list[str] = field(default_factory=list)
    k_selection: str = "fixed"  # fixed | auto:<criterion> | model (an update)
    lineage: dict = field(default_factory=dict)  # the artifact's lineage: previous/base run, assignment runs
    feature_change: Optional[str] = None


def library_versions() -> dict[str, str]:
    import numpy
    import pyspark
    import sklearn

    from clusterlake import __version__

    return {"clusterlake": __version__, "pyspark": pyspark.__version__, "python": platform.python_version(),
            "numpy": numpy.__version__, "scikit-learn": sklearn.__version__}


def row(cfg, run_id: str, run_date: str, started_at: dt.datetime, duration_s: float, stage_seconds: dict,
        summary, record: RunRecord, versions: dict, table_writer: str = "") -> tuple:
    """The run's row. ``summary`` is the :class:`~clusterlake.io.reader.InputSummary` of what was
    read (its ``version``: the Delta input's); ``versions`` the Delta versions the publish
    committed (None for parquet: left out); ``table_writer`` the store that committed them
    (``delta-rs``, ``spark-delta`` or ``parquet``)."""
    lin, fit = record.lineage, record.fit
    now = dt.datetime.now(dt.timezone.utc)
    return (
        run_id, cfg.job.name, "success", started_at, now,  # tz-aware: stored as UTC whatever the TZ
        round(duration_s, 3), dict(stage_seconds), summary.path, summary.format,
        summary.rows_read, summary.rows_dropped, summary.rows_used, dict(summary.invalid_counts),
        list(summary.feature_columns), list(summary.dropped_constant_columns), int(record.n_components),
        fit.k_requested, fit.k, fit.engine, fit.iterations, record.silhouette,
        record.model_path, {k: v for k, v in versions.items() if v is not None}, cfg.to_json(redact=True),
        library_versions(), cfg.kmeans.algorithm, cfg.kmeans.distance, fit.init, fit.converged,
        [str(f) for f in record.gate_failures], record.k_selection, lin.get("kind", record.kind),
        lin.get("previous_run_id"), lin.get("base_run_id", run_id),
        [r for r, _ in lin.get("assignment_runs", [[run_id, run_date]])], record.feature_change,
        getattr(summary, "version", None), table_writer or None,
    )
