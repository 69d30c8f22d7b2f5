"""The command line: user errors exit 2 with one ``clusterlake: error: ...`` line on stderr; a good run
exits 0 and prints the summary."""

from __future__ import annotations

import logging
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from clusterlake.cli import main

_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")


@pytest.fixture(autouse=True)
def _fresh_cli_logging():
    """main() installs a stderr log handler once per process; bind it to this test's captured stderr
    and take it away afterwards, so tests do not log into each other's (closed) capture streams."""
    root = logging.getLogger()
    level = root.level

    def strip():
        for h in [h for h in root.handlers if getattr(h, "_clusterlake", False)]:
            root.removeHandler(h)

    strip()
    yield
    strip()
    root.setLevel(level)


def write_yaml(tmp_path, text: str, name: str = "job.yaml") -> str:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


def job_yaml(input_path: str, output_path: str, k: int = 3, extra: str = "") -> str:
    return (
        "job: {name: cli-test, run_date: 2026-11-20}\n"
        f"input: {{path: '{input_path}', id_column: customer_id, label_column: true_segment}}\n"
        f"kmeans: {{k: {k}, seed: 3, max_iter: 30}}\n"
        "quality: {sample_size: 2000}\n"
        f"output: {{path: '{output_path}'}}\n" + extra
    )


def error_line(capsys) -> tuple[str, str]:
    """The single 'clusterlake: error:' line; every other stderr line must be a log record, so a
    message spread over several lines fails here. Returns (line, stdout)."""
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("clusterlake: error: ")]
    assert len(errors) == 1, err
    stray = [ln for ln in lines if not ln.startswith("clusterlake: error: ") and not _LOG_LINE.match(ln)]
    assert not stray, f"stderr has lines that are neither the error nor log records: {stray}"
    assert out == ""
    return errors[0], out


def blobs_table(path, n: int = 300, seed: int = 1) -> str:
    rng = np.random.default_rng(seed)
    centers = np.array([[25.0, 20_000.0], [45.0, 60_000.0], [65.0, 120_000.0]])
    seg = np.arange(n) % 3
    X = centers[seg] + rng.normal(size=(n, 2)) * np.array([1.5, 1_500.0])
    pq.write_table(pa.table({
        "customer_id": np.arange(n, dtype=np.int64),
        "age": X[:, 0],
        "income": X[:, 1],
        "true_segment": seg.astype(np.int32),
    }), str(path))
    return str(path)


# --------------------------------------------------------------------------------------------
# config errors (no Spark)


def test_unknown_key_in_config_file(tmp_path, capsys):
    cfg = write_yaml(tmp_path, job_yaml("in.parquet", str(tmp_path / "out"), extra="kmeans2: {k: 3}\n"))
    assert main(["run", "--config", cfg]) == 2
    line, _ = error_line(capsys)
    assert "unknown key 'kmeans2'" in line and cfg in line
    assert not (tmp_path / "out").exists()


def test_unknown_nested_key_from_set(tmp_path, capsys):
    cfg = write_yaml(tmp_path, job_yaml("in.parquet", str(tmp_path / "out")))
    assert main(["run", "--config", cfg, "--set", "kmeans.kk=4"]) == 2
    line, _ = error_line(capsys)
    assert "unknown key 'kmeans.kk'" in line and "--set" in line


def test_bad_value_from_set(tmp_path, capsys):
    cfg = write_yaml(tmp_path, job_yaml("in.parquet", str(tmp_path / "out")))
    assert main(["run", "--config", cfg, "--set", "kmeans.k=1", "--log-level", "WARNING"]) == 2
    line, _ = error_line(capsys)
    assert "'kmeans.k'" in line and ">= 2" in line and "(got 1)" in line


def test_missing_config_file(tmp_path, capsys):
    missing = str(tmp_path / "nope.yaml")
    assert main(["run", "--config", missing]) == 2
    line, _ = error_line(capsys)
    assert missing in line and "does not exist" in line


