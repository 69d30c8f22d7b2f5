"""How much memory the driver's sample passes need, and how much the driver may use.

The density and hierarchical passes cluster a sample on the driver (issue 5). Their memory grows
with the sample: linearly for DBSCAN/HDBSCAN and Ward/single linkage, quadratically for average
and complete linkage (the distance matrix). :func:`check_sample_passes` refuses a config whose
passes would not fit, before the sample is drawn, with an error that names the setting, what it
needs and the largest sample that fits. docs/passes.md has the table of safe sample sizes per GiB.

The budget is ``job.driver_memory_gb`` when set, else half of the memory of the driver's machine,
or of its container when a cgroup limit is lower (YARN, Kubernetes, Docker): the other half is left
for the driver's JVM and the rest of the job.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

from clusterlake.errors import ConfigError

log = logging.getLogger(__name__)

GiB = 1 << 30
FIXED_BYTES = 64 << 20  # working buffers of scikit-learn/fastcluster that do not grow with the sample
CGROUP_ROOT = "/sys/fs/cgroup"


def cgroup_limit_files(proc_cgroup: str, root: str = CGROUP_ROOT) -> list[str]:
    """The memory-limit files that bound this process: its own cgroup's (named in
    ``/proc/self/cgroup``, v1 ``memory`` or v2 unified) and every ancestor's up to the mount
    root, whichever exist. Inside a container the mount's root is the container's own cgroup while
    ``/proc/self/cgroup`` may name the host's path: the path is tried with its leading parts
    dropped until it exists under the mount."""
    out = []
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if "memory" in controllers.split(","):
            base, name = os.path.join(root, "memory"), "memory.limit_in_bytes"
        elif controllers == "":
            base, name = root, "memory.max"
        else:
            continue
        segs = [p for p in path.split("/") if p and p != ".."]
        for i in range(len(segs) + 1):  # the longest tail of the path that exists under the mount
            if os.path.isdir(os.path.join(base, *segs[i:])):
                segs = segs[i:]
                break
        else:
            segs = []
        for j in range(len(segs), -1, -1):  # the cgroup and its ancestors
            f = os.path.join(base, *segs[:j], name)
            if os.path.isfile(f):
                out.append(f)
    return out


def machine_memory_bytes() -> int:
    """Physical memory, or the lowest cgroup (container) limit bounding this process."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/proc/self/cgroup") as f:
            files = cgroup_limit_files(f.read())
    except OSError:  # no /proc: the mount root's limits, at least
        files = [os.path.join(CGROUP_ROOT, "memory.max"), os.path.join(CGROUP_ROOT, "memory", "memory.limit_in_bytes")]
    for path in files:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return int(total)


def driver_budget_bytes(driver_memory_gb: Optional[float]) -> tuple[int, str]:
    """The bytes the sample passes may use, and where that figure comes from (for messages)."""
    if driver_memory_gb is not None:
        return int(driver_memory_gb * GiB), f"job.driver_memory_gb={driver_memory_gb:g}"
    total = machine_memory_bytes()
    return total // 2, f"half of the driver's {total / GiB:.1f} GiB (set job.driver_memory_gb to change)"


# ----------------------------------------------------------------------------------------------
# estimates (bytes); measured against peak RSS in scripts/bench_density.py and bench_hierarchy


def density_bytes(rows: int, dims: int, min_samples: int) -> int:
    """DBSCAN/HDBSCAN on ``rows`` x ``dims`` without DBSCAN's neighbourhoods (checked separately,
    see :func:`dbscan_neighbourhood_bytes`): the sample and its copies (x4), the k-nearest-neighbour
    distances and indices, the trees and per-row objects."""
    return int(FIXED_BYTES + rows * (dims * 8 * 4 + (min_samples + 1) * 16 + 384))


def dbscan_neighbourhood_bytes(rows: int, mean_neighbours: float) -> int:
    """scikit-learn's DBSCAN keeps every row's eps-neighbourhood: int64 indices, plus the
    distances of the chunked radius search while it runs (measured: ~20 bytes per neighbour at
    peak, 100,000 x 16 rows with 1,258 neighbours each: 2.5 GiB)."""
    return int(rows * (mean_neighbours * 24 + 112))


def density_min_samples(d) -> int:
    """The most neighbours the density pass (config section ``d``) may use, for its memory:
    ``min_samples``, else the DBCV grid's largest (HDBSCAN choosing) or the default."""
    from clusterlake.kernels.density import DEFAULT_MIN_SAMPLES
    from clusterlake.kernels.density_defaults import GRID_MIN_SAMPLES

    return d.min_samples or (max(GRID_MIN_SAMPLES) if d.chooses_parameters else DEFAULT_MIN_SAMPLES)


def hierarchy_bytes(rows: int, dims: int, method: str, levels: int, metric: Optional[str] = None) -> int:
    from clusterlake.kernels.hierarchy import linkage_bytes

    return int(FIXED_BYTES + linkage_bytes(rows, method, dims, metric) + rows * (dims * 8 * 2 + levels * 8 * 2 + 64))


def _least_rows(d) -> int:
    """Rows the density pass needs more than: ``min_samples`` (the grid's smallest when HDBSCAN chooses)."""
    from clusterlake.kernels.density import DEFAULT_MIN_SAMPLES
    from clusterlake.kernels.density_defaults import GRID_MIN_SAMPLES

    return d.min_samples or (min(GRID_MIN_SAMPLES) if d.chooses_parameters else DEFAULT_MIN_SAMPLES)


