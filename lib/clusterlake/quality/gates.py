"""Quality gates (issue 6): thresholds on the run's metrics, checked after every metric is known
and before anything is committed.

``quality.on_gate_failure: fail`` raises :class:`~clusterlake.errors.QualityGateError` (exit code
3): the staged files are discarded and readers keep the previous run's tables. ``warn`` logs the
failures and records them in ``runs.gate_failures``; the run is committed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from clusterlake.errors import QualityGateError

log = logging.getLogger(__name__)


@dataclass
class GateFailure:
    setting: str  # quality.gates.min_silhouette
    metric: str
    measured: Optional[float]
    threshold: float
    op: str  # ">=" or "<=": what the gate requires

    def __str__(self) -> str:
        if self.measured is None:
            return f"{self.metric} is undefined for this run but {self.setting}={self.threshold:g} requires it"
        broken = "<" if self.op == ">=" else ">"
        return f"{self.metric} {self.measured:.4g} {broken} {self.setting}={self.threshold:g}"


# gate -> (algorithm, scope, metric) it reads, and the comparison it requires
_GATES = {
    "min_silhouette": (("kmeans", "sample", "silhouette"), ">="),
    "min_cluster_share": (("kmeans", "full", "min_cluster_share"), ">="),
    "max_cluster_share": (("kmeans", "full", "max_cluster_share"), "<="),
    "max_noise_share": ((None, "full", "noise_share"), "<="),  # the density pass (dbscan | hdbscan)
}


def check(gates_cfg, metrics) -> list[GateFailure]:
    """The gates that fail on ``metrics`` (a list of :class:`~clusterlake.io.contract.metrics.Metric`)."""
    out = []
    for name, ((algorithm, scope, metric), op) in _GATES.items():
        threshold = getattr(gates_cfg, name)
        if threshold is None:
            continue
        values = [m.value for m in metrics if m.metric == metric and m.scope == scope
                  and (m.algorithm == algorithm if algorithm else m.algorithm in ("dbscan", "hdbscan"))]
        value = values[0] if values else None
        ok = value is not None and (value >= threshold if op == ">=" else value <= threshold)
        label = f"{'density ' if algorithm is None else ''}{metric}"
        if not ok:
            out.append(GateFailure(f"quality.gates.{name}", label, value, float(threshold), op))
        else:
            log.info("quality gate quality.gates.%s=%g passed: %s = %.4g", name, threshold, label, value)
    return out


# drift threshold -> the run-level drift metric it reads (scope drift), the comparison, and how the
# setting maps to the metric's value (a drop of silhouette is a negative silhouette_change)
_DRIFT = {
    "max_centroid_shift": ("centroid_shift_max", "<=", 1.0),
    "max_psi": ("psi", "<=", 1.0),
    "max_changed_share": ("changed_share", "<=", 1.0),
    "max_silhouette_drop": ("silhouette_change", ">=", -1.0),
}


def check_drift(drift_cfg, metrics) -> list[GateFailure]:
    """The drift thresholds (``quality.drift``) that ``metrics`` break.

    Unlike a gate, a drift metric that is undefined (the first run, no id shared with the previous
    run, no silhouette) is skipped: there is nothing to compare with."""
    out = []
    for name, (metric, op, sign) in _DRIFT.items():
        threshold = getattr(drift_cfg, name)
        if threshold is None:
            continue
        values = [m.value for m in metrics if m.scope == "drift" and m.metric == metric
                  and getattr(m, "cluster_id", None) is None]
        if not values or values[0] is None or values[0] != values[0]:
            continue
        bound = sign * float(threshold)
        ok = values[0] <= bound if op == "<=" else values[0] >= bound
        if not ok:
            out.append(GateFailure(f"quality.drift.{name}", f"drift {metric}", values[0], bound, op))
        else:
            log.info("drift check quality.drift.%s=%g passed: %s = %.4g", name, threshold, metric, values[0])
    return out


def act(failures: list[GateFailure], on_failure: str, what: str = "quality gate") -> None:
    """``fail``: raise (nothing is committed). ``warn``: log each failure."""
    text = "; ".join(str(f) for f in failures)
    setting = "quality.on_gate_failure" if what == "quality gate" else "quality.drift.on_failure"
    if on_failure == "fail":
        raise QualityGateError(
            f"{what} failed: {text}. Nothing was committed: readers keep the previous run "
            f"({setting}=fail; set it to warn to commit such runs with a warning)"
        )
    for f in failures:
        log.warning("%s failed (committing anyway, %s=warn): %s", what, setting, f)
