#!/usr/bin/env python
"""Deterministic generator of the sample customer-features table.

The embedded default clusterlake job clusters a table of retail customers.
This script makes a realistic, reproducible stand-in for that table using
only :mod:`numpy` and :mod:`pyarrow` (no Spark, no pandas), so it runs in a
second or two anywhere and can be imported by tests.

Every customer belongs to one of seven hidden segments of clearly unequal
size, plus about 1% outliers. The segment is stored in ``true_segment`` (and
its name in ``segment_name``) so clustering quality can be scored against
the truth, e.g. with the adjusted Rand index. Shares below are of the
non-outlier rows; row counts per segment are exact (largest-remainder
rounding), not sampled.

==  =========================  =====  ========================================
id  segment_name               share  profile
==  =========================  =====  ========================================
0   young_bargain_hunters      0.30   ~25 years old, low income, short tenure,
                                      small baskets, heavy discount use, mostly
                                      on mobile
1   established_families       0.22   ~41, middle income, several mid-sized
                                      orders a month, moderate discounts
2   affluent_loyal             0.15   ~54, high income, long tenure, large
                                      baskets and spend, almost no discounts
                                      or returns, desktop-leaning
3   churn_risk                 0.12   ~46 (wide), rarely orders, many support
                                      tickets, high returns, last order months
                                      ago, few web sessions
4   digital_power_shoppers     0.10   ~32, above-average income, very frequent
                                      orders and web sessions, high returns,
                                      mobile-heavy, ordered in the last days
5   senior_occasional          0.07   ~71, very long tenure, occasional
                                      orders, rarely online, hardly any mobile
6   new_signups                0.04   ~40 (wide), joined in the last few
                                      months, first orders mostly on welcome
                                      discounts, onboarding support tickets
-1  outlier                    ~0.01  broad random rows or extreme values on a
                                      few features
==  =========================  =====  ========================================

The twelve features (:data:`FEATURE_COLUMNS`) are on very different scales:

* ``annual_income`` -- currency units per year, log-normal within segment
  (mostly 20,000 .. 250,000), float64;
* ``age`` -- years, 18 .. 90, int64;
* ``tenure_months`` -- months as a customer, int64, at most the adult life
  and at most 300 (the shop's age);
* ``monthly_spend`` -- currency, ``orders_per_month * avg_basket_value``
  with noise, float64;
* ``orders_per_month`` -- average rate, float64;
* ``avg_basket_value`` -- currency, grows with income, float64;
* ``discount_rate`` -- share of spend bought on discount, 0 .. 1, float64;
* ``return_rate`` -- share of orders returned, 0 .. 1, float64;
* ``support_tickets`` -- tickets in the last 90 days, int64;
* ``web_sessions_per_week`` -- average rate, float64;
* ``mobile_share`` -- share of sessions on mobile, 0 .. 1, float64,
  falls with age;
* ``days_since_last_order`` -- days, int64.

Within a segment the features are correlated through shared latent
"affluence" and "engagement" factors and through age (income, basket and
spend move together; orders, sessions and recency move together; older
customers have longer tenure and less mobile use). The segments are well
enough separated that ``StandardScaler`` + ``PCA(n_components=0.95)`` +
``KMeans(n_clusters=7)`` recovers them with an adjusted Rand index above
0.8 (about 0.96 on the non-outlier rows; the largest confusion is between
established families and affluent loyal customers), without being
trivially separable. Run with ``--check`` to measure it.

The same ``n_rows`` and ``seed`` always give identical data.

Examples
--------
Command line::

    python scripts/make_sample_data.py [--rows N] [--seed S] [--out PATH]
                                       [--files F] [--force] [--check]

As a module::

    table = generate(5000, seed=3)
    write(table, "/tmp/customers.parquet", n_files=4)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "FEATURE_COLUMNS",
    "ID_COLUMN",
    "LABEL_COLUMN",
    "NAME_COLUMN",
    "SEGMENTS",
    "OUTLIER_SHARE",
    "SCHEMA",
    "generate",
    "write",
    "main",
]

ID_COLUMN = "customer_id"
LABEL_COLUMN = "true_segment"
NAME_COLUMN = "segment_name"

FEATURE_COLUMNS = [
    "annual_income",
    "age",
    "tenure_months",
    "monthly_spend",
    "orders_per_month",
    "avg_basket_value",
    "discount_rate",
    "return_rate",
    "support_tickets",
    "web_sessions_per_week",
    "mobile_share",
    "days_since_last_order",
]

# Pure counts are int64, everything else float64.
_INT_FEATURES = {"age", "tenure_months", "support_tickets", "days_since_last_order"}

SCHEMA = pa.schema(
    [pa.field(ID_COLUMN, pa.int64(), nullable=False)]
    + [
        pa.field(c, pa.int64() if c in _INT_FEATURES else pa.float64(), nullable=False)
        for c in FEATURE_COLUMNS
    ]
    + [
        pa.field(LABEL_COLUMN, pa.int32(), nullable=False),
        pa.field(NAME_COLUMN, pa.string(), nullable=False),
    ]
)

OUTLIER_SHARE = 0.01
MAX_TENURE_MONTHS = 300  # the shop opened 25 years ago
OUTLIER_NAME = "outlier"

DEFAULT_ROWS = 200_000
DEFAULT_SEED = 7
DEFAULT_FILES = 4
_REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = _REPO_ROOT / "data" / "sample" / "customers.parquet"

# Segment profiles. Medians for log-normal quantities, means for the rest.
#   age_mu/age_sd       years
#   income              median annual income (currency)
#   tenure              mean tenure in months (gamma)
#   orders              median orders per month
#   basket              median basket value at the segment's median income
#   discount, returns   mean rates (beta)
#   tickets             mean support tickets per 90 days (Poisson)
#   sessions            median web sessions per week
#   mobile              mean mobile share at the segment's mean age (beta)
#   recency             mean days since last order (gamma)
SEGMENTS = [
    dict(name="young_bargain_hunters", share=0.30, age_mu=25, age_sd=4,
         income=36_000, tenure=30, orders=2.6, basket=38, discount=0.36,
         returns=0.07, tickets=0.5, sessions=6.0, mobile=0.85, recency=11),
    dict(name="established_families", share=0.22, age_mu=41, age_sd=6,
         income=82_000, tenure=62, orders=3.8, basket=105, discount=0.17,
         returns=0.05, tickets=1.0, sessions=3.5, mobile=0.50, recency=8),
    dict(name="affluent_loyal", share=0.15, age_mu=54, age_sd=7,
         income=165_000, tenure=110, orders=3.0, basket=320, discount=0.05,
         returns=0.03, tickets=0.6, sessions=3.0, mobile=0.30, recency=7),
    dict(name="churn_risk", share=0.12, age_mu=46, age_sd=10,
         income=62_000, tenure=44, orders=0.35, basket=70, discount=0.22,
         returns=0.18, tickets=4.0, sessions=0.6, mobile=0.45, recency=120),
    dict(name="digital_power_shoppers", share=0.10, age_mu=32, age_sd=5,
         income=105_000, tenure=32, orders=9.0, basket=85, discount=0.25,
         returns=0.21, tickets=1.8, sessions=18.0, mobile=0.78, recency=3),
    dict(name="senior_occasional", share=0.07, age_mu=71, age_sd=6,
         income=52_000, tenure=150, orders=1.2, basket=90, discount=0.12,
         returns=0.02, tickets=2.0, sessions=0.8, mobile=0.10, recency=28),
    dict(name="new_signups", share=0.04, age_mu=40, age_sd=11,
         income=68_000, tenure=2.0, orders=1.0, basket=60, discount=0.72,
         returns=0.04, tickets=3.0, sessions=5.0, mobile=0.40, recency=20),
]


def _segment_counts(n_rows: int) -> np.ndarray:
    """Exact rows per segment (last entry: outliers), largest-remainder rounding."""
    shares = np.array([s["share"] for s in SEGMENTS] + [0.0])
    n_out = int(round(n_rows * OUTLIER_SHARE))
    n_in = n_rows - n_out
    raw = shares[:-1] / shares[:-1].sum() * n_in
    counts = np.floor(raw).astype(np.int64)
    remainder = n_in - counts.sum()
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[:remainder]] += 1
    return np.append(counts, n_out)


def _beta_mean(rng: np.random.Generator, mean: np.ndarray, conc: float) -> np.ndarray:
    mean = np.clip(mean, 0.005, 0.995)
    return rng.beta(mean * conc, (1.0 - mean) * conc)


def _features(rng: np.random.Generator, seg: np.ndarray) -> dict[str, np.ndarray]:
    """Draw the 12 features for rows whose (proper) segment index is ``seg``."""
    n = seg.shape[0]
    p = {k: np.array([s[k] for s in SEGMENTS], dtype=np.float64)[seg]
         for k in SEGMENTS[0] if k not in ("name", "share")}

    z_aff = rng.standard_normal(n)  # affluence
    z_eng = rng.standard_normal(n)  # engagement

    age = np.clip(np.rint(p["age_mu"] + p["age_sd"] * rng.standard_normal(n)), 18, 90)
    age_dev = age - p["age_mu"]

    log_income = (np.log(p["income"]) + 0.25 * z_aff + 0.15 * rng.standard_normal(n)
                  + 0.006 * age_dev)
    income = np.clip(np.exp(log_income), 12_000, 600_000)
    income = np.rint(income / 10.0) * 10.0

    # Tenure: gamma around the segment mean, a bit longer for older members,
    # never longer than the customer's adult life or the shop's history.
    tenure_mean = p["tenure"] * np.exp(0.01 * age_dev)
    tenure = rng.gamma(6.0, tenure_mean / 6.0)
    tenure = np.minimum(np.rint(tenure), np.minimum((age - 18) * 12 + 1, MAX_TENURE_MONTHS))

    orders = np.exp(np.log(p["orders"]) + 0.22 * z_eng + 0.15 * rng.standard_normal(n))
    orders = np.round(orders, 2)

    basket = np.exp(np.log(p["basket"]) + 0.45 * (log_income - np.log(p["income"]))
                    + 0.18 * rng.standard_normal(n))
    basket = np.round(basket, 2)

    spend = np.round(orders * basket * np.exp(0.10 * rng.standard_normal(n)), 2)

    # Richer customers within a segment hunt discounts a little less.
    discount = _beta_mean(rng, p["discount"] * np.exp(-0.15 * z_aff), 40.0)
    returns = _beta_mean(rng, p["returns"], 50.0)

    tickets = rng.poisson(p["tickets"] * np.exp(0.25 * rng.standard_normal(n)))

    sessions = np.exp(np.log(p["sessions"]) + 0.25 * z_eng + 0.18 * rng.standard_normal(n))
    sessions = np.round(sessions, 2)

    logit_mobile = np.log(p["mobile"] / (1.0 - p["mobile"])) - 0.03 * age_dev
    mobile = _beta_mean(rng, 1.0 / (1.0 + np.exp(-logit_mobile)), 25.0)

    recency = rng.gamma(8.0, p["recency"] * np.exp(-0.15 * z_eng) / 8.0)
    recency = np.minimum(np.rint(recency), 730)

    return {
        "annual_income": income,
        "age": age,
        "tenure_months": tenure,
        "monthly_spend": spend,
        "orders_per_month": orders,
        "avg_basket_value": basket,
        "discount_rate": discount,
        "return_rate": returns,
        "support_tickets": tickets.astype(np.float64),
        "web_sessions_per_week": sessions,
        "mobile_share": mobile,
        "days_since_last_order": recency,
    }


def _outliers(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Outlier rows: half drawn from a broad distribution, half ordinary rows
    with extreme values on one to three features."""
    n_broad = n // 2
    n_extreme = n - n_broad

    broad = {
        "annual_income": np.rint(np.exp(rng.uniform(np.log(15_000), np.log(300_000), n_broad)) / 10) * 10,
        "age": rng.integers(18, 91, n_broad).astype(np.float64),
        "tenure_months": rng.integers(0, 201, n_broad).astype(np.float64),
        "orders_per_month": np.round(np.exp(rng.uniform(np.log(0.1), np.log(12.0), n_broad)), 2),
        "avg_basket_value": np.round(np.exp(rng.uniform(np.log(15.0), np.log(600.0), n_broad)), 2),
        "discount_rate": rng.uniform(0.0, 1.0, n_broad),
        "return_rate": rng.uniform(0.0, 1.0, n_broad),
        "support_tickets": rng.integers(0, 11, n_broad).astype(np.float64),
        "web_sessions_per_week": np.round(np.exp(rng.uniform(np.log(0.2), np.log(25.0), n_broad)), 2),
        "mobile_share": rng.uniform(0.0, 1.0, n_broad),
        "days_since_last_order": rng.integers(0, 366, n_broad).astype(np.float64),
    }
    broad["tenure_months"] = np.minimum(broad["tenure_months"], (broad["age"] - 18) * 12 + 1)  # <= 200 < cap
    broad["monthly_spend"] = np.round(
        broad["orders_per_month"] * broad["avg_basket_value"] * np.exp(0.1 * rng.standard_normal(n_broad)), 2)

    base_seg = rng.integers(0, len(SEGMENTS), n_extreme)
    ext = _features(rng, base_seg)
    # Extreme tweaks, each applied to a random subset of rows; every row gets
    # at least one.
    tweaks = {
        "annual_income": lambda v, k: np.minimum(np.rint(v * rng.uniform(2.5, 4, k) / 10) * 10, 2_500_000),
        "monthly_spend": lambda v, k: np.round(v * rng.uniform(2.5, 5, k), 2),
        "avg_basket_value": lambda v, k: np.round(v * rng.uniform(2.5, 4, k), 2),
        "orders_per_month": lambda v, k: np.round(v * rng.uniform(2.5, 4, k), 2),
        "support_tickets": lambda v, k: v + rng.integers(6, 16, k),
        "web_sessions_per_week": lambda v, k: np.round(v * rng.uniform(2.5, 4, k), 2),
        "days_since_last_order": lambda v, k: v + rng.integers(150, 400, k),
        "return_rate": lambda v, k: rng.uniform(0.5, 0.9, k),
    }
    names = list(tweaks)
    mask = rng.random((n_extreme, len(names))) < 1.5 / len(names)
    mask[np.arange(n_extreme), rng.integers(0, len(names), n_extreme)] = True
    for j, col in enumerate(names):
        idx = np.flatnonzero(mask[:, j])
        if idx.size:
            ext[col][idx] = tweaks[col](ext[col][idx], idx.size)

    return {c: np.concatenate([broad[c], ext[c]]) for c in FEATURE_COLUMNS}


