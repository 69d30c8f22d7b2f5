"""Reading a Delta table as a Spark DataFrame, with or without Delta's Spark jars.

With the jars (Databricks, delta-spark clusters, local sessions after ``make setup``):
``spark.read.format("delta")`` at a given version (``versionAsOf``). Without them: delta-rs resolves the current snapshot's data files from the Delta log and Spark reads
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


def current_version(spark, path: str, storage_options: dict | None = None) -> int:
    """The table's latest version: from its log through delta-rs, or through Spark's Delta
    (``DESCRIBE HISTORY``) for a table delta-rs cannot open; an InputDataError naming the path
    when neither can."""
    from deltalake import DeltaTable

    from clusterlake.session import delta_spark_available

    try:
        return int(DeltaTable(path, storage_options=storage_options).version())
    except Exception as exc:  # noqa: BLE001 (not a table, or features delta-rs lacks)
        problem = str(exc).splitlines()[0][:300]
    if delta_spark_available(spark):
        try:
            return int(spark.sql(f"DESCRIBE HISTORY delta.`{path}` LIMIT 1").collect()[0]["version"])
        except Exception as exc:  # noqa: BLE001
            problem = str(exc).splitlines()[0][:300]
    raise InputDataError(f"input path {path} is not a readable Delta table ({problem}); "
                         "check input.path and input.format")


def read_delta(spark, path: str, storage_options: dict | None = None, version: int | None = None):
    """The table at ``version`` (default: the latest) as a DataFrame."""
    from clusterlake.session import delta_spark_available

    if delta_spark_available(spark):
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", int(version))
        try:
            return reader.load(path)
        except Exception as exc:  # noqa: BLE001 (AnalysisException: not a Delta table, no such version)
            raise InputDataError(
                f"input path {path} is not a readable Delta table{f' at version {version}' if version is not None else ''} "
                f"({str(exc).splitlines()[0][:300]}); check input.path, input.format and input.version") from None

    from deltalake import DeltaTable
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema
    from pyspark.sql.types import StructType

    try:
        dt = DeltaTable(path, version=version, storage_options=storage_options)
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
