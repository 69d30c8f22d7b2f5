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
    """The gates that fail on ``metrics`` (a list of :class:`~clusterlake.quality.metrics.Metric`)."""
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


def act(failures: list[GateFailure], on_failure: str) -> None:
    """``fail``: raise (nothing is committed). ``warn``: log each failure."""
    text = "; ".join(str(f) for f in failures)
    if on_failure == "fail":
        raise QualityGateError(
            f"quality gate failed: {text}. Nothing was committed: readers keep the previous run "
            "(quality.on_gate_failure=fail; set it to warn to commit such runs with a warning)"
        )
    for f in failures:
        log.warning("quality gate failed (committing anyway, quality.on_gate_failure=warn): %s", f)
