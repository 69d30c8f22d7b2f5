"""The stream's table (``stream.table``): the ``assignments`` columns of each landed row, plus
where and when it was assigned."""

from __future__ import annotations

import datetime as dt

def with_stream_columns(asg, source_column: str, model_run_id: str, batch_id: int, now: dt.datetime):
    """``asg`` (an assigned micro-batch carrying each row's landing file in ``source_column``)
    with the stream's columns: ``source_file``, ``model_run_id``, ``batch_id``, ``assigned_at``."""
    from pyspark.sql import functions as F

    return (asg.withColumnRenamed(source_column, "source_file")
            .withColumn("model_run_id", F.lit(model_run_id))
            .withColumn("batch_id", F.lit(batch_id).cast("long"))
            .withColumn("assigned_at", F.timestamp_micros(F.lit(int(now.timestamp() * 1_000_000)))))
