"""Is ``output.path`` usable? Checked before the SparkSession starts (seconds, not the ~20 s of a
JVM start-up), so a mistyped or unwritable path is an exit-2 line, not a traceback after the fit.

On a local filesystem the check writes and removes a probe file in the output directory (creating
the missing directories for it and removing them again), which is the only honest test of
permissions, read-only mounts and paths under ``/proc``. Elsewhere (``s3://``, ``hdfs://``) it
checks that the path is not a file; credentials and permissions show at the first write.
Runs on the driver only.
"""

from __future__ import annotations

import os
import uuid

import pyarrow.fs as pafs

from clusterlake.errors import OutputError
from clusterlake.io.fs import location


def check_output_path(path: str) -> None:
    """Raise :class:`OutputError` naming the problem and the fix when ``output.path`` cannot hold
    the job's tables; leaves nothing behind either way."""
    import pyarrow as pa

    try:
        loc = location(path)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:  # a URI pyarrow cannot open
        raise OutputError(f"output.path {path} is not a path or URI this job can write to "
                          f"({_first_line(exc)}); fix output.path") from None
    # an unreachable store or a credentials error raises here: infrastructure (exit 1, retried)
    info = loc.fs.get_file_info(loc.path)
    if info.type == pafs.FileType.File:
        raise OutputError(f"output.path {path} is a regular file, not a directory; point output.path at a "
                          "directory (it is created if missing)")
    if loc.is_local:
        _probe_local(loc.path, path)


def _probe_local(root: str, shown: str) -> None:
    created = []
    parent = root
    while not os.path.exists(parent):
        created.append(parent)
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutputError(f"output.path {shown} is under {parent}, which is a regular file, not a directory; "
                          "fix output.path")
    probe = os.path.join(root, f".clusterlake-probe-{uuid.uuid4().hex[:8]}")
    try:
        for d in reversed(created):
            os.mkdir(d)
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.remove(probe)
    except OSError as exc:
        raise OutputError(f"output.path {shown} is not writable ({exc.strerror or exc}: {exc.filename or root}); "
                          "fix its permissions or point output.path elsewhere") from None
    finally:
        for d in created:  # deepest first; only what this check made, and only if still empty
            try:
                os.rmdir(d)
            except OSError:
                pass


def _first_line(exc: Exception) -> str:
    from clusterlake.io.reader import _first_line as first

    return first(exc)[:300]
