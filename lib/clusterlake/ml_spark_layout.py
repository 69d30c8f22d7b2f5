"""A centres model saved in Spark's own ``KMeansModel`` layout: ``model.write().format("spark")``
(``clusterlake.ml``), so that ``pyspark.ml.clustering.KMeansModel.load(path)`` reads it.

The layout is Spark's ``DefaultParamsWriter`` metadata (one JSON line under ``metadata/``: the
class ``org.apache.spark.ml.clustering.KMeansModel``, the uid and the params) and a parquet table
under ``data/`` with ``clusterIdx int, clusterCenter vector``. Only Spark's own params are written
(its reader refuses a param it does not know); ours (``numTasks``, ``initialCenters``) are left
out. The other way round, :class:`clusterlake.ml.CentersReader` reads a model Spark saved.
A bisecting model is refused: Spark saves its split tree, which our centres do not carry.
"""

from __future__ import annotations

import json
import time

SPARK_CLASS = "org.apache.spark.ml.clustering.KMeansModel"


def _spark_params(model, spark_names: set) -> tuple[dict, dict]:
    """(set params, default params) of ``model`` that Spark's KMeansModel has, as JSON values."""
    def plain(v):
        return v.item() if hasattr(v, "item") else v

    paramMap = {p.name: plain(v) for p, v in model._paramMap.items() if p.name in spark_names}
    default = {p.name: plain(v) for p, v in model._defaultParamMap.items() if p.name in spark_names}
    return paramMap, default


def save_spark_layout(model, path: str, spark) -> None:
    """Writes ``model`` (a ``clusterlake.ml.KMeansModel``) under ``path`` as Spark saves its
    ``KMeansModel`` (see the module)."""
    from pyspark.ml.clustering import KMeansModel as SparkKMeansModel
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.sql.types import IntegerType, StructField, StructType

    if type(model).__name__ != "KMeansModel":
        raise ValueError(f"{type(model).__name__} cannot be written in Spark's layout: Spark saves a bisecting "
                         "model's split tree, which clusterlake's does not carry; use format 'internal'")
    names = {p.name for p in SparkKMeansModel().params}
    paramMap, default = _spark_params(model, names)
    meta = {"class": SPARK_CLASS, "timestamp": int(time.time() * 1000), "sparkVersion": spark.version,
            "uid": model.uid, "paramMap": paramMap, "defaultParamMap": default}
    spark.sparkContext.parallelize([json.dumps(meta, separators=(",", ":"))], 1).saveAsTextFile(f"{path}/metadata")
    schema = StructType([StructField("clusterIdx", IntegerType(), False), StructField("clusterCenter", VectorUDT())])
    rows = [(i, Vectors.dense([float(v) for v in c])) for i, c in enumerate(model.clusterCenters())]
    spark.createDataFrame(rows, schema).repartition(1).write.parquet(f"{path}/data")
