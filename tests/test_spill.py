"""The engine task's memory budget: arrays past it are memory-mapped from an unlinked file on local
disk, hold the same values, and the budget comes from the setting, Spark's Python memory or the host."""

from __future__ import annotations

import os

import numpy as np
import pytest

from clusterlake.engine import spill
from clusterlake.engine.spill import TaskMemory, describe, task_budget


def test_arrays_past_the_budget_are_mapped_from_a_file_that_is_already_gone(tmp_path):
    mem = TaskMemory(budget=1000, source="test", directory=str(tmp_path))
    a = mem.empty((100, 2), np.float32, "rows")  # 800 bytes: fits
    b = mem.empty((100, 2), np.float32, "model")  # 800 more: over the budget
    assert not isinstance(a, np.memmap) and isinstance(b, np.memmap)
    assert os.listdir(tmp_path) == []  # unlinked at once: nothing is left behind, whatever happens
    b[:] = np.arange(200, dtype=np.float32).reshape(100, 2)
    assert b.sum() == sum(range(200)) and b[99, 1] == 199
    assert mem.report() == {"budget": 1000, "resident": 800, "spilled": 800}
    # asking again under a name replaces its share once the new array exists (while the caller
    # copies from the old one, both count: 800 + 160 fit, 800 + 800 would not)
    c = mem.empty((20, 2), np.float32, "model")
    assert not isinstance(c, np.memmap) and mem.report() == {"budget": 1000, "resident": 960, "spilled": 0}
    mem.release("model")
    assert mem.report()["resident"] == 800


def test_the_rows_move_to_disk_so_the_model_space_stays_in_memory(tmp_path):
    """The rows fit the budget, rows and model space do not, the model space alone does: the
    rows (read at the end) go to disk, the model space (read by every iteration) stays."""
    from clusterlake.algorithms.resident import RowsWorker
    from clusterlake.engine.blocks import Block

    X = np.random.default_rng(0).normal(size=(1000, 4)).astype(np.float32)  # 16,000 bytes
    mem = TaskMemory(budget=20_000, source="test", directory=str(tmp_path))
    rows = mem.empty(X.shape, X.dtype, "rows")
    rows[:] = X
    worker = RowsWorker(Block(rows, None, 0, memory=mem))
    import weakref

    original = weakref.ref(rows)
    del rows
    worker.prepare(np.zeros(4), np.ones(4))
    assert original() is None  # the in-memory rows are gone, not only said to be
    assert isinstance(worker.raw, np.memmap) and not isinstance(worker.X, np.memmap)
    np.testing.assert_array_equal(worker.raw, X)
    np.testing.assert_array_equal(worker.X, X)  # centre 0, scale 1: the model space is the rows
    assert mem.report() == {"budget": 20_000, "resident": 16_000, "spilled": 16_000}


def test_under_an_address_space_limit_a_spill_past_it_is_an_error_that_says_so(tmp_path):
    used = spill._address_space_used()
    assert used > 0
    mem = TaskMemory(budget=100, source="spark.executor.pyspark.memory", directory=str(tmp_path),
                     address_limit=used + (1 << 20))
    assert isinstance(mem.empty((1000, 4), np.float32, "rows"), np.memmap)  # 16 KB: within the limit, spilled
    with pytest.raises(MemoryError, match="address space is limited to .*spark.executor.pyspark.memory"):
        mem.empty((1000, 1000), np.float32, "model")  # 4 MB: past it


def test_no_budget_never_spills():
    mem = TaskMemory()
    assert not isinstance(mem.empty((1000, 100), np.float64, "rows"), np.memmap)
    assert mem.report()["spilled"] == 0


def test_the_budget_comes_from_the_setting_then_sparks_python_memory_then_the_host(monkeypatch):
    monkeypatch.setenv("PYSPARK_EXECUTOR_MEMORY_MB", "2048")
    assert task_budget(123, 4) == (123, "job.task_memory_gb")
    assert task_budget(None, 4) == (1536 << 20, "spark.executor.pyspark.memory")
    monkeypatch.delenv("PYSPARK_EXECUTOR_MEMORY_MB")
    monkeypatch.setattr(spill, "machine_memory_bytes", lambda: 16 << 30)
    assert task_budget(None, 4)[0] == 2 << 30  # half of 16 GiB over 4 tasks


def test_spill_directory_is_sparks_local_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARK_LOCAL_DIRS", f"{tmp_path}/a,{tmp_path}/b")
    assert spill.spill_directory() == f"{tmp_path}/a"


def test_the_log_phrase_names_the_largest_task_and_the_spill():
    mib = 1 << 20
    text = describe([{"budget": 100 * mib, "resident": 80 * mib, "spilled": 0},
                     {"budget": 100 * mib, "resident": 90 * mib, "spilled": 300 * mib}, None])
    assert text == "up to 90 MiB resident per task (budget 100 MiB per task), 300 MiB spilled to local disk"
    assert spill.size(3 << 29) == "1.5 GiB" and spill.size(5000) == "5 KiB" and spill.size(12) == "12 B"
    assert describe([]) == "memory not reported"


@pytest.mark.parametrize("algorithm", ["kmeans", "bisecting"])
def test_a_spilled_fit_equals_the_in_memory_fit(spark, algorithm, caplog):
    from clusterlake.algorithms.kmeans_engine import fit
    from clusterlake.engine.blocks import BlockSource

    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(c, 0.3, size=(1500, 6)) for c in (-2.0, 0.0, 2.0)]).astype(np.float32)
    df = spark.createDataFrame([tuple(map(float, r)) for r in X], [f"f{j}" for j in range(6)]).repartition(2)
    source = BlockSource(columns=tuple(f"f{j}" for j in range(6)))
    with caplog.at_level("INFO", logger="clusterlake.engine.stage"):
        a = fit(spark, df, source, 3, algorithm=algorithm, seed=1)
        assert "engine: 2 tasks loaded" in caplog.text and "spilled" not in caplog.text
        b = fit(spark, df, source, 3, algorithm=algorithm, seed=1, memory_budget=1)
    assert "KiB spilled to local disk" in caplog.text  # every task's rows: 4,500 x 6 float32
    np.testing.assert_array_equal(a.centers, b.centers)
    np.testing.assert_array_equal(a.counts, b.counts)
    assert a.inertia == b.inertia