def generate(n_rows: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED) -> pa.Table:
    """Generate the customer-features table.

    Parameters
    ----------
    n_rows : int, default 200_000
        Number of customers (rows).
    seed : int, default 7
        Seed for :func:`numpy.random.default_rng`; the same ``n_rows`` and
        ``seed`` always give identical data.

    Returns
    -------
    pyarrow.Table
        Columns ``customer_id`` (int64, unique), the :data:`FEATURE_COLUMNS`
        (int64 counts, float64 otherwise), ``true_segment`` (int32, 0..6 or
        -1 for outliers) and ``segment_name`` (string), rows shuffled. See
        :data:`SCHEMA`.
    """
    n_rows = int(n_rows)
    if n_rows < 1:
        raise ValueError(f"n_rows must be positive, got {n_rows}")
    rng = np.random.default_rng(seed)

    counts = _segment_counts(n_rows)
    n_out = int(counts[-1])
    seg = np.repeat(np.arange(len(SEGMENTS)), counts[:-1])

    cols = _features(rng, seg)
    if n_out:
        out = _outliers(rng, n_out)
        cols = {c: np.concatenate([cols[c], out[c]]) for c in FEATURE_COLUMNS}
    label = np.concatenate([seg, np.full(n_out, -1)]).astype(np.int32)

    # Final physical plausibility guard (applies to outliers too).
    for c in ("discount_rate", "return_rate", "mobile_share"):
        cols[c] = np.round(np.clip(cols[c], 0.0, 1.0), 4)
    for c in FEATURE_COLUMNS:
        cols[c] = np.maximum(cols[c], 0.0)

    # Unique, non-sequential ids: a sample without replacement from a range
    # five times larger, starting at 1,000,000 (gaps = closed accounts).
    ids = 1_000_000 + rng.choice(5 * n_rows, size=n_rows, replace=False).astype(np.int64)
    order = rng.permutation(n_rows)

    names = np.array([s["name"] for s in SEGMENTS] + [OUTLIER_NAME], dtype=object)
    arrays = [pa.array(ids[order], pa.int64())]
    for c in FEATURE_COLUMNS:
        v = cols[c][order]
        if c in _INT_FEATURES:
            arrays.append(pa.array(v.astype(np.int64), pa.int64()))
        else:
            arrays.append(pa.array(v.astype(np.float64), pa.float64()))
    lab = label[order]
    arrays.append(pa.array(lab, pa.int32()))
    arrays.append(pa.array(names[lab], pa.string()))  # -1 indexes "outlier"

    schema = SCHEMA.with_metadata({
        "clusterlake.generator": "scripts/make_sample_data.py",
        "clusterlake.seed": str(seed),
        "clusterlake.n_rows": str(n_rows),
    })
    return pa.Table.from_arrays(arrays, schema=schema)


