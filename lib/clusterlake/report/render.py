"""Draw the per-run HTML report: one self-contained document, nothing fetched when it is opened.

:func:`render` turns a :class:`ReportData` (what :mod:`clusterlake.report.build` reads from the
output's tables and the run's model artifact) into one HTML string:

* charts are matplotlib PNGs embedded as ``data:image/png;base64,...`` URIs (drawn on
  :class:`matplotlib.figure.Figure` objects with the Agg canvas, never through pyplot, so rendering
  is thread-safe and leaves no figure registered anywhere);
* the CSS is inline; there is no script, no web font, no external URL;
* every piece of text from the data (job name, descriptions, feature names, gate messages...) is
  escaped with :func:`html.escape`.

Sections (``<section id=...>``, each with an ``<h2>``; a section is left out when its data is
missing):

``header``      job, run date and id, kind, rows read/dropped (and why), k and how it was chosen,
                gates, run-level metrics, wall time per stage;
``sizes``       cluster sizes (horizontal bars) and each cluster's description;
``projection``  the report sample in the first two model-space components, coloured by cluster,
                density-pass noise as grey crosses, centroids as big labelled discs;
``silhouette``  per-point silhouette, sorted within each cluster, with the mean as a dashed line;
``auto-k``      one small plot per auto-k metric against k, the chosen k marked;
``dendrogram``  the hierarchical pass's dendrogram (last 30 merges) with the cut levels;
``profiles``    heat map of profile z-scores (clusters x features), diverging, clipped at +-3;
``drift``       share of rows changing cluster, max centroid shift and silhouette over the last
                runs (when there are at least 2), and this run's lineage table (when it links
                to a previous run); left out for a first run.

Cluster colours come from :func:`cluster_colors` (one colour per stable id, by position among
the run's sorted ids) and are the same in every chart and table; grey is kept for noise.
"""

from __future__ import annotations

import base64
import colorsys
import functools
import html
import io
import logging
import math
import struct
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["ReportData", "render", "cluster_colors", "dendrogram_cut_height", "NOISE_COLOR",
           "SECTION_IDS"]

DPI = 100
NOISE_COLOR = "#8c8c8c"
#: section ids in the order they appear
SECTION_IDS = ("header", "sizes", "projection", "silhouette", "auto-k", "dendrogram", "profiles",
               "drift")
#: at most this many points are drawn in the projection / silhouette plots (deterministic subsample)
MAX_POINTS = 20_000
MAX_DRAWN = 50
"""Clusters a chart draws one by one (bars, bands, labels, heat-map rows): with more (k up to
5,000) the charts show the largest ``MAX_DRAWN`` and say so; the sizes table keeps every cluster."""
#: the drift plots show at most this many runs (the newest)
MAX_DRIFT_RUNS = 30
#: the dendrogram shows the last this many merges
DENDROGRAM_LEAVES = 30
#: heat map cells are annotated with their value when there are at most this many
ANNOTATE_CELLS = 160
_INK = "#222222"
_ACCENT = "#000000"  # chosen k, this run: not a cluster colour
_LINE = "#1f3b73"


@dataclass
class ReportData:
    """Everything one run's report shows. Optional parts are None (or empty) when absent."""

    job_name: str
    run_id: str
    run_date: str
    kind: str  # "full" | "update"
    rows_read: int
    rows_dropped: int
    rows_used: int
    invalid_counts: dict  # "column:reason" -> rows (why rows were dropped)
    k: int
    k_selection: str  # "fixed" | "auto:<criterion>" | "model"
    gate_failures: list  # empty = all gates passed
    gates_configured: list  # names of configured gates / drift thresholds
    stage_seconds: dict  # wall time per stage, in order
    seconds: float  # total
    clusters: pd.DataFrame  # cluster_id, size, share, description (str or None)
    metrics: dict = field(default_factory=dict)  # run-level kmeans metrics (any subset)
    sample_points: Optional[np.ndarray] = None  # (n, 2) first two model-space components
    sample_cluster: Optional[np.ndarray] = None  # (n,) stable cluster id per point
    sample_silhouette: Optional[np.ndarray] = None  # (n,) per-point silhouette
    sample_noise: Optional[np.ndarray] = None  # (n,) bool, density pass says noise
    centroids_2d: Optional[np.ndarray] = None  # (k, 2), row i = clusters.cluster_id[i]
    ellipses_2d: Optional[np.ndarray] = None  # (k, 2, 2) a mixture's covariances in that plane, rows as above
    auto_k: Optional[pd.DataFrame] = None  # k, metric, value
    dendrogram: Optional[np.ndarray] = None  # scipy linkage matrix (n-1, 4)
    dendrogram_levels: list = field(default_factory=list)  # numbers of clusters cut from it
    profiles: Optional[pd.DataFrame] = None  # cluster_id, feature, z
    drift_history: Optional[pd.DataFrame] = None  # run_id, run_date, silhouette, changed_share, centroid_shift_max
    lineage: Optional[pd.DataFrame] = None  # cluster_id, previous_cluster_id, event, distance
    output_path: str = ""
    grouping: Optional[dict] = None  # <model>/grouping/grouping.json: counts, size bins, example groups


# ----------------------------------------------------------------------------------------------
# palette


