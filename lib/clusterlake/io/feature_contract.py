"""The feature set is a contract across runs.

A model's clusters only mean something against the features they were fitted on. When tonight's
features (inferred with ``input.feature_columns: null``, or configured) differ from the previous
model's, every cluster is retired and renumbered and no drift can be measured, so even
``quality.drift.on_failure: fail`` cannot stop it. Most such changes are accidents upstream (a
column that turned into a string, a file without the column), so the run fails with exit 2 naming
the columns gained and lost and why, unless the user opts in with
``input.allow_feature_change: true``; the accepted change is then recorded in
``runs.feature_change``. Runs on the driver; numpy-free, Spark-free.
"""

from __future__ import annotations

import logging
from typing import Optional

from clusterlake.errors import InputDataError

log = logging.getLogger(__name__)

_NUMERIC = ("tinyint", "smallint", "int", "bigint", "float", "double", "decimal")


def _why_lost(name: str, summary, input_types: dict[str, str]) -> str:
    if name in summary.dropped_constant_columns:
        return "constant tonight, so dropped"
    if name not in input_types:
        return "not in the input"
    t = input_types[name]
    if t.startswith(_NUMERIC):
        return "not in input.feature_columns"
    return f"now {t}, not numeric"


def describe_change(previous_features: list[str], summary, input_types: dict[str, str]) -> Optional[str]:
    """``None`` when tonight's features are the previous model's, else one line such as
    ``lost 'spend' (now string, not numeric); gained 'visits' (double)``."""
    prev, now = list(previous_features), list(summary.feature_columns)
    if prev == now:
        return None
    lost = [c for c in prev if c not in now]
    gained = [c for c in now if c not in prev]
    parts, lost, gained = _vector_changes(prev, now, lost, gained)
    if lost:
        parts.append("lost " + ", ".join(f"'{c}' ({_why_lost(c, summary, input_types)})" for c in lost))
    if gained:
        parts.append("gained " + ", ".join(f"'{c}' ({summary.feature_types.get(c, '?')})" for c in gained))
    return "; ".join(parts)


def _vector_changes(prev: list, now: list, lost: list, gained: list) -> tuple[list, list, list]:
    """A vector column's elements (``emb[0]``, ...) lost or gained, said once per vector
    (``vector 'emb' had 384 elements, now 768``) instead of one name per element; returns
    (those parts, the other lost names, the other gained names)."""
    import re

    def base(c):
        m = re.match(r"^(.*)\[[0-9]+\]$", c, re.S)
        return m.group(1) if m else None

    bases = {base(c) for c in lost + gained} - {None}
    parts = []
    for b in sorted(bases):
        before, after = sum(base(c) == b for c in prev), sum(base(c) == b for c in now)
        parts.append(f"vector '{b}' had {before} element features, now {after}"
                     + (" (its length changed, or constant elements were dropped)" if before and after else ""))
    return parts, [c for c in lost if base(c) not in bases], [c for c in gained if base(c) not in bases]


def check(previous, summary, input_types: dict[str, str], allow_change: bool) -> Optional[str]:
    """Enforce the contract against the previous model ``previous`` (a ModelArtifact or None).

    Returns the change (to record in ``runs``) when ``allow_change`` accepts it, None when the
    features are unchanged or there is no previous model. The same columns in another order are
    no change: ``summary.feature_columns`` is put in the previous model's order.

    Raises
    ------
    InputDataError
        the features changed and ``input.allow_feature_change`` is false.
    """
    if previous is None:
        return None
    prev = list(previous.prep.feature_names)
    if prev != summary.feature_columns and sorted(prev) == sorted(summary.feature_columns):
        log.info("input columns come in another order than in run %s; using the model's order", previous.run_id)
        summary.feature_columns = prev  # the same features: the order of the file's columns is no change
    change = describe_change(prev, summary, input_types)
    if change is None:
        return None
    if not allow_change:
        raise InputDataError(
            f"the input's feature columns differ from the previous model's (run {previous.run_id}): {change}. "
            "A new feature set retires every cluster and renumbers them; fix the input upstream, or set "
            "input.allow_feature_change: true to accept it (recorded in runs.feature_change)"
        )
    log.warning("feature columns changed since run %s (input.allow_feature_change: true): %s; every cluster "
                "gets a new id", previous.run_id, change)
    return change
