"""The nightly job: read -> validate -> preprocess -> fit -> assign -> metrics -> publish.

:func:`run_job` is the whole job as a list of named steps (:mod:`clusterlake.run.nightly`) inside
the run scaffold every job shares (:mod:`clusterlake.run.scaffold`); ``jobs/cluster.py`` and
``clusterlake run`` call it. Everything before *publish* writes nothing visible; publish commits
the tables one by one and the ``runs`` row last (see :mod:`clusterlake.io.tables`), and moves
``model/latest`` after that.
"""

from __future__ import annotations

import logging

from clusterlake.config import JobConfig
from clusterlake.run.result import RunResult, summary_text
from clusterlake.run.scaffold import new_run_id, open_run

__all__ = ["RunResult", "new_run_id", "run_job", "summary_text"]  # what callers import from here

log = logging.getLogger("clusterlake")


def run_job(cfg: JobConfig, spark=None) -> RunResult:
    """Run the whole job once. Raises :class:`~clusterlake.errors.ClusterlakeError` on bad input
    (before anything is written) and leaves the previous run's tables in place on any failure."""
    from clusterlake.run import nightly

    if not cfg.kmeans.enabled:
        from clusterlake.run.grouping import run_grouping_job

        return run_grouping_job(cfg, spark)
    with open_run(cfg, spark, kind="full", app="clusterlake") as run:
        inp = nightly.read_input(run)
        pre = nightly.preprocess(run, inp)
        auto = nightly.choose_k(run, inp, pre)
        fitted = nightly.fit(run, inp, pre, auto)
        measured = nightly.measure(run, inp, pre, fitted)
        pfit = nightly.sample_passes(run, inp, pre, measured)
        with run.staging() as staged:
            written = nightly.write(run, staged, inp, pre, fitted, measured, pfit)
            record = nightly.runs_record(run, pre, fitted, measured, written, inp)
            versions = run.publish(staged, lambda v: run.runs_row(inp.summary, record, v))
        result = nightly.result(run, versions, inp, pre, fitted, measured, written)
        log.info("run %s committed in %.1f s", run.run_id, result.seconds)
    result.report_path = run.report()
    return result