@functools.lru_cache(maxsize=1)
def _base_palette() -> tuple:
    """54 distinct colours: tab10, then tab20's light shades, tab20b, tab20c, all without the
    greys (grey is noise). The first 9 are tab10's, so small runs get the familiar colours."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    tab10 = colormaps["tab10"].colors
    tab20 = colormaps["tab20"].colors
    out = [to_hex(c) for i, c in enumerate(tab10) if i != 7]
    out += [to_hex(tab20[2 * i + 1]) for i in range(10) if i != 7]
    out += [to_hex(c) for c in colormaps["tab20b"].colors]
    out += [to_hex(c) for c in colormaps["tab20c"].colors[:16]]
    seen: list[str] = []
    for c in out:
        if c not in seen:
            seen.append(c)
    return tuple(seen)


def _palette_color(i: int) -> str:
    base = _base_palette()
    if i < len(base):
        return base[i]
    j = i - len(base)  # beyond: golden-ratio hues, two lightness bands
    r, g, b = colorsys.hsv_to_rgb((j * 0.6180339887) % 1.0, 0.75 if j % 2 else 0.55, 0.85 if j % 2 else 0.7)
    return "#{:02x}{:02x}{:02x}".format(round(r * 255), round(g * 255), round(b * 255))


def cluster_colors(ids: Iterable) -> dict:
    """One hex colour (``"#rrggbb"``) per cluster id: the i-th smallest distinct id gets the
    i-th palette colour. Deterministic, independent of the order (and repeats) of ``ids``; never
    the noise grey."""
    uniq = sorted({int(i) for i in ids if i is not None and not _isnan(i)})
    return {cid: _palette_color(pos) for pos, cid in enumerate(uniq)}


def _isnan(v) -> bool:
    try:
        return bool(np.isnan(v))
    except (TypeError, ValueError):
        return False


def _text_on(color: str) -> str:
    """Black or white, whichever reads better on ``color``."""
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(color)
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "#ffffff"


# ----------------------------------------------------------------------------------------------
# small helpers


def _e(v) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _mpl(s) -> str:
    """Text for matplotlib: no mathtext (a '$' in a feature name must not be parsed)."""
    return str(s).replace("$", r"\$")


def _int(v) -> str:
    try:
        return f"{int(v):,}"
    except (TypeError, ValueError):
        return "—"


def _num(v, digits: int = 4) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "—"
    if not math.isfinite(f):
        return "—"
    if f != 0 and (abs(f) >= 1e9 or abs(f) < 1e-3):
        return f"{f:.{digits - 1}e}"
    return f"{f:,.1f}" if abs(f) >= 1000 else f"{f:.{digits}g}"


def _pct(v, digits: int = 1) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "—"
    return f"{100 * f:.{digits}f}%" if math.isfinite(f) else "—"


def _secs(s) -> str:
    try:
        s = float(s)
    except (TypeError, ValueError):
        return "—"
    if not math.isfinite(s):
        return "—"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _opt_int(v) -> Optional[int]:
    if v is None or _isnan(v):
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _swatch(color: Optional[str], title: str = "") -> str:
    if not color:
        return ""
    return (f'<span class="swatch" style="background:{_e(color)}" title="{_e(title)}" '
            f'data-color="{_e(color)}"></span>')


def _legend_html(ids, colors: dict, extra: str = "") -> str:
    items = "".join(f'<li data-cluster="{int(c)}">{_swatch(colors.get(int(c)), f"cluster {int(c)}")}'
                    f'{int(c)}</li>' for c in ids if int(c) in colors)
    return f'<ul class="legend"><li class="legend-title">clusters:</li>{items}{extra}</ul>'


def _new_figure(width: float = 7.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _style(ax, title: str = "", xlabel: str = "", ylabel: str = "") -> None:
    if title:
        ax.set_title(_mpl(title), fontsize=11)
    if xlabel:
        ax.set_xlabel(_mpl(xlabel), fontsize=10)
    if ylabel:
        ax.set_ylabel(_mpl(ylabel), fontsize=10)
    ax.tick_params(labelsize=9)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _png(fig) -> tuple[bytes, int, int]:
    """The figure as PNG bytes (no metadata) and its pixel size; the figure is cleared."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None}, facecolor="white")
    finally:
        fig.clear()
    data = buf.getvalue()
    w, h = struct.unpack(">II", data[16:24])
    return data, int(w), int(h)


def _img(fig, alt: str) -> str:
    data, w, h = _png(fig)
    b64 = base64.b64encode(data).decode("ascii")
    return (f'<img src="data:image/png;base64,{b64}" width="{w}" height="{h}" alt="{_e(alt)}">')


