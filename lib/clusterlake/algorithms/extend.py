"""Distributed extension of the sample-based passes to every row (issue 5).

The density and hierarchical passes cluster a sample on the driver
(:mod:`clusterlake.kernels.density`, :mod:`clusterlake.kernels.hierarchy`); every row of the input
is then labelled inside the assignment pass (:func:`clusterlake.algorithms.passes.assign_rows`),
partition by partition over Arrow batches, by :func:`pass_columns`. Nothing is collected; the
model arrays travel to the executors once, as a broadcast.

Columns (always present in ``assignments``, null when the pass is off, so the table's schema does
not change with the config):

* ``density_label int`` -- the density cluster, -1 for noise;
* ``is_outlier boolean`` -- ``density_label = -1``;
* ``density_distance double`` -- model-space distance to the nearest core point of the sample;
* ``hierarchy map<int,int>`` -- number of clusters at a level -> the row's cluster at that level
  (``hierarchy[16]`` in SQL).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa

from clusterlake.kernels import density as Dk
from clusterlake.kernels import hierarchy as Hk

PASS_DDL = "density_label int, is_outlier boolean, density_distance double, hierarchy map<int,int>"
HIERARCHY_TYPE = pa.map_(pa.int32(), pa.int32())


def pass_columns(Z: np.ndarray, density: Optional["Dk.DensityModel"],
                 hierarchy: Optional["Hk.HierarchyModel"]) -> dict[str, pa.Array]:
    """The pass columns for the model-space rows ``Z`` (see the module docstring)."""
    n = len(Z)
    out: dict[str, pa.Array] = {}
    if density is not None:
        lab, dist = Dk.extend(Z, density)
        out["density_label"] = pa.array(lab, pa.int32())
        out["is_outlier"] = pa.array(lab < 0, pa.bool_())
        out["density_distance"] = pa.array(dist, pa.float64())
    else:
        out["density_label"] = pa.nulls(n, pa.int32())
        out["is_outlier"] = pa.nulls(n, pa.bool_())
        out["density_distance"] = pa.nulls(n, pa.float64())
    if hierarchy is not None:
        labs = Hk.extend(Z, hierarchy)
        levels = np.asarray(hierarchy.levels, dtype=np.int32)
        L = len(levels)
        offsets = pa.array(np.arange(0, n * L + 1, L, dtype=np.int32))
        items = np.stack([labs[lv] for lv in hierarchy.levels], axis=1).ravel() if n else np.zeros(0, np.int32)
        out["hierarchy"] = pa.MapArray.from_arrays(offsets, pa.array(np.tile(levels, n)),
                                                   pa.array(items.astype(np.int32)))
    else:
        out["hierarchy"] = pa.nulls(n, HIERARCHY_TYPE)
    return out