def test_mangled_yaml_is_one_line(tmp_path, capsys):
    cfg = write_yaml(tmp_path, "input:\n  path: x\n   id_column: id\noutput:\n  path: o\n")
    assert main(["run", "--config", cfg]) == 2
    line, _ = error_line(capsys)
    assert cfg in line and "not valid YAML" in line and "line 3" in line


def test_python_tag_is_refused(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    cfg = write_yaml(tmp_path, f'input: !!python/object/apply:os.system ["touch {marker}"]\noutput: {{path: o}}\n')
    assert main(["run", "--config", cfg]) == 2
    line, _ = error_line(capsys)
    assert cfg in line
    assert not marker.exists()


def test_config_is_required():
    with pytest.raises(SystemExit) as ei:
        main(["run"])
    assert ei.value.code == 2


# --------------------------------------------------------------------------------------------
# with Spark (the CLI reuses the active session)


def test_bad_input_data(spark, tmp_path, capsys):
    missing = str(tmp_path / "missing.parquet")
    out = tmp_path / "out"
    cfg = write_yaml(tmp_path, job_yaml(missing, str(out)))
    assert main(["run", "--config", cfg]) == 2
    line, _ = error_line(capsys)
    assert missing in line and "does not exist" in line and "input.path" in line
    assert not out.exists()


def test_bad_input_column_from_set(spark, tmp_path, capsys):
    data = blobs_table(tmp_path / "t.parquet", n=30)
    out = tmp_path / "out"
    cfg = write_yaml(tmp_path, job_yaml(data, str(out)))
    assert main(["run", "--config", cfg, "--set", "input.feature_columns=[age, height]"]) == 2
    line, _ = error_line(capsys)
    assert "input.feature_columns" in line and "'height'" in line
    assert not out.exists()


def test_successful_run(spark, tmp_path, capsys):
    data = blobs_table(tmp_path / "t.parquet")
    out = str(tmp_path / "out")
    cfg = write_yaml(tmp_path, job_yaml(data, out, k=5))
    assert main(["run", "--config", cfg, "--set", "kmeans.k=3", "--log-level", "WARNING"]) == 0
    stdout, stderr = capsys.readouterr()
    assert "clusterlake: error" not in stderr
    assert "k = 3;" in stdout
    assert "rows: 300 read, 0 dropped, 300 clustered" in stdout
    assert "tables: " in stdout and f"{out}/{{centroids,assignments,metrics,profiles,lineage,runs}}" in stdout
    assert "ARI 1.0000" in stdout  # three well-separated blobs, labelled
    # the summary is about what was really committed
    assert os.path.isdir(out)
    assert DeltaTable(out + "/assignments").to_pyarrow_table().num_rows == 300
    runs = DeltaTable(out + "/runs").to_pyarrow_table().to_pylist()
    assert len(runs) == 1 and runs[0]["k"] == 3 and runs[0]["run_id"] in stdout


# --------------------------------------------------------------------------------------------
# every error is printed once (issue 17)


@pytest.mark.parametrize("command", ["run", "update", "report", "serve"])
def test_error_is_printed_once(tmp_path, capfd, command):
    cfg = write_yaml(tmp_path, job_yaml("in.parquet", str(tmp_path / "out"), extra="kmeans2: {k: 3}\n"))
    argv, words = {
        "run": (["run", "--config", cfg], "unknown key 'kmeans2'"),
        "update": (["update", "--config", cfg, "--input", str(tmp_path / "new")], "unknown key 'kmeans2'"),
        "report": (["report", "--config", cfg], "unknown key 'kmeans2'"),
        "serve": (["serve", "--model", str(tmp_path), "--port", "1"], "not a clusterlake model directory"),
    }[command]
    assert main(argv) == 2
    out, err = capfd.readouterr()
    assert err.count(words) == 1, err
    assert [ln for ln in err.splitlines() if "error" in ln.lower()] == [ln for ln in err.splitlines()
                                                                        if ln.startswith("clusterlake: error: ")]
    assert out == ""


# --------------------------------------------------------------------------------------------
# the Spark driver JVM died or ran out of memory: one line, exit 1 (no Spark here: py4j's errors)


@pytest.fixture()
def dead_jvm(monkeypatch):
    """The session had spark.driver.memory=4g; the JVM's exit code is what the test sets."""
    from clusterlake import cli, session

    monkeypatch.setattr(session, "_driver_memory", "4g")
    code = {"exit": None}
    monkeypatch.setattr(cli, "_jvm_exit_code", lambda wait: code["exit"])
    return code


def _raised_in_stage(name: str, exc: BaseException) -> BaseException:
    from clusterlake.stages import Stages

    try:
        with Stages()(name):
            raise exc
    except BaseException as e:  # noqa: BLE001
        return e
    raise AssertionError("not raised")


def test_describe_failure_jvm_out_of_memory(dead_jvm):
    from py4j.protocol import Py4JNetworkError

    from clusterlake.cli import describe_failure

    dead_jvm["exit"] = 52  # SparkUncaughtExceptionHandler after java.lang.OutOfMemoryError
    line = describe_failure(_raised_in_stage("kmeans", Py4JNetworkError("Answer from Java side is empty")))
    assert "\n" not in line
    assert "ran out of heap memory (java.lang.OutOfMemoryError) during stage 'kmeans'" in line
    assert "spark.driver.memory is 4g" in line
    assert "--set spark.conf.spark.driver.memory=8g" in line and "--driver-memory 8g" in line


def test_describe_failure_jvm_gone_for_unknown_reasons(dead_jvm):
    from py4j.protocol import Py4JError

    from clusterlake.cli import describe_failure

    line = describe_failure(_raised_in_stage("write", Py4JError("An error occurred while calling o31.sc")))
    assert "died or stopped answering during stage 'write'" in line and "most often it ran out of heap" in line
    assert "spark.driver.memory is 4g" in line and "spark.driver.memory=8g" in line


def test_describe_failure_oom_in_the_error_text(dead_jvm):
    from clusterlake.cli import describe_failure

    def exc():
        return RuntimeError("An error occurred while calling o7.collectToPython.\n"
                            ": java.lang.OutOfMemoryError: Java heap space")

    assert "ran out of heap memory (java.lang.OutOfMemoryError) during stage 'metrics'" in describe_failure(
        _raised_in_stage("metrics", exc()))
    assert "outside the job's stages" in describe_failure(exc())


def test_describe_failure_ignores_other_errors(dead_jvm):
    from py4j.protocol import Py4JError

    from clusterlake.cli import describe_failure
    from clusterlake.errors import InputDataError

    assert describe_failure(ValueError("a bug")) is None
    assert describe_failure(InputDataError("input x does not exist")) is None
    assert describe_failure(ConnectionRefusedError("not from py4j")) is None
    assert describe_failure(Py4JError("An error occurred while calling o1.x. Trace:\nsome java trace")) is None


def test_guarded_turns_a_wrapped_dead_jvm_into_exit_1(dead_jvm, capsys):
    """A user-error type raised while the JVM was gone (e.g. the reader's `except Exception`) is
    still an infrastructure failure: exit 1, the JVM line only."""
    from py4j.protocol import Py4JNetworkError

    from clusterlake.cli import guarded
    from clusterlake.errors import InputDataError

    def action():
        try:
            raise Py4JNetworkError("Error while sending or receiving")
        except Exception as exc:
            raise InputDataError(f"cannot read input x as parquet: {exc}") from None

    assert guarded(action) == 1
    out, err = capsys.readouterr()
    assert err.count("clusterlake: error: ") == 1 and "Spark driver JVM" in err and "cannot read" not in err


def test_guarded_codes(capsys):
    from clusterlake.cli import guarded
    from clusterlake.errors import QualityGateError

    def gate():
        raise QualityGateError("gate silhouette failed")

    def interrupt():
        raise KeyboardInterrupt

    def bug():
        raise ValueError("a bug")

    assert guarded(gate) == 3
    assert capsys.readouterr().err == "clusterlake: error: gate silhouette failed\n"
    assert guarded(interrupt, interrupted="interrupted; nothing changed") == 130
    assert capsys.readouterr().err == "clusterlake: interrupted; nothing changed\n"
    with pytest.raises(KeyboardInterrupt):
        guarded(interrupt)
    with pytest.raises(ValueError):
        guarded(bug)
    assert guarded(lambda: 0) == 0


# --------------------------------------------------------------------------------------------
# what a user sees when clusterlake starts Spark itself (a child process: its own JVM)


@pytest.fixture(scope="module")
def stderr_child(tmp_path_factory):
    """tests/cli_stderr_child.py run once: {phase number: its stderr lines}, stdout, exit code."""
    import subprocess
    import sys
    from pathlib import Path

    work = tmp_path_factory.mktemp("stderr-child")
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_CONF_DIR", "PYSPARK_GATEWAY_PORT")}
    p = subprocess.run([sys.executable, str(Path(__file__).with_name("cli_stderr_child.py")), str(work)],
                       capture_output=True, text=True, timeout=300, env=env)
    phases, current = {0: []}, 0
    for ln in p.stderr.splitlines():
        m = re.fullmatch(r"=== phase (\d) ===", ln)
        if m:
            current = int(m.group(1))
            phases[current] = []
        else:
            phases[current].append(ln)
    return dict(phases=phases, stdout=p.stdout, code=p.returncode, stderr=p.stderr)


def test_local_session_start_and_user_error_are_quiet(stderr_child):
    lines = stderr_child["phases"][1]
    assert "run exit code 2" in stderr_child["stdout"], stderr_child["stderr"]
    errors = [ln for ln in lines if ln.startswith("clusterlake: error: ")]
    assert len(errors) == 1 and "does not exist" in errors[0] and "input.path" in errors[0], lines
    assert sum("does not exist" in ln for ln in lines) == 1, lines  # printed once, not logged too
    jvm = [ln for ln in lines if not _LOG_LINE.match(ln) and not ln.startswith("clusterlake: error: ")]
    # Spark's launcher adds --add-modules=jdk.incubator.vector: the JVM's own warning stays
    assert all("incubator" in ln for ln in jvm), jvm
    assert any(" INFO clusterlake: stage read+validate: started" in ln for ln in lines), lines  # ours stay


def test_failed_task_prints_no_java_stack_trace(stderr_child):
    lines = stderr_child["phases"][2]
    assert "task failure: " in stderr_child["stdout"], stderr_child["stderr"]
    assert not [ln for ln in lines if ln.lstrip().startswith(("at ", "Caused by", "..."))], lines
    assert 1 <= len(lines) <= 3 and any("ERROR Executor: Exception in task" in ln for ln in lines), lines


def test_dead_driver_jvm_is_one_line(stderr_child):
    lines = stderr_child["phases"][3]
    assert stderr_child["code"] == 1, stderr_child["stderr"]
    assert "Traceback" not in stderr_child["stderr"], stderr_child["stderr"]
    errors = [ln for ln in lines if ln.startswith("clusterlake: error: ")]
    assert len(errors) == 1, lines
    assert "JVM was killed (SIGKILL) during stage 'kmeans'" in errors[0]
    assert "spark.driver.memory is 1g" in errors[0] and "--set spark.conf.spark.driver.memory=" in errors[0]
    assert [ln for ln in lines if not ln.startswith("clusterlake: error: ")] == [
        ln for ln in lines if _LOG_LINE.match(ln) and "INFO clusterlake: stage kmeans: started" in ln], lines