def _table(header: list, rows: list, cls: str = "") -> str:
    """``rows``: lists of already-escaped cell HTML; a row may be ``(attrs, cells)``."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for r in rows:
        attrs, cells = (r if isinstance(r, tuple) else ("", r))
        body.append(f"<tr{attrs}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    c = f' class="{cls}"' if cls else ""
    return f"<table{c}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _subsample(n: int, limit: int = MAX_POINTS) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size=limit, replace=False))


def _has_rows(df) -> bool:
    return df is not None and isinstance(df, pd.DataFrame) and len(df) > 0


def _arr(a) -> Optional[np.ndarray]:
    return None if a is None else np.asarray(a)


# ----------------------------------------------------------------------------------------------
# dendrogram cut


def dendrogram_cut_height(Z, level: int) -> Optional[float]:
    """Height of a horizontal line that cuts linkage ``Z`` into ``level`` clusters: midway between
    the ``level``-th and the ``(level-1)``-th largest merge heights (``Z[-level, 2]`` and
    ``Z[-level + 1, 2]`` for a monotone linkage). Above the top merge for ``level == 1``, below
    the first merge for ``level == n``; None when ``level`` is not between 1 and n."""
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[0] < 1:
        return None
    h = np.sort(Z[:, 2])
    n = Z.shape[0] + 1
    L = int(level)
    if L < 1 or L > n:
        return None
    if L == 1:
        return float(h[-1] * 1.03 if h[-1] > 0 else 1.0)
    if L == n:
        return float(h[0] / 2)
    return float((h[-L] + h[-L + 1]) / 2)


# ----------------------------------------------------------------------------------------------
# sections


def _k_how(k_selection: str) -> str:
    s = (k_selection or "").strip()
    if s == "none":
        return "no K-means: near-duplicate groups only (kmeans.enabled: false)"
    if s == "fixed":
        return "fixed in the configuration"
    if s.startswith("auto"):
        crit = s.partition(":")[2]
        return f"chosen automatically (criterion: {crit})" if crit else "chosen automatically"
    if s == "model":
        return "taken from the current model (incremental update)"
    return s or "unknown"


_METRIC_HINTS = {
    "silhouette": "−1 … 1, higher is better",
    "davies_bouldin": "≥ 0, lower is better",
    "calinski_harabasz": "higher is better",
    "ari": "agreement with the reference labels, 1 = identical",
    "nmi": "agreement with the reference labels, 1 = identical",
    "inertia": "within-cluster sum of squares, lower is tighter",
    "stability": "higher is more stable",
    "bic": "Gaussian mixture, lower is better",
    "aic": "Gaussian mixture, lower is better",
    "log_likelihood": "Gaussian mixture, every row, higher is better",
    "mean_log_likelihood": "Gaussian mixture, per row, higher is better",
    "mean_probability": "Gaussian mixture, mean posterior of the rows' components, 1 = certain",
}


def _header(d: ReportData, colors: dict) -> str:
    """The run summary: its facts, why rows were dropped, the gates, the metrics, the stages."""
    return "".join([f'<h1>{_e(d.job_name)}</h1>', "<h2>Run summary</h2>", _facts(d), _dropped(d),
                    _gates(d), _metrics_table(d), _stage_times(d)])


def _facts(d: ReportData) -> str:
    read, dropped, used = d.rows_read, d.rows_dropped, d.rows_used
    drop_share = (dropped / read) if read else float("nan")
    kind = {"full": "full run", "update": "incremental update"}.get(d.kind, d.kind)
    failures, configured = d.gate_failures or [], d.gates_configured or []
    if failures:
        gates = f'<span class="fail">FAILED</span>: {len(failures)} gate(s) failed'
    elif configured:
        gates = f'<span class="pass">passed</span>: all {len(configured)} configured gate(s) passed'
    else:
        gates = '<span class="muted">no gates configured</span>'
    facts = [
        ("Run date", _e(d.run_date)),
        ("Run id", f"<code>{_e(d.run_id)}</code>"),
        ("Kind", _e(kind)),
        ("Rows", f"read {_int(read)} · dropped {_int(dropped)} ({_pct(drop_share, 2)}) · used {_int(used)}"),
        ("k", f"<strong>{_int(d.k)}</strong>, {_e(_k_how(d.k_selection))} "
              f'(<code>{_e(d.k_selection)}</code>)'),
        ("Gates", gates),
        ("Total wall time", _e(_secs(d.seconds))),
    ]
    if d.output_path:
        facts.append(("Output", f"<code>{_e(d.output_path)}</code>"))
    return '<table class="facts"><tbody>' + "".join(
        f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts) + "</tbody></table>"


def _dropped(d: ReportData) -> str:
    """Why rows were dropped, most frequent reason first (ten at most, the rest summed)."""
    inv = {str(k): int(v) for k, v in (d.invalid_counts or {}).items() if v is not None and not _isnan(v)}
    if not inv:
        return f'<p class="note">{_int(d.rows_dropped)} row(s) dropped; no reasons recorded.</p>' \
            if d.rows_dropped else ""
    top = sorted(inv.items(), key=lambda kv: (-kv[1], kv[0]))
    rows = []
    for key, n in top[:10]:
        col, sep, reason = key.rpartition(":")
        if not sep:
            col, reason = key, ""
        rows.append([f"<code>{_e(col)}</code>", _e(reason), _int(n)])
    if len(top) > 10:
        rest = top[10:]
        rows.append([f"<em>{len(rest)} other reason(s)</em>", "", _int(sum(n for _, n in rest))])
    return ("<h3>Why rows were dropped</h3>" + _table(["column", "reason", "rows"], rows, "num-last")
            + '<p class="note">A row can be invalid for several reasons, so the counts can '
              "add up to more than the rows dropped.</p>")


def _gates(d: ReportData) -> str:
    failures = [str(f) for f in (d.gate_failures or [])]
    configured = [str(g) for g in (d.gates_configured or [])]
    if not (failures or configured):
        return ""
    out = ["<h3>Quality gates</h3>"]
    if failures:
        out.append('<ul class="failures">' + "".join(f"<li>{_e(f)}</li>" for f in failures) + "</ul>")
    if configured:
        out.append('<p>Configured: ' + ", ".join(f"<code>{_e(g)}</code>" for g in configured) + "</p>")
    return "".join(out)


def _metrics_table(d: ReportData) -> str:
    mets = {str(k): v for k, v in (d.metrics or {}).items()}
    if not mets:
        return ""
    order = [m for m in _METRIC_HINTS if m in mets] + sorted(m for m in mets if m not in _METRIC_HINTS)
    rows = [[f"<code>{_e(m)}</code>", _num(mets[m]), _e(_METRIC_HINTS.get(m, ""))] for m in order]
    return "<h3>Run metrics (K-means)</h3>" + _table(["metric", "value", "reading"], rows)


def _stage_times(d: ReportData) -> str:
    """Wall time per stage, each with its share of the run's total as a bar."""
    stages = [(str(k), float(v)) for k, v in (d.stage_seconds or {}).items() if v is not None]
    if not stages:
        return ""
    total = float(d.seconds) if d.seconds and math.isfinite(float(d.seconds)) and d.seconds > 0 \
        else sum(v for _, v in stages)
    rows = []
    for name, s in stages:
        share = s / total if total > 0 else 0.0
        w = max(0.0, min(100.0, 100 * share))
        rows.append([_e(name), _e(_secs(s)), _pct(share), f'<span class="bar" style="width:{w:.1f}%"></span>'])
    rows.append((' class="total"', ["<strong>total</strong>", f"<strong>{_e(_secs(total))}</strong>",
                                     "100.0%", ""]))
    return "<h3>Wall time per stage</h3>" + _table(["stage", "time", "share", ""], rows, "stages")


def _clusters_frame(d: ReportData) -> pd.DataFrame:
    c = d.clusters.copy()
    c["cluster_id"] = c["cluster_id"].astype(np.int64)
    c["size"] = pd.to_numeric(c["size"], errors="coerce").fillna(0).astype(np.int64)
    if "share" not in c or c["share"].isna().all():
        tot = c["size"].sum()
        c["share"] = c["size"] / tot if tot else 0.0
    if "description" not in c:
        c["description"] = None
    return c.sort_values("cluster_id").reset_index(drop=True)


def _largest(d: ReportData) -> Optional[set]:
    """The ids of the :data:`MAX_DRAWN` largest clusters, or None when every cluster is drawn."""
    c = _clusters_frame(d)
    if len(c) <= MAX_DRAWN:
        return None
    return {int(v) for v in c.sort_values(["size", "cluster_id"], ascending=[False, True])["cluster_id"][:MAX_DRAWN]}


