"""Reading a Delta table as a Spark DataFrame, with or without Delta's Spark jars.

With the jars (Databricks, delta-spark clusters): ``spark.read.format("delta")``. Without them
(here, CI): delta-rs resolves the current snapshot's data files from the Delta log and Spark reads
exactly those parquet files, adding partition columns back as literals. Tables whose snapshot
needs more than the file list to be read correctly (deletion vectors, column mapping) are refused
with a clear error on that path. Runs on the driver; the data is read by Spark.
"""

from __future__ import annotations

import logging
from functools import reduce

from clusterlake.errors import InputDataError
from clusterlake.io.columns import col

log = logging.getLogger(__name__)

_UNSUPPORTED = {"deletionVectors", "columnMapping", "v2Checkpoint"}


def read_delta(spark, path: str, storage_options: dict | None = None):
    from clusterlake.session import delta_spark_available

    if delta_spark_available(spark):
        return spark.read.format("delta").load(path)

    from deltalake import DeltaTable
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema
    from pyspark.sql.types import StructType

    try:
        dt = DeltaTable(path, storage_options=storage_options)
    except Exception as exc:
        raise InputDataError(
            f"input path {path} is not a readable Delta table ({str(exc).splitlines()[0][:300]}); "
            "check input.path and input.format"
        ) from None
    proto = dt.protocol()
    features = set(proto.reader_features or [])
    bad = features & _UNSUPPORTED
    if bad or dt.metadata().configuration.get("delta.columnMapping.mode", "none") != "none":
        raise InputDataError(
            f"Delta table {path} uses {sorted(bad) or ['columnMapping']}, which needs Delta's Spark jars to "
            "read; run where they are on the classpath, or rewrite the table without them"
        )
    meta = dt.metadata()
    parts = list(meta.partition_columns)
    import pyarrow as pa

    arrow_schema = pa.schema(dt.schema().to_arrow())  # arro3 -> pyarrow via the C data interface
    spark_schema = from_arrow_schema(arrow_schema)
    data_schema = StructType([f for f in spark_schema.fields if f.name not in parts])
    uris = dt.file_uris()
    if not uris:
        return spark.createDataFrame([], spark_schema)
    log.info("reading Delta table %s version %d through delta-rs: %d files", path, dt.version(), len(uris))
    if not parts:
        return spark.read.schema(data_schema).parquet(*uris)
    actions = pa.table(dt.get_add_actions(flatten=True)).to_pydict()
    groups: dict[tuple, list[str]] = {}
    base = dt.table_uri.rstrip("/")
    for i, rel in enumerate(actions["path"]):
        key = tuple(actions[f"partition.{p}"][i] for p in parts)
        groups.setdefault(key, []).append(rel if "://" in rel or rel.startswith("/") else f"{base}/{rel}")
    frames = []
    for key, files in groups.items():
        df = spark.read.schema(data_schema).parquet(*files)
        for p, v in zip(parts, key):
            df = df.withColumn(p, F.lit(v).cast(spark_schema[p].dataType))
        frames.append(df.select(*[col(f.name) for f in spark_schema.fields]))
    return reduce(lambda a, b: a.unionByName(b), frames)
