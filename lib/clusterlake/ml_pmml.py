"""PMML export of a centres model: ``model.write().format("pmml").save(path)`` (``clusterlake.ml``).

The document Spark's ``KMeansModel`` writes (Spark 4.0: PMML 4.4 through JPMML): a
``ClusteringModel`` of ``modelClass="centerBased"`` comparing rows to the centres by
``squaredEuclidean`` distance, its fields named ``field_0 .. field_{d-1}`` (continuous doubles),
one ``Cluster`` per centre, ``cluster_0 ..`` in the model's order; saved as Spark saves it: one text
file (``part-00000``) in the directory ``path``, on any Hadoop file system. A row's cluster under
PMML is the model's ``transform``.

A cosine model is refused: PMML's measures cannot L2-normalise the rows first (Spark's writer
ignores the distance measure and would score such a model under Euclidean distance).
"""

from datetime import datetime, timezone

import numpy as np

NAMESPACE = "http://www.dmg.org/PMML-4_4"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clusterlake")
    except PackageNotFoundError:
        return "unknown"


def pmml_text(centers: np.ndarray, description: str = "k-means clustering") -> str:
    """The PMML document of a centre-based clustering of ``centers`` (k, d)."""
    C = np.asarray(centers, dtype=np.float64)
    k, d = C.shape
    fields = [f"field_{j}" for j in range(d)]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    lines = ['<?xml version="1.0" encoding="UTF-8" standalone="yes"?>',
             f'<PMML version="4.4" xmlns="{NAMESPACE}">',
             f'    <Header description="{description}">',
             f'        <Application name="clusterlake on Apache Spark" version="{_version()}"/>',
             f"        <Timestamp>{stamp}</Timestamp>",
             "    </Header>",
             f'    <DataDictionary numberOfFields="{d}">']
    lines += [f'        <DataField name="{f}" optype="continuous" dataType="double"/>' for f in fields]
    lines += ["    </DataDictionary>",
              f'    <ClusteringModel modelName="k-means" functionName="clustering" modelClass="centerBased" '
              f'numberOfClusters="{k}">',
              "        <MiningSchema>"]
    lines += [f'            <MiningField name="{f}" usageType="active"/>' for f in fields]
    lines += ["        </MiningSchema>",
              '        <ComparisonMeasure kind="distance">',
              "            <squaredEuclidean/>",
              "        </ComparisonMeasure>"]
    lines += [f'        <ClusteringField field="{f}" compareFunction="absDiff"/>' for f in fields]
    for j, c in enumerate(C):
        lines += [f'        <Cluster name="cluster_{j}">',
                  f'            <Array n="{d}" type="real">{" ".join(repr(float(v)) for v in c)}</Array>',
                  "        </Cluster>"]
    lines += ["    </ClusteringModel>", "</PMML>"]
    return "\n".join(lines)


def save_pmml(model, path: str, spark) -> None:
    """Writes ``model``'s PMML document as ``path/part-00000`` (Spark's layout: a one-partition
    text file, so ``sc.textFile(path)`` reads it back)."""
    if model.getDistanceMeasure() != "euclidean":
        raise ValueError(f"{type(model).__name__} under distanceMeasure={model.getDistanceMeasure()!r} cannot be "
                         "exported to PMML: its measures cannot L2-normalise the rows first (only 'euclidean')")
    description = "k-means clustering" if type(model).__name__ == "KMeansModel" else "bisecting k-means clustering"
    text = pmml_text(np.stack(model.clusterCenters()), description)
    spark.sparkContext.parallelize([text], 1).saveAsTextFile(path)