def _sizes(d: ReportData, colors: dict) -> str:
    c = full = _clusters_frame(d)
    top = _largest(d)
    if top is not None:
        c = c[c["cluster_id"].isin(top)].reset_index(drop=True)
    k = len(c)
    fig = _new_figure(7.0, float(np.clip(0.32 * k + 1.4, 2.6, 14.0)))
    ax = fig.add_subplot()
    y = np.arange(k)
    ax.barh(y, c["size"], color=[colors[i] for i in c["cluster_id"]], edgecolor="none", height=0.75)
    ax.set_yticks(y, [f"cluster {i}" for i in c["cluster_id"]])
    ax.invert_yaxis()
    biggest = max(1, int(c["size"].max()))
    for yi, (n, s) in enumerate(zip(c["size"], c["share"])):
        ax.text(n, yi, f"  {n:,} ({_pct(s)})", va="center", ha="left", fontsize=9, color=_INK)
    ax.set_xlim(0, biggest * 1.3)
    what = f"k = {k}" if top is None else f"the {k} largest of k = {len(full)}"
    _style(ax, f"Cluster sizes ({what}, {int(full['size'].sum()):,} rows)", "rows", "")
    img = _img(fig, "Horizontal bar chart of cluster sizes")
    c = full
    rows = []
    central = "exemplar_ids" in c and c["exemplar_ids"].notna().any()
    for i, (cid, n, s, desc) in enumerate(zip(c["cluster_id"], c["size"], c["share"], c["description"])):
        text = "—" if desc is None or (isinstance(desc, float) and math.isnan(desc)) else _e(desc)
        col = colors[int(cid)]
        cells = [_swatch(col, f"cluster {int(cid)}"), str(int(cid)), _int(n), _pct(s), text]
        if central:
            ex = c["exemplar_ids"].iloc[i]
            cells.append("—" if ex is None or (isinstance(ex, float) and math.isnan(ex)) else
                         _e(", ".join(str(v) for v in list(ex))))
        rows.append((f' data-cluster="{int(cid)}" data-color="{_e(col)}"', cells))
    head = ["", "cluster", "rows", "share", "description"] + (["most central rows (ids)"] if central else [])
    table = _table(head, rows, "clusters")
    return "<h2>Cluster sizes</h2>" + f'<figure>{img}</figure>' + table


def _projection_points(d: ReportData) -> tuple[np.ndarray, Optional[np.ndarray], np.ndarray, int]:
    """The sample's first two model-space coordinates (padded to two), subsampled, finite ones
    only, with their clusters (None: unknown) and density-noise flags, and the sample's size."""
    pts = np.asarray(d.sample_points, dtype=np.float64)
    if pts.ndim == 1:
        pts = pts.reshape(-1, 1)
    if pts.shape[1] < 2:
        pts = np.column_stack([pts, np.zeros((len(pts), 2 - pts.shape[1]))])
    pts = pts[:, :2]
    n_all = len(pts)
    lab = _arr(d.sample_cluster)
    noise = _arr(d.sample_noise)
    lab = lab.astype(np.int64) if lab is not None and len(lab) == n_all else None
    noise = noise.astype(bool) if noise is not None and len(noise) == n_all else np.zeros(n_all, bool)
    idx = _subsample(n_all)
    pts, noise = pts[idx], noise[idx]
    lab = lab[idx] if lab is not None else None
    finite = np.isfinite(pts).all(axis=1)
    return pts[finite], (lab[finite] if lab is not None else None), noise[finite], n_all


def _projection(d: ReportData, colors: dict) -> str:
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D

    pts, lab, noise, n_all = _projection_points(d)
    n = len(pts)
    fig = _new_figure(7.0, 4.6)
    ax = fig.add_subplot()
    size = float(np.clip(30000.0 / max(n, 1), 3.0, 24.0))
    keep = ~noise
    order = np.random.default_rng(1).permutation(int(keep.sum()))  # no cluster painted last
    P = pts[keep][order]
    if lab is not None:
        L = lab[keep][order]
        ids, inv = np.unique(L, return_inverse=True)
        rgba = np.array([to_rgba(colors.get(int(i), _INK)) for i in ids]).reshape(-1, 4)
        face = rgba[inv] if len(L) else np.zeros((0, 4))
    else:
        face = np.tile(to_rgba(_LINE), (len(P), 1))
    ax.scatter(P[:, 0], P[:, 1], c=face, s=size, alpha=0.75, linewidths=0, rasterized=True)
    n_noise = int(noise.sum())
    if n_noise:
        Q = pts[noise]
        ax.scatter(Q[:, 0], Q[:, 1], marker="x", c=NOISE_COLOR, s=size * 1.3, linewidths=0.8,
                   alpha=0.9, rasterized=True, zorder=3)
    handles = []
    present = [] if lab is None else sorted({int(i) for i in np.unique(lab)} & set(colors))
    if len(present) <= 20:
        handles += [Line2D([], [], ls="none", marker="o", ms=7, color=colors[c], label=f"cluster {c}")
                    for c in present]
    if n_noise:
        handles.append(Line2D([], [], ls="none", marker="x", ms=7, mew=1.2, color=NOISE_COLOR,
                              label="noise (density)"))
    n_ell = _draw_centroids(ax, d, colors, handles)
    ax.set_aspect("equal", adjustable="datalim")
    shown = f"{n:,}" + (f" of {n_all:,}" if n < n_all else "")
    _style(ax, f"Sample in the first two model-space components ({shown} points)",
           "component 1", "component 2")
    if handles:
        fig.legend(handles=handles, loc="outside right upper", fontsize=9, frameon=False,
                   ncol=1 if len(handles) <= 14 else 2)
    img = _img(fig, "Scatter plot of the sample in the first two components, coloured by cluster")
    note = (f'<p class="note">{_int(n_noise)} point(s) ({_pct(n_noise / n if n else 0)}) of the sample are '
            f"noise for the density pass (grey crosses).</p>") if n_noise else ""
    if n_ell:
        note += (f'<p class="note mixture-ellipses">{_int(n_ell)} Gaussian mixture components drawn as ellipses: '
                 "each component's two-standard-deviation contour in this plane (dashed).</p>")
    extra = (f'<li>{_swatch(NOISE_COLOR, "noise")}noise</li>' if n_noise else "")
    return ("<h2>2-D projection of a sample</h2>" + f"<figure>{img}</figure>"
            + (_legend_html(present, colors, extra) if present else "") + note)


