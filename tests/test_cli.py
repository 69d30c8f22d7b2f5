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
