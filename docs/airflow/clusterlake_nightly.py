"""Example Airflow DAG: the clusterlake nightly job, once per day, through ``spark-submit``.

Copy it into your DAGs folder and adapt the constants below. See ``docs/scheduling.md`` for the
reasoning (idempotent re-runs, exit codes and retries).

What the Airflow worker that runs the task needs:

* a ``spark-submit`` on PATH (or ``spark_binary`` / the connection's ``spark-binary``) for the
  cluster's Spark 4.0.x, and the cluster's client configuration (``HADOOP_CONF_DIR`` for YARN, a
  kubeconfig or in-cluster service account for Kubernetes);
* a checkout of clusterlake at ``CLUSTERLAKE_HOME`` after ``make dist``: ``jobs/cluster.py``, the
  config, ``dist/clusterlake-env.tar.gz`` (the packed virtualenv shipped to the executors) and
  ``dist/venv`` (the same environment, unpacked: the driver's Python in client mode);
* an Airflow Spark connection (``SPARK_CONN_ID``) whose host is the master (``yarn``,
  ``spark://host:7077``, ``k8s://https://...``) and whose deploy mode is ``client``: the job's exit
  code (2 = user error) only reaches Airflow in client mode.

This is the same command ``scripts/submit.sh MASTER CONFIG -- --set job.run_date=<date>`` runs.

Timing: ``{{ ds }}`` is the start of the run's data interval. With the explicit
``CronDataIntervalTimetable`` below it is the day that has just ended, on Airflow 2 and 3 alike
(Airflow 3's default for a plain ``schedule="@daily"`` is a trigger timetable, where ``ds`` would
be the day the run starts).
"""

from __future__ import annotations

import os
import re
from datetime import timedelta

import pendulum
from airflow import DAG
from airflow.exceptions import AirflowException, AirflowFailException
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.timetables.interval import CronDataIntervalTimetable

# -- adapt these -------------------------------------------------------------------------------
# The clusterlake checkout on the Airflow worker (absolute: spark-submit's working directory is
# not the checkout).
CLUSTERLAKE_HOME = os.environ.get("CLUSTERLAKE_HOME", "/opt/clusterlake")
CONFIG = f"{CLUSTERLAKE_HOME}/conf/yarn.yaml"
ENV_ARCHIVE = f"{CLUSTERLAKE_HOME}/dist/clusterlake-env.tar.gz#environment"
DRIVER_PYTHON = f"{CLUSTERLAKE_HOME}/dist/venv/bin/python"
SPARK_CONN_ID = "spark_clusterlake"
# ------------------------------------------------------------------------------------------------

USER_ERROR_EXIT_CODE = 2  # clusterlake.cli: a bad config, bad input or unusable output
QUALITY_GATE_EXIT_CODE = 3  # a quality gate failed; nothing was committed


class ClusterlakeSubmitOperator(SparkSubmitOperator):
    """``SparkSubmitOperator`` that fails without retrying when the job reports a user error.

    Exit code 2 means the config, the input data or the output location needs a fix, and exit code
    3 that a quality gate failed (readers keep the previous run): retrying the same command
    cannot succeed, so the task fails at once (``AirflowFailException``). Any
    other failure (1: a bug or an infrastructure problem, a killed driver, a lost cluster) is
    raised as is and retried as the task's ``retries`` say.
    """

    def execute(self, context):
        try:
            return super().execute(context)
        except AirflowException as exc:
            code = _submit_exit_code(self, exc)
            if code == QUALITY_GATE_EXIT_CODE:
                raise AirflowFailException(
                    "clusterlake stopped on a failed quality gate (exit code 3: the 'clusterlake: error:' "
                    "line names the gate and the measured value); last night's tables are unchanged"
                ) from exc
            if code == USER_ERROR_EXIT_CODE:
                raise AirflowFailException(
                    "clusterlake stopped on a user error (exit code 2: see the 'clusterlake: error:' "
                    "line in the log); fix the config or the input, then clear this task"
                ) from exc
            raise


def _submit_exit_code(op: SparkSubmitOperator, exc: Exception) -> int | None:
    """spark-submit's exit code: from the hook's process, else from the hook's error message."""
    process = getattr(getattr(op, "_hook", None), "_submit_sp", None)
    code = getattr(process, "returncode", None)
    if isinstance(code, int):
        return code
    match = re.search(r"Error code is: (\d+)", str(exc))
    return int(match.group(1)) if match else None


with DAG(
    dag_id="clusterlake_customer_segments",
    description="Nightly K-means segmentation of the customer feature table (clusterlake)",
    # One run per UTC day, started when the day is over; {{ ds }} = that day.
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    # Missed days are run in date order. Safe: a run replaces its run_date's partition of every
    # output table instead of appending, so a backfilled or cleared date is never duplicated.
    catchup=True,
    # One run at a time: runs of different dates commit to the same tables, and a run starting
    # while another publishes would take the other's journal for an interrupted run and undo it.
    max_active_runs=1,
    default_args={
        "owner": "data-platform",
        "retries": 2,  # for exit code 1 (infrastructure); exit code 2 is not retried, see above
        "retry_delay": timedelta(minutes=15),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(hours=4),
    },
    dagrun_timeout=timedelta(hours=12),
    tags=["clusterlake", "spark"],
) as dag:
    ClusterlakeSubmitOperator(
        task_id="cluster_customers",
        conn_id=SPARK_CONN_ID,
        deploy_mode="client",
        application=f"{CLUSTERLAKE_HOME}/jobs/cluster.py",
        name="clusterlake-customer-segments-{{ ds }}",
        # The packed virtualenv, unpacked as ./environment in every executor's working directory.
        archives=ENV_ARCHIVE,
        # The config travels with the job too (needed if you switch to cluster deploy mode, where
        # the driver reads it by its base name from its working directory).
        files=CONFIG,
        conf={
            "spark.pyspark.python": "./environment/bin/python",  # executors: the shipped venv
            "spark.pyspark.driver.python": DRIVER_PYTHON,  # driver (client mode): same packages
            # Executor sizing, dynamic allocation and the barrier-stage settings live in the
            # config's spark.conf; add here only what must be known at submission.
        },
        application_args=["--config", CONFIG, "--set", "job.run_date={{ ds }}"],
    )