def _draw_centroids(ax, d: ReportData, colors: dict, handles: list) -> int:
    """The centroids (the largest clusters' when there are many) with their ids, and a Gaussian
    mixture's ellipses; adds the legend's handle. Returns how many ellipses were drawn."""
    from matplotlib.lines import Line2D

    C = _arr(d.centroids_2d)
    if C is None or C.ndim != 2 or C.shape[1] < 2 or not len(C):
        return 0
    # row i of centroids_2d is clusters.cluster_id[i], in the frame's own order
    raw_ids = [int(v) for v in d.clusters["cluster_id"]] if _has_rows(d.clusters) else []
    m = min(len(C), len(raw_ids))
    top = _largest(d)
    drawn = [i for i in range(m) if math.isfinite(float(C[i, 0])) and math.isfinite(float(C[i, 1]))
             and (top is None or raw_ids[i] in top)]
    if drawn:
        cols = [colors.get(raw_ids[i], _INK) for i in drawn]
        ax.scatter(C[drawn, 0], C[drawn, 1], s=340, c=cols, edgecolors="black", linewidths=1.3, zorder=5)
    for i, col in zip(drawn, cols if drawn else []):
        ax.text(float(C[i, 0]), float(C[i, 1]), str(raw_ids[i]), ha="center", va="center", fontsize=9,
                fontweight="bold", color=_text_on(col), zorder=6)
    handles.append(Line2D([], [], ls="none", marker="o", ms=12, mfc="white", mec="black",
                          mew=1.3, label="centroid (id)"))
    return _draw_ellipses(ax, C, _arr(d.ellipses_2d), drawn, raw_ids, colors)


def _draw_ellipses(ax, C: np.ndarray, E: Optional[np.ndarray], drawn: list, raw_ids: list, colors: dict) -> int:
    """A mixture component's 2-sd contour around each drawn centroid (``E``: its covariance in the
    plane); returns how many were drawn."""
    from matplotlib.patches import Ellipse

    if E is None or E.ndim != 3 or len(E) < len(C):
        return 0
    n = 0
    for i in drawn:
        vals, vecs = np.linalg.eigh(np.asarray(E[i], dtype=np.float64))
        if not np.isfinite(vals).all():
            continue
        w, h = 4.0 * np.sqrt(np.maximum(vals[::-1], 0.0))  # 2 sd either side, the major axis first
        angle = math.degrees(math.atan2(vecs[1, 1], vecs[0, 1]))
        ax.add_patch(Ellipse((float(C[i, 0]), float(C[i, 1])), w, h, angle=angle, fill=False, lw=1.3, ls="--",
                             ec=_INK, zorder=4))  # dark: the cluster's own colour would vanish on its points
        n += 1
    return n


def _silhouette(d: ReportData, colors: dict) -> str:
    sil = np.asarray(d.sample_silhouette, dtype=np.float64).ravel()
    lab = np.asarray(d.sample_cluster).astype(np.int64).ravel()
    n_all = min(len(sil), len(lab))
    sil, lab = sil[:n_all], lab[:n_all]
    idx = _subsample(n_all)
    sil, lab = sil[idx], lab[idx]
    ok = np.isfinite(sil)
    sil, lab = sil[ok], lab[ok]
    ids = sorted(int(i) for i in np.unique(lab))
    top = _largest(d)
    if top is not None:
        ids = [i for i in ids if i in top]
    k = len(ids)
    fig = _new_figure(7.0, float(np.clip(0.28 * k + 2.8, 4.0, 12.0)))
    ax = fig.add_subplot()
    gap = max(2, int(0.012 * len(sil)))
    y0 = 0
    mids, rows = [], []
    for cid in ids:
        v = np.sort(sil[lab == cid])[::-1]  # largest on top: the classic knife shape
        col = colors.get(cid, _INK)
        y = np.arange(y0, y0 + len(v))
        ax.fill_betweenx(y, 0, v, facecolor=col, edgecolor=col, linewidth=0.4)
        mids.append(y0 + len(v) / 2)
        rows.append((f' data-cluster="{cid}"', [_swatch(col, f"cluster {cid}"), str(cid), _int(len(v)),
                                                 _num(v.mean(), 3), _pct((v < 0).mean())]))
        y0 += len(v) + gap
    mean = float(sil.mean()) if len(sil) else float("nan")
    if math.isfinite(mean):
        ax.axvline(mean, color="black", ls="--", lw=1.2, label=f"mean = {mean:.3f}")
        fig.legend(loc="outside right upper", fontsize=9, frameon=False)
    ax.axvline(0, color="#555555", lw=0.6)
    lo = min(-0.1, float(sil.min()) - 0.05) if len(sil) else -0.1
    ax.set_xlim(lo, 1.0)
    ax.set_ylim(max(y0, 1), -gap)  # smallest id on top, as in the sizes chart
    if k <= 40:
        ax.set_yticks(mids, [str(c) for c in ids])
    else:
        ax.set_yticks([])
    shown = "" if top is None else f"; the {k} largest clusters"
    _style(ax, f"Silhouette per point, sorted within each cluster ({len(sil):,} points{shown})",
           "silhouette coefficient", "cluster")
    img = _img(fig, "Silhouette plot: per-point silhouette sorted within each cluster")
    table = _table(["", "cluster", "points", "mean silhouette", "below 0"], rows, "clusters")
    return ("<h2>Silhouette per cluster</h2>" + f"<figure>{img}</figure>"
            + f'<p class="note">Mean silhouette of the sample: <strong>{_num(mean, 3)}</strong> '
              "(dashed line). Bars left of 0 are points closer to another cluster.</p>" + table)


