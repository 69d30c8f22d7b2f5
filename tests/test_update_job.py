"""The incremental update (``clusterlake update``, issue 7), end to end on local Spark.

A full run fits 3 blobs; new rows arrive (new ids, mostly near one blob, shifted); the update
assigns them with the model, moves the centroids by count-weighted means, appends exactly those
rows, commits a new model version, and the next full run starts from it.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from clusterlake import cli
from clusterlake.errors import InputDataError
from clusterlake.io import model_artifact
from clusterlake.kernels.distance import assign
from clusterlake.pipeline import run_job
from clusterlake.update import run_update
from tests.conftest import DELTA_WRITERS, require_writer, store_class
from tests.test_job_lineage import N_BLOB, _blob, _cfg, _of_run, _table, _write

TABLES = ("centroids", "assignments", "metrics", "lineage", "runs")
_WRITER = {"name": "delta-rs"}  # the module's current Delta writer (the `updated` fixture's parameter)


def _ucfg(inp, out, run_date, **over):
    return _cfg(inp, out, run_date, **{"output.delta_writer": _WRITER["name"], **over})


def _night(rng):
    ids = {b: np.arange(i * N_BLOB, (i + 1) * N_BLOB) for i, b in enumerate("ABC")}
    return pd.concat([_blob(b, ids[b], rng) for b in "ABC"])


def _state(out):
    return {n: (DeltaTable(os.path.join(out, n)).version(),
                len(DeltaTable(os.path.join(out, n)).to_pyarrow_table())) for n in TABLES}


@pytest.fixture(scope="module", params=DELTA_WRITERS)
def updated(spark, tmp_path_factory, request):
    """A full run, then an update with 300 new rows (250 near blob A shifted by +1.0 in f1, 50
    near C), committed by each Delta writer in turn (an update appends). Returns the paths,
    results and inputs."""
    _WRITER["name"] = require_writer(spark, request.param)
    tmp = tmp_path_factory.mktemp("update")
    rng = np.random.default_rng(5)
    night = _night(rng)
    inp = _write(night, str(tmp / "night"))
    out = str(tmp / "out")
    cfg = _ucfg(inp, out, "2026-11-20", **{"kmeans.k": 3})
    full = run_job(cfg, spark=spark)
    new = pd.concat([_blob("A", np.arange(50_000, 50_250), rng, shift=(0.0, 1.0, 0.0, 0.0)),
                     _blob("C", np.arange(60_000, 60_050), rng)])
    new_path = _write(new, str(tmp / "new1"), n_files=1)
    before = _state(out)
    up = run_update(_ucfg(inp, out, "2026-11-20", **{"kmeans.k": 3}), new_path, spark=spark)
    return dict(out=out, inp=inp, night=night, new=new, new_path=new_path, full=full, up=up, before=before,
                tmp=tmp, rng=rng)


def test_update_moves_centroids_by_count_weighted_means(updated):
    out, full, up, new = updated["out"], updated["full"], updated["up"], updated["new"]
    base = model_artifact.load(full.model_path)
    art = model_artifact.load(up.model_path)
    feats = base.prep.feature_names
    Z = base.prep.transform(new[feats].to_numpy(dtype=np.float64))
    lab = assign(Z, base.centroids)[0]
    N = base.cluster_stats["sizes"]
    expected = base.centroids.copy()
    for i in range(len(expected)):
        rows = Z[lab == i]
        if len(rows):
            expected[i] = (N[i] * base.centroids[i] + rows.sum(0)) / (N[i] + len(rows))
    np.testing.assert_allclose(art.centroids, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(art.cluster_stats["sizes"], N + np.bincount(lab, minlength=len(N)))
    # the right direction: A's centroid moved towards +f1 (input units), B's did not move
    a_id = _of_run(out, "assignments", up.run_id).query("item_id < 50250").cluster_id.mode()[0]
    pos = {int(c): i for i, c in enumerate(art.cluster_ids)}
    moved = art.prep.inverse_transform(art.centroids) - base.prep.inverse_transform(base.centroids)
    assert moved[pos[a_id], 1] > 0.2 and abs(moved[pos[a_id], 0]) < 0.1
    assert (np.abs(moved).sum(1) == 0).sum() == 1  # B got no new row and stays put
    assert art.cluster_ids.tolist() == base.cluster_ids.tolist()  # an update never renames clusters
    assert art.lineage["kind"] == "update" and art.lineage["previous_run_id"] == full.run_id
    assert art.lineage["base_run_id"] == full.run_id
    # centroids table: the update's rows equal the artifact
    cen = _of_run(out, "centroids", up.run_id).sort_values("cluster_id")
    by_id = dict(zip(art.cluster_ids.tolist(), art.centroids))
    for _, r in cen.iterrows():
        np.testing.assert_allclose(r.centroid_model, by_id[r.cluster_id])
    assert cen["size"].sum() == 3 * N_BLOB + len(new)


def test_update_appends_exactly_the_new_rows(updated):
    out, full, up, new = updated["out"], updated["full"], updated["up"], updated["new"]
    asg = _table(out, "assignments")
    mine = asg[asg.run_id == up.run_id]
    assert sorted(mine.item_id) == sorted(new.item_id)
    assert len(asg[asg.run_id == full.run_id]) == 3 * N_BLOB  # the full run's rows are all still there
    runs = _table(out, "runs").sort_values("finished_at")
    last = runs.iloc[-1]
    assert last.kind == "update" and last.previous_run_id == full.run_id and last.base_run_id == full.run_id
    assert list(last.assignment_run_ids) == [full.run_id, up.run_id]
    assert len(asg[asg.run_id.isin(last.assignment_run_ids)]) == 3 * N_BLOB + len(new)
    assert len(runs) == 2  # the full run's runs row stays (same run_date: appended, not replaced)
    assert os.readlink(os.path.join(out, "model", "latest")) == up.run_id
    m = _of_run(out, "metrics", up.run_id)
    assert set(m[m.scope == "update"].metric) >= {"rows", "mean_distance"}
    assert m[(m.scope == "update") & (m.metric == "rows")].value.iloc[0] == len(new)
    # the model's assignment equals the batch job's kernel on these rows
    base = model_artifact.load(full.model_path)
    Z = base.prep.transform(new.sort_values("item_id")[base.prep.feature_names].to_numpy(dtype=np.float64))
    lab = assign(Z, base.centroids)[0]
    np.testing.assert_array_equal(mine.sort_values("item_id").cluster_id.to_numpy(), base.cluster_ids[lab])


def test_update_refuses_rows_it_has_already_folded_in(updated, spark):
    out, inp = updated["out"], updated["inp"]
    state = _state(out)
    with pytest.raises(InputDataError, match=r"300 of 300 rows under .* have ids already assigned .*item_id"):
        run_update(_ucfg(inp, out, "2026-11-20", **{"kmeans.k": 3}), updated["new_path"], spark=spark)
    assert _state(out) == state


def test_update_failing_mid_way_leaves_model_and_tables_intact(updated, spark, monkeypatch):
    out, inp, rng, tmp = updated["out"], updated["inp"], updated["rng"], updated["tmp"]
    more = _write(_blob("B", np.arange(70_000, 70_100), rng), str(tmp / "new2"), n_files=1)
    state = _state(out)
    latest = os.readlink(os.path.join(out, "model", "latest"))
    models = sorted(os.listdir(os.path.join(out, "model")))
    Store = store_class(_WRITER["name"])
    real = Store.commit

    def commit(self, st):
        if st.name == "metrics":  # after centroids and assignments were committed
            raise OSError("injected: storage went away")
        return real(self, st)

    monkeypatch.setattr(Store, "commit", commit)
    with pytest.raises(OSError, match="injected"):
        run_update(_ucfg(inp, out, "2026-11-20", **{"kmeans.k": 3}), more, spark=spark)
    monkeypatch.undo()
    after = _state(out)
    assert {n: v[1] for n, v in after.items()} == {n: v[1] for n, v in state.items()}  # same rows
    assert os.readlink(os.path.join(out, "model", "latest")) == latest
    assert sorted(os.listdir(os.path.join(out, "model"))) == models
    # and the update goes through once the storage is back
    up2 = run_update(_ucfg(inp, out, "2026-11-20", **{"kmeans.k": 3}), more, spark=spark)
    assert len(_of_run(out, "assignments", up2.run_id)) == 100


def test_next_full_run_starts_from_the_updated_model(updated, spark):
    out, tmp = updated["out"], updated["tmp"]
    latest = model_artifact.load(os.path.join(out, "model", "latest"))
    both = pd.concat([updated["night"], updated["new"]])
    inp2 = _write(both, str(tmp / "night2"))
    r = run_job(_ucfg(inp2, out, "2026-11-21", **{"kmeans.k": 3, "kmeans.init": "previous"}), spark=spark)
    runs = _table(out, "runs").sort_values("finished_at")
    assert runs.init.iloc[-1] == "previous" and runs.previous_run_id.iloc[-1] == latest.run_id
    lin = _of_run(out, "lineage", r.run_id)
    assert sorted(lin.event) == ["persist"] * 3
    assert sorted(r.cluster_ids) == sorted(latest.cluster_ids.tolist())
    m = _of_run(out, "metrics", r.run_id)
    joined = m[(m.scope == "drift") & (m.metric == "joined_rows")].value.iloc[0]
    assert joined == len(both)  # every id of the full run and of the updates was joined
    assert model_artifact.load(r.model_path).lineage["previous_run_id"] == latest.run_id


def test_update_without_a_model_says_run_the_full_job(spark, tmp_path):
    rng = np.random.default_rng(9)
    p = _write(_blob("A", np.arange(10), rng), str(tmp_path / "new"), n_files=1)
    with pytest.raises(InputDataError, match="no model under .* run the full job first"):
        run_update(_ucfg(p, str(tmp_path / "out"), "2026-11-20"), p, spark=spark)


def test_update_cli(updated, capsys):
    out, inp, rng, tmp = updated["out"], updated["inp"], updated["rng"], updated["tmp"]
    more = _write(_blob("C", np.arange(80_000, 80_020), rng), str(tmp / "new3"), n_files=1)
    import yaml

    cfg_path = tmp / "job.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "job": {"name": "lineage-test", "run_date": "2026-11-22"},
        "input": {"path": inp, "id_column": "item_id"}, "preprocess": {"pca": {"enabled": False}},
        "kmeans": {"k": 3}, "output": {"path": out}}))
    assert cli.main(["update", "--config", str(cfg_path), "--input", more]) == 0
    text = capsys.readouterr().out
    assert "new rows: 20 read, 0 dropped, 20 assigned and folded in" in text
    assert cli.main(["update", "--config", str(cfg_path), "--input", more]) == 2  # already folded in


def test_update_adds_its_rows_to_the_similar_item_sample(updated):
    """The update's model keeps the base run's member sample and adds the new rows (same rate:
    every row here, 500-row clusters are under serving.members_per_cluster); radius quantiles
    stay the base run's."""
    from clusterlake.serving import ClusterCatalog

    full, up, new, night = updated["full"], updated["up"], updated["new"], updated["night"]
    base, cat = ClusterCatalog.load(full.model_path), ClusterCatalog.load(up.model_path)
    assert cat.artifact.meta["members"]["runs"] == [full.run_id, up.run_id]
    np.testing.assert_array_equal(cat.artifact.cluster_stats["radius_p99"], base.artifact.cluster_stats["radius_p99"])
    members = set()
    for cid in cat.assigner.cluster_ids:
        ids, _ = cat.members(int(cid))
        assert len(ids) == cat.cluster(int(cid))["members"]
        members |= set(ids.tolist())
    assert members == set(night["item_id"]) | set(new["item_id"])
    # a new row finds itself among the similar items of its cluster
    row = new.iloc[0]
    got = cat.similar({f: float(row[f]) for f in cat.assigner.feature_names}, n=1)
    assert got["items"][0]["id"] == row["item_id"] and got["items"][0]["distance"] < 1e-5
