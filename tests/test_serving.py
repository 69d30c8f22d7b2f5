"""Real-time assignment and the query interface (issue 9), against a real job's output.

One real run (6,000 generated customers, k=5, HDBSCAN density pass, 200 member rows per
cluster) feeds every test: the in-process Assigner and ClusterCatalog, and `clusterlake serve`
started as a subprocess and spoken to over loopback HTTP. The batch job's ``assignments`` table is
the reference: the serving path must give exactly its cluster ids.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from clusterlake.io import model_artifact
from clusterlake.pipeline import run_job
from clusterlake.serving import Assigner, ClusterCatalog
from clusterlake.serving.assigner import RowError
from clusterlake.serving.query import ClusterNotFound, resolve_model_dir
from tests.conftest import job_config

pytestmark = pytest.mark.spark
PER_CLUSTER = 200


@pytest.fixture(scope="module")
def served(spark, small_table, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("serving") / "out")
    cfg = job_config(small_table, out, **{"kmeans.k": 5, "density.enabled": "true",
                                          "serving.members_per_cluster": PER_CLUSTER, "report.enabled": "false"})
    result = run_job(cfg, spark=spark)
    inp = pq.read_table(small_table).to_pandas()
    asg = DeltaTable(os.path.join(out, "assignments")).to_pandas()
    rows = inp.merge(asg, on="customer_id", how="inner", validate="one_to_one")
    assert len(rows) == len(inp)
    return dict(out=out, result=result, rows=rows, latest=os.path.join(out, "model", "latest"))


@pytest.fixture(scope="module")
def assigner(served):
    return Assigner.load(served["latest"])


@pytest.fixture(scope="module")
def catalog(served):
    return ClusterCatalog.load(served["latest"])


# ------------------------------------------------------------------------------------------------
# the Assigner equals the batch job


def test_assigner_equals_batch_assignments_for_every_row(served, assigner):
    rows = served["rows"]
    X = rows[assigner.feature_names].to_numpy(dtype=np.float64)
    a = assigner.assign(X)
    assert assigner.outlier_rule == "density"
    np.testing.assert_array_equal(a.cluster_id, rows["cluster_id"].to_numpy())
    np.testing.assert_allclose(a.distance, rows["distance"].to_numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(a.second_cluster_id, rows["second_cluster_id"].to_numpy())
    np.testing.assert_allclose(a.margin, rows["margin"].to_numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(a.is_outlier, rows["is_outlier"].to_numpy(dtype=bool))
    np.testing.assert_array_equal(a.density_label, rows["density_label"].to_numpy())
    assert 0 < a.is_outlier.sum() < len(rows)  # the rule is exercised both ways


def test_assigner_accepts_one_dict_records_and_columns(served, assigner):
    rows = served["rows"].iloc[:50]
    names = assigner.feature_names
    want = rows["cluster_id"].to_numpy()
    one = {**{c: float(rows[c].iloc[0]) for c in names}, "customer_id": 1, "not_a_feature": "x"}
    assert assigner.assign(one).cluster_id.tolist() == [want[0]]
    records = rows[names].to_dict(orient="records")
    np.testing.assert_array_equal(assigner.assign(records).cluster_id, want)
    np.testing.assert_array_equal(assigner.assign({c: rows[c].to_numpy() for c in names}).cluster_id, want)
    np.testing.assert_array_equal(assigner.assign(rows[names]).cluster_id, want)  # a DataFrame
    ints = {c: int(round(float(rows[c].iloc[0]))) for c in names}  # JSON integers are numbers too
    assert assigner.assign(ints).cluster_id.shape == (1,)
    # the records of a single row, serialised to JSON and back, give the same answer
    assert assigner.assign(json.loads(json.dumps(records[:3]))).records() == assigner.assign(records[:3]).records()


@pytest.mark.parametrize("mutate, feature, words", [
    (lambda r: r.pop("age"), "age", "missing feature"),
    (lambda r: r.update(age=float("nan")), "age", "NaN"),
    (lambda r: r.update(age=float("inf")), "age", "inf"),
    (lambda r: r.update(age="34"), "age", "'34' (str)"),
    (lambda r: r.update(age=True), "age", "boolean"),
    (lambda r: r.update(age=None), "age", "null"),
    (lambda r: r.update(age=[1.0, 2.0]), "age", "number"),
])
def test_assigner_rejects_bad_rows_naming_row_and_feature(served, assigner, mutate, feature, words):
    names = assigner.feature_names
    good = served["rows"][names].iloc[:3].to_dict(orient="records")
    bad = [dict(r) for r in good]
    mutate(bad[2])
    with pytest.raises(RowError) as e:
        assigner.assign(bad)
    assert e.value.feature == feature and words in str(e.value)
    assert e.value.row == 2 and "row 2" in str(e.value)


def test_assigner_rejects_bad_arrays(assigner):
    d = len(assigner.feature_names)
    with pytest.raises(RowError, match=f"expected rows of {d} features"):
        assigner.assign(np.zeros((2, d + 1)))
    with pytest.raises(RowError, match="booleans"):
        assigner.assign(np.zeros((2, d), dtype=bool))
    X = np.zeros((3, d))
    X[1, 4] = np.nan
    with pytest.raises(RowError, match=f"row 1 feature '{assigner.feature_names[4]}' is NaN"):
        assigner.assign(X)
    with pytest.raises(RowError, match="no rows"):
        assigner.assign([])
    with pytest.raises(RowError, match="row 1 has 2 values"):
        assigner.assign([[0.0] * d, [1.0, 2.0]])
    with pytest.raises(RowError, match="got a str"):
        assigner.assign("1,2,3")


def test_radius_rule_uses_the_clusters_p99(served, assigner):
    rows = served["rows"]
    art = assigner.artifact
    p99 = art.cluster_stats["radius_p99"]
    X = rows[assigner.feature_names].to_numpy(dtype=np.float64)
    radius = Assigner(art, outlier_rule="radius")
    a = radius.assign(X)
    pos = np.searchsorted(art.cluster_ids, a.cluster_id)
    np.testing.assert_array_equal(a.is_outlier, a.distance > p99[pos] * (1 + 1e-12))
    assert 0.003 < a.is_outlier.mean() < 0.03  # ~1% of last night's rows lie beyond their p99
    # and the quantiles themselves are the rows' distance quantiles per cluster (percentile_approx)
    for i, cid in enumerate(art.cluster_ids):
        d = np.sort(rows.loc[rows.cluster_id == cid, "distance"].to_numpy())
        for name, q in (("radius_p50", 0.5), ("radius_p90", 0.9), ("radius_p99", 0.99)):
            lo, hi = np.quantile(d, max(0.0, q - 0.005)), np.quantile(d, min(1.0, q + 0.005))
            assert lo - 1e-9 <= art.cluster_stats[name][i] <= hi + 1e-9, (cid, name)
    with pytest.raises(Exception, match="outlier_rule must be one of"):
        Assigner(art, outlier_rule="bogus")


def test_nearest_is_the_exact_ranking(served, assigner):
    X = served["rows"][assigner.feature_names].to_numpy(dtype=np.float64)[:200]
    ids, dist = assigner.nearest(X, 3)
    Z = assigner.artifact.prep.transform(X)
    C = assigner.artifact.centroids
    full = np.sqrt(((Z[:, None, :] - C[None]) ** 2).sum(-1))
    order = np.argsort(full, axis=1)[:, :3]
    np.testing.assert_array_equal(ids, assigner.artifact.cluster_ids[order])
    np.testing.assert_allclose(dist, np.take_along_axis(full, order, 1), rtol=1e-12)
    np.testing.assert_array_equal(ids[:, 0], served["rows"]["cluster_id"].to_numpy()[:200])


# ------------------------------------------------------------------------------------------------
# the query interface


def test_cluster_statistics_match_the_tables(served, catalog):
    rows = served["rows"]
    names = catalog.assigner.feature_names
    for cid, g in rows.groupby("cluster_id"):
        c = catalog.cluster(int(cid))
        assert c["size"] == len(g) and c["share"] == pytest.approx(len(g) / len(rows))
        assert c["radius"]["max"] == pytest.approx(g["distance"].max())
        assert c["radius"]["mean"] == pytest.approx(g["distance"].mean())
        assert c["radius"]["p50"] <= c["radius"]["p90"] <= c["radius"]["p99"] <= c["radius"]["max"]
        for f in names:
            assert c["archetype"]["profile"][f]["mean"] == pytest.approx(g[f].mean(), rel=1e-9)
        assert c["archetype"]["description"]
        assert abs(c["members"] - min(PER_CLUSTER, len(g))) <= 4 * np.sqrt(PER_CLUSTER) + 1
        assert [n["cluster_id"] for n in c["nearest_clusters"]] and cid not in [n["cluster_id"] for n in c["nearest_clusters"]]
    with pytest.raises(ClusterNotFound, match="cluster 999 is not in model"):
        catalog.cluster(999)
    assert {c["cluster_id"] for c in catalog.clusters()} == set(rows["cluster_id"])


def test_members_are_one_file_per_cluster_and_a_stable_sample(served, catalog):
    run_dir = resolve_model_dir(served["latest"])
    assert run_dir.path.endswith(served["result"].run_id)  # latest resolved to the immutable run dir
    rows = served["rows"].set_index("customer_id")
    for cid in catalog.assigner.cluster_ids:
        folder = os.path.join(run_dir.path, "members", f"cluster_id={cid}")
        files = [f for f in os.listdir(folder) if f.endswith(".parquet")]
        assert len(files) == 1
        ids, Z = catalog.members(int(cid))
        assert len(ids) == catalog.cluster(int(cid))["members"] and len(set(ids.tolist())) == len(ids)
        assert (rows.loc[ids, "cluster_id"] == cid).all()  # members of that cluster only
        X = rows.loc[ids, catalog.assigner.feature_names].to_numpy(dtype=np.float64)
        np.testing.assert_allclose(Z, catalog.artifact.prep.transform(X).astype(np.float32), rtol=1e-6, atol=1e-6)


def test_similar_items_are_the_nearest_members(served, catalog):
    rows = served["rows"]
    names = catalog.assigner.feature_names
    cid = int(catalog.assigner.cluster_ids[0])
    ids, Z = catalog.members(cid)
    member = rows.set_index("customer_id").loc[ids[0]]
    got = catalog.similar({f: float(member[f]) for f in names}, n=5)
    assert got["cluster_id"] == cid and got["members"] == len(ids)
    assert got["items"][0] == {"id": int(ids[0]), "distance": pytest.approx(0.0, abs=1e-5)}
    z = catalog.artifact.prep.transform(member[names].to_numpy(dtype=np.float64)[None])[0]
    brute = np.sqrt(((Z.astype(np.float64) - z) ** 2).sum(1))
    order = np.argsort(brute, kind="stable")[:5]
    assert [it["id"] for it in got["items"]] == [int(i) for i in ids[order]]
    np.testing.assert_allclose([it["distance"] for it in got["items"]], brute[order], rtol=1e-9)
    other = int(catalog.assigner.cluster_ids[1])
    forced = catalog.similar({f: float(member[f]) for f in names}, n=3, cluster_id=other)
    assert forced["cluster_id"] == other and "distance" not in forced
    oids = set(catalog.members(other)[0].tolist())
    assert all(it["id"] in oids for it in forced["items"])


# ------------------------------------------------------------------------------------------------
# the HTTP service (a real `clusterlake serve` process on loopback)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, port: int):
        self.port = port

    def call(self, method: str, path: str, body=None, raw: bytes | None = None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            payload = resp.read()
            return resp.status, json.loads(payload) if payload else None
        finally:
            conn.close()


def _start(model: str, *extra: str):
    port = _free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "clusterlake.cli", "serve", "--model", model, "--port", str(port),
                             "--max-body-bytes", "262144", "--max-rows", "500", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    client = Client(port)
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"clusterlake serve exited {proc.returncode}: {proc.stdout.read()}")
        try:
            if client.call("GET", "/health")[0] == 200:
                return proc, client
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("clusterlake serve did not answer /health within 60 s")


def _stop(proc):
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=20)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0]


@pytest.fixture(scope="module")
def server(served):
    proc, client = _start(served["latest"])
    yield client
    _stop(proc)


def test_http_assign_equals_batch_ids(served, server, assigner):
    rows = served["rows"].sample(400, random_state=1)
    names = assigner.feature_names
    status, got = server.call("POST", "/assign", {"rows": rows[names].to_dict(orient="records")})
    assert status == 200 and got["run_id"] == served["result"].run_id
    assert [a["cluster_id"] for a in got["assignments"]] == rows["cluster_id"].tolist()
    assert [a["is_outlier"] for a in got["assignments"]] == rows["is_outlier"].astype(bool).tolist()
    np.testing.assert_allclose([a["distance"] for a in got["assignments"]], rows["distance"], rtol=1e-12)
    # one row, as an object or as an array in feature order
    status, one = server.call("POST", "/assign", {"row": rows[names].iloc[0].to_dict()})
    assert status == 200 and one["assignments"][0]["cluster_id"] == rows["cluster_id"].iloc[0]
    status, arr = server.call("POST", "/assign", {"rows": rows[names].iloc[:5].to_numpy().tolist()})
    assert status == 200 and [a["cluster_id"] for a in arr["assignments"]] == rows["cluster_id"].iloc[:5].tolist()


def test_http_queries(served, server, catalog):
    row = served["rows"][catalog.assigner.feature_names].iloc[7].to_dict()
    status, near = server.call("POST", "/nearest", {"row": row, "n": 3})
    assert status == 200 and near["clusters"] == catalog.nearest(row, 3)[0]
    status, sim = server.call("POST", "/similar", {"row": row, "n": 4})
    assert status == 200 and sim["items"] == catalog.similar(row, 4)["items"]
    cid = int(catalog.assigner.cluster_ids[2])
    status, c = server.call("GET", f"/clusters/{cid}")
    assert status == 200 and c == json.loads(json.dumps(catalog.cluster(cid)))
    status, h = server.call("GET", "/health")
    assert status == 200 and h["status"] == "ok" and h["k"] == 5 and h["features"] == catalog.assigner.feature_names


def _bad_requests(names):
    row = {f: 1.0 for f in names}
    nan_body = ('{"row": {' + ", ".join(f'"{f}": {"NaN" if i == 1 else "1.0"}' for i, f in enumerate(names)) + "}}")
    return [
        ("missing feature", "POST", "/assign", {"row": {k: v for k, v in row.items() if k != names[0]}}, None, 400, names[0]),
        ("NaN", "POST", "/assign", None, nan_body.encode(), 400, "NaN"),
        ("string", "POST", "/assign", {"rows": [row, {**row, names[2]: "abc"}]}, None, 400, "'abc' (str)"),
        ("bool", "POST", "/assign", {"row": {**row, names[0]: True}}, None, 400, "boolean"),
        ("null", "POST", "/assign", {"row": {**row, names[0]: None}}, None, 400, "null"),
        ("wrong length", "POST", "/assign", {"rows": [[1.0, 2.0]]}, None, 400, "expected"),
        ("ragged", "POST", "/assign", {"rows": [[1.0] * len(names), [[1.0]]]}, None, 400, "row 1"),
        ("row not object", "POST", "/assign", {"row": 5}, None, 400, "\"row\" must be"),
        ("rows not list", "POST", "/assign", {"rows": {"a": 1}}, None, 400, "must be a list"),
        ("rows empty", "POST", "/assign", {"rows": []}, None, 400, "empty"),
        ("no row key", "POST", "/assign", {"features": [1]}, None, 400, "\"row\""),
        ("not an object", "POST", "/assign", [1, 2], None, 400, "JSON object"),
        ("bad json", "POST", "/assign", None, b'{"row": {', 400, "not valid JSON"),
        ("empty body", "POST", "/assign", None, b"", 400, "empty request body"),
        ("not utf-8", "POST", "/assign", None, b"\xff\xfe\x00", 400, "not valid JSON"),
        ("huge integer", "POST", "/assign", None, ('{"row": {' + ", ".join(
            f'"{f}": {"1" + "0" * 400 if i == 0 else "1.0"}' for i, f in enumerate(names)) + "}}").encode(),
         400, "float64 range"),
        ("deep nesting", "POST", "/assign", None, b"[" * 50_000 + b"]" * 50_000, 400, "nested too deeply"),
        ("rows of nulls", "POST", "/assign", {"rows": [None, None]}, None, 400, "row 0 is null"),
        ("huge finite value", "POST", "/assign", {"row": {**row, names[0]: 1e200}}, None, 400, "too large"),
        ("huge value, nearest", "POST", "/nearest", {"row": {**row, names[0]: 1e200}}, None, 400, "too large"),
        ("nested value", "POST", "/assign", {"row": {**row, names[0]: [1.0, [2.0]]}}, None, 400, "row 1"),
        ("bool among numbers", "POST", "/assign", {"rows": [[1.5, True] + [1.0] * (len(names) - 2)]}, None, 400,
         "boolean"),
        ("many rows in one row", "POST", "/assign", {"row": {f: [1.0] * 501 for f in names}}, None, 413,
         "501 rows"),
        ("oversize body", "POST", "/assign", {"rows": [row] * 400, "pad": "x" * 300_000}, None, 413, "limit"),
        ("too many rows", "POST", "/assign", {"rows": [[1.0] * len(names)] * 501}, None, 413, "limit of 500"),
        ("n not int", "POST", "/nearest", {"row": row, "n": "3"}, None, 400, "integer"),
        ("n too big", "POST", "/nearest", {"row": row, "n": 99}, None, 400, "between"),
        ("similar two rows", "POST", "/similar", {"rows": [row, row]}, None, 400, "one row"),
        ("similar unknown cluster", "POST", "/similar", {"row": row, "cluster_id": 4242}, None, 404, "not in model"),
        ("cluster id not int", "GET", "/clusters/abc", None, None, 400, "integer"),
        ("unknown cluster", "GET", "/clusters/9999", None, None, 404, "not in model"),
        ("wrong method", "GET", "/assign", None, None, 405, "Method Not Allowed"),
        ("unknown path", "GET", "/nope", None, None, 404, "Not Found"),
    ]


def test_http_bad_requests_get_4xx_with_a_message(server, assigner):
    cases = _bad_requests(assigner.feature_names)
    assert len(cases) == 33  # docs/serving.md counts them
    for name, method, path, body, raw, status, words in cases:
        got_status, got = server.call(method, path, body, raw)
        assert got_status == status, (name, got_status, got)
        assert isinstance(got, dict) and words in got["error"], (name, got)
    assert server.call("GET", "/health")[0] == 200  # and the service is still up


def test_http_lying_content_length_is_refused_before_reading(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", "/assign")
    conn.putheader("Content-Length", str(10 << 20))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and "limit" in json.loads(resp.read())["error"]
    conn.close()


def test_client_gone_mid_body_is_one_info_line(served):
    """A client that closes the connection before its body is complete is not a server error: one
    INFO line naming the client, no traceback, and the service keeps answering."""
    proc, client = _start(served["latest"])
    try:
        body = json.dumps({"row": {"age": 1.0}}).encode()
        with socket.create_connection(("127.0.0.1", client.port), timeout=10) as s:
            s.sendall(b"POST /assign HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % (len(body) + 1000) + body)
            time.sleep(0.3)  # the server is waiting for the rest of the body
            local = "%s:%d" % s.getsockname()
        status, health = client.call("GET", "/health")
        assert status == 200 and health["status"] == "ok"
        assert client.call("POST", "/assign", {"row": served["rows"][health["features"]].iloc[0].to_dict()})[0] == 200
    finally:
        log = _stop(proc)
    gone = [ln for ln in log.splitlines() if "disconnected before the request body was complete" in ln]
    assert len(gone) == 1, log
    assert " INFO clusterlake.serve: " in gone[0] and local in gone[0] and "/assign" in gone[0], gone
    assert f"{len(body)} of {len(body) + 1000} bytes" in gone[0], gone
    assert "Traceback" not in log and " ERROR " not in log and "internal error" not in log, log


# ------------------------------------------------------------------------------------------------
# reloading a new model without downtime


def _fake_new_run(model_root: str, old_run: str, new_run: str, shift: float = 0.0) -> None:
    """A new run's model directory (a copy of ``old_run`` under a new run id, centroids moved by
    ``shift`` model-space units in the first dimension), then ``latest`` pointed at it."""
    from clusterlake.io.fs import location

    src, dst = os.path.join(model_root, old_run), os.path.join(model_root, new_run)
    shutil.copytree(src, dst)
    meta = json.load(open(os.path.join(dst, "model.json")))
    meta["run_id"] = new_run
    json.dump(meta, open(os.path.join(dst, "model.json"), "w"))
    C = np.load(os.path.join(dst, "centroids.npy"))
    C[:, 0] += shift
    np.save(os.path.join(dst, "centroids.npy"), C)
    model_artifact.point_latest(location(model_root), new_run)


def test_reload_on_sighup_and_watch_without_failed_requests(served, tmp_path):
    # a private copy of the model root: the other tests keep the original
    root = str(tmp_path / "model")
    run_id = served["result"].run_id
    shutil.copytree(os.path.join(served["out"], "model", run_id), os.path.join(root, run_id))
    from clusterlake.io.fs import location

    model_artifact.point_latest(location(root), run_id)
    proc, client = _start(os.path.join(root, "latest"), "--watch", "0.5")
    names = Assigner.load(os.path.join(root, "latest")).feature_names
    body = {"rows": served["rows"][names].iloc[:20].to_dict(orient="records")}
    statuses: list[int] = []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            statuses.append(client.call("POST", "/assign", body)[0])

    t = threading.Thread(target=hammer)
    t.start()
    try:
        time.sleep(0.5)
        _fake_new_run(root, run_id, "20991231-sighup", shift=0.25)  # --watch picks it up, or SIGHUP forces it
        proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 20
        while time.time() < deadline and client.call("GET", "/health")[1]["run_id"] != "20991231-sighup":
            time.sleep(0.1)
        assert client.call("GET", "/health")[1]["run_id"] == "20991231-sighup"
        _, got = client.call("POST", "/assign", body)
        assert got["run_id"] == "20991231-sighup"

        # a broken new model: the service keeps the good one and says why on /health
        broken = os.path.join(root, "20991231-broken")
        shutil.copytree(os.path.join(root, "20991231-sighup"), broken)
        meta = json.load(open(os.path.join(broken, "model.json")))
        meta["run_id"] = "20991231-broken"
        json.dump(meta, open(os.path.join(broken, "model.json"), "w"))
        os.remove(os.path.join(broken, "centroids.npy"))
        model_artifact.point_latest(location(root), "20991231-broken")
        deadline = time.time() + 20
        while time.time() < deadline and not client.call("GET", "/health")[1]["last_reload_error"]:
            time.sleep(0.1)
        _, h = client.call("GET", "/health")
        assert h["run_id"] == "20991231-sighup" and h["last_reload_error"]
        time.sleep(0.3)
    finally:
        stop.set()
        t.join(timeout=30)
        log = _stop(proc)
    assert len(statuses) > 20 and set(statuses) == {200}, (set(statuses), log[-2000:])
    assert "now serving 20991231-sighup" in log and "reload of" in log


def test_serve_refuses_a_path_without_a_model(tmp_path):
    p = subprocess.run([sys.executable, "-m", "clusterlake.cli", "serve", "--model", str(tmp_path), "--port",
                        str(_free_port())], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "not a clusterlake model directory" in p.stderr


def test_catalog_through_a_symlink_and_with_an_empty_cluster(served, tmp_path):
    """A --model path that is a link to model/latest still finds the run's members; an empty
    cluster's statistics are JSON (no NaN)."""
    link = tmp_path / "current"
    os.symlink(served["latest"], link)
    cat = ClusterCatalog.load(str(link))
    cid = int(cat.assigner.cluster_ids[0])
    assert cat.cluster(cid)["members"] > 0 and len(cat.members(cid)[0]) == cat.cluster(cid)["members"]
    run = served["result"].run_id
    copy = tmp_path / "model" / run
    shutil.copytree(os.path.join(served["out"], "model", run), copy, symlinks=True)
    for name, value in (("cluster_sizes", 0.0), ("cluster_means_x", np.nan)):
        arr = np.load(copy / f"{name}.npy")
        arr[1] = value
        np.save(copy / f"{name}.npy", arr)
    empty = ClusterCatalog.load(str(copy)).cluster(int(cat.assigner.cluster_ids[1]))
    assert empty["size"] == 0 and empty["archetype"]["profile"] is None
    json.dumps(empty, allow_nan=False)  # raises on NaN/inf


def test_the_member_cap_shares_max_members_over_the_clusters():
    from clusterlake.algorithms.members import members_per_cluster

    assert members_per_cluster(10_000, 200_000, 20) == 10_000  # under the cap: unchanged
    assert members_per_cluster(10_000, 200_000, 1_000) == 200
    assert members_per_cluster(None, 200_000, 1_000) == 200  # "every row" is capped too
    assert members_per_cluster(None, None, 1_000) is None and members_per_cluster(0, 10, 5) == 0
    assert members_per_cluster(50, 10, 1_000) == 1  # at least one row a cluster
