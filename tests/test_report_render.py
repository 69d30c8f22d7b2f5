"""The per-run HTML report's renderer (clusterlake.report.render): no Spark, synthetic data."""

from __future__ import annotations

import base64
import dataclasses
import gc
import io
import re
import struct
import time
from collections import Counter
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from clusterlake.report.render import (
    NOISE_COLOR,
    SECTION_IDS,
    ReportData,
    cluster_colors,
    dendrogram_cut_height,
    render,
)

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "nav", "a", "section", "h1", "h2", "h3",
                "p", "table", "thead", "tbody", "tr", "th", "td", "ul", "li", "figure", "img", "span",
                "code", "strong", "em", "footer"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_HTML_BYTES = 2 * 1024 * 1024


# ----------------------------------------------------------------------------------------------
# synthetic run


def stable_ids(k: int) -> np.ndarray:
    """Non-contiguous stable ids that include 3: 0, 1, 2, 3, 5, 7, 9, ..."""
    ids = list(range(min(k, 4))) + list(range(5, 5 + 2 * max(k - 4, 0), 2))
    return np.array(ids, dtype=np.int64)


def make_data(n: int = 5000, k: int = 8, n_features: int = 6, seed: int = 0, **over) -> ReportData:
    from scipy.cluster.hierarchy import linkage
    from sklearn.datasets import make_blobs
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_samples

    X, y = make_blobs(n_samples=n, centers=k, n_features=n_features, random_state=seed)
    ids = stable_ids(k)
    lab = ids[y]
    pts = PCA(2, random_state=seed).fit_transform(X)
    rng = np.random.default_rng(seed)
    noise = np.zeros(n, dtype=bool)
    noise[rng.choice(n, size=max(1, n // 40), replace=False)] = True
    sizes = np.array([(lab == c).sum() for c in ids])
    feats = [f"feature_{j}" for j in range(n_features)]
    mu, sd = X.mean(axis=0), X.std(axis=0)
    profiles = pd.DataFrame([(int(c), f, float((X[lab == c, j].mean() - mu[j]) / sd[j]))
                             for c in ids for j, f in enumerate(feats)], columns=["cluster_id", "feature", "z"])
    auto_k = pd.DataFrame([(kk, m, v) for kk in range(2, k + 5)
                           for m, v in (("silhouette", 0.6 - 0.03 * abs(kk - k)),
                                        ("davies_bouldin", 0.5 + 0.04 * abs(kk - k)),
                                        ("calinski_harabasz", 5000.0 - 300 * abs(kk - k)))],
                          columns=["k", "metric", "value"])
    m = 6
    history = pd.DataFrame({
        "run_id": [f"run-{i}" for i in range(m)],
        "run_date": [f"2025-03-{i + 1:02d}" for i in range(m)],
        "silhouette": [0.55, 0.56, np.nan, 0.57, 0.55, 0.58],
        "changed_share": [np.nan, 0.04, 0.03, 0.05, 0.02, 0.01],
        "centroid_shift_max": [np.nan, 0.4, 0.3, 0.5, 0.2, 0.1],
    })
    lineage = pd.DataFrame({
        "cluster_id": [int(c) for c in ids] + [None],
        "previous_cluster_id": [int(c) for c in ids[:-1]] + [None, 99],
        "event": ["persist"] * (k - 1) + ["new", "retired"],
        "distance": [0.1] * (k - 1) + [None, None],
    })
    data = ReportData(
        job_name="customers", run_id="20250306-0001", run_date="2025-03-06", kind="full",
        rows_read=n + 250, rows_dropped=250, rows_used=n,
        invalid_counts={"age:null": 150, "income:non_numeric": 80, "income:negative": 20},
        k=k, k_selection="auto:silhouette",
        gate_failures=[], gates_configured=["quality.gates.min_silhouette", "quality.drift.max_changed_share"],
        stage_seconds={"read": 2.5, "prep": 4.0, "kmeans": 31.0, "passes": 9.5, "metrics": 7.0, "write": 3.0},
        seconds=60.0,
        clusters=pd.DataFrame({"cluster_id": ids, "size": sizes, "share": sizes / sizes.sum(),
                               "description": [f"high feature_{i % n_features}" for i in range(k - 1)] + [None]}),
        metrics={"silhouette": 0.58, "davies_bouldin": 0.52, "calinski_harabasz": 5012.3, "inertia": 123456.0},
        sample_points=pts, sample_cluster=lab,
        sample_silhouette=silhouette_samples(X, lab) if 1 < k < n else None,
        sample_noise=noise, centroids_2d=np.array([pts[lab == c].mean(axis=0) for c in ids]),
        auto_k=auto_k, dendrogram=linkage(X[:300], "ward"), dendrogram_levels=[3, k],
        profiles=profiles, drift_history=history, lineage=lineage, output_path="/data/clusterlake/customers",
    )
    return dataclasses.replace(data, **over) if over else data


@pytest.fixture(scope="module")
def big():
    """k = 8, 5,000 sample points, every section; rendered once (html, seconds)."""
    data = make_data(5000, 8)
    t0 = time.perf_counter()
    html = render(data)
    return data, html, time.perf_counter() - t0


@pytest.fixture(scope="module")
def small_data():
    return make_data(600, 5, n_features=4, seed=1)


def _tiny_png() -> bytes:
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\xff\xff")) + chunk(b"IEND", b""))


@pytest.fixture
def fast_png(monkeypatch):
    """Charts are built but not drawn (a 1x1 PNG instead): for tests of the document's structure
    and text; the drawing itself is tested on full renders."""
    from clusterlake.report import render as mod

    def fake(fig):
        fig.clear()
        return _tiny_png(), 1, 1

    monkeypatch.setattr(mod, "_png", fake)


# ----------------------------------------------------------------------------------------------
# helpers


class Checker(HTMLParser):
    """Collects ids, tags, images and sections; records mis-nested or unclosed tags."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: list[str] = []
        self.tags: Counter = Counter()
        self.imgs: list[dict] = []
        self.sections: list[str] = []
        self.h2_of: Counter = Counter()
        self.doctype = None
        self.title = ""

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] += 1
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "section":
            if "section" in self.stack:
                self.errors.append("nested section")
            self.sections.append(a.get("id"))
        if tag == "h2" and "section" in self.stack:
            self.h2_of[self.sections[-1]] += 1
        if tag == "img":
            self.imgs.append(a)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            if tag in self.stack:
                while self.stack.pop() != tag:
                    pass
        else:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "title":
            self.title += data


def check(html: str) -> Checker:
    p = Checker()
    p.feed(html)
    p.close()
    assert not p.errors, p.errors[:5]
    assert not p.stack, f"unclosed: {p.stack}"
    return p


def section_html(html: str, sid: str) -> str:
    m = re.search(rf'<section id="{re.escape(sid)}">(.*?)</section>', html, re.S)
    assert m, f"no section {sid}"
    return m.group(1)


def pngs(fragment: str) -> list[bytes]:
    return [base64.b64decode(b, validate=True)
            for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]*)"', fragment)]


def png_size(b: bytes) -> tuple[int, int]:
    assert b[:8] == PNG_SIGNATURE
    assert b[12:16] == b"IHDR"
    return struct.unpack(">II", b[16:24])


def pixels_of(b: bytes, hex_color: str) -> int:
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
    want = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)], dtype=rgb.dtype)
    return int((rgb == want).all(axis=-1).sum())


# ----------------------------------------------------------------------------------------------
# structure


def test_full_report_parses_and_has_every_section_once(big):
    _, html, _ = big
    p = check(html)
    assert p.doctype and p.doctype.lower() == "doctype html"
    assert p.tags["meta"] >= 1 and re.search(r'<meta charset="utf-8">', html)
    assert "customers" in p.title and "20250306-0001" in p.title
    assert p.tags["html"] == p.tags["head"] == p.tags["body"] == p.tags["title"] == 1
    assert p.sections == list(SECTION_IDS)
    ids = Counter(p.ids)
    for sid in SECTION_IDS:
        assert ids[sid] == 1
        assert p.h2_of[sid] == 1, sid
    assert set(p.tags) <= ALLOWED_TAGS, set(p.tags) - ALLOWED_TAGS
    assert 'class="error"' not in html


def test_minimal_report_has_only_header_and_sizes(small_data, fast_png):
    d = dataclasses.replace(small_data, metrics={}, sample_points=None, sample_cluster=None,
                            sample_silhouette=None, sample_noise=None, centroids_2d=None, auto_k=None,
                            dendrogram=None, dendrogram_levels=[], profiles=None, drift_history=None,
                            lineage=None)
    p = check(render(d))
    assert p.sections == ["header", "sizes"]


@pytest.mark.parametrize("over, absent", [
    ({"sample_points": None, "centroids_2d": None}, {"projection"}),
    ({"sample_silhouette": None}, {"silhouette"}),
    ({"sample_cluster": None, "sample_silhouette": None}, {"silhouette"}),
    ({"auto_k": None}, {"auto-k"}),
    ({"auto_k": pd.DataFrame(columns=["k", "metric", "value"])}, {"auto-k"}),
    ({"dendrogram": None}, {"dendrogram"}),
    ({"profiles": None}, {"profiles"}),
    ({"drift_history": None, "lineage": None}, {"drift"}),
    ({"lineage": None, "drift_history": pd.DataFrame({"run_id": ["a"], "run_date": ["2025-01-01"],
      "silhouette": [0.5], "changed_share": [np.nan], "centroid_shift_max": [np.nan]})}, {"drift"}),
    ({"lineage": None}, set()),  # history of 6 runs: drift stays
    # a first run: one history row, lineage rows all "new" without a previous cluster
    ({"drift_history": None, "lineage": pd.DataFrame({"cluster_id": [0, 1], "previous_cluster_id": [None, None],
      "event": ["new", "new"], "distance": [None, None], "previous_run_id": [None, None]})}, {"drift"}),
    ({"drift_history": None}, set()),  # lineage alone: drift stays
])
def test_sections_follow_their_data(small_data, fast_png, over, absent):
    html = render(dataclasses.replace(small_data, **over))
    p = check(html)
    assert p.sections == [s for s in SECTION_IDS if s not in absent]
    assert 'class="error"' not in html


def test_drift_without_history_shows_only_the_lineage_table(small_data, fast_png):
    html = render(dataclasses.replace(small_data, drift_history=None))
    drift = section_html(html, "drift")
    assert not pngs(drift)
    assert 'class="lineage"' in drift and "retired" in drift and "99" in drift


# ----------------------------------------------------------------------------------------------
# self-contained


def test_no_external_url_and_no_script(big):
    _, html, _ = big
    assert not re.search(r"https?://", html, re.I)
    assert not re.search(r"""(src|href)\s*=\s*["']?//""", html, re.I)
    assert not re.search(r"@import|url\(|<link|<script|<iframe", html, re.I)
    for m in re.finditer(r'\b(src|href)="([^"]*)"', html):
        attr, val = m.groups()
        if attr == "src":
            assert val.startswith("data:image/png;base64,")
        else:
            assert val.startswith("#"), val


def test_every_image_is_an_embedded_png(big):
    _, html, _ = big
    p = check(html)
    assert len(p.imgs) == 7  # one chart per section but the header
    for img in p.imgs:
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        payload = src.split(",", 1)[1]
        assert payload
        b = base64.b64decode(payload, validate=True)
        w, h = png_size(b)
        assert 0 < w <= 1700 and 0 < h <= 1500
        assert (int(img["width"]), int(img["height"])) == (w, h)
        assert img.get("alt")


def test_html_size_and_render_time_for_k8_n5000(big):
    _, html, seconds = big
    size = len(html.encode("utf-8"))
    print(f"\nreport k=8 n=5000: {size / 1024:.0f} KiB, rendered in {seconds:.2f} s")
    assert size < MAX_HTML_BYTES
    assert seconds < 60


# ----------------------------------------------------------------------------------------------
# palette


def test_cluster_colors_is_deterministic_and_position_based():
    ids = [12, 3, 0, 7, 3, 1, 5, 9, 2]
    a = cluster_colors(ids)
    assert list(a) == [0, 1, 2, 3, 5, 7, 9, 12]
    assert a == cluster_colors(sorted(set(ids))) == cluster_colors(np.array(ids[::-1], dtype=np.int32))
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in a.values())
    assert a[0] == "#1f77b4"  # tab10 first
    # a colour depends on the position among the sorted ids, not on the id itself
    assert cluster_colors([3, 40])[40] == cluster_colors([3, 4])[4]
    # the colours of the smaller ids stay when more clusters come later
    assert all(cluster_colors(range(30))[i] == cluster_colors(range(8))[i] for i in range(8))
    many = cluster_colors(range(54))
    assert len(set(many.values())) == 54
    assert NOISE_COLOR not in many.values()
    assert len(set(cluster_colors(range(200)).values())) == 200
    assert cluster_colors([]) == {}


def test_cluster_colours_match_across_tables_and_charts(big):
    data, html, _ = big
    colors = cluster_colors(data.clusters.cluster_id)
    c3 = colors[3]
    assert c3 != colors[2] and c3 != colors[5]
    # tables and legends
    sizes = section_html(html, "sizes")
    row = re.search(r'<tr data-cluster="3" data-color="([^"]+)">(.*?)</tr>', sizes, re.S)
    assert row and row.group(1) == c3
    assert f'<span class="swatch" style="background:{c3}"' in row.group(2)
    for cid, col in colors.items():  # one swatch per cluster in the sizes table
        assert re.search(rf'<tr data-cluster="{cid}" data-color="{col}"><td><span class="swatch" '
                         rf'style="background:{col}"', sizes)
    for sid in ("projection", "silhouette"):
        frag = section_html(html, sid)
        li = re.search(r'<li data-cluster="3">(.*?)</li>', frag, re.S) if sid == "projection" else \
            re.search(r'<tr data-cluster="3">(.*?)</tr>', frag, re.S)
        assert li and f"background:{c3}" in li.group(1), sid
    assert f"background:{c3}" in re.search(r'<tr data-cluster="3">(.*?)</tr>',
                                           section_html(html, "drift"), re.S).group(1)
    # the charts themselves: cluster 3's exact colour is painted in each of them
    for sid, least in (("sizes", 2000), ("projection", 40), ("silhouette", 2000), ("profiles", 100)):
        (img,) = pngs(section_html(html, sid))
        assert pixels_of(img, c3) >= least, sid
    (proj,) = pngs(section_html(html, "projection"))
    assert pixels_of(proj, NOISE_COLOR) > 0  # noise crosses


# ----------------------------------------------------------------------------------------------
# content


def test_header_content(big):
    data, html, _ = big
    head = section_html(html, "header")
    assert "<h1>customers</h1>" in head
    assert "2025-03-06" in head and "20250306-0001" in head and "full run" in head
    assert "read 5,250" in head and "dropped 250" in head and "used 5,000" in head
    # reasons, most frequent first
    assert head.index("null") < head.index("non_numeric") < head.index("negative")
    assert "chosen automatically (criterion: silhouette) (<code>auto:silhouette</code>)" in head
    assert 'class="pass"' in head and "all 2 configured gate(s) passed" in head
    assert "quality.gates.min_silhouette" in head
    stages = re.search(r'<table class="stages">(.*?)</table>', head, re.S).group(1)
    for stage in data.stage_seconds:
        assert f"<td>{stage}</td>" in stages
    assert "1 min 00 s" in stages  # total
    assert "davies_bouldin" in head and "0.58" in head and "5,012.3" in head


def test_header_lists_failed_gates_and_k_sources(small_data, fast_png):
    html = render(dataclasses.replace(small_data, gate_failures=["silhouette 0.12 < 0.2", "changed_share 0.4 > 0.3"],
                                      k_selection="fixed", kind="update"))
    head = section_html(html, "header")
    assert 'class="fail"' in head and "2 gate(s) failed" in head
    assert "<li>silhouette 0.12 &lt; 0.2</li>" in head and "<li>changed_share 0.4 &gt; 0.3</li>" in head
    assert "fixed in the configuration" in head and "incremental update" in head
    head = section_html(render(dataclasses.replace(small_data, gates_configured=[], k_selection="model")), "header")
    assert "no gates configured" in head and "taken from the current model" in head


def test_sizes_table_has_descriptions(big):
    data, html, _ = big
    sizes = section_html(html, "sizes")
    for d in data.clusters.description.dropna():
        assert d in sizes
    assert "12.5%" in sizes or "%" in sizes


def test_text_is_escaped(small_data):
    clusters = small_data.clusters.copy()
    clusters.loc[0, "description"] = "<script>alert('x')</script> & more"
    prof = small_data.profiles.copy()
    prof.loc[prof.feature == "feature_0", "feature"] = "<img src=x onerror=alert(1)> $a$"
    html = render(dataclasses.replace(
        small_data, job_name="<b>Job</b> & co", run_id='"><i>', clusters=clusters, profiles=prof,
        gate_failures=["<u>gate</u>"], invalid_counts={"<col>:<why>": 3}, stage_seconds={"<s>": 1.0}))
    p = check(html)
    assert set(p.tags) <= ALLOWED_TAGS, set(p.tags) - ALLOWED_TAGS
    assert p.tags["img"] == len(p.imgs) == sum(1 for i in p.imgs if i["src"].startswith("data:image/png"))
    assert "<script" not in html and "<b>Job" not in html and "<u>gate" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in html
    assert "&lt;b&gt;Job&lt;/b&gt; &amp; co" in html
    assert 'class="error"' not in html  # the '$' in a feature name is not mathtext


def test_dendrogram_cut_height_gives_the_level():
    from scipy.cluster.hierarchy import fcluster, linkage

    X = np.random.default_rng(3).normal(size=(60, 3))
    for method in ("ward", "average", "single"):
        Z = linkage(X, method)
        n = len(X)
        for L in (1, 2, 3, 5, 8, 13, n - 1, n):
            h = dendrogram_cut_height(Z, L)
            assert len(np.unique(fcluster(Z, t=h, criterion="distance"))) == L, (method, L)
        assert dendrogram_cut_height(Z, 0) is None and dendrogram_cut_height(Z, n + 1) is None
        assert dendrogram_cut_height(Z, 4) == pytest.approx((Z[-4, 2] + Z[-3, 2]) / 2)


def test_dendrogram_notes_its_levels(big):
    d = section_html(big[1], "dendrogram")
    assert "3 clusters at height" in d and "8 clusters at height" in d


# ----------------------------------------------------------------------------------------------
# robustness, determinism, resources


@pytest.mark.parametrize("case", ["many_clusters", "sparse", "nan_metrics", "tiny"])
def test_edge_cases_render_without_errors(case):
    if case == "many_clusters":  # palette past tab20, profiles too big to annotate, no noise
        d = make_data(800, 25, n_features=30, seed=2, sample_noise=None, dendrogram_levels=[2, 25, 10_000])
    elif case == "sparse":  # no cluster labels on the sample, no centroids, one-row clusters frame shape
        d = make_data(400, 3, n_features=3, seed=4, sample_cluster=None, centroids_2d=None,
                      sample_silhouette=None, auto_k=None, k_selection="fixed")
    elif case == "nan_metrics":
        base = make_data(400, 4, n_features=3, seed=5)
        hist = base.drift_history.assign(silhouette=np.nan, centroid_shift_max=np.nan)
        d = dataclasses.replace(base, metrics={"silhouette": float("nan")}, drift_history=hist,
                                invalid_counts={}, stage_seconds={}, seconds=float("nan"))
    else:  # k = 1, a handful of points
        d = make_data(12, 1, n_features=2, seed=6, dendrogram=None, sample_silhouette=None)
    html = render(d)
    check(html)
    assert 'class="error"' not in html
    assert len(html.encode()) < MAX_HTML_BYTES


def test_a_broken_section_is_reported_in_place(small_data, fast_png):
    html = render(dataclasses.replace(small_data, profiles=pd.DataFrame({"cluster_id": [0], "feature": ["a"]})))
    p = check(html)
    assert p.sections == list(SECTION_IDS)  # the others are still drawn
    assert "could not be drawn" in section_html(html, "profiles")
    assert len(p.imgs) == 6


def test_render_is_deterministic(big):
    data, html, _ = big
    assert render(data) == html


def test_no_figure_is_left_behind(small_data):
    from matplotlib.figure import Figure

    gc.collect()
    before = sum(isinstance(o, Figure) for o in gc.get_objects())
    render(small_data)
    gc.collect()
    assert sum(isinstance(o, Figure) for o in gc.get_objects()) == before
    import sys

    if "matplotlib.pyplot" in sys.modules:  # pyplot is never used: nothing registered there
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


def test_thousands_of_clusters_draw_the_largest_and_list_them_all():
    from clusterlake.report.render import MAX_DRAWN

    k = 400
    data = make_data(6000, k, n_features=5, seed=2)
    html = render(data)
    p = check(html)
    assert p.sections == list(SECTION_IDS) and 'class="error"' not in html
    sizes = section_html(html, "sizes")
    assert sizes.count("data-cluster=") == k  # the table lists every cluster
    prof = section_html(html, "profiles")
    assert len(pngs(prof)) == 1
    from clusterlake.report import render as mod

    top = mod._largest(data)
    assert len(top) == MAX_DRAWN and max(data.clusters["size"][~data.clusters["cluster_id"].isin(top)]) <= \
        min(data.clusters["size"][data.clusters["cluster_id"].isin(top)])
