"""Spark's workers must import clusterlake: the ``clusterlake.ml`` estimators' fits run our code
in Python tasks, where Spark's own JVM estimators need nothing on the workers.

:func:`on_workers` runs a fit; when it fails because the workers' Python cannot import clusterlake,
the package (pure Python) is shipped to them with ``SparkContext.addPyFile`` (once per
application) and the fit tried again; when a module is still missing (their Python lacks numpy,
say), :class:`WorkerImportError` says what to set (``PYSPARK_PYTHON`` / ``spark.pyspark.python``,
or a packed environment with ``spark.archives``).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Callable, Optional

log = logging.getLogger("clusterlake.ml")




class WorkerImportError(ImportError):
    """The Spark workers' Python cannot import what clusterlake's tasks need."""


_MISSING = re.compile(r"No module named '([^']+)'")
_SHIPPED: set = set()  # the applications clusterlake was shipped to (SparkContext.applicationId)


def missing_module(exc: BaseException) -> Optional[str]:
    """The module a failed Spark job's Python workers could not import, or None (also when the
    driver itself raised the ImportError: that one is not the workers')."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ImportError):
            return None
        m = _MISSING.search(str(exc))
        if m:
            return m.group(1)
        exc = exc.__cause__ or exc.__context__
    return None


def ship_package(sc) -> bool:
    """Adds a zip of the clusterlake package to ``sc``'s Python files (``addPyFile``): every task
    started from then on can import it. False when it was already shipped to this application."""
    import tempfile
    import uuid
    import zipfile
    from pathlib import Path

    import clusterlake

    if sc.applicationId in _SHIPPED:
        return False
    root = Path(clusterlake.__file__).resolve().parent
    path = Path(tempfile.mkdtemp(prefix="clusterlake-pyfiles-")) / f"clusterlake-{uuid.uuid4().hex[:8]}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            z.write(f, str(Path("clusterlake") / f.relative_to(root)))
    sc.addPyFile(str(path))
    _SHIPPED.add(sc.applicationId)
    log.warning("the Spark workers' Python cannot import clusterlake: shipped the package to them (%s)", path.name)
    return True


def worker_advice(module: str) -> str:
    return (f"the Spark workers' Python cannot import {module!r}: clusterlake's fit runs its code in Python tasks, "
            "so the executors need clusterlake and its dependencies (numpy, pandas, pyarrow, scipy). Point them at "
            f"the Python that has clusterlake installed ({sys.executable} here): set PYSPARK_PYTHON, or the Spark "
            "conf spark.pyspark.python, before the SparkSession starts; on a cluster, ship a packed environment "
            "(venv-pack, clusterlake's `dist` extra) with spark.archives. (clusterlake itself, pure Python, is "
            "shipped with SparkContext.addPyFile when it is the only module missing.)")


def on_workers(spark, run: Callable):
    """``run()`` (a fit on the engine's tasks). When it fails because the workers' Python cannot
    import clusterlake, the package is shipped to them (:func:`ship_package`) and ``run()`` tried
    once more; when a module is still missing, :class:`WorkerImportError` says what to set."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 (re-raised unless it is a worker's missing module)
        missing = missing_module(exc)
        if missing is None:
            raise
        if missing.split(".")[0] != "clusterlake" or not ship_package(spark.sparkContext):
            raise WorkerImportError(worker_advice(missing)) from exc
    try:
        return run()
    except Exception as again:  # noqa: BLE001
        missing = missing_module(again)
        if missing is None:
            raise
        raise WorkerImportError(worker_advice(missing)) from again