def _auto_k(d: ReportData, colors: dict) -> str:
    from matplotlib.ticker import MaxNLocator

    a = d.auto_k.copy()
    a["k"] = pd.to_numeric(a["k"], errors="coerce")
    a["value"] = pd.to_numeric(a["value"], errors="coerce")
    a = a[np.isfinite(a["k"]) & np.isfinite(a["value"])]
    metrics = list(dict.fromkeys(str(m) for m in a["metric"]))
    crit = d.k_selection.partition(":")[2] if str(d.k_selection).startswith("auto") else ""
    if crit in metrics:  # the criterion first
        metrics.remove(crit)
        metrics.insert(0, crit)
    m = max(1, len(metrics))
    ncols = min(3, m)
    nrows = math.ceil(m / ncols)
    fig = _new_figure(7.0 if ncols > 1 else 5.0, max(3.0, 2.6 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, metric in zip(axes, metrics):
        s = a[a["metric"].astype(str) == metric].sort_values("k")
        s = s.groupby("k", as_index=False)["value"].mean()
        ax.plot(s["k"], s["value"], marker="o", ms=4, color=_LINE, lw=1.4)
        hit = s[s["k"] == d.k]
        ax.axvline(d.k, color=_ACCENT, ls="--", lw=1.1)
        if len(hit):
            ax.plot(hit["k"], hit["value"], marker="o", ms=10, mfc="none", mec=_ACCENT, mew=2)
        hint = _METRIC_HINTS.get(metric, "")
        hint = "higher is better" if "higher" in hint else "lower is better" if "lower" in hint else ""
        title = metric + (" [criterion]" if metric == crit else "") + (f"\n({hint})" if hint else "")
        _style(ax, title, "k", "")
        if metric == crit:
            ax.title.set_fontweight("bold")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    img = _img(fig, "Auto-k: each metric against k, the chosen k marked")
    how = _e(_k_how(d.k_selection))
    return ("<h2>Choice of k (auto-k)</h2>" + f"<figure>{img}</figure>"
            + f'<p class="note">Chosen k = <strong>{_int(d.k)}</strong> (dashed line, circled), {how}.</p>')


def _dendrogram(d: ReportData, colors: dict) -> str:
    from matplotlib.transforms import blended_transform_factory
    from scipy.cluster.hierarchy import dendrogram as scipy_dendrogram

    Z = np.asarray(d.dendrogram, dtype=np.float64)
    n = Z.shape[0] + 1
    fig = _new_figure(7.0, 4.6)
    ax = fig.add_subplot()
    # show_contracted would draw one marker per merge hidden in a contracted branch, one artist
    # each (1.8 s of the report for 5,000 rows); the "(n)" leaf labels already say what they hold.
    scipy_dendrogram(Z, truncate_mode="lastp", p=DENDROGRAM_LEAVES, ax=ax, show_contracted=False,
                     link_color_func=lambda _: "#4d4d4d", leaf_rotation=90, leaf_font_size=9)
    styles = ["--", "-.", ":", (0, (5, 2, 1, 2))]
    line_colors = ["#000000", "#444444", "#000000", "#444444"]
    trans = blended_transform_factory(ax.transAxes, ax.transData)
    drawn = []
    for i, L in enumerate(sorted({int(v) for v in (d.dendrogram_levels or [])})):
        h = dendrogram_cut_height(Z, L)
        if h is None:
            continue
        c = line_colors[i % len(line_colors)]
        ax.axhline(h, color=c, ls=styles[i % len(styles)], lw=1.4)
        ax.text(0.995, h, f"{L} clusters", transform=trans, ha="right", va="bottom", fontsize=9,
                color=c, bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1))
        drawn.append((L, h))
    shown = min(n, DENDROGRAM_LEAVES)
    _style(ax, f"Hierarchical pass: dendrogram of {n:,} sample rows (top {shown} branches)",
           "sample rows; (n) = rows under a contracted branch", "merge distance")
    img = _img(fig, "Dendrogram of the hierarchical pass, truncated, with the cut levels")
    note = ""
    if drawn:
        note = ('<p class="note">Cut levels: ' + ", ".join(
            f"{L} clusters at height {_num(h, 3)}" for L, h in drawn) + ".</p>")
    return "<h2>Dendrogram (hierarchical pass)</h2>" + f"<figure>{img}</figure>" + note


def _profiles(d: ReportData, colors: dict) -> str:
    p = d.profiles.copy()
    p = p[p["cluster_id"].notna()]
    p["cluster_id"] = p["cluster_id"].astype(np.int64)
    p["feature"] = p["feature"].astype(str)
    p["z"] = pd.to_numeric(p["z"], errors="coerce")
    features = list(dict.fromkeys(p["feature"]))
    top = _largest(d)
    ids = sorted(set(p["cluster_id"]) & (top if top is not None else set(p["cluster_id"])))
    M = (p.groupby(["cluster_id", "feature"])["z"].first().unstack("feature")
         .reindex(index=ids, columns=features).to_numpy(dtype=np.float64))
    nk, nf = M.shape
    annotate = nk * nf <= ANNOTATE_CELLS and nf <= 20
    per_col = 0.62 if annotate else 0.32
    width = float(np.clip(2.6 + per_col * nf, 6.0, 16.0))
    height = float(np.clip(0.38 * nk + 2.0, 3.0, 14.0))
    fig = _new_figure(width, height)
    sw_w = 0.22
    ax_sw, ax = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [sw_w, max(width - 3.2, 1.0)]})
    from matplotlib import colormaps
    from matplotlib.colors import to_rgb

    cmap = colormaps["RdBu_r"].with_extremes(bad="#eeeeee")
    im = ax.imshow(np.clip(M, -3, 3), cmap=cmap, vmin=-3, vmax=3, aspect="auto", interpolation="nearest")
    ax_sw.imshow(np.array([[to_rgb(colors.get(c, _INK))] for c in ids]), aspect="auto", interpolation="nearest")
    ax_sw.set_xticks([])
    ax_sw.set_yticks(range(nk), [str(c) for c in ids])
    ax_sw.tick_params(labelsize=9)
    ax_sw.set_ylabel("cluster", fontsize=10)
    for s in ax_sw.spines.values():
        s.set_visible(False)
    ax.tick_params(left=False, labelleft=False, labelsize=9)
    step = max(1, math.ceil(nf / 60))
    ax.set_xticks(range(0, nf, step), [_mpl(f) for f in features[::step]], rotation=45, ha="right",
                  rotation_mode="anchor")
    if annotate:
        for i in range(nk):
            for j in range(nf):
                z = M[i, j]
                if math.isfinite(z):
                    ax.text(j, i, f"{z:.1f}", ha="center", va="center", fontsize=9,
                            color="white" if abs(z) >= 1.8 else "black")
    ax.set_title("Cluster profiles: z-score of each feature's cluster mean"
                 + ("" if top is None else f" (the {nk} largest clusters)"), fontsize=11)
    cb = fig.colorbar(im, ax=ax, shrink=0.9, pad=0.01)
    cb.set_label("z-score (clipped at ±3)", fontsize=10)
    cb.ax.tick_params(labelsize=9)
    img = _img(fig, "Heat map of profile z-scores, clusters by features")
    return ("<h2>Cluster profiles</h2>" + f"<figure>{img}</figure>"
            + '<p class="note">Red: the cluster\'s mean is above the population mean (in population '
              "standard deviations), blue: below. Colours are clipped at ±3"
            + ("; the numbers are the unclipped z-scores" if annotate else "") + ".</p>")


