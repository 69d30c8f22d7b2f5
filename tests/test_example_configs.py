"""The shipped example configs load and say what their comments claim; the example Airflow DAG
compiles and submits the job the documented way (no Spark, no Airflow needed)."""

from __future__ import annotations

import ast
import datetime as dt
import py_compile
from pathlib import Path

import pytest

from clusterlake.config import JobConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
CONFIGS = sorted(CONF.glob("*.yaml"))
DAG = ROOT / "docs" / "airflow" / "clusterlake_nightly.py"


def conf_of(name: str) -> JobConfig:
    return load_config(path=CONF / name)


def spark_bool(value) -> bool:
    """A spark.conf value as Spark reads it (the job passes every value as str(value))."""
    text = str(value).strip().lower()
    assert text in ("true", "false"), f"not a boolean: {value!r}"
    return text == "true"


# --------------------------------------------------------------------------------------------
# every config


def test_the_example_configs_are_there():
    names = {p.name for p in CONFIGS}
    assert {"local.yaml", "standalone.yaml", "yarn.yaml", "kubernetes.yaml", "databricks.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads(path):
    cfg = load_config(path=path)
    assert isinstance(cfg, JobConfig)
    assert cfg.job.run_date is None, "the schedule sets the date: --set job.run_date=..."
    # config values travel to Spark as strings; nested structures would not
    for key, value in cfg.spark.conf.items():
        assert key.startswith("spark."), key
        assert isinstance(value, (str, int, float, bool)), key


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_takes_the_run_date_override(path):
    cfg = load_config(path=path, overrides=["job.run_date=2026-11-23"])
    assert cfg.job.run_date == dt.date(2026, 11, 23)
    assert cfg.resolved_run_date == dt.date(2026, 11, 23)


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name != "local.yaml"], ids=lambda p: p.name)
def test_cluster_configs_are_safe_for_barrier_stages(path):
    cfg = load_config(path=path)
    conf = cfg.spark.conf
    # where the config sets executor resources itself, it must not let Spark scale them
    if "spark.dynamicAllocation.enabled" in conf:
        assert spark_bool(conf["spark.dynamicAllocation.enabled"]) is False
    if "spark.scheduler.minRegisteredResourcesRatio" in conf:
        assert float(conf["spark.scheduler.minRegisteredResourcesRatio"]) == 1.0
    assert cfg.kmeans.engine == "clusterlake"


# --------------------------------------------------------------------------------------------
# standalone: what the standalone-cluster test submits


def test_standalone_config():
    cfg = conf_of("standalone.yaml")
    local = conf_of("local.yaml")
    assert cfg.job.name == "customer-segments"
    assert cfg.input.path == "data/sample/customers.parquet"
    assert cfg.output.path == "out/standalone"
    assert cfg.output.format == "delta"
    # same data handling and K-means as `make run`, so the results are comparable
    assert cfg.input == local.input
    assert cfg.preprocess == local.preprocess
    # except the init: the fault tests re-run the date and compare with the first run's fit,
    # which a warm start from that run would cut short (the kill happens before Lloyd iteration 3)
    assert cfg.kmeans.init == "kmeans||" and local.kmeans.init == "previous"
    assert cfg.kmeans.model_copy(update={"init": "previous"}) == local.kmeans
    assert cfg.density == local.density and cfg.density.enabled
    assert cfg.hierarchical == local.hierarchical and cfg.hierarchical.enabled
    assert cfg.quality == local.quality
    conf = cfg.spark.conf
    assert conf["spark.cores.max"] == 2
    assert conf["spark.executor.cores"] == 1
    assert conf["spark.executor.memory"] == "1g"
    assert float(conf["spark.scheduler.minRegisteredResourcesRatio"]) == 1.0
    assert conf["spark.scheduler.maxRegisteredResourcesWaitingTime"] == "60s"
    assert conf["spark.sql.shuffle.partitions"] == 4
    assert conf["spark.task.maxFailures"] == 4
    assert cfg.spark.master.startswith("spark://")


def test_standalone_config_with_the_schedules_date_override():
    cfg = load_config(path=CONF / "standalone.yaml", overrides=["job.run_date=2026-11-23"])
    assert cfg.job.run_date == dt.date(2026, 11, 23)
    assert cfg.output.path == "out/standalone"  # nothing else moves


# --------------------------------------------------------------------------------------------
# YARN / Kubernetes / Databricks


@pytest.mark.parametrize("name", ["yarn.yaml", "kubernetes.yaml"])
def test_yarn_and_kubernetes_use_a_fixed_set_of_executors(name):
    conf = conf_of(name).spark.conf
    assert spark_bool(conf["spark.dynamicAllocation.enabled"]) is False
    assert float(conf["spark.scheduler.minRegisteredResourcesRatio"]) == 1.0
    assert "spark.scheduler.maxRegisteredResourcesWaitingTime" in conf
    assert int(conf["spark.executor.instances"]) >= 1
    assert int(conf["spark.executor.cores"]) >= 1
    assert "spark.executor.memory" in conf and "spark.executor.memoryOverhead" in conf


def test_yarn_config():
    cfg = conf_of("yarn.yaml")
    assert cfg.spark.master == "yarn"
    assert cfg.input.path.startswith(("hdfs://", "s3a://"))
    assert cfg.output.path.startswith(("hdfs://", "s3a://"))
    assert cfg.output.format == "delta" and cfg.output.delta_writer in ("auto", "delta-rs")
    assert any(k.startswith("spark.yarn.") for k in cfg.spark.conf)
    assert int(cfg.spark.conf["spark.yarn.maxAppAttempts"]) == 1


