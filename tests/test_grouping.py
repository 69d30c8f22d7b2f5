"""Near-duplicate groups (issue 22): the job's ``groups`` table against the exact connected
components of the pairs at or above the threshold (brute force on small data), for sets
(Jaccard, MinHash) and vectors (cosine, hyperplanes); a huge bucket; 1 vs 4 partitions; stable ids
across two nights; bad input."""

from __future__ import annotations

import importlib.util
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from sklearn.metrics import adjusted_rand_score

from clusterlake.algorithms.grouping import bucket_pairs
from clusterlake.config import load_config
from clusterlake.errors import ClusterlakeError, ConfigError
from clusterlake.pipeline import run_job, summary_text

_GEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "gen_sets.py")
_spec = importlib.util.spec_from_file_location("gen_sets", _GEN)
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)

THRESHOLD = 0.7


def _config(inp: str, out: str, **over):
    data = {
        "job": {"name": "grouping-test", "run_date": "2026-11-20"},
        "input": {"path": inp, "id_column": "doc_id"},
        "kmeans": {"enabled": False},
        "grouping": {"enabled": True, "column": "tokens", "threshold": THRESHOLD},
        "output": {"path": out, "delta_writer": "delta-rs"},
    }
    return load_config(data=data, overrides=[f"{k}={v}" for k, v in over.items()])


