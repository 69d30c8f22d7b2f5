"""Building the SparkSession: a local default for laptops and CI, the cluster's under spark-submit.

Runs on the driver only.
"""

from __future__ import annotations

import logging
import os
import sys

from clusterlake.config import SparkSection

log = logging.getLogger(__name__)

# Sensible local defaults; every one can be overridden by spark.conf in the job config.
_LOCAL_DEFAULTS = {
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.memory": "4g",
    "spark.sql.adaptive.enabled": "true",
}


def _under_spark_submit() -> bool:
    # spark-submit starts the Python driver with these set; a plain `python` has neither.
    return "SPARK_SUBMIT_OPTS" in os.environ or os.environ.get("PYSPARK_GATEWAY_PORT") is not None


def build_session(cfg: SparkSection, app_name: str):
    """Return the active SparkSession or create one.

    Under ``spark-submit`` (or when a session already exists, e.g. in tests) the existing session
    is used as is and ``spark.master`` from the config is ignored; otherwise a session is created
    with ``cfg.master`` (default ``local[*]``). In local mode the Python workers are pointed at this
    interpreter, so they see the same packages as the driver (a bare ``python3`` on PATH would not).
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        for k, v in cfg.conf.items():
            if not _is_static(k):
                active.conf.set(k, str(v))
        return active
    builder = SparkSession.builder.appName(cfg.app_name or app_name)
    if not _under_spark_submit():
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        builder = builder.master(cfg.master)
        for k, v in _LOCAL_DEFAULTS.items():
            builder = builder.config(k, v)
    for k, v in cfg.conf.items():
        builder = builder.config(k, str(v))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info(
        "spark %s session: master=%s, default parallelism=%d",
        spark.version,
        spark.sparkContext.master,
        spark.sparkContext.defaultParallelism,
    )
    return spark


def _is_static(key: str) -> bool:
    return key.startswith(("spark.driver.", "spark.executor.", "spark.master", "spark.jars"))


def delta_spark_available(spark) -> bool:
    """True when Delta Lake's Spark classes are on the classpath (e.g. Databricks, or a cluster
    started with delta-spark jars); then Spark's own Delta writer can be used."""
    try:
        spark.sparkContext._jvm.java.lang.Class.forName("io.delta.tables.DeltaTable")
        return True
    except Exception:  # py4j wraps ClassNotFoundException
        return False
