"""Distributed extension of the sample-based passes to every row (issue 5).

The density and hierarchical passes cluster a sample on the driver
(:mod:`clusterlake.kernels.density`, :mod:`clusterlake.kernels.hierarchy`); these functions label
every row of the input, partition by partition, with a ``mapInArrow`` pass over Arrow batches:
the rows are moved into the model space with the fitted preprocessor and labelled by a blocked
GEMM search against the model's points. Nothing is collected; the model arrays travel to the
executors once, as a broadcast.
"""

from __future__ import annotations

import pyarrow as pa

from clusterlake.algorithms.passes import _block
from clusterlake.kernels import density as Dk
from clusterlake.kernels import hierarchy as Hk
from clusterlake.prep.transform import Preprocessor


def _prep_args(prep: Preprocessor):
    return list(prep.feature_names), prep.center, prep.scale, prep.components, prep.normalize


def extend_density_rows(df, prep: Preprocessor, model: "Dk.DensityModel", id_col: str):
    """``id, density_label, is_outlier, density_distance`` for every row of ``df``:
    the label of the nearest core point of the density sample within its reach, else -1 (and
    ``is_outlier``); the distance (model space) to that nearest core point."""
    feats, center, scale, comps, norm = _prep_args(prep)
    bc = df.sparkSession.sparkContext.broadcast(model)

    def part(batches):
        local = Preprocessor(feats, center, scale, comps, normalize=norm)
        m = bc.value
        for b in batches:
            lab, dist = Dk.extend(local.transform(_block(b, feats)), m)
            yield pa.RecordBatch.from_pydict({
                id_col: b.column(id_col),
                "density_label": pa.array(lab, pa.int32()),
                "is_outlier": pa.array(lab < 0, pa.bool_()),
                "density_distance": pa.array(dist, pa.float64()),
            })

    id_type = df.schema[id_col].dataType.simpleString()
    schema = f"`{id_col}` {id_type}, density_label int, is_outlier boolean, density_distance double"
    return df.select(id_col, *feats).mapInArrow(part, schema)


def extend_hierarchy_rows(df, prep: Preprocessor, model: "Hk.HierarchyModel", id_col: str):
    """``id, level_<L> ...`` for every row: its cluster at every level of the hierarchical pass."""
    feats, center, scale, comps, norm = _prep_args(prep)
    bc = df.sparkSession.sparkContext.broadcast(model)
    levels = list(model.levels)

    def part(batches):
        local = Preprocessor(feats, center, scale, comps, normalize=norm)
        m = bc.value
        for b in batches:
            labs = Hk.extend(local.transform(_block(b, feats)), m)
            cols = {id_col: b.column(id_col)}
            cols.update({f"level_{lv}": pa.array(labs[lv], pa.int32()) for lv in levels})
            yield pa.RecordBatch.from_pydict(cols)

    id_type = df.schema[id_col].dataType.simpleString()
    schema = f"`{id_col}` {id_type}, " + ", ".join(f"level_{lv} int" for lv in levels)
    return df.select(id_col, *feats).mapInArrow(part, schema)