_DRIFT_SERIES = (
    ("changed_share", "rows changing cluster", "share", True),
    ("centroid_shift_max", "max centroid shift", "shift", False),
    ("silhouette", "silhouette", "silhouette", False),
)


def _drift_plots(h: pd.DataFrame) -> str:
    from matplotlib.ticker import FuncFormatter

    h = h.tail(MAX_DRIFT_RUNS).reset_index(drop=True)
    series = [s for s in _DRIFT_SERIES if s[0] in h and pd.to_numeric(h[s[0]], errors="coerce").notna().any()]
    if len(h) < 2 or not series:
        return ""
    n = len(h)
    fig = _new_figure(7.0, 1.0 + 1.9 * len(series))
    axes = np.atleast_1d(fig.subplots(len(series), 1, sharex=True, squeeze=False)).ravel()
    x = np.arange(n)
    dates = [str(v) for v in (h["run_date"] if "run_date" in h else h.get("run_id", x))]
    for ax, (col, title, ylabel, is_share) in zip(axes, series):
        v = pd.to_numeric(h[col], errors="coerce").to_numpy(dtype=np.float64)
        ax.plot(x, v, marker="o", ms=4, color=_LINE, lw=1.4)
        if math.isfinite(v[-1]):
            ax.plot([x[-1]], [v[-1]], marker="o", ms=9, mfc="none", mec=_ACCENT, mew=2)
        if is_share:
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{100 * y:.0f}%"))
        _style(ax, title, "", ylabel)
        ax.grid(axis="y", color="#dddddd", lw=0.6)
    step = max(1, math.ceil(n / 12))
    ticks = list(range(0, n, step))
    if ticks[-1] != n - 1:
        ticks.append(n - 1)
    axes[-1].set_xticks(ticks, [_mpl(dates[i]) for i in ticks], rotation=30, ha="right",
                        rotation_mode="anchor")
    axes[-1].set_xlabel("run (date); circled: this run", fontsize=10)
    img = _img(fig, "Drift over the last runs: rows changing cluster, max centroid shift, silhouette")
    return f"<figure>{img}</figure>"


def _drift(d: ReportData, colors: dict) -> str:
    out = ["<h2>Drift against previous runs</h2>"]
    h = d.drift_history
    if _has_rows(h) and len(h) >= 2:
        out.append(_drift_plots(h))
        t = h.tail(10)
        rows = []
        for _, r in t.iterrows():
            rows.append([_e(r.get("run_date", "")), f"<code>{_e(r.get('run_id', ''))}</code>",
                         _pct(r.get("changed_share")), _num(r.get("centroid_shift_max"), 3),
                         _num(r.get("silhouette"), 3)])
        out.append(f"<h3>Last {len(t)} runs</h3>")
        out.append(_table(["run date", "run id", "rows changing cluster", "max centroid shift",
                           "silhouette"], rows))
    lin = d.lineage
    if _links_to_previous(lin):
        rows = []
        recs = lin.to_dict("records")  # in the table's order: tonight's ids, then the retired/merged
        extra_cols = [c for c in ("size", "previous_size") if c in lin]
        for r in recs:
            cid, pid = _opt_int(r.get("cluster_id")), _opt_int(r.get("previous_cluster_id"))
            sw = _swatch(colors.get(cid), f"cluster {cid}") if cid is not None else ""
            cells = [sw + ("—" if cid is None else str(cid)), "—" if pid is None else str(pid),
                     _e(r.get("event", "")), _num(r.get("distance"), 3)]
            cells += [_int(r.get(c)) if _opt_int(r.get(c)) is not None else "—" for c in extra_cols]
            attrs = f' data-cluster="{cid}"' if cid is not None else ""
            rows.append((attrs, cells))
        out.append("<h3>Lineage of this run's clusters</h3>")
        out.append(_table(["cluster", "previous cluster", "event", "distance"]
                          + [c.replace("_", " ") for c in extra_cols], rows, "lineage"))
        out.append('<p class="note">persist: matched to a previous cluster; split/new: no match '
                   "(split from a matched cluster, or new); merge/retired: a previous cluster with "
                   "no match. Distances in radii of the previous cluster.</p>")
    return "".join(out)