def _min_samples_shown(d) -> str:
    if d.min_samples is not None:
        return f"density.min_samples={d.min_samples}"
    return f"{_least_rows(d)} (density.min_samples is null: {'the smallest of the DBCV grid' if d.chooses_parameters else 'the default'})"


@dataclass
class PassNeed:
    setting: str  # the sample_size key that drives it
    rows: int
    bytes: int
    max_rows: int  # the largest sample that fits the budget


def _max_rows(need_of, budget: int, upper: int) -> int:
    lo, hi = 0, max(upper, 1)
    if need_of(hi) <= budget:
        return hi
    while lo < hi:  # largest n with need_of(n) <= budget
        mid = (lo + hi + 1) // 2
        if need_of(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def check_sample_passes(cfg, dims: int, rows_available: int, input_width: int = 0) -> dict[str, PassNeed]:
    """Raise :class:`ConfigError` when the enabled sample passes would not fit the driver budget,
    or the table is too small for them.

    ``dims``: model-space dimensions (after PCA); ``input_width``: input feature columns (the
    sample arrives in input units: pandas, numpy and the scaled copy before PCA, ~3 copies);
    ``rows_available``: validated rows (a sample is never larger). Returns what each enabled pass
    needs (logged by the job).
    """
    if cfg.hierarchical.enabled and rows_available < cfg.hierarchical.levels[-1]:
        raise ConfigError(
            f"the hierarchical pass cannot cut {rows_available:,} rows into {cfg.hierarchical.levels[-1]} clusters "
            f"(hierarchical.levels={cfg.hierarchical.levels}); lower the levels or disable the pass")
    if cfg.density.enabled and rows_available <= _least_rows(cfg.density):
        raise ConfigError(
            f"the density pass needs more rows than {_min_samples_shown(cfg.density)}; "
            f"the table has {rows_available:,}")
    budget, source = driver_budget_bytes(cfg.job.driver_memory_gb)
    raw = 3 * 8 * int(input_width)  # bytes per sample row before PCA
    needs: dict[str, PassNeed] = {}
    if cfg.density.enabled:
        d = cfg.density
        f = lambda n: density_bytes(n, dims, density_min_samples(d)) + n * raw  # noqa: E731
        rows = min(d.sample_size, rows_available)
        needs["density"] = PassNeed("density.sample_size", rows, f(rows), _max_rows(f, budget, d.sample_size))
    if cfg.hierarchical.enabled:
        h = cfg.hierarchical
        hmetric = cfg.pass_distance("hierarchical")[0]
        f = lambda n: hierarchy_bytes(n, dims, h.linkage, len(h.levels), hmetric) + n * raw  # noqa: E731
        rows = min(h.sample_size, rows_available)
        needs["hierarchical"] = PassNeed("hierarchical.sample_size", rows, f(rows),
                                         _max_rows(f, budget, h.sample_size))
    bad = [n for n in needs.values() if n.bytes > budget]
    if bad:
        from clusterlake.kernels.hierarchy import on_points

        hmetric = cfg.pass_distance("hierarchical")[0]
        parts = []
        for n in bad:
            why = ""
            if n.setting.startswith("hierarchical") and not on_points(cfg.hierarchical.linkage, hmetric):
                why = (f" ({cfg.hierarchical.linkage} linkage under {hmetric} keeps the {n.rows:,} x {n.rows:,} "
                       "distance matrix; ward and single linkage (but single under chebyshev) do not)")
            parts.append(f"{n.setting}={n.rows:,} needs ~{n.bytes / GiB:.1f} GiB on the driver{why}; "
                         f"at most {n.max_rows:,} rows fit")
        raise ConfigError(
            "the sample passes do not fit the driver's memory budget of "
            f"{budget / GiB:.1f} GiB ({source}): " + "; ".join(parts)
            + ". Lower the sample size, or give the driver more memory and raise job.driver_memory_gb"
        )
    for name, n in needs.items():
        log.info("%s pass: sample of %d rows needs ~%.2f GiB of the driver's %.1f GiB budget",
                 name, n.rows, n.bytes / GiB, budget / GiB)
    return needs


def check_dbscan_neighbourhoods(rows: int, mean_neighbours: float, dims: int, min_samples: int,
                                driver_memory_gb: Optional[float]) -> None:
    """DBSCAN's neighbourhoods depend on eps and the data; the job measures the mean on a
    subsample first and calls this before scikit-learn allocates them."""
    budget, source = driver_budget_bytes(driver_memory_gb)
    need = density_bytes(rows, dims, min_samples) + dbscan_neighbourhood_bytes(rows, mean_neighbours)
    if need > budget:
        per_row = need / max(rows, 1)
        raise ConfigError(
            f"DBSCAN on density.sample_size={rows:,} rows needs ~{need / GiB:.1f} GiB on the driver: with this eps "
            f"every row has ~{mean_neighbours:,.0f} neighbours, and scikit-learn keeps them all; the budget is "
            f"{budget / GiB:.1f} GiB ({source}). Lower density.sample_size to at most {int(budget / per_row):,}, "
            "lower density.eps, or use density.algorithm=hdbscan (no neighbourhoods kept)"
        )
