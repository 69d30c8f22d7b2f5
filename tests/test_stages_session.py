"""The stage timer (clusterlake.stages) and the local session's quiet JVM logging options
(clusterlake.session.quiet_java_options). No Spark."""

from __future__ import annotations

import logging
import threading

import pytest

from clusterlake import session
from clusterlake.stages import Stages, current_stage, spark_pass, stage_of


def test_stages_time_log_and_know_the_running_stage(caplog):
    stage = Stages()
    assert current_stage() is None
    with caplog.at_level(logging.INFO, logger="clusterlake"):
        with stage("read+validate") as note:
            assert current_stage() == "read+validate"
            with stage("inner"):
                assert current_stage() == "inner"
            assert current_stage() == "read+validate"
            note.update(rows=10, features=3)
    assert current_stage() is None
    assert set(stage.seconds) == {"read+validate", "inner"} and all(v >= 0 for v in stage.seconds.values())
    msgs = [r.getMessage() for r in caplog.records]
    assert "stage read+validate: started" in msgs and "stage inner: started" in msgs
    assert any(m.startswith("stage read+validate: done in ") and m.endswith(" s (rows=10, features=3)") for m in msgs)


def test_spark_passes_are_logged_and_listed_on_their_stage(caplog):
    stage = Stages()
    with caplog.at_level(logging.INFO, logger="clusterlake"):
        with spark_pass("outside"):  # outside every stage: only logged
            pass
        with stage("metrics"):
            with spark_pass("cluster statistics"):
                pass
            for _ in range(2):  # the same pass twice in one stage: summed
                with spark_pass("sample"):
                    pass
        with stage("write"):
            pass
    assert list(stage.passes) == ["metrics", "write"]
    assert list(stage.passes["metrics"]) == ["cluster statistics", "sample"] and stage.passes["write"] == {}
    msgs = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("spark pass sample: ") for m in msgs) == 2 and any(m.startswith("spark pass outside: ") for m in msgs)
    done = next(m for m in msgs if m.startswith("stage metrics: done in "))
    assert "spark passes: cluster statistics " in done and ", sample " in done
    assert next(m for m in msgs if m.startswith("stage write: done in ")).endswith(" s")  # no passes, no list


def test_a_failure_names_its_innermost_stage_and_is_not_timed():
    stage = Stages()
    with pytest.raises(ValueError) as ei:
        with stage("kmeans"):
            with stage("kmeans.lloyd"):
                raise ValueError("boom")
    assert stage_of(ei.value) == "kmeans.lloyd" and current_stage() is None and stage.seconds == {}
    assert stage_of(ValueError("elsewhere")) is None


def test_current_stage_across_threads():
    stage = Stages()
    entered, release = threading.Barrier(3), threading.Event()
    seen = []

    def work(name):
        with stage(name):
            entered.wait(timeout=10)
            release.wait(timeout=10)
        seen.append(name)

    threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    entered.wait(timeout=10)
    assert current_stage() in ("a", "b")
    release.set()
    for t in threads:
        t.join(timeout=10)
    assert sorted(seen) == ["a", "b"] and current_stage() is None


@pytest.fixture()
def no_spark_conf_dir(monkeypatch, tmp_path):
    """An empty Spark conf directory (no spark-defaults.conf, no log4j2 file)."""
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))
    return tmp_path


def test_quiet_java_options_point_at_the_packaged_file(no_spark_conf_dir):
    assert session.LOG4J2_FILE.is_file()  # package data: see pyproject's [tool.setuptools.package-data]
    flag = f"-Dlog4j2.configurationFile={session.LOG4J2_FILE}"
    assert session.quiet_java_options({}) == flag
    assert session.quiet_java_options({"spark.driver.extraJavaOptions": "-XX:+UseG1GC -Da=b"}) == \
        f"-XX:+UseG1GC -Da=b {flag}"


