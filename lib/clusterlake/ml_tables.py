"""Persistence of the ``clusterlake.ml`` models: Spark's params metadata JSON and one parquet table
of the model's arrays (any Hadoop file system; no pickle). One writer and one reader for every
model: each model gives its rows and schema, and how to build itself from the rows read back."""

from typing import Callable

from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReader, MLWriter


class TableWriter(MLWriter):
    """Writes ``instance``'s params (``<path>/metadata``) and ``rows`` under ``schema`` (``<path>/data``)."""

    def __init__(self, instance, rows: list, schema: str):
        super().__init__()
        self.instance, self.rows, self.schema = instance, rows, schema

    def saveImpl(self, path: str) -> None:
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession.sparkContext)
        self.sparkSession.createDataFrame(self.rows, self.schema).coalesce(1).write.parquet(f"{path}/data")


class TableReader(MLReader):
    """Reads a :class:`TableWriter`'s model: ``build(metadata, rows sorted by key)`` makes it, then
    its params are set from the metadata."""

    def __init__(self, build: Callable, key: str):
        super().__init__()
        self.build, self.key = build, key

    def load(self, path: str):
        meta = DefaultParamsReader.loadMetadata(path, self.sparkSession.sparkContext)
        rows = sorted(self.sparkSession.read.parquet(f"{path}/data").collect(), key=lambda r: r[self.key])
        model = self.build(meta, rows)
        model._resetUid(meta["uid"])  # the saved uid, as Spark's readers keep it
        DefaultParamsReader.getAndSetParams(model, meta)
        return model
