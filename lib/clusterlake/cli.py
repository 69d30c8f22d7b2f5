"""Command line: ``clusterlake run --config FILE [--set key=value ...]``.

Exit codes: 0 success; 2 a user error (bad config, bad input, unusable output: one line on
stderr naming the key/column and the fix); 75 another run holds the output path's lock (retry
later); 1 an unexpected error (with its traceback).
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
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from clusterlake.pipeline import configure_logging

    configure_logging(args.log_level)
    if args.command == "run":
        return _run(args)
    return 2  # pragma: no cover (argparse enforces the sub-command)


def _run(args) -> int:
    from clusterlake.config import load_config
    from clusterlake.pipeline import run_job, summary_text

    try:
        cfg = load_config(args.config, args.overrides)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