def test_quiet_java_options_keep_spark_defaults(no_spark_conf_dir):
    (no_spark_conf_dir / "spark-defaults.conf").write_text(
        "# site defaults\nspark.driver.extraJavaOptions   -Dsite=1 -Dother=2\nspark.executor.memory 2g\n")
    flag = f"-Dlog4j2.configurationFile={session.LOG4J2_FILE}"
    assert session.quiet_java_options({}) == f"-Dsite=1 -Dother=2 {flag}"
    # the job's own spark.conf wins over spark-defaults.conf, as in Spark
    assert session.quiet_java_options({"spark.driver.extraJavaOptions": "-Djob=1"}) == f"-Djob=1 {flag}"


@pytest.mark.parametrize("opts", ["-Dlog4j2.configurationFile=/etc/spark/log4j2.xml",
                                  "-Dlog4j.configuration=file:/etc/log4j.properties"])
def test_quiet_java_options_leave_the_users_log_config_alone(no_spark_conf_dir, opts):
    assert session.quiet_java_options({"spark.driver.extraJavaOptions": opts}) is None


def test_quiet_java_options_leave_the_conf_dirs_log_config_alone(no_spark_conf_dir):
    (no_spark_conf_dir / "log4j2.properties").write_text("rootLogger.level = info\n")
    assert session.quiet_java_options({}) is None


# ----------------------------------------------------------------------------------------------
# Delta's Spark jars for local sessions (issue 20)


def test_delta_jars_conf_loads_the_folder_make_setup_filled(tmp_path, monkeypatch):
    from clusterlake.session import DELTA_CATALOG, DELTA_EXTENSION, JARS_ENV, delta_jars_conf

    jars = tmp_path / "jars"
    jars.mkdir()
    monkeypatch.setenv(JARS_ENV, str(jars))
    assert delta_jars_conf({}) == {}  # an empty folder: no Delta
    (jars / "delta-storage-4.0.1.jar").write_bytes(b"")
    assert delta_jars_conf({}) == {}  # no delta-spark jar among them
    (jars / "delta-spark_2.13-4.0.1.jar").write_bytes(b"")
    conf = delta_jars_conf({})
    assert conf["spark.jars"] == f"{jars}/delta-spark_2.13-4.0.1.jar,{jars}/delta-storage-4.0.1.jar"
    assert conf["spark.sql.extensions"] == DELTA_EXTENSION and conf["spark.sql.catalog.spark_catalog"] == DELTA_CATALOG
    # the user's own jars or packages win; Delta's extension joins the user's extensions
    assert delta_jars_conf({"spark.jars.packages": "io.delta:delta-spark_2.13:4.0.1"}) == {}
    assert delta_jars_conf({"spark.sql.extensions": "x.Y"})["spark.sql.extensions"] == f"x.Y,{DELTA_EXTENSION}"
    assert "spark.sql.extensions" not in delta_jars_conf({"spark.sql.extensions": f"{DELTA_EXTENSION}, x.Y"})
    monkeypatch.setenv(JARS_ENV, "")  # explicitly none
    assert delta_jars_conf({}) == {}


def test_auto_picks_spark_delta_writer_when_the_session_has_the_jars(spark, tmp_path):
    from clusterlake.config import OutputSection
    from clusterlake.io.tables import DeltaRsStore, SparkDeltaStore, make_store
    from clusterlake.session import delta_spark_available

    from clusterlake.session import spark_jars_dir

    folder = spark_jars_dir()
    if folder is None or not list(folder.glob("delta-spark*.jar")):
        pytest.skip("no Delta jars in .venv/jars: run `make setup`")
    assert delta_spark_available(spark)  # the test session loaded them, with Delta's extension
    assert type(make_store(spark, OutputSection(path=str(tmp_path)), "2026-11-20", "r1")) is SparkDeltaStore
    assert type(make_store(spark, OutputSection(path=str(tmp_path), delta_writer="delta-rs"), "2026-11-20", "r1")) \
        is DeltaRsStore