def test_kubernetes_config():
    cfg = conf_of("kubernetes.yaml")
    conf = cfg.spark.conf
    assert cfg.spark.master.startswith("k8s://")
    for key in ("spark.kubernetes.container.image", "spark.kubernetes.namespace",
                "spark.kubernetes.authenticate.driver.serviceAccountName"):
        assert conf.get(key), key
    assert "://" in cfg.input.path and "://" in cfg.output.path  # shared storage, not a pod's disk


def test_databricks_config_uses_the_spark_delta_writer():
    cfg = conf_of("databricks.yaml")
    assert cfg.output.format == "delta"
    assert cfg.output.delta_writer == "spark"
    assert cfg.input.path.startswith(("abfss://", "dbfs:/", "/Volumes/"))
    # the driver's own file access (pyarrow) has no dbfs scheme: the output must be a real URI
    assert cfg.output.path.startswith(("abfss://", "s3://", "gs://"))
    # the session exists before the job starts: only runtime settings can apply
    assert all(k.startswith("spark.sql.") for k in cfg.spark.conf)


# --------------------------------------------------------------------------------------------
# the Airflow DAG (airflow is not installed: compile and read it, never import it)


def _module() -> ast.Module:
    return ast.parse(DAG.read_text(encoding="utf-8"), filename=str(DAG))


def _constants(tree: ast.Module) -> dict:
    """Module-level NAME = <value> assignments, evaluated with _value."""
    names: dict = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                names[node.targets[0].id] = _value(node.value, names)
            except ValueError:
                pass
    return names


def _value(node: ast.AST, names: dict):
    """The value of a literal, a module constant, an f-string of those, a list or a dict;
    ``os.environ.get(name, default)`` is its default."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise ValueError(f"unknown name {node.id}")
        return names[node.id]
    if isinstance(node, ast.JoinedStr):
        out = []
        for part in node.values:
            if isinstance(part, ast.Constant):
                out.append(str(part.value))
            else:
                assert isinstance(part, ast.FormattedValue)
                out.append(str(_value(part.value, names)))
        return "".join(out)
    if isinstance(node, ast.List):
        return [_value(e, names) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_value(k, names): _value(v, names) for k, v in zip(node.keys, node.values)}
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
            and ast.unparse(node.func.value) == "os.environ" and len(node.args) == 2):
        return _value(node.args[1], names)
    raise ValueError(f"not a static value: {ast.unparse(node)}")


def _calls(tree: ast.Module, func_name: str) -> list[ast.Call]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if name == func_name:
                found.append(node)
    return found


def _submit_operator_call(tree: ast.Module) -> ast.Call:
    """The task: a call of SparkSubmitOperator or of a class defined in the file that extends it."""
    classes = {"SparkSubmitOperator"}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(ast.unparse(b) in classes for b in node.bases):
            classes.add(node.name)
    calls = [c for name in classes for c in _calls(tree, name)]
    assert len(calls) == 1, f"expected one submit task, found {len(calls)}"
    return calls[0]


def _kwargs(call: ast.Call, names: dict) -> dict:
    return {kw.arg: _value(kw.value, names) for kw in call.keywords if kw.arg is not None}


def test_dag_compiles(tmp_path):
    py_compile.compile(str(DAG), cfile=str(tmp_path / "dag.pyc"), doraise=True)


def test_dag_uses_the_spark_submit_operator():
    tree = _module()
    imported = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ("airflow.providers.apache.spark.operators.spark_submit", "SparkSubmitOperator") in imported


def test_dag_submits_the_job_for_the_logical_date():
    tree = _module()
    names = _constants(tree)
    kw = _kwargs(_submit_operator_call(tree), names)
    assert kw["application"].endswith("jobs/cluster.py")
    args = kw["application_args"]
    assert "job.run_date={{ ds }}" in args
    assert args[args.index("job.run_date={{ ds }}") - 1] == "--set"
    config = args[args.index("--config") + 1]
    assert kw["files"] == config  # the config travels with the job
    assert config.endswith(".yaml") and (CONF / Path(config).name).is_file()
    # --set KEY=VALUE pairs all name real config keys
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    load_config(path=CONF / Path(config).name, overrides=[s.replace("{{ ds }}", "2026-11-23") for s in sets])


def test_dag_ships_the_packed_venv():
    tree = _module()
    kw = _kwargs(_submit_operator_call(tree), _constants(tree))
    assert kw["archives"].endswith("dist/clusterlake-env.tar.gz#environment")
    assert kw["conf"]["spark.pyspark.python"] == "./environment/bin/python"


def test_dag_schedule_allows_catchup_one_run_at_a_time_with_retries():
    tree = _module()
    names = _constants(tree)
    (dag,) = _calls(tree, "DAG")
    kw = {k.arg: k.value for k in dag.keywords}
    assert _value(kw["catchup"], names) is True
    assert _value(kw["max_active_runs"], names) == 1
    assert "schedule" in kw and "daily" in ast.unparse(kw["schedule"])
    default_args = kw["default_args"]
    assert isinstance(default_args, ast.Dict)
    retries = {_value(k, names): v for k, v in zip(default_args.keys, default_args.values)}["retries"]
    assert _value(retries, names) >= 1


def test_dag_does_not_retry_user_errors():
    tree = _module()
    names = _constants(tree)
    assert names["USER_ERROR_EXIT_CODE"] == 2 and names["QUALITY_GATE_EXIT_CODE"] == 3
    from clusterlake.errors import QualityGateError
    assert QualityGateError.exit_code == 3
    raised = {ast.unparse(n.exc.func) for n in ast.walk(tree)
              if isinstance(n, ast.Raise) and isinstance(n.exc, ast.Call)}
    assert "AirflowFailException" in raised