# ----------------------------------------------------------------------------------------------
# document

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;font-size:15px;
color:#222;max-width:1040px;margin:0 auto;padding:0 18px 40px;line-height:1.45;background:#fff}
h1{font-size:1.7em;margin:.6em 0 .1em}h2{font-size:1.3em;border-bottom:2px solid #ddd;padding-bottom:.2em;
margin-top:1.6em}h3{font-size:1.05em;margin:1.2em 0 .4em}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #eee;padding:6px 0;font-size:.9em;z-index:1}
nav a{margin-right:1em;color:#1f3b73;text-decoration:none}nav a:hover{text-decoration:underline}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em}
th,td{border-bottom:1px solid #e4e4e4;padding:3px 10px 3px 6px;text-align:left;vertical-align:top}
thead th{background:#f4f5f7;font-weight:600}
table.facts th{background:none;width:11em;color:#555;font-weight:600}
table.stages td:last-child{width:220px}
.bar{display:inline-block;height:.8em;background:#1f3b73;vertical-align:middle;min-width:1px}
tr.total td{border-top:2px solid #bbb}
.swatch{display:inline-block;width:.95em;height:.95em;border-radius:2px;margin-right:.4em;
vertical-align:-.12em;border:1px solid rgba(0,0,0,.25)}
ul.legend{list-style:none;padding:0;margin:.3em 0;display:flex;flex-wrap:wrap;gap:.3em 1em;font-size:.9em}
.legend-title{color:#555}
figure{margin:.6em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
.pass{color:#1a7f37;font-weight:700}.fail{color:#b42318;font-weight:700}.muted{color:#777}
ul.failures li{color:#b42318}
.note{color:#555;font-size:.9em}.error{color:#b42318}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em}
footer{margin-top:2.5em;color:#888;font-size:.85em}
"""

_TITLES = {"header": "Summary", "sizes": "Sizes", "projection": "Projection", "silhouette": "Silhouette",
           "auto-k": "Auto-k", "dendrogram": "Dendrogram", "profiles": "Profiles", "drift": "Drift",
           "groups": "Near-duplicates"}


def _groups(d: ReportData, colors: dict) -> str:
    """The near-duplicate groups (docs/grouping.md): how many rows have near-duplicates, the
    group-size distribution, and the largest groups with their members' similarity."""
    g = d.grouping
    c = g.get("counts", {})
    bins = [b for b in g["bins"] if b[2]]
    labels = [str(lo) if hi == lo else (f"{lo}-{hi}" if hi else f"{lo}+") for lo, hi, _, _ in bins]
    fig = _new_figure(7.0, 3.2)
    ax = fig.add_subplot()
    x = np.arange(len(bins))
    ax.bar(x, [b[3] for b in bins], color=_palette_color(0), edgecolor="none")
    ax.set_xticks(x, labels)
    ax.set_yscale("log")
    _style(ax, "Rows by the size of their group (log scale)", "group size", "rows")
    img = _img(fig, "Bar chart of rows by group size")
    head = (f"<p>{_int(c.get('groups', 0))} groups of 2 or more rows hold {_int(c.get('grouped_rows', 0))} rows "
            f"(the largest {_int(c.get('largest_group', 0))}); {_int(c.get('singletons', 0))} rows have no "
            f"near-duplicate. {g['similarity'].capitalize()} at or above {_num(g['threshold'], 3)} on "
            f"<code>{_e(g['column'])}</code>: {_int(c.get('candidate_pairs', 0))} candidate pairs from "
            f"{g['bands']} bands of {g['rows']} hashes, {_int(c.get('verified_pairs', 0))} verified; a pair at the "
            f"threshold is found with probability {_num(g.get('recall_at_threshold'), 3)}.</p>")
    table = _table(["group size", "groups", "rows"], [[_e(lab), _int(b[2]), _int(b[3])] for lab, b in zip(labels, bins)])
    ex = [[_int(e["group_id"]), _int(e["size"]),
           _e(", ".join(f"{m[0]} ({m[1]:.3f})" for m in e["members"]) + (" ..." if e["size"] > len(e["members"]) else ""))]
          for e in g.get("examples", [])]
    examples = ("<h3>The largest groups</h3><p>Members (similarity to the group's representative, most similar "
                "first):</p>" + _table(["group", "rows", "members"], ex)) if ex else ""
    return "<h2>Near-duplicate groups</h2>" + head + f"<figure>{img}</figure>" + table + examples


def _links_to_previous(lin) -> bool:
    """Whether lineage rows refer to a previous run (a first run's rows are all ``new``, with no
    previous cluster: there is nothing to drift from)."""
    if not _has_rows(lin):
        return False
    for col in ("previous_cluster_id", "previous_run_id"):
        if col in lin and any(v is not None and not _isnan(v) for v in lin[col]):
            return True
    return False


def _present(d: ReportData) -> list[tuple[str, Callable]]:
    """(section id, builder) of the sections whose data exists, in order."""
    out: list[tuple[str, Callable]] = [("header", _header)]
    if _has_rows(d.clusters):
        out.append(("sizes", _sizes))
    pts = _arr(d.sample_points)
    if pts is not None and pts.size and len(pts):
        out.append(("projection", _projection))
    sil, lab = _arr(d.sample_silhouette), _arr(d.sample_cluster)
    if sil is not None and lab is not None and sil.size and lab.size:
        out.append(("silhouette", _silhouette))
    if _has_rows(d.auto_k):
        out.append(("auto-k", _auto_k))
    Z = _arr(d.dendrogram)
    if Z is not None and Z.ndim == 2 and Z.shape[0] >= 1 and Z.shape[1] == 4:
        out.append(("dendrogram", _dendrogram))
    if _has_rows(d.profiles):
        out.append(("profiles", _profiles))
    if (_has_rows(d.drift_history) and len(d.drift_history) >= 2) or _links_to_previous(d.lineage):
        out.append(("drift", _drift))
    if d.grouping and d.grouping.get("bins"):
        out.append(("groups", _groups))
    return out


def _all_ids(d: ReportData) -> set:
    ids: set = set()
    if _has_rows(d.clusters):
        ids |= {int(v) for v in d.clusters["cluster_id"] if not _isnan(v)}
    if d.sample_cluster is not None:
        ids |= {int(v) for v in np.unique(np.asarray(d.sample_cluster))}
    if _has_rows(d.profiles):
        ids |= {int(v) for v in d.profiles["cluster_id"] if v is not None and not _isnan(v)}
    return ids


def render(data: ReportData) -> str:
    """The report of one run as one self-contained HTML document (UTF-8 text)."""
    colors = cluster_colors(_all_ids(data))
    sections = []
    for sid, build in _present(data):
        try:
            body = build(data, colors)
        except Exception as exc:  # one broken chart must not cost the whole report
            log.warning("report section %s of run %s could not be drawn: %s", sid, data.run_id, exc,
                        exc_info=True)
            body = (f"<h2>{_e(_TITLES[sid])}</h2>"
                    f'<p class="error">This section could not be drawn: {_e(type(exc).__name__)}: {_e(exc)}</p>')
        sections.append((sid, body))
    nav = "".join(f'<a href="#{sid}">{_e(_TITLES[sid])}</a>' for sid, _ in sections)
    try:
        from clusterlake import __version__ as version
    except Exception:  # pragma: no cover
        version = ""
    title = f"{data.job_name} · {data.run_date} · run {data.run_id}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="clusterlake">',
        f"<title>{_e(title)} · clusterlake report</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<nav>{nav}</nav>",
    ]
    parts += [f'<section id="{sid}">{body}</section>' for sid, body in sections]
    parts.append(f"<footer>clusterlake {_e(version)} · report of run <code>{_e(data.run_id)}</code>"
                 f" · job {_e(data.job_name)}</footer>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
