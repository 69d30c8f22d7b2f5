"""Command line: ``clusterlake run --config FILE [--set key=value ...]`` (the full job) and
``clusterlake update --config FILE --input PATH [--set ...]`` (fold new rows into the latest model),
``clusterlake report (--config FILE | --output PATH) [--run RUN_ID]`` (rebuild a run's HTML report
from the output alone), ``clusterlake serve --model PATH [--port N] [--watch S]`` (the HTTP
assignment and query service, docs/serving.md).

Exit codes: 0 success; 2 a user error (bad config, bad input, unusable output: one line on
stderr naming the key/column and the fix); 75 another run holds the output path's lock (retry
later); 3 a quality gate or drift check failed under on_failure: fail (nothing committed); 1 the
Spark driver JVM died or ran out of memory (one line naming the stage and the memory setting) or
an unexpected error (with its traceback). Every error is printed once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Optional

from clusterlake.errors import ClusterlakeError
from clusterlake.stages import current_stage, stage_of

log = logging.getLogger("clusterlake")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clusterlake", description="Nightly distributed clustering on Spark.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the clustering job once")
    run.add_argument("--config", required=True, help="YAML job config (e.g. conf/local.yaml)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set kmeans.k=12 (repeatable)")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    up = sub.add_parser("update", help="assign new rows with the latest model and fold them into its centroids")
    up.add_argument("--config", required=True, help="the job's YAML config (output.path holds the model)")
    up.add_argument("--input", required=True, metavar="PATH",
                    help="the new rows only (a new partition or folder, same format and columns as input.path)")
    up.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key (repeatable)")
    up.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    rp = sub.add_parser("report", help="(re)build a run's HTML report from the output's tables and model")
    where = rp.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", help="the job's YAML config (its output.path)")
    where.add_argument("--output", help="the job's output.path")
    rp.add_argument("--run", dest="run_id", default=None, metavar="RUN_ID", help="default: the newest run")
    rp.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sv = sub.add_parser("serve", help="serve a model over HTTP: /assign /nearest /similar /clusters/{id} /health")
    sv.add_argument("--model", required=True, metavar="PATH", help="<output.path>/model/latest (or a run's model dir)")
    sv.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1; 0.0.0.0 to listen on every interface")
    sv.add_argument("--port", type=int, default=8080)
    sv.add_argument("--outlier-rule", default="auto", choices=["auto", "density", "radius"],
                    help="is_outlier by the density pass (auto when the model has it) or the cluster's p99 radius")
    sv.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger requests get 413 (default 1 MiB)")
    sv.add_argument("--max-rows", type=int, default=10_000, help="more rows in one request get 413")
    sv.add_argument("--watch", type=float, default=None, metavar="SECONDS",
                    help="reload when model/latest names a new run, checked every SECONDS (SIGHUP always reloads)")
    sv.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def configure_logging(level: str = "INFO") -> None:
    """Log lines to stderr with a time, the level and the logger; py4j/pyspark only from WARNING."""
    root = logging.getLogger()
    if not any(getattr(h, "_clusterlake", False) for h in root.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        h._clusterlake = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(level)
    for noisy in ("py4j", "pyspark"):
        logging.getLogger(noisy).setLevel(logging.WARNING)



def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    if args.command == "run":
        return _run(args)
    if args.command == "update":
        return _run(args, update=True)
    if args.command == "report":
        return _report(args)
    if args.command == "serve":
        return _serve(args)
    return 2  # pragma: no cover (argparse enforces the sub-command)


_INTERRUPTED_RUN = "interrupted; the previous run's tables are unchanged"


def _run(args, update: bool = False) -> int:
    def job() -> int:
        from clusterlake.config import load_config
        from clusterlake.pipeline import run_job, summary_text

        cfg = load_config(args.config, args.overrides)
        if update:
            from clusterlake.run.result import update_summary
            from clusterlake.update import run_update

            print(update_summary(run_update(cfg, args.input)))
            return 0
        print(summary_text(run_job(cfg)))
        return 0

    return guarded(job, interrupted=_INTERRUPTED_RUN)


def _report(args) -> int:
    def report() -> int:
        from clusterlake.report.build import write_report

        if args.config:
            from clusterlake.config import load_config

            cfg = load_config(args.config, [])
            out, history = cfg.output.path, cfg.report.history_runs
        else:
            out, history = args.output, 14
        print(write_report(out, args.run_id, history))
        return 0

    return guarded(report)


def _serve(args) -> int:
    if args.max_body_bytes < 1024 or args.max_rows < 1 or (args.watch is not None and args.watch <= 0):
        print("clusterlake: error: --max-body-bytes must be >= 1024, --max-rows >= 1 and --watch > 0",
              file=sys.stderr)
        return 2

    def serve() -> int:
        from clusterlake.serving.http import serve

        serve(args.model, args.host, args.port, outlier_rule=args.outlier_rule, max_body_bytes=args.max_body_bytes,
              max_rows=args.max_rows, watch_seconds=args.watch, log_level=args.log_level)
        return 0

    return guarded(serve)


def guarded(action: Callable[[], int], interrupted: Optional[str] = None) -> int:
    """Run ``action`` and turn the failures a user can act on into one stderr line and an exit code.

    Parameters
    ----------
    action : callable
        Does the command's work, prints its result and returns the exit code.
    interrupted : str, optional
        What to print after ``clusterlake: `` on Ctrl-C (exit 130); None lets KeyboardInterrupt
        through.

    Returns
    -------
    int
        ``action``'s code; a :class:`ClusterlakeError`'s ``exit_code`` (printed as
        ``clusterlake: error: <message>``, nothing else: the message names the key and the fix);
        1 when the Spark driver JVM died or ran out of memory (:func:`describe_failure`). Any other
        exception propagates with its traceback (a bug: exit 1).
    """
    _quiet_py4j_root_records()
    try:
        return action()
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(f"clusterlake: {interrupted}", file=sys.stderr)
        return 130
    except Exception as exc:
        infra = describe_failure(exc)
        if infra is not None:
            print(f"clusterlake: error: {infra}", file=sys.stderr)
            return 1
        if isinstance(exc, ClusterlakeError):
            print(f"clusterlake: error: {exc}", file=sys.stderr)
            return exc.exit_code
        raise


# --------------------------------------------------------------------------------------------
# the Spark driver JVM died or ran out of memory

_OOM = "java.lang.OutOfMemoryError"
_SPARK_OOM_EXIT = 52  # SparkExitCode.OOM: SparkUncaughtExceptionHandler after an OutOfMemoryError
_SHUT_DOWN = "because SparkContext was shut down"  # "Job 0 cancelled because SparkContext was shut down"


def describe_failure(exc: BaseException) -> Optional[str]:
    """One line for a failure of the Spark driver JVM, None for anything else.

    Anywhere in the exception's chain (a :class:`ClusterlakeError` that wraps a dead JVM counts
    too): py4j could not reach the JVM (``Py4JNetworkError``, a ``ConnectionError`` raised inside
    py4j, a bare ``Py4JError``), Spark cancelled the job because the SparkContext was shut down
    (what a task's ``OutOfMemoryError`` leads to in local mode: the JVM exits with code 52), or an
    error names ``java.lang.OutOfMemoryError``. The line names the stage that was running
    (:mod:`clusterlake.stages`), what most likely happened (from the JVM's exit code when this
    process started it), the session's ``spark.driver.memory`` when known and the setting to change.
    """
    chain = _chain(exc)
    died = any(_is_jvm_gone(e) for e in chain)
    texts = [] if died else [_text(e) for e in chain]  # str() of a Py4JJavaError asks the JVM
    oom = any(_OOM in t for t in texts)
    shut_down = any(_SHUT_DOWN in t for t in texts)
    if not (died or oom or shut_down):
        return None
    stage = next((s for s in map(stage_of, chain) if s), None) or current_stage()
    where = f"during stage '{stage}'" if stage else "outside the job's stages"
    code = _jvm_exit_code(wait=10.0 if died or shut_down else 0.0)
    from clusterlake.session import driver_memory

    mem = driver_memory()
    now = f"spark.driver.memory is {mem}" if mem else "spark.driver.memory is not known"
    if code == -9:
        return (f"the Spark driver JVM was killed (SIGKILL) {where}; most often the system's out-of-memory "
                f"killer does that when the machine or container has less free memory than the JVM heap plus "
                f"the Python workers need ({now}): run it with more memory, or set spark.driver.memory to what "
                f"the machine can hold (--set spark.conf.spark.driver.memory=SIZE; under spark-submit: "
                f"--driver-memory SIZE)")
    if oom or code == _SPARK_OOM_EXIT:
        what = f"the Spark driver JVM ran out of heap memory ({_OOM}) {where}"
    else:
        exit_note = f" (exit code {code})" if code is not None else ""
        what = (f"the Spark driver JVM died or stopped answering {where}{exit_note}; most often it ran out "
                f"of heap memory ({_OOM})")
    more = _doubled(mem)
    return (f"{what}: {now}; raise it with --set spark.conf.spark.driver.memory={more} "
            f"(under spark-submit: --driver-memory {more})")


def _quiet_py4j_root_records() -> None:
    """py4j logs "Exception while sending command." with a traceback on the *root* logger when the
    JVM is gone (out of reach of the ``py4j`` logger's level); :func:`describe_failure` says it in
    one line instead. Those records still show at DEBUG."""
    root = logging.getLogger()
    if _py4j_root_filter not in root.filters:
        root.addFilter(_py4j_root_filter)


def _py4j_root_filter(record: logging.LogRecord) -> bool:
    from_py4j = record.name == "root" and f"{os.sep}py4j{os.sep}" in record.pathname
    return not from_py4j or logging.getLogger().isEnabledFor(logging.DEBUG)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes and contexts (also those hidden by ``raise ... from None``)."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo and len(seen) < 50:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
    return seen


def _is_jvm_gone(exc: BaseException) -> bool:
    try:
        from py4j.protocol import Py4JError, Py4JJavaError, Py4JNetworkError
    except ImportError:  # pragma: no cover (pyspark brings py4j)
        return False
    if isinstance(exc, Py4JNetworkError):
        return True
    if isinstance(exc, Py4JError) and not isinstance(exc, Py4JJavaError):
        # py4j logs the network error and answers the call with a bare error: no Java trace
        return str(exc).startswith("An error occurred while calling") and "Trace:" not in str(exc)
    if not isinstance(exc, ConnectionError):
        return False
    tb = exc.__traceback__  # a refused or reset connection counts when py4j raised it
    while tb is not None:
        if f"{os.sep}py4j{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _text(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 (str() of a Py4JJavaError calls the JVM, which may be gone)
        return type(exc).__name__


def _jvm_exit_code(wait: float) -> Optional[int]:
    """The exit code of the JVM this process started (pyspark's gateway), waiting up to ``wait``
    seconds for it to end; None if it was not started here (spark-submit) or still runs."""
    try:
        from pyspark import SparkContext

        proc = getattr(SparkContext._gateway, "proc", None)
        return proc.wait(timeout=wait) if proc is not None else None
    except Exception:  # noqa: BLE001 (TimeoutExpired, no gateway: the code is unknown)
        return None


def _doubled(memory: Optional[str]) -> str:
    """Twice a ``spark.driver.memory`` value (``4g`` -> ``8g``, ``1536m`` -> ``3g``; a bare number
    is MiB to Spark); ``8g`` when unknown."""
    import re

    m = re.fullmatch(r"(\d+)([kmgt]?)b?", (memory or "").strip().lower())
    if not m:
        return "8g"
    mib = int(m.group(1)) * 2 * {"k": 1 / 1024, "": 1, "m": 1, "g": 1024, "t": 1 << 20}[m.group(2)]
    return f"{int(mib) // 1024}g" if mib % 1024 == 0 else f"{max(1, round(mib))}m"



def stream_main(argv: Optional[list[str]] = None) -> int:
    """``jobs/assign_stream.py --config FILE [--set key=value ...] [--landing PATH]
    [--checkpoint PATH] [--trigger available_now|"30 seconds"]``. Exit codes as ``clusterlake``:
    0 done, 2 a user error (one ``clusterlake: error:`` line on stderr), 130 interrupted, 1 a bug."""
    from clusterlake.config import load_config
    from clusterlake.stream import run_assign_stream, stream_summary

    p = argparse.ArgumentParser(prog="assign_stream",
                                description="Assign parquet files dropped in a landing folder with the latest model.")
    p.add_argument("--config", required=True, help="the job's YAML config (output.path holds the model)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set stream.max_files_per_trigger=10 (repeatable)")
    p.add_argument("--landing", default=None, metavar="PATH", help="default: stream.landing_path")
    p.add_argument("--checkpoint", default=None, metavar="PATH", help="default: stream.checkpoint_path")
    p.add_argument("--trigger", default=None, metavar="WHEN",
                   help="available_now (process what is there, then stop) or an interval, e.g. '30 seconds'; "
                        "default: stream.trigger")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = p.parse_args(argv)
    configure_logging(args.log_level)

    def job() -> int:
        cfg = load_config(args.config, args.overrides)
        result = run_assign_stream(cfg, landing=args.landing, checkpoint=args.checkpoint, trigger=args.trigger)
        print(stream_summary(result))
        return 0

    return guarded(job, interrupted="interrupted; committed batches stay committed and the next start resumes "
                                    "from the checkpoint")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
