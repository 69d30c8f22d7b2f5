"""Issue 6 in the job: k chosen automatically, quality gates before the commit, cluster profiles
and archetype texts. Unit tests of the gates and profiles first (no Spark), then whole runs."""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from clusterlake.cli import main
from clusterlake.config import load_config
from clusterlake.pipeline import run_job
from clusterlake.quality import gates, profiles
from clusterlake.quality.metrics import Metric


# --------------------------------------------------------------------------------------------
# unit: gates and profiles


def _gates(**kw):
    data = {"input": {"path": "x", "id_column": "id"}, "output": {"path": "o"}, "density": {"enabled": True}}
    return load_config(data=data, overrides=[f"quality.gates.{k}={v}" for k, v in kw.items()]).quality.gates


def test_gates_name_the_setting_and_the_measured_value():
    ms = [Metric("sample", "silhouette", 0.31, 1000), Metric("full", "min_cluster_share", 0.004, 10),
          Metric("full", "max_cluster_share", 0.7, 10), Metric("full", "noise_share", 0.25, 10, "hdbscan", 3)]
    assert gates.check(_gates(min_silhouette=0.3, max_noise_share=0.3), ms) == []
    fails = gates.check(_gates(min_silhouette=0.5, min_cluster_share=0.01, max_cluster_share=0.5,
                               max_noise_share=0.2), ms)
    assert [str(f) for f in fails] == [
        "silhouette 0.31 < quality.gates.min_silhouette=0.5",
        "min_cluster_share 0.004 < quality.gates.min_cluster_share=0.01",
        "max_cluster_share 0.7 > quality.gates.max_cluster_share=0.5",
        "density noise_share 0.25 > quality.gates.max_noise_share=0.2",
    ]
    # an undefined metric fails its gate rather than passing it silently
    fails = gates.check(_gates(min_silhouette=0.1), ms[1:])
    assert "silhouette is undefined" in str(fails[0])
    with pytest.raises(Exception) as e:
        gates.act(fails, "fail")
    assert e.value.exit_code == 3 and "Nothing was committed" in str(e.value)


def test_profiles_are_numpy_means_stds_and_ranks():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 3)) * [1.0, 10.0, 0.1] + [0.0, 1e6, 5.0]  # a feature far from zero
    lab = rng.integers(0, 3, 500)
    X[lab == 2, 0] += 3.0  # cluster 2: high on feature a
    mu = X.mean(0)
    counts = np.bincount(lab, minlength=3)
    sx = np.stack([X[lab == c].sum(0) for c in range(3)])
    sq = np.stack([((X[lab == c] - mu) ** 2).sum(0) for c in range(3)])
    p = profiles.compute(counts, sx, sq, mu, X.var(0), ["a", "b", "c"])
    for c in range(3):
        np.testing.assert_allclose(p.mean[c], X[lab == c].mean(0), rtol=1e-12)
        np.testing.assert_allclose(p.std[c], X[lab == c].std(0), rtol=1e-6)
    np.testing.assert_allclose(p.z, (p.mean - mu) / X.std(0), rtol=1e-9)
    assert p.rank[2, 0] == 1 and p.z[2, 0] > 1 and sorted(p.rank[1]) == [1, 2, 3]
    text = p.descriptions()[2]
    assert text.startswith("high a (+") and text.endswith(f"{round(100 * counts[2] / 500)}% of rows")
    assert profiles.describe(["a", "b"], np.array([0.1, -0.2]), 0.004) == \
        "close to the population average on every feature, 0.4% of rows"
    assert profiles.describe(["a", "b"], np.array([-1.44, 2.06]), 0.12) == \
        "high b (+2.1 sd), low a (-1.4 sd), 12% of rows"


# --------------------------------------------------------------------------------------------
# whole runs


def _table(tmp_path, n_per=400, seed=0):
    """Three segments: 'big spenders' high on spend, 'churners' high on churn, and the rest."""
    rng = np.random.default_rng(seed)
    parts = []
    for name, spend, churn in (("spenders", 900.0, 0.1), ("churners", 100.0, 0.8), ("rest", 120.0, 0.12)):
        parts.append(pd.DataFrame({
            "spend": rng.normal(spend, 30.0, n_per), "churn": rng.normal(churn, 0.03, n_per),
            "visits": rng.normal(10.0, 2.0 if name != "rest" else 2.0, n_per) + (25.0 if name == "rest" else 0.0),
            "segment": name}))
    df = pd.concat(parts, ignore_index=True).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    df.insert(0, "id", np.arange(len(df), dtype=np.int64) + 1000)
    path = tmp_path / "in"
    path.mkdir()
    for i, part in enumerate(np.array_split(df, 3)):
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), path / f"part-{i}.parquet")
    return str(path), df


def _yaml(tmp_path, src, out, extra=""):
    p = tmp_path / "job.yaml"
    p.write_text(f"""
job: {{name: quality, run_date: 2026-11-22}}
input: {{path: {src}, id_column: id, label_column: segment}}
kmeans: {{k: 3, seed: 5}}
quality: {{sample_size: 1000}}
output: {{path: {out}}}
{extra}
""")
    return str(p)


