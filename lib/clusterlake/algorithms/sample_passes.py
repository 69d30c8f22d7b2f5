"""The density and hierarchical passes of the job (issue 5): fit on a sample, measure on all rows.

1. :func:`fit_passes` (driver): one uniform sample of the model space, DBSCAN/HDBSCAN on its first
   ``density.sample_size`` rows and agglomerative clustering on its first
   ``hierarchical.sample_size`` rows (the run's one draw is in random order, so every prefix is
   uniform); :func:`sampled_silhouettes`: the sampled silhouettes of K-means and of the passes, in
   one distance pass over the quality sample, of which the passes' samples are prefixes.
2. The assignment labels every row: the engine's tasks, as they write the ``assignments`` files
   (:mod:`clusterlake.algorithms.assignment_files`), count (cluster, pass label, label) per pass.
3. :func:`full_pass_metrics`: from those counts: noise share and cluster count over all rows, ARI between each pass and K-means, ARI/NMI
   against the label column. Noise (-1) counts as one more label in the ARI, as scikit-learn
   would count it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from clusterlake.io.contract.metrics import Metric
from clusterlake.kernels import density as Dk
from clusterlake.kernels import hierarchy as Hk
from clusterlake.kernels.metrics import adjusted_rand_from_contingency, normalized_mutual_info_from_contingency

log = logging.getLogger(__name__)


@dataclass
class PassFit:
    density: Optional["Dk.DensityModel"] = None
    hierarchy: Optional["Hk.HierarchyModel"] = None
    metrics: list[Metric] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def pass_distances(cfg, moments, prep) -> dict:
    """The distance of each enabled pass (``density``, ``hierarchical``: a
    :class:`~clusterlake.kernels.distances.Metric`, None for euclidean), from
    :meth:`~clusterlake.config.JobConfig.pass_distance` and the model space (mahalanobis)."""
    from clusterlake.algorithms.model_distance import distance_named

    out = {}
    for section in ("density", "hierarchical"):
        name, p = cfg.pass_distance(section)
        on = getattr(cfg, section).enabled
        out[section] = distance_named(name, p, moments, prep, f"{section}.metric") if on and name != "euclidean" else None
    return out


def fit_passes(cfg, Z: np.ndarray, distances: Optional[dict] = None) -> PassFit:
    """Fit the enabled passes on the model-space sample ``Z`` (the first rows of the run's draw),
    each under its distance (``distances``, from :func:`pass_distances`; None: euclidean).

    With both passes on, the hierarchy is fitted on a second thread while HDBSCAN runs: the
    spanning tree's steps and the linkage are each single-threaded, so the driver's second core
    does the linkage (0.3 s of 5,000 rows, measured: 2.2 s -> 2.0 s for both passes), when both
    fit the driver's memory budget at once (:func:`_together`); else one after the other."""
    out = PassFit()
    dm, hm = (distances or {}).get("density"), (distances or {}).get("hierarchical")
    if cfg.density.enabled and cfg.hierarchical.enabled and _together(cfg, Z):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="hierarchy") as pool:
            hier = pool.submit(_fit_hierarchy, cfg.hierarchical, Z, hm)
            _fit_density(cfg, Z, out, dm)
            out.hierarchy, out.seconds["hierarchy_fit"] = hier.result()
    else:
        if cfg.density.enabled:
            _fit_density(cfg, Z, out, dm)
        if cfg.hierarchical.enabled:
            out.hierarchy, out.seconds["hierarchy_fit"] = _fit_hierarchy(cfg.hierarchical, Z, hm)
    return out


def _together(cfg, Z: np.ndarray) -> bool:
    """Whether HDBSCAN and the linkage fit the driver's budget at the same time (each was checked
    alone by :func:`clusterlake.memory.check_sample_passes`; DBSCAN's neighbourhoods, checked as
    they are known, always run alone)."""
    from clusterlake.memory import density_bytes, density_min_samples, driver_budget_bytes, hierarchy_bytes

    d, h = cfg.density, cfg.hierarchical
    if d.algorithm != "hdbscan":
        return False
    need = density_bytes(min(d.sample_size, len(Z)), Z.shape[1], density_min_samples(d)) + \
        hierarchy_bytes(min(h.sample_size, len(Z)), Z.shape[1], h.linkage, len(h.levels),
                        cfg.pass_distance("hierarchical")[0])
    return need <= driver_budget_bytes(cfg.job.driver_memory_gb)[0]


