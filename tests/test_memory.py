"""The driver memory budget and the estimates of the sample passes (``clusterlake.memory``)."""

from __future__ import annotations

import pytest

from clusterlake import memory as M
from clusterlake.config import load_config
from clusterlake.errors import ConfigError


def _cfg(**over):
    data = {"input": {"path": "x", "id_column": "id"}, "output": {"path": "o"}}
    return load_config(data=data, overrides=[f"{k}={v}" for k, v in over.items()])


def test_budget_is_the_setting_or_half_the_machine():
    assert M.driver_budget_bytes(2.0) == (2 * M.GiB, "job.driver_memory_gb=2")
    total = M.machine_memory_bytes()
    assert 256 << 20 < total <= M.os.sysconf("SC_PAGE_SIZE") * M.os.sysconf("SC_PHYS_PAGES")
    budget, source = M.driver_budget_bytes(None)
    assert budget == total // 2 and "half of the driver's" in source and "job.driver_memory_gb" in source


def test_the_largest_sample_that_fits_is_the_largest():
    f = lambda n: 8 * n * n  # noqa: E731
    assert M._max_rows(f, 8 * 1000 * 1000, 5000) == 1000
    assert M._max_rows(f, 10**12, 5000) == 5000
    assert M._max_rows(f, 7, 5000) == 0


def test_average_linkage_is_quadratic_ward_is_not():
    ward = M.hierarchy_bytes(100_000, 16, "ward", 2)
    avg = M.hierarchy_bytes(100_000, 16, "average", 2)
    assert ward < 200 << 20 and avg > 70 * M.GiB


def test_passes_that_fit_pass_and_those_that_do_not_are_named():
    cfg = _cfg(**{"density.enabled": "true", "hierarchical.enabled": "true", "job.driver_memory_gb": 4})
    needs = M.check_sample_passes(cfg, dims=16, rows_available=10**9)
    assert needs["density"].rows == 100_000 and needs["hierarchical"].rows == 20_000
    assert needs["density"].max_rows == 100_000  # fits: the cap is the setting
    # a small table: the sample is the table
    assert M.check_sample_passes(cfg, 16, 5_000)["hierarchical"].rows == 5_000
    cfg = _cfg(**{"hierarchical.enabled": "true", "hierarchical.linkage": "complete", "job.driver_memory_gb": 4})
    assert M.check_sample_passes(cfg, 16, 10**9)["hierarchical"].bytes < 4 * M.GiB  # 20,000 rows: ~3 GiB
    cfg = _cfg(**{"hierarchical.enabled": "true", "hierarchical.linkage": "complete", "job.driver_memory_gb": 2})
    with pytest.raises(ConfigError) as e:
        M.check_sample_passes(cfg, 16, 10**9)
    msg = str(e.value)
    assert "hierarchical.sample_size=20,000 needs ~3.0 GiB" in msg and "budget of 2.0 GiB" in msg
    n_max = int(msg.split("at most ")[1].split(" rows")[0].replace(",", ""))
    assert M.hierarchy_bytes(n_max, 16, "complete", 2) <= 2 * M.GiB < M.hierarchy_bytes(n_max + 1, 16, "complete", 2)


def test_dbscan_neighbourhoods_are_checked():
    M.check_dbscan_neighbourhoods(100_000, 50, 16, 10, 1.0)  # ~0.14 GiB: fine
    with pytest.raises(ConfigError, match=r"~5,000 neighbours.*at most [0-9,]+.*density.algorithm=hdbscan"):
        M.check_dbscan_neighbourhoods(100_000, 5000, 16, 10, 1.0)


def test_the_input_width_counts_and_small_tables_are_refused():
    cfg = _cfg(**{"density.enabled": "true", "job.driver_memory_gb": 4})
    narrow = M.check_sample_passes(cfg, 10, 10**9, input_width=10)["density"].bytes
    wide = M.check_sample_passes(cfg, 10, 10**9, input_width=500)["density"].bytes
    assert wide - narrow == 100_000 * 3 * 8 * 490  # the sample arrives in input units first
    with pytest.raises(ConfigError, match=r"cannot cut 10 rows into 16 clusters"):
        M.check_sample_passes(_cfg(**{"hierarchical.enabled": "true"}), 4, 10)
    with pytest.raises(ConfigError, match=r"needs more rows than 5 \(density.min_samples is null: the smallest of "
                                          r"the DBCV grid\)"):
        M.check_sample_passes(cfg, 4, 5)
    with pytest.raises(ConfigError, match=r"needs more rows than density.min_samples=10"):
        M.check_sample_passes(_cfg(**{"density.enabled": "true", "density.min_samples": 10}), 8, 10)


def test_the_cgroup_limit_files_follow_this_process_cgroup_and_its_ancestors(tmp_path):
    """cgroup v1 inside a container: /proc/self/cgroup names the host's path, the mount's root is
    the container's cgroup, and a child cgroup (e.g. made for one job) has a lower limit."""
    root = tmp_path / "cg"
    child = root / "memory" / "job1"
    child.mkdir(parents=True)
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (child / "memory.limit_in_bytes").write_text(str(5 << 30) + "\n")
    files = M.cgroup_limit_files("4:memory:/process_api/abc123/job1\n1:cpu:/\n", str(root))
    assert files == [str(child / "memory.limit_in_bytes"), str(root / "memory" / "memory.limit_in_bytes")]
    # cgroup v2: the unified line
    (root / "app").mkdir()
    (root / "app" / "memory.max").write_text("max\n")
    assert M.cgroup_limit_files("0::/app\n", str(root)) == [str(root / "app" / "memory.max")]
    assert M.cgroup_limit_files("", str(root)) == []
