"""Command line: ``clusterlake run --config FILE [--set key=value ...]`` (the full job) and
``clusterlake update --config FILE --input PATH [--set ...]`` (fold new rows into the latest model),
``clusterlake report (--config FILE | --output PATH) [--run RUN_ID]`` (rebuild a run's HTML report
from the output alone), ``clusterlake serve --model PATH [--port N] [--watch S]`` (the HTTP
assignment and query service, docs/serving.md).

Exit codes: 0 success; 2 a user error (bad config, bad input, unusable output: one line on
stderr naming the key/column and the fix); 75 another run holds the output path's lock (retry
later); 3 a quality gate or drift check failed under on_failure: fail (nothing committed); 1 an
unexpected error (with its traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional

from clusterlake.errors import ClusterlakeError

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


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from clusterlake.pipeline import configure_logging

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


def _run(args, update: bool = False) -> int:
    from clusterlake.config import load_config
    from clusterlake.pipeline import run_job, summary_text

    try:
        cfg = load_config(args.config, args.overrides)
        if update:
            from clusterlake.update import run_update, update_summary

            result = run_update(cfg, args.input)
            print(update_summary(result))
            return 0
        result = run_job(cfg)
    except ClusterlakeError as exc:
        log.error("%s", exc)
        print(f"clusterlake: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("clusterlake: interrupted; the previous run's tables are unchanged", file=sys.stderr)
        return 130
    print(summary_text(result))
    return 0


def _report(args) -> int:
    from clusterlake.report.build import write_report

    try:
        if args.config:
            from clusterlake.config import load_config

            cfg = load_config(args.config, [])
            out, history = cfg.output.path, cfg.report.history_runs
        else:
            out, history = args.output, 14
        path = write_report(out, args.run_id, history)
    except ClusterlakeError as exc:
        print(f"clusterlake: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(path)
    return 0


def _serve(args) -> int:
    from clusterlake.serving.http import serve

    if args.max_body_bytes < 1024 or args.max_rows < 1 or (args.watch is not None and args.watch <= 0):
        print("clusterlake: error: --max-body-bytes must be >= 1024, --max-rows >= 1 and --watch > 0",
              file=sys.stderr)
        return 2
    try:
        serve(args.model, args.host, args.port, outlier_rule=args.outlier_rule, max_body_bytes=args.max_body_bytes,
              max_rows=args.max_rows, watch_seconds=args.watch, log_level=args.log_level)
    except ClusterlakeError as exc:
        print(f"clusterlake: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