def _fit_hierarchy(h, Z: np.ndarray, metric=None) -> tuple["Hk.HierarchyModel", float]:
    S = Z[: h.sample_size]
    log.info("hierarchical pass: %s linkage of %d sampled rows under %s, levels %s", h.linkage, len(S),
             metric.describe() if metric is not None else "euclidean", h.levels)
    t0 = time.time()
    model = Hk.fit_sample(S, h.linkage, h.levels, metric)
    seconds = round(time.time() - t0, 3)
    log.info("hierarchical pass: linkage and cuts in %.1f s", seconds)
    return model, seconds


def _fit_density(cfg, Z: np.ndarray, out: PassFit, metric=None) -> None:
    from clusterlake.memory import check_dbscan_neighbourhoods

    d = cfg.density
    S = Z[: d.sample_size]
    mcs = d.min_cluster_size or (max(d.min_samples, len(S) // 1000) if d.min_samples else None)
    how = (f"eps={d.eps}" if d.eps else "eps from the k-distance knee") if d.algorithm == "dbscan" else \
        ("min_samples and min_cluster_size chosen by DBCV" if d.chooses_parameters else f"min_cluster_size={mcs}")
    log.info("density pass: %s on %d sampled rows under %s (min_samples=%s, %s)", d.algorithm, len(S),
             metric.describe() if metric is not None else "euclidean",
             "chosen" if d.chooses_parameters else d.min_samples or Dk.DEFAULT_MIN_SAMPLES, how)
    t0 = time.time()
    out.density = m = Dk.fit_sample(
        S, d.algorithm, d.eps, d.min_samples, mcs if d.algorithm == "hdbscan" else None,
        before_dbscan=lambda nb: check_dbscan_neighbourhoods(len(S), nb, S.shape[1],
                                                             d.min_samples or Dk.DEFAULT_MIN_SAMPLES,
                                                             cfg.job.driver_memory_gb),
        metric=metric,
    )
    out.seconds["density_fit"] = round(time.time() - t0, 3)
    k = m.n_clusters
    noise = float((m.sample_labels < 0).mean())
    log.info("density pass: %d clusters, %.1f%% of the sample is noise, %d core points%s (%.1f s)", k,
             100 * noise, len(m.core_points), f", eps={m.eps:.4g}" if m.eps else "", out.seconds["density_fit"])
    if k == 0:
        log.warning("density pass: the sample has no cluster, every row will be noise; %s",
                    "raise density.eps or lower density.min_samples" if d.algorithm == "dbscan"
                    else "lower density.min_samples / density.min_cluster_size")
    ms = [Metric("sample", "noise_share", noise, len(S), d.algorithm, k),
          Metric("sample", "core_points", float(len(m.core_points)), len(S), d.algorithm, k)]
    if m.eps is not None:
        ms.append(Metric("sample", "eps", float(m.eps), len(S), d.algorithm, k))
    if d.algorithm == "hdbscan":
        ms.append(Metric("sample", "reach_factor", float(m.reach_factor), len(S), d.algorithm, k))
    if m.choice is not None:
        ms += _choice_metrics(m, d.algorithm, k)
    out.metrics += ms


def _choice_metrics(m, algorithm: str, k: int) -> list[Metric]:
    """The chosen ``min_samples`` / ``min_cluster_size`` and their DBCV, logged with the grid."""
    c = m.choice
    for cand in c["candidates"]:
        log.info("density pass: min_samples=%d, min_cluster_size=%d on %d rows: %d clusters, DBCV %.4f",
                 cand["min_samples"], cand["min_cluster_size"], c["grid_rows"], cand["n_clusters"], cand["dbcv"])
    log.info("density pass: chose min_samples=%d, min_cluster_size=%d (DBCV %.4f on %d rows)", m.min_samples,
             m.min_cluster_size, c["dbcv"], c["scored_rows"])
    out = [Metric("sample", "min_samples", float(m.min_samples), c["grid_rows"], algorithm, k),
           Metric("sample", "min_cluster_size", float(m.min_cluster_size), c["grid_rows"], algorithm, k)]
    if np.isnan(c["dbcv"]):
        log.warning("density pass: DBCV is undefined for every candidate (fewer than two clusters, or none "
                    "separated from the others); the former defaults stand")
    else:
        out.append(Metric("sample", "dbcv", float(c["dbcv"]), c["scored_rows"], algorithm, k))
    return out


def sampled_silhouettes(Zs: np.ndarray, kmeans_pos: np.ndarray, fit: PassFit, Zp: Optional[np.ndarray] = None,
                        density_algorithm: str = "hdbscan") -> tuple[Optional[Metric], list[Metric]]:
    """The sampled silhouettes of the run: K-means' on the quality sample ``Zs`` (positions
    ``kmeans_pos``), the density pass's on its sample's non-noise rows (the first ``len(Zs)`` of
    them) and each hierarchy level's on the first ``len(Zs)`` rows of its sample.

    ``Zs`` and the passes' samples are prefixes of the run's one draw, so every labeling whose
    rows lie within ``Zs`` is scored in the same distance pass (a row outside a labeling is -1);
    only a density sample longer than ``Zs`` (``density.sample_size`` above
    ``quality.sample_size``) takes a pass of its own, on ``Zp``, the passes' sample, and a pass
    under another distance than euclidean (``density.metric``, ``hierarchical.metric``) is scored
    apart, under its distance. Returns
    ``(K-means' metric or None, the passes' metrics)``; an undefined silhouette is left out with a
    warning.
    """
    from clusterlake.kernels.silhouette import silhouette_scores

    n = len(Zs)
    shared = [("kmeans", None, np.unique(kmeans_pos, return_inverse=True)[1])]
    own = []  # ([(algorithm, k)], rows, [labels], distance): labelings of the same rows, scored apart
    if fit.density is not None:
        m = fit.density
        lab, k = m.sample_labels, m.n_clusters
        if len(lab) <= n and m.metric is None:
            shared.append((density_algorithm, k, np.r_[lab, np.full(n - len(lab), -1)]))
        else:
            keep = np.flatnonzero(lab >= 0)[:n]
            own.append(([(density_algorithm, k)], (Zp if len(lab) > n else Zs)[keep], [lab[keep]], m.metric))
    if fit.hierarchy is not None:
        hm = fit.hierarchy
        labs = [np.unique(np.asarray(hm.sample_labels[lv])[:n], return_inverse=True)[1] for lv in hm.levels]
        if hm.metric is None:
            shared += [("hierarchical", lv, np.r_[lab, np.full(n - len(lab), -1)]) for lv, lab in zip(hm.levels, labs)]
        else:  # every level in one distance pass under the tree's distance
            own.append(([("hierarchical", lv) for lv in hm.levels], Zs[:len(labs[0])], labs, hm.metric))
    values = list(silhouette_scores(Zs, [lab for _, _, lab in shared]))
    rows = [int((lab >= 0).sum()) for _, _, lab in shared]
    named = [(a, k) for a, k, _ in shared]
    for names, X, labs, dist in own:
        values += _silhouettes(X, labs, dist)
        rows += [len(X)] * len(labs)
        named += names
    metrics: list[Optional[Metric]] = []
    for (algorithm, k), value, n_rows in zip(named, values, rows):
        if np.isnan(value):
            log.warning("%s silhouette undefined on a sample of %d rows (fewer than 2 clusters, or one per row)",
                        "K-means'" if algorithm == "kmeans" else f"the {algorithm} pass's", n_rows)
            metrics.append(None)
        elif algorithm == "kmeans":
            metrics.append(Metric("sample", "silhouette", float(value), n_rows))
        else:
            metrics.append(Metric("sample", "silhouette", float(value), n_rows, algorithm, k))
    return metrics[0], [m_ for m_ in metrics[1:] if m_ is not None]


def _silhouettes(X: np.ndarray, labelings: list, dist) -> list[float]:
    """The mean silhouette of each labeling of the rows ``X`` under ``dist`` (None: euclidean);
    NaN where undefined."""
    if dist is None:
        from clusterlake.kernels.silhouette import silhouette_scores

        return [float(v) for v in silhouette_scores(X, [np.unique(lab, return_inverse=True)[1] for lab in labelings])]
    from clusterlake.kernels.kmedoids import silhouette_samples_many

    return [float("nan") if s_ is None else float(s_.mean()) for s_ in silhouette_samples_many(X, labelings, dist)]


# ----------------------------------------------------------------------------------------------
# metrics over all rows


def _contingency(pairs: dict, rows_key, cols_key) -> np.ndarray:
    rk = sorted({rows_key(p) for p in pairs}, key=str)
    ck = sorted({cols_key(p) for p in pairs}, key=str)
    ri, ci = {v: i for i, v in enumerate(rk)}, {v: i for i, v in enumerate(ck)}
    C = np.zeros((len(rk), len(ck)), dtype=np.int64)
    for p, c in pairs.items():
        C[ri[rows_key(p)], ci[cols_key(p)]] += c
    return C


def _agreement(counts: dict, algorithm: str, k: int, has_label: bool) -> list[Metric]:
    """``counts``: (kmeans cluster, pass label, label or None) -> rows."""
    n = int(sum(counts.values()))
    out = [Metric("full", "ari_vs_kmeans", float(adjusted_rand_from_contingency(
        _contingency(counts, lambda p: p[1], lambda p: p[0]))), n, algorithm, k)]
    if has_label:
        C = _contingency(counts, lambda p: p[2], lambda p: p[1])
        out.append(Metric("full", "ari", float(adjusted_rand_from_contingency(C)), n, algorithm, k))
        out.append(Metric("full", "nmi", float(normalized_mutual_info_from_contingency(C)), n, algorithm, k))
    return out


def full_pass_metrics(counts: dict, fit: PassFit, algorithm: Optional[str], has_label: bool) -> list[Metric]:
    """Metrics of the passes over all rows, from the counts the tasks that wrote the assignments
    returned (:func:`clusterlake.algorithms.assignment_files.merge_pass_counts`:
    ``{"density": {(cluster id, pass label, label text or None): rows}, "levels": {level: {...}}}``)."""
    out: list[Metric] = []
    if fit.density is not None:
        dc = counts["density"]
        n = int(sum(dc.values()))
        noise = sum(c for (_, lab, _), c in dc.items() if lab < 0)
        k = len({lab for (_, lab, _) in dc if lab >= 0})
        out += [Metric("full", "noise_share", noise / max(n, 1), n, algorithm, k),
                Metric("full", "n_clusters", float(k), n, algorithm, k)]
        if k == 0:
            log.warning("density pass: all %d rows are noise", n)
        out += _agreement(dc, algorithm, k, has_label)
    if fit.hierarchy is not None:
        for lv in fit.hierarchy.levels:
            lc = counts["levels"].get(int(lv), {})
            n = int(sum(lc.values()))
            per = {}
            for (_, lab, _), c in lc.items():
                per[lab] = per.get(lab, 0) + c
            sizes = np.array(list(per.values()), dtype=np.float64)
            out += [Metric("full", "n_clusters", float(len(per)), n, "hierarchical", lv),
                    Metric("full", "min_cluster_share", float(sizes.min() / n), n, "hierarchical", lv),
                    Metric("full", "max_cluster_share", float(sizes.max() / n), n, "hierarchical", lv)]
            out += _agreement(lc, "hierarchical", lv, has_label)
    return out


# ----------------------------------------------------------------------------------------------
# the model artifact (JSON + .npy, no pickle)


def to_artifact(fit: PassFit, cfg) -> tuple[dict, dict]:
    """``(passes, extras)`` for :class:`~clusterlake.io.model_artifact.ModelArtifact`: the pass
    settings and figures (JSON) and the arrays that extend the passes to new rows."""
    passes: dict = {}
    extras: dict = {}
    if fit.density is not None:
        m = fit.density
        passes["density"] = {"algorithm": m.algorithm, "eps": m.eps, "min_samples": m.min_samples,
                             "n_clusters": m.n_clusters, "sample_rows": int(len(m.sample_labels)),
                             "reach_factor": m.reach_factor, "min_cluster_size": m.min_cluster_size,
                             **_metric_spec(m.metric), **_choice_spec(m.choice)}
        extras.update(density_core_points=m.core_points, density_core_labels=m.core_labels.astype(np.int32),
                      density_core_reach=m.core_reach)
    if fit.hierarchy is not None:
        h = fit.hierarchy
        passes["hierarchical"] = {"linkage": h.method, "levels": list(h.levels),
                                  "sample_rows": int(len(h.sample_points)), **_metric_spec(h.metric)}
        extras["hier_linkage"] = h.linkage
        extras["hier_sample_labels"] = np.stack([h.sample_labels[lv] for lv in h.levels], axis=1).astype(np.int32)
        extras["hier_sample_points"] = h.sample_points
        for lv in h.levels if h.method == "ward" else ():
            extras[f"hier_centroids_{lv}"] = h.centroids[lv]
    return passes, extras


def _metric_spec(m) -> dict:
    """``{"metric": spec}`` of a pass's distance for model.json (nothing for euclidean)."""
    from clusterlake.kernels.distances import to_spec

    return {"metric": to_spec(m)} if m is not None else {}


def _choice_spec(choice: Optional[dict]) -> dict:
    """``{"choice": ...}`` of HDBSCAN's chosen parameters for model.json (NaN as null)."""
    if choice is None:
        return {}
    fix = lambda v: None if isinstance(v, float) and np.isnan(v) else v  # noqa: E731
    return {"choice": {"by": "dbcv", "dbcv": fix(choice["dbcv"]), "grid_rows": choice["grid_rows"],
                       "scored_rows": choice["scored_rows"],
                       "candidates": [{k: fix(v) for k, v in c.items()} for c in choice["candidates"]]}}
