"""Building the SparkSession: a local default for laptops and CI, the cluster's under spark-submit.

Runs on the driver only.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Optional

from clusterlake.config import SparkSection

log = logging.getLogger(__name__)

# The JVM's log configuration for sessions created here in local mode (see the file's header).
LOG4J2_FILE = Path(__file__).with_name("spark-log4j2.properties")
_JAVA_OPTIONS = "spark.driver.extraJavaOptions"
_driver_memory: Optional[str] = None  # of the session build_session returned last

# Sensible local defaults; every one can be overridden by spark.conf in the job config.
_LOCAL_DEFAULTS = {
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.memory": "4g",
    "spark.sql.adaptive.enabled": "true",
}


# Delta Lake's Spark SQL extension and catalog (what delta-spark's docs configure).
DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
JARS_ENV = "CLUSTERLAKE_JARS"


def spark_jars_dir() -> Optional[Path]:
    """The folder of Spark packages ``make setup`` fetched (``jars/pom.xml``: Delta Lake's Spark
    jars), ``$CLUSTERLAKE_JARS`` if set (empty: none), else ``<the virtualenv>/jars``; None when
    it does not exist."""
    env = os.environ.get(JARS_ENV)
    path = Path(env) if env else (None if env == "" else Path(sys.prefix) / "jars")
    return path if path is not None and path.is_dir() else None


def delta_jars_conf(conf: dict) -> dict[str, str]:
    """The confs that load Delta Lake's Spark jars (:func:`spark_jars_dir`) into a session
    started here, with Delta's SQL extension and catalog; ``{}`` when the folder has no
    delta-spark jar, or when ``conf`` (the job's ``spark.conf``) brings its own jars or packages."""
    folder = spark_jars_dir()
    jars = sorted(folder.glob("*.jar")) if folder is not None else []
    if not any(j.name.startswith("delta-spark") for j in jars):
        return {}
    if any(k in conf for k in ("spark.jars", "spark.jars.packages")):
        return {}
    out = {"spark.jars": ",".join(str(j) for j in jars)}
    theirs = [e.strip() for e in str(conf.get("spark.sql.extensions", "")).split(",") if e.strip()]
    if DELTA_EXTENSION not in theirs:  # added to the user's extensions, never replacing them
        out["spark.sql.extensions"] = ",".join([*theirs, DELTA_EXTENSION])
    if "spark.sql.catalog.spark_catalog" not in conf:
        out["spark.sql.catalog.spark_catalog"] = DELTA_CATALOG
    # Delta rebuilds a table's state with 50 tasks by default: seconds of scheduling per small
    # table on a laptop's local session
    out.setdefault("spark.databricks.delta.snapshotPartitions", str(conf.get("spark.databricks.delta.snapshotPartitions", 2)))
    return out


def _under_spark_submit() -> bool:
    # spark-submit starts the Python driver with these set; a plain `python` has neither.
    return "SPARK_SUBMIT_OPTS" in os.environ or os.environ.get("PYSPARK_GATEWAY_PORT") is not None


def build_session(cfg: SparkSection, app_name: str):
    """Return the active SparkSession or create one.

    Under ``spark-submit`` (or when a session already exists, e.g. in tests) the existing session
    is used as is and ``spark.master`` from the config is ignored; otherwise a session is created
    with ``cfg.master`` (default ``local[*]``). In local mode the Python workers are pointed at this
    interpreter, so they see the same packages as the driver (a bare ``python3`` on PATH would not),
    and the JVM logs through :data:`LOG4J2_FILE` from its start (:func:`quiet_java_options`: WARN, no
    Java stack traces for failed tasks) unless the user configured Spark's logging.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        for k, v in cfg.conf.items():
            if not _is_static(k):
                active.conf.set(k, str(v))
        _remember_driver_memory(active)
        return active
    builder = SparkSession.builder.appName(cfg.app_name or app_name)
    local = not _under_spark_submit()
    if local:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        builder = builder.master(cfg.master)
        for k, v in _LOCAL_DEFAULTS.items():
            builder = builder.config(k, v)
        if cfg.delta_jars:
            for k, v in delta_jars_conf(cfg.conf).items():
                builder = builder.config(k, v)
    for k, v in cfg.conf.items():
        builder = builder.config(k, str(v))
    java_options = quiet_java_options(cfg.conf) if local else None
    if java_options is not None:
        builder = builder.config(_JAVA_OPTIONS, java_options)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    _remember_driver_memory(spark)
    log.info(
        "spark %s session: master=%s, default parallelism=%d",
        spark.version,
        spark.sparkContext.master,
        spark.sparkContext.defaultParallelism,
    )
    return spark


def driver_memory() -> Optional[str]:
    """``spark.driver.memory`` of the session :func:`build_session` returned last (Spark's default
    ``1g`` when the session did not set it), None before any session was built in this process."""
    return _driver_memory


def _remember_driver_memory(spark) -> None:
    global _driver_memory
    try:
        _driver_memory = spark.sparkContext.getConf().get("spark.driver.memory", "1g")
    except Exception:  # noqa: BLE001 (a remote/Connect session has no SparkContext: nothing to report)
        _driver_memory = None


def quiet_java_options(conf: dict) -> Optional[str]:
    """The ``spark.driver.extraJavaOptions`` that make a local session's JVM log through
    :data:`LOG4J2_FILE` (WARN from the start, task failures one line each, no Java traces).

    The user's options (``conf``, else ``spark-defaults.conf`` in the Spark conf directory) are kept
    and ours appended. None (leave the JVM's logging alone) when those options name a log4j
    configuration, when the Spark conf directory has a ``log4j2.*`` file, or when the file is not
    installed.

    Parameters
    ----------
    conf : dict
        The job's ``spark.conf``.
    """
    theirs = conf.get(_JAVA_OPTIONS)
    theirs = str(theirs) if theirs is not None else _spark_defaults().get(_JAVA_OPTIONS, "")
    conf_dir = _spark_conf_dir()
    if "log4j.configuration" in theirs or "log4j2.configurationFile" in theirs:
        return None
    if conf_dir is not None and any(conf_dir.glob("log4j2.*")):
        log.debug("Spark's log configuration comes from %s", conf_dir)
        return None
    if not LOG4J2_FILE.is_file():
        log.debug("%s is not installed; Spark logs with its defaults", LOG4J2_FILE)
        return None
    ours = f"-Dlog4j2.configurationFile={LOG4J2_FILE}"
    if re.search(r"\s", ours):  # Spark splits the options like a shell would
        ours = f'"{ours}"'
    return f"{theirs} {ours}".strip()


def _spark_conf_dir() -> Optional[Path]:
    """SPARK_CONF_DIR, else SPARK_HOME/conf, else pip pyspark's conf/ (usually absent)."""
    if os.environ.get("SPARK_CONF_DIR"):
        return Path(os.environ["SPARK_CONF_DIR"])
    if os.environ.get("SPARK_HOME"):
        home = Path(os.environ["SPARK_HOME"])
    else:
        import pyspark

        home = Path(pyspark.__file__).parent  # what pyspark's launcher uses for a pip install
    path = home / "conf"
    return path if path.is_dir() else None


def _spark_defaults() -> dict[str, str]:
    """``spark-defaults.conf`` of the Spark conf directory (``key value`` or ``key=value`` lines)."""
    conf_dir = _spark_conf_dir()
    path = conf_dir / "spark-defaults.conf" if conf_dir is not None else None
    if path is None or not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = re.match(r"\s*([^#!\s=:][^\s=:]*)(?:\s*[=:]\s*|\s+)?(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _is_static(key: str) -> bool:
    return key.startswith(("spark.driver.", "spark.executor.", "spark.master", "spark.jars"))


def delta_spark_available(spark) -> bool:
    """True when Spark's own Delta writer and reader can be used: Delta Lake's Spark classes are on
    the classpath and its SQL extension is on (Databricks has Delta built in; elsewhere, e.g. a
    cluster started with ``--packages`` but without the extension, ``RESTORE`` and Delta's SQL
    would fail, so ``auto`` keeps delta-rs there)."""
    try:  # Spark's class loader: jars added by spark.jars are not on the system class path
        loadable = bool(spark.sparkContext._jvm.org.apache.spark.util.Utils.classIsLoadable(
            "io.delta.tables.DeltaTable"))
    except Exception:  # noqa: BLE001 (no JVM to ask, e.g. Spark Connect: not available)
        return False
    if not loadable:
        return False
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return True
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    return DELTA_EXTENSION in [e.strip() for e in extensions.split(",")]