def _write(path, ids, col, name="tokens", files: int = 1):
    t = pa.table({"doc_id": pa.array(ids, pa.int64()), name: col})
    os.makedirs(path, exist_ok=True)
    step = -(-len(t) // files)
    for i in range(files):
        pq.write_table(t.slice(i * step, step), os.path.join(path, f"part-{i}.parquet"))
    return path


def _truth(n: int, a, b) -> np.ndarray:
    g = sparse.coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    return connected_components(g, directed=False)[1]


def _groups(out: str, run_id: str | None = None):
    df = DeltaTable(os.path.join(out, "groups")).to_pandas()
    if run_id is not None:
        df = df[df["run_id"] == run_id]
    return df.set_index("doc_id")


# -- no Spark -----------------------------------------------------------------------------------

def test_bucket_pairs_all_pairs_then_star_and_chain():
    off = np.array([0, 2, 5, 5 + 6])
    flat = np.array([9, 4, 7, 3, 5, 60, 10, 50, 20, 40, 30])
    a, b = bucket_pairs(off, flat, max_bucket=5)
    got = set(zip(a.tolist(), b.tolist()))
    small = {(4, 9), (3, 7), (5, 7), (3, 5)}
    big = sorted([60, 10, 50, 20, 40, 30])
    star = {(big[0], v) for v in big[1:]}
    chain = {(u, v) for u, v in zip(big[:-1], big[1:])}
    assert got == small | star | chain
    assert (a < b).all()


# -- the job ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    ids, sets, planted_group = gen.planted_sets(3000, seed=4)
    root = tmp_path_factory.mktemp("grouping")
    return {"ids": ids, "sets": sets, "inp": _write(str(root / "in"), ids, sets, files=1), "root": root}


@pytest.fixture(scope="module")
def first_night(spark, planted):
    out = str(planted["root"] / "out")
    res = run_job(_config(planted["inp"], out), spark)
    return {"res": res, "out": out}


def test_groups_are_the_exact_components(planted, first_night):
    ids, sets = planted["ids"], planted["sets"]
    a, b, _ = gen.exact_pairs(sets, THRESHOLD)
    truth = _truth(len(ids), a, b)
    got = _groups(first_night["out"]).loc[ids]
    assert len(got) == len(ids)  # every row once
    assert adjusted_rand_score(truth, got["group_id"].to_numpy()) >= 0.99
    sizes = np.bincount(truth)
    assert (got["group_size"].to_numpy() == sizes[truth]).mean() >= 0.99
    assert (got.groupby("group_id")["is_representative"].sum() == 1).all()
    m = first_night["res"].grouping
    assert m["verified_pairs"] <= m["candidate_pairs"] and m["verified_pairs"] >= 0.95 * len(a)
    assert m["groups"] == pytest.approx((sizes > 1).sum(), rel=0.02)


def test_similarity_to_the_representative_is_exact(planted, first_night):
    got = _groups(first_night["out"])
    ids, sets = planted["ids"], planted["sets"]
    pos = {int(v): i for i, v in enumerate(ids)}
    rep = got[got["is_representative"]].reset_index().set_index("group_id")["doc_id"]
    multi = got[got["group_size"] > 1].head(200)
    for doc, row in multi.iterrows():
        A = set(sets[pos[doc]].as_py())
        B = set(sets[pos[int(rep[row["group_id"]])]].as_py())
        assert row["similarity"] == pytest.approx(len(A & B) / len(A | B), abs=1e-12)
    assert (got.loc[got["group_size"] == 1, "similarity"] == 1.0).all()
    assert (got.loc[got["is_representative"], "similarity"] == 1.0).all()


def test_runs_and_metrics_are_committed(first_night):
    out, res = first_night["out"], first_night["res"]
    runs = DeltaTable(os.path.join(out, "runs")).to_pandas()
    assert list(runs["run_id"]) == [res.run_id] and runs["k"].iloc[0] == 0
    m = DeltaTable(os.path.join(out, "metrics")).to_pandas()
    g = m[m["scope"] == "grouping"].set_index("metric")["value"]
    assert {"candidate_pairs", "verified_pairs", "groups", "largest_group", "recall_at_threshold",
            "next_group_id"} <= set(g.index)
    assert 0.95 <= g["recall_at_threshold"] < 1
    assert runs["model_path"].iloc[0] == res.model_path
    assert os.path.exists(os.path.join(res.model_path, "grouping", "grouping.json"))  # the band index only
    assert not os.path.exists(os.path.join(out, "model", "latest"))  # no K-means model: latest does not move
    html = open(res.report_path).read()  # a grouping-only report: the summary and the groups
    assert "Near-duplicate groups" in html and "kmeans.enabled: false" in html
    assert "near-duplicate groups" in summary_text(res)


def test_same_groups_with_four_partitions_and_string_tokens(spark, planted, first_night, tmp_path):
    """The tokens as strings (another hash, the same sets) in 4 files and 1 shuffle partition (the
    first night: 1 file, 4 shuffle partitions): the same groups."""
    sets = planted["sets"]
    strings = pa.ListArray.from_arrays(sets.offsets, pa.array(np.char.add("t", sets.values.to_numpy().astype(str))))
    inp = _write(str(tmp_path / "in"), planted["ids"], strings, files=4)
    out = str(tmp_path / "out")
    spark.conf.set("spark.sql.shuffle.partitions", "1")  # the first night's shuffles had 4
    try:
        run_job(_config(inp, out), spark)
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", "4")
    a = _groups(first_night["out"])
    b = _groups(out).loc[a.index]
    assert adjusted_rand_score(a["group_id"], b["group_id"]) >= 0.99


def test_second_night_keeps_group_ids(spark, planted, first_night, tmp_path):
    """Night 2: the same rows but 5% of the rows dropped and 300 new singletons: a group that keeps
    most of its members keeps its id; new groups get ids never used before."""
    ids, sets = planted["ids"], planted["sets"]
    rng = np.random.default_rng(1)
    keep = rng.random(len(ids)) >= 0.05
    new_ids, new_sets, _ = gen.planted_sets(300, group_share=0.0, seed=9)
    ids2 = np.concatenate([ids[keep], new_ids + 10**9])
    sets2 = pa.concat_arrays([sets.filter(pa.array(keep)), new_sets])
    out = first_night["out"]
    inp = _write(str(tmp_path / "in2"), ids2, sets2)
    res2 = run_job(_config(inp, out, **{"job.run_date": "2026-11-21"}), spark)
    one, two = _groups(out, first_night["res"].run_id), _groups(out, res2.run_id)
    both = one.index.intersection(two.index)
    big = one.loc[both]
    big = big[big["group_size"] > 1]
    same = (two.loc[big.index, "group_id"] == big["group_id"]).mean()
    assert same >= 0.95
    fresh = two.loc[new_ids + 10**9, "group_id"]
    assert fresh.min() >= first_night["res"].grouping["next_group_id"]
    assert fresh.is_unique


def test_huge_bucket_is_one_group_without_quadratic_pairs(spark, tmp_path):
    n_same, n_other = 1500, 500
    _, other, _ = gen.planted_sets(n_other, group_share=0.0, seed=3)
    same = pa.array([list(range(100, 130))] * n_same, pa.list_(pa.int64()))
    ids = np.arange(n_same + n_other, dtype=np.int64)
    inp = _write(str(tmp_path / "in"), ids, pa.concat_arrays([same, other.cast(same.type)]))
    out = str(tmp_path / "out")
    res = run_job(_config(inp, out, **{"grouping.max_bucket": 1000}), spark)
    g = _groups(out)
    assert g.loc[ids[:n_same], "group_id"].nunique() == 1
    assert (g.loc[ids[:n_same], "group_size"] == n_same).all()
    assert (g.loc[ids[n_same:], "group_size"] == 1).all()
    m = res.grouping
    assert m["huge_buckets"] >= 1 and m["largest_group"] == n_same
    assert m["candidate_pairs"] < 5 * n_same  # star + chain per band, not 1500 * 1499 / 2 = 1.1M


def test_vectors_and_cosine(spark, tmp_path):
    ids, X, _ = gen.planted_vectors(2000, dim=24, seed=2)
    col = pa.ListArray.from_arrays(pa.array(np.arange(0, X.size + 1, X.shape[1], dtype=np.int32)),
                                   pa.array(X.ravel()))
    inp = _write(str(tmp_path / "in"), ids, col, name="emb")
    out = str(tmp_path / "out")
    thr = 0.9
    res = run_job(_config(inp, out, **{"grouping.column": "emb", "grouping.similarity": "cosine",
                                       "grouping.threshold": thr}), spark)
    S = X.astype(np.float64) @ X.astype(np.float64).T
    a, b = np.nonzero(np.triu(S >= thr - 1e-7, 1))
    truth = _truth(len(ids), a, b)
    got = _groups(out).loc[ids]
    assert adjusted_rand_score(truth, got["group_id"].to_numpy()) >= 0.99
    assert (got.loc[got["is_representative"], "similarity"] == 1.0).all()
    from clusterlake.serving.duplicates import DuplicateIndex, ItemError

    idx = DuplicateIndex.load(res.model_path)
    ans = idx.query((X[0] * 3.0).tolist(), n=3)  # a scaled copy of row 0: cosine 1 to it
    assert ans["items"][0]["id"] == int(ids[0]) and ans["items"][0]["similarity"] == pytest.approx(1.0, abs=1e-6)
    assert all(it["similarity"] >= thr for it in ans["items"])
    assert idx.query([1e308] * 24)["threshold"] == thr  # huge but finite: scaled, no overflow
    for bad in ([10**400] * 24, [0.0] * 24, [1.0] * 23, [float("nan")] * 24, "x"):
        with pytest.raises(ItemError):
            idx.query(bad)


def test_invalid_sets_are_counted_or_fail(spark, tmp_path):
    _, sets, _ = gen.planted_sets(200, seed=5)
    rows = sets.to_pylist()
    rows[3], rows[10], rows[11] = None, [], None
    ids = np.arange(200, dtype=np.int64)
    inp = _write(str(tmp_path / "in"), ids, pa.array(rows, pa.list_(pa.int64())))
    out = str(tmp_path / "out")
    with pytest.raises(ClusterlakeError, match=r"3 of 200 rows whose grouping column 'tokens' is invalid "
                                               r"\(2 tokens:null, 1 tokens:empty"):
        run_job(_config(inp, out), spark)
    assert not os.path.exists(os.path.join(out, "groups"))  # nothing written
    res = run_job(_config(inp, out, **{"input.invalid_rows": "drop"}), spark)
    assert res.rows_dropped == 3 and res.rows_used == 197
    runs = DeltaTable(os.path.join(out, "runs")).to_pandas()
    assert runs["invalid_counts"].iloc[0] == [("tokens:empty", 1), ("tokens:null", 2)] or \
        dict(runs["invalid_counts"].iloc[0]) == {"tokens:null": 2, "tokens:empty": 1}
    assert len(_groups(out)) == 197


def test_wrong_column_types_name_the_key(spark, tmp_path):
    ids = np.arange(50, dtype=np.int64)
    inp = _write(str(tmp_path / "in"), ids, pa.array(np.arange(50.0)), name="tokens")
    with pytest.raises(ConfigError, match=r"grouping.column 'tokens' has type double"):
        run_job(_config(inp, str(tmp_path / "out")), spark)
    vec = pa.array([[0.1, 0.2]] * 50, pa.list_(pa.float32()))
    inp2 = _write(str(tmp_path / "in2"), ids, vec, name="tokens")
    with pytest.raises(ConfigError, match=r"grouping.similarity=jaccard but grouping.column 'tokens' is a vector.*"
                                          r"set grouping.similarity: cosine"):
        run_job(_config(inp2, str(tmp_path / "out2")), spark)
    with pytest.raises(ConfigError, match="grouping.threshold"):
        _config(inp, str(tmp_path / "o"), **{"grouping.threshold": 0})


@pytest.fixture(scope="module")
def beside(spark, tmp_path_factory):
    """K-means on numeric columns and the groups of a set column in one run, one commit."""
    root = tmp_path_factory.mktemp("beside")
    ids, sets, _ = gen.planted_sets(1500, seed=6)
    rng = np.random.default_rng(0)
    t = pa.table({"doc_id": ids, "a": rng.normal(size=1500), "b": rng.normal(size=1500), "tokens": sets})
    os.makedirs(root / "in")
    pq.write_table(t, str(root / "in" / "part-0.parquet"))
    out = str(root / "out")
    cfg = _config(str(root / "in"), out, **{"kmeans.enabled": "true", "kmeans.k": 3,
                                            "input.feature_columns": '["a", "b"]', "report.enabled": "true",
                                            "density.enabled": "false", "hierarchical.enabled": "false"})
    return {"res": run_job(cfg, spark), "out": out, "ids": ids, "sets": sets}


def test_grouping_beside_kmeans(beside):
    out, res, ids, sets = beside["out"], beside["res"], beside["ids"], beside["sets"]
    a, b, _ = gen.exact_pairs(sets, THRESHOLD)
    got = _groups(out).loc[ids]
    assert adjusted_rand_score(_truth(len(ids), a, b), got["group_id"].to_numpy()) >= 0.99
    asg = DeltaTable(os.path.join(out, "assignments")).to_pandas()
    assert len(asg) == 1500 and set(asg["run_id"]) == {res.run_id} == set(got["run_id"])
    m = DeltaTable(os.path.join(out, "metrics")).to_pandas()
    assert {"kmeans", "lsh-jaccard"} <= set(m["algorithm"])
    assert res.grouping["groups"] > 0 and "near-duplicate groups" in summary_text(res)
    assert "groups," in summary_text(res)
    html = open(res.report_path).read()
    largest = _groups(out).sort_values(["group_size", "group_id"], ascending=[False, True]).iloc[0]
    assert "Near-duplicate groups" in html and f"{int(largest['group_size'])}" in html
    assert f"{res.grouping['candidate_pairs']:,.0f} candidate pairs" in html


def _exact_neighbours(sets, ids, query: set, thr: float) -> dict:
    out = {}
    for i, s in enumerate(sets.to_pylist()):
        j = len(query & set(s)) / len(query | set(s))
        if j >= thr:
            out[int(ids[i])] = j
    return out


def test_duplicate_index_answers_new_items_exactly(planted, first_night, tmp_path):
    """The grouping-only run's band index: a new variant of a planted document finds
    its group's documents at or above the threshold, with exact similarities."""
    from clusterlake.serving.duplicates import DuplicateIndex, ItemError

    res = first_night["res"]
    idx = DuplicateIndex.load(res.model_path)
    assert idx is not None and idx.size == len(planted["ids"])
    # the same index in three files (a large run's tasks write many) loads the same
    copy = tmp_path / "model"
    shutil.copytree(os.path.join(res.model_path, "grouping"), copy / "grouping")
    whole = pq.read_table(str(copy / "grouping" / "index"))
    shutil.rmtree(copy / "grouping" / "index")
    os.makedirs(copy / "grouping" / "index")
    for i, part in enumerate((whole.slice(0, 1000), whole.slice(1000, 1000), whole.slice(2000))):
        pq.write_table(part, str(copy / "grouping" / "index" / f"part-{2 - i}.parquet"))
    three = DuplicateIndex.load(str(copy))
    assert three.size == idx.size and set(three.ids.tolist()) == set(idx.ids.tolist())
    ids, sets = planted["ids"], planted["sets"]
    got_groups = _groups(first_night["out"], res.run_id)
    multi = got_groups[got_groups["group_size"] >= 3].index[:20]
    pos = {int(v): i for i, v in enumerate(ids)}
    found = expected = 0
    for doc in multi:
        base = sets[pos[int(doc)]].as_py()
        query = set(base[1:]) | {10**12}  # one token lost, one new: a near-duplicate of the group
        want = _exact_neighbours(sets, ids, query, THRESHOLD)
        ans = idx.query(sorted(query), n=50)
        items = {it["id"]: it["similarity"] for it in ans["items"]}
        assert set(items) <= set(want)  # precision is exact: every answer is at or above the threshold
        for k, v in items.items():
            assert v == pytest.approx(want[k], abs=1e-12)
            assert idx.group_ids[np.flatnonzero(idx.ids == k)[0]] == got_groups.loc[k, "group_id"]
        found, expected = found + len(items), expected + len(want)
    assert expected > 0 and found / expected >= 0.9
    assert idx.query([10**12 + 1, 10**12 + 2, 10**12 + 3])["items"] == []
    for bad, msg in (([], "empty set"), ("abc", "a list of tokens"), ([1, "a"], "only strings or only integers"),
                     ([2**70], "64-bit"), (["ok", "\ud800"], "not strings")):
        with pytest.raises(ItemError, match=msg):
            idx.query(bad)


class _Served:
    """``clusterlake serve --model PATH`` in a subprocess, and a JSON client for it."""

    def __init__(self, model: str):
        import socket
        import subprocess
        import sys

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "clusterlake.cli", "serve", "--model", model, "--port",
                                      str(self.port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def call(self, method: str, path: str, body=None):
        import http.client
        import json

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body).encode(),
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        finally:
            conn.close()

    def __enter__(self):
        import time

        deadline = time.time() + 60
        while True:
            try:
                if self.call("GET", "/health")[0] == 200:
                    return self
            except OSError:
                pass
            assert time.time() < deadline and self.proc.poll() is None, \
                f"clusterlake serve did not start: {self.proc.stdout.read() if self.proc.poll() is not None else ''}"
            time.sleep(0.3)

    def __exit__(self, *exc):
        import signal

        self.proc.send_signal(signal.SIGINT)
        self.proc.communicate(timeout=20)


def test_similar_answers_near_duplicates_in_process_and_over_http(beside):
    import json

    from clusterlake.serving.query import ClusterCatalog

    latest = os.path.join(beside["out"], "model", "latest")
    cat = ClusterCatalog.load(latest)
    base = beside["sets"][0].as_py()
    ans = cat.similar({"tokens": base}, n=5)
    assert ans["near_duplicates"] and ans["items"] and ans["items"][0]["similarity"] == 1.0
    assert ans["items"][0]["id"] == int(beside["ids"][0])
    with _Served(latest) as srv:
        status, got = srv.call("POST", "/similar", {"row": {"tokens": base}, "n": 5})
        assert status == 200 and got["items"] == json.loads(json.dumps(ans["items"]))
        status, err = srv.call("POST", "/similar", {"row": {"tokens": [[1], {"a": 2}]}})
        assert status == 400 and "only strings or only integers" in err["error"]
        status, err = srv.call("POST", "/similar", {"row": {"tokens": []}})
        assert status == 400 and "empty set" in err["error"]
        status, got = srv.call("POST", "/assign", {"row": {"a": 0.1, "b": 0.2}})  # the clusters still served
        assert status == 200 and len(got["assignments"]) == 1


def test_grouping_only_model_is_served_over_http(planted, first_night):
    """A grouping-only run's model directory (runs.model_path): /similar answers near-duplicates;
    the cluster endpoints say what this model is."""
    res = first_night["res"]
    base = planted["sets"][0].as_py()
    with _Served(res.model_path) as srv:
        status, h = srv.call("GET", "/health")
        assert status == 200 and h["kind"] == "grouping" and h["run_id"] == res.run_id
        assert h["indexed_rows"] == len(planted["ids"]) and h["column"] == "tokens"
        status, got = srv.call("POST", "/similar", {"row": {"tokens": base}, "n": 3})
        assert status == 200 and got["items"][0] == {"id": int(planted["ids"][0]), "group_id": got["items"][0]["group_id"],
                                                     "similarity": 1.0}
        for method, path, body in (("POST", "/assign", {"row": {"a": 1.0}}), ("GET", "/clusters", None),
                                   ("GET", "/clusters/3", None), ("POST", "/nearest", {"row": {"a": 1.0}}),
                                   ("POST", "/similar", {"row": {"a": 1.0}})):
            status, err = srv.call(method, path, body)
            assert status == 400 and "grouping-only run" in err["error"], (path, err)


def test_string_ids(spark, tmp_path):
    """Non-integer ids become vertices by their 64-bit hash (checked distinct): the same groups."""
    ids, sets, _ = gen.planted_sets(600, seed=8)
    sid = np.array([f"doc-{i}" for i in ids], dtype=object)
    t = pa.table({"doc_id": pa.array(sid, pa.string()), "tokens": sets})
    os.makedirs(tmp_path / "in")
    pq.write_table(t, str(tmp_path / "in" / "part-0.parquet"))
    out = str(tmp_path / "out")
    res = run_job(_config(str(tmp_path / "in"), out), spark)
    a, b, _ = gen.exact_pairs(sets, THRESHOLD)
    got = DeltaTable(os.path.join(out, "groups")).to_pandas().set_index("doc_id").loc[sid]
    assert adjusted_rand_score(_truth(len(ids), a, b), got["group_id"].to_numpy()) >= 0.99
    assert "vertex ids" in res.spark_passes["read+validate"]
    assert got.index.dtype == object and (got.groupby("group_id")["is_representative"].sum() == 1).all()
