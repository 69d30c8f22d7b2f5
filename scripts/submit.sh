#!/usr/bin/env bash
# Submit the nightly job to a Spark cluster in client mode, with the artefacts of `make dist`.
#
#   scripts/submit.sh MASTER CONFIG [spark-submit options ...] [-- job options ...]
#
#   scripts/submit.sh spark://127.0.0.1:7077 conf/standalone.yaml -- --set job.run_date=2026-11-23
#   scripts/submit.sh yarn conf/yarn.yaml --num-executors 8 -- --set job.run_date=2026-11-23
#
# The executors run Python from the packed virtualenv (--archives ...#environment, unpacked in
# each executor's working directory); the driver runs dist/venv/bin/python, the same wheel and
# dependencies. The config file travels with --files as well (for cluster deploy modes, where the
# driver runs elsewhere: pass DEPLOY_MODE=cluster and the job reads it from its working directory).
#
# Delta Lake's Spark jars (dist/jars, from `make dist`) go with --jars, with Delta's SQL extension
# and catalog, so `output.delta_writer: auto` commits with Spark's Delta writer; DELTA_JARS=none
# leaves them out (a cluster that has its own, e.g. started with --packages; or delta-rs commits).
#
# Environment: SPARK_HOME (default: the pyspark of dist/venv), DEPLOY_MODE (client),
# ENV_ARCHIVE (dist/clusterlake-env.tar.gz), DRIVER_PYTHON (dist/venv/bin/python),
# DELTA_JARS (dist/jars, or none).
set -euo pipefail
cd "$(dirname "$0")/.."

if (($# < 2)); then
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
MASTER=$1
CONFIG=$2
shift 2
SPARK_OPTS=()
JOB_OPTS=()
while (($#)); do
  if [[ $1 == -- ]]; then
    shift
    JOB_OPTS=("$@")
    break
  fi
  SPARK_OPTS+=("$1")
  shift
done

ENV_ARCHIVE=${ENV_ARCHIVE:-dist/clusterlake-env.tar.gz}
DRIVER_PYTHON=${DRIVER_PYTHON:-dist/venv/bin/python}
DEPLOY_MODE=${DEPLOY_MODE:-client}
for f in "$ENV_ARCHIVE" "$DRIVER_PYTHON" "$CONFIG"; do
  [[ -e $f ]] || { echo "submit.sh: $f not found (run 'make dist' first; is the config path right?)" >&2; exit 2; }
done

if [[ -z ${SPARK_HOME:-} ]]; then  # pip's pyspark is a complete Spark (bin/, jars/)
  SPARK_HOME=$("$DRIVER_PYTHON" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')
  export SPARK_HOME
fi

DELTA_JARS=${DELTA_JARS:-dist/jars}
DELTA_CONF=()
if [[ $DELTA_JARS != none ]]; then
  jars=$(ls "$DELTA_JARS"/*.jar 2>/dev/null | paste -sd, -) || true
  [[ -n $jars ]] || { echo "submit.sh: no jars in $DELTA_JARS (run 'make dist'; or DELTA_JARS=none)" >&2; exit 2; }
  DELTA_CONF=(--jars "$jars"
    --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension
    --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog)
fi

JOB_CONFIG=$CONFIG
DRIVER_CONF=(--conf "spark.pyspark.driver.python=$DRIVER_PYTHON")
if [[ $DEPLOY_MODE == cluster ]]; then
  JOB_CONFIG=$(basename "$CONFIG")  # shipped by --files into the driver's working directory
  DRIVER_CONF=()                    # the driver runs remotely: ./environment/bin/python there too
fi

CMD=("$SPARK_HOME/bin/spark-submit"
  --master "$MASTER"
  --deploy-mode "$DEPLOY_MODE"
  --archives "$ENV_ARCHIVE#environment"
  --files "$CONFIG"
  --conf spark.pyspark.python=./environment/bin/python
  ${DRIVER_CONF[@]+"${DRIVER_CONF[@]}"}
  ${DELTA_CONF[@]+"${DELTA_CONF[@]}"}
  ${SPARK_OPTS[@]+"${SPARK_OPTS[@]}"}
  jobs/cluster.py --config "$JOB_CONFIG" ${JOB_OPTS[@]+"${JOB_OPTS[@]}"})
# the command, for the log, with the values of secret-looking settings masked
echo "+ ${CMD[*]}" | sed -E 's/((secret|password|token|credential|access\.key)[A-Za-z0-9_.-]*=)[^ ]*/\1***/Ig' >&2
exec "${CMD[@]}"
