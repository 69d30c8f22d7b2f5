"""The ``assignments`` table: one row per valid input row, the id column first, then the columns of
:data:`COLUMNS`, built from the one assignment rule's result
(:class:`clusterlake.kernels.assignment.Assignment`) by :func:`arrow_columns`.

Columns after the id (always present, so the table's schema does not change with the config):

* ``cluster_id int`` -- the stable cluster id of the nearest centroid;
* ``distance double`` -- exact Euclidean distance to it, in the model space;
* ``second_cluster_id int``, ``margin double`` -- the second-nearest centroid and the distance to
  it minus ``distance``; **null when k == 1** (the rule's "no second", -1/NaN in numpy);
* ``density_label int`` -- the density cluster, -1 for noise; ``is_outlier boolean`` --
  ``density_label = -1``; ``density_distance double`` -- distance to the nearest core point of the
  sample; all three null when the density pass is off;
* ``hierarchy map<int,int>`` -- number of clusters at a level -> the row's cluster at that level
  (``hierarchy[16]`` in SQL); null when the hierarchical pass is off;
* ``probability double`` -- a Gaussian mixture's posterior of the assigned component (the row's
  ``cluster_id`` is its most probable component, ``second_cluster_id`` the runner-up and
  ``margin`` the log posterior ratio of the two); null for every other model. Added last (issue
  24): a table written before gains the column, null on its older rows.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa

from clusterlake.io.columns import quoted

HIERARCHY_TYPE = pa.map_(pa.int32(), pa.int32())
SCHEMA = pa.schema([
    ("cluster_id", pa.int32()), ("distance", pa.float64()), ("second_cluster_id", pa.int32()),
    ("margin", pa.float64()), ("density_label", pa.int32()), ("is_outlier", pa.bool_()),
    ("density_distance", pa.float64()), ("hierarchy", HIERARCHY_TYPE), ("probability", pa.float64()),
])
"""The Arrow schema of the columns after the id."""
COLUMNS = tuple(SCHEMA.names)
KMEANS_DDL = "cluster_id int, distance double, second_cluster_id int, margin double"
PASS_DDL = "density_label int, is_outlier boolean, density_distance double, hierarchy map<int,int>"
DDL = f"{KMEANS_DDL}, {PASS_DDL}, probability double"
"""Spark DDL of the columns after the id (the same types as :data:`SCHEMA`)."""


def ddl(id_column: str, id_type: str) -> str:
    """The whole row's Spark DDL: the id column (its name quoted, its Spark type string) first."""
    return f"{quoted(id_column)} {id_type}, {DDL}"


def arrow_columns(a) -> dict[str, pa.Array]:
    """The :data:`COLUMNS` of the rows of the assignment ``a``, in order (nulls as documented)."""
    n = len(a)
    none = ~np.asarray(a.has_second, dtype=bool)
    out = {
        "cluster_id": pa.array(a.cluster_id, pa.int32()),
        "distance": pa.array(a.distance, pa.float64()),
        "second_cluster_id": pa.array(a.second_cluster_id, pa.int32(), mask=none if none.any() else None),
        "margin": pa.array(a.margin, pa.float64(), mask=none if none.any() else None),
    }
    out.update(_density_columns(n, a.density_label, a.is_outlier, a.density_distance))
    out["hierarchy"] = _hierarchy_column(n, a.hierarchy)
    prob = getattr(a, "probability", None)
    out["probability"] = pa.nulls(n, pa.float64()) if prob is None else pa.array(prob, pa.float64())
    return out


def _density_columns(n: int, label: Optional[np.ndarray], outlier: Optional[np.ndarray],
                     distance: Optional[np.ndarray]) -> dict[str, pa.Array]:
    if label is None:
        return {"density_label": pa.nulls(n, pa.int32()), "is_outlier": pa.nulls(n, pa.bool_()),
                "density_distance": pa.nulls(n, pa.float64())}
    return {"density_label": pa.array(label, pa.int32()), "is_outlier": pa.array(outlier, pa.bool_()),
            "density_distance": pa.array(distance, pa.float64())}


def _hierarchy_column(n: int, levels: Optional[dict[int, np.ndarray]]) -> pa.Array:
    """``map<int,int>``: every row maps each level to its label at that level (levels ascending)."""
    if levels is None:
        return pa.nulls(n, HIERARCHY_TYPE)
    keys = np.asarray(sorted(levels), dtype=np.int32)
    L = len(keys)
    offsets = pa.array(np.arange(0, n * L + 1, L, dtype=np.int32))
    items = np.stack([levels[lv] for lv in keys], axis=1).ravel() if n else np.zeros(0, np.int32)
    return pa.MapArray.from_arrays(offsets, pa.array(np.tile(keys, n)), pa.array(items.astype(np.int32)))


def record_batch(id_column: str, ids: pa.Array, a) -> pa.RecordBatch:
    """One ``assignments`` batch: the id column ``ids`` (its name and type kept), then the rule's
    columns."""
    return pa.RecordBatch.from_pydict({id_column: ids, **arrow_columns(a)})