def write(table: pa.Table, out_path, n_files: int = DEFAULT_FILES) -> None:
    """Write ``table`` as a directory of parquet part files, atomically.

    The rows are split into ``n_files`` contiguous parts of equal size
    (differing by at most one row) named ``part-00000.parquet`` ... The
    parts are written into a temporary sibling directory that is then moved
    into place with :func:`os.replace`, so an interrupted run never leaves a
    half-written dataset at ``out_path``. An existing ``out_path`` is
    replaced.

    Parameters
    ----------
    table : pyarrow.Table
        Table to write, e.g. from :func:`generate`.
    out_path : str or os.PathLike
        Target directory.
    n_files : int, default 4
        Number of part files (capped at the number of rows, at least 1).
    """
    out = Path(out_path)
    n_files = max(1, min(int(n_files), max(table.num_rows, 1)))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    try:
        tmp.mkdir()
        bounds = np.linspace(0, table.num_rows, n_files + 1).round().astype(np.int64)
        for i in range(n_files):
            part = table.slice(int(bounds[i]), int(bounds[i + 1] - bounds[i]))
            pq.write_table(part, tmp / f"part-{i:05d}.parquet", compression="snappy")
        # os.replace cannot overwrite a non-empty directory: move the old
        # dataset aside first and remove it once the new one is in place.
        if out.exists() or out.is_symlink():
            if out.is_dir() and not out.is_symlink():
                os.replace(out, old)
            else:
                out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            os.replace(old, out)  # put the previous dataset back
        raise
    shutil.rmtree(old, ignore_errors=True)