def _versions(out):
    return {n: DeltaTable(f"{out}/{n}").version() for n in ("centroids", "assignments", "metrics", "profiles", "runs")}


def test_profiles_table_and_archetypes(spark, tmp_path):
    src, df = _table(tmp_path)
    out = str(tmp_path / "out")
    res = run_job(load_config(_yaml(tmp_path, src, out)), spark=spark)
    prof = DeltaTable(f"{out}/profiles").to_pandas()
    asg = DeltaTable(f"{out}/assignments").to_pandas().merge(df, on="id")
    assert len(prof) == 3 * 3 and (prof.run_id == res.run_id).all()
    spenders = asg[asg.segment == "spenders"].cluster_id.mode()[0]
    top = prof[(prof.cluster_id == spenders) & (prof["rank"] == 1)].iloc[0]
    assert top.feature == "spend" and top.z > 1  # the feature that makes them, with the right sign
    churners = asg[asg.segment == "churners"].cluster_id.mode()[0]
    ch = prof[(prof.cluster_id == churners)].set_index("feature")
    assert ch.loc["churn", "z"] > 1 and ch.loc["churn", "rank"] <= 2
    # the profile is the cluster's rows, in the input's units
    g = asg.groupby("cluster_id")
    for _, r in prof.iterrows():
        rows = g.get_group(r.cluster_id)[r.feature]
        assert r["mean"] == pytest.approx(rows.mean(), rel=1e-9)
        assert r["std"] == pytest.approx(rows.std(ddof=0), rel=1e-6)
        assert r.population_mean == pytest.approx(df[r.feature].mean(), rel=1e-9)
    cen = DeltaTable(f"{out}/centroids").to_pandas().set_index("cluster_id")
    assert cen.loc[spenders, "description"].startswith("high spend (+")
    assert cen.loc[spenders, "description"].endswith("33% of rows")


def test_a_failing_gate_commits_nothing_and_exits_non_zero(spark, tmp_path, capsys):
    src, _ = _table(tmp_path, seed=1)
    out = str(tmp_path / "out")
    assert main(["run", "--config", _yaml(tmp_path, src, out), "--log-level", "WARNING"]) == 0
    before = _versions(out)
    latest = os.path.realpath(f"{out}/model/latest")
    files_before = sorted(p for p, _, _ in os.walk(out))
    capsys.readouterr()
    cfg = _yaml(tmp_path, src, out, "quality: {sample_size: 1000, gates: {min_silhouette: 0.99}, on_gate_failure: fail}")
    assert main(["run", "--config", cfg, "--set", "job.run_date=2026-11-23", "--log-level", "WARNING"]) == 3
    err = capsys.readouterr().err
    line = [ln for ln in err.splitlines() if ln.startswith("clusterlake: error:")][0]
    assert "quality gate failed: silhouette 0." in line and "< quality.gates.min_silhouette=0.99" in line
    assert _versions(out) == before  # last night's tables, untouched
    assert os.path.realpath(f"{out}/model/latest") == latest
    assert sorted(p for p, _, _ in os.walk(out)) == files_before  # no staged files or model left behind
    # warn: committed, and the failure is on record
    cfg = _yaml(tmp_path, src, out, "quality: {sample_size: 1000, gates: {min_silhouette: 0.99}, on_gate_failure: warn}")
    assert main(["run", "--config", cfg, "--set", "job.run_date=2026-11-23", "--log-level", "WARNING"]) == 0
    runs = DeltaTable(f"{out}/runs").to_pandas().sort_values("finished_at")
    assert list(runs.gate_failures.iloc[-1])[0].startswith("silhouette 0.")
    assert list(runs.gate_failures.iloc[0]) == []


def test_k_auto_in_the_job(spark, tmp_path, caplog):
    src, df = _table(tmp_path, seed=2)
    out = str(tmp_path / "out")
    cfg = load_config(_yaml(tmp_path, src, out), overrides=[
        "kmeans.k=auto", "kmeans.auto.max_k=7", "kmeans.auto.sample_size=900"])
    with caplog.at_level(logging.INFO, logger="clusterlake"):
        res = run_job(cfg, spark=spark)
    assert res.k == 3
    m = DeltaTable(f"{out}/metrics").to_pandas()
    sweep = m[m.scope == "auto_k"]
    assert sorted(sweep[sweep.metric == "silhouette"].k) == list(range(2, 8))
    assert sweep.sample_size.max() <= 900
    chosen = sweep[sweep.metric == "silhouette"].sort_values("value").k.iloc[-1]
    assert chosen == 3
    stab = m[(m.metric == "stability_ari")]
    assert len(stab) == 1 and stab.value.iloc[0] > 0.9
    runs = DeltaTable(f"{out}/runs").to_pandas()
    assert runs.k_selection.iloc[0] == "auto:silhouette" and runs.k.iloc[0] == 3