def check_recovery(table: pa.Table, random_state: int = 0) -> float:
    """ARI of StandardScaler + PCA(0.95) + KMeans(7) against ``true_segment``
    on the non-outlier rows (clustering is fitted on all rows). Needs
    scikit-learn."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score
    from sklearn.preprocessing import StandardScaler

    x = np.column_stack([table.column(c).to_numpy().astype(np.float64) for c in FEATURE_COLUMNS])
    y = table.column(LABEL_COLUMN).to_numpy()
    z = PCA(n_components=0.95).fit_transform(StandardScaler().fit_transform(x))
    pred = KMeans(n_clusters=len(SEGMENTS), n_init=4, random_state=random_state).fit_predict(z)
    keep = y >= 0
    return float(adjusted_rand_score(y[keep], pred[keep]))


def main(argv=None) -> int:
    """Command-line entry point; returns the process exit code."""
    ap = argparse.ArgumentParser(
        description="Generate the deterministic sample customer-features parquet dataset.")
    ap.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="number of customers (default %(default)s)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default %(default)s)")
    ap.add_argument("--out", default=str(DEFAULT_OUT),
                    help="output directory (default: <repo>/data/sample/customers.parquet)")
    ap.add_argument("--files", type=int, default=DEFAULT_FILES, help="number of part files (default %(default)s)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing dataset")
    ap.add_argument("--check", action="store_true",
                    help="also report the K-means recovery ARI (needs scikit-learn)")
    args = ap.parse_args(argv)
    if args.rows < 1:
        ap.error("--rows must be positive")
    if args.files < 1:
        ap.error("--files must be positive")

    out = Path(args.out)
    if (out.exists() or out.is_symlink()) and not args.force:
        print(f"{out} already exists; not rewriting (use --force to regenerate)")
        return 0

    t0 = time.perf_counter()
    table = generate(args.rows, args.seed)
    write(table, out, args.files)
    seconds = time.perf_counter() - t0

    print(f"wrote {table.num_rows} rows to {out} ({min(args.files, table.num_rows)} files, seed {args.seed})")
    labels = table.column(LABEL_COLUMN).to_numpy()
    names = [s["name"] for s in SEGMENTS] + [OUTLIER_NAME]
    for k, name in zip(list(range(len(SEGMENTS))) + [-1], names):
        c = int((labels == k).sum())
        print(f"  {k:>2}  {name:<24} {c:>9}  {c / table.num_rows:6.2%}")
    print(f"seconds: {seconds:.2f}")
    if args.check:
        print(f"ARI (StandardScaler+PCA(0.95)+KMeans(7)): {check_recovery(table):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
