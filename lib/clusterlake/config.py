"""Typed job configuration, loaded from YAML and validated once.

The config is data: it is parsed with ``yaml.safe_load`` and validated by pydantic models that
forbid unknown keys; nothing in it is evaluated or imported. Every error names the dotted key path
(``kmeans.k``), what was expected and what was found.

Overrides from the command line (``--set kmeans.k=12``) are parsed with the same YAML rules for
the value (``12`` is an int, ``false`` a bool, ``[4, 16]`` a list) and must name a key that exists.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from clusterlake.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v: Any, info: Any) -> Any:
        # lax mode would read `max_iter: true` as 1; a bool is only valid where a bool is expected
        if isinstance(v, bool):
            ann = str(cls.model_fields[info.field_name].annotation)
            if "bool" not in ann and ("int" in ann or "float" in ann):
                raise ValueError("expected a number, not a boolean")
        return v


class JobSection(_Section):
    name: str = Field("clusterlake-job", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    run_date: Optional[_dt.date] = None
    """The logical date of the run (partition key). Defaults to today in UTC."""
    driver_memory_gb: Optional[float] = Field(None, gt=0.0)
    """Memory the driver's Python process may use for the sample passes (density, hierarchical);
    null = half of the memory of the driver's machine or container. A pass whose sample would not
    fit is refused before anything is read."""
    task_memory_gb: Optional[float] = Field(None, gt=0.0)
    """Memory each engine task may keep its rows in (the input's features, the model space);
    an array past it is spilled whole to a memory-mapped file on the executor's local disk and
    the run goes on, slower, instead of failing. null = ``spark.executor.pyspark.memory`` less a
    quarter when set, else half of the executor machine's or container's memory shared by its
    tasks. ``spark.executor.pyspark.memory`` also caps the worker's address space, memory-mapped
    files included: a spill past that cap stops the task with an error saying so."""


class InputSection(_Section):
    path: str = Field(..., min_length=1)
    format: Literal["parquet", "delta"] = "parquet"
    id_column: str = Field(..., min_length=1)
    feature_columns: Optional[list[str]] = None
    vector_column: Optional[str] = None
    """One column of embeddings (``array<float|double>`` or a dense Spark ML ``Vector``) whose
    elements are features named ``<column>[0]``, ``<column>[1]``, ... With it, the named
    features are only those in ``feature_columns`` (none when null). A null vector, one of
    another length or holding a null/NaN/inf is an invalid row (``invalid_rows``)."""
    profile_columns: Optional[list[str]] = None
    """Numeric columns profiled per cluster but not clustered on (e.g. price, order counts): their
    per-cluster mean, std and z-score join the ``profiles`` table and the descriptions. Null, NaN
    and +-inf values are left out of their column's statistics, never dropping a row (the nightly
    job; the update job ignores them)."""
    vector_size: Optional[int] = Field(None, ge=1)
    """The length every vector must have; null: the most common length among the first 1,000
    non-null vectors of the input (logged)."""
    label_column: Optional[str] = None
    weight_column: Optional[str] = None
    invalid_rows: Literal["fail", "drop"] = "fail"
    duplicate_ids: Literal["fail"] = "fail"
    """The only sound policy (:func:`clusterlake.io.reader.duplicate_ids` says why); kept so that
    configs naming it stay valid and ``runs.config_json`` keeps its shape."""
    read_in_tasks: bool = True
    """The nightly job's engine tasks read a plain parquet input themselves (pyarrow), skipping
    Spark's scan and its JVM -> Arrow conversion; the executors must reach ``path`` (a shared or
    object-store path; any path in local mode). False, or an input Spark must read (Delta, hive
    partition columns, types differing across files): Spark reads it."""
    version: Optional[int] = Field(None, ge=0)
    """Delta input only: the table version to read (time travel). null: the version current when
    the run starts. Either way ``runs.input_version`` records the version read, so a re-run of a
    date can pin the same rows (``--set input.version=<that version>``)."""
    allow_feature_change: bool = False
    """The feature columns are a contract across runs: a run whose features differ from the
    previous model's fails (exit 2) naming the columns gained and lost, unless this is true; the
    accepted change is recorded in ``runs.feature_change`` and every cluster gets a new id."""

    @field_validator("feature_columns")
    @classmethod
    def _features_nonempty_unique(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        if v is None:
            return v
        if len(v) == 0:
            raise ValueError("must list at least one column, or be null to infer the numeric columns")
        dup = sorted({c for c in v if v.count(c) > 1})
        if dup:
            raise ValueError(f"lists {dup} more than once")
        return v

    @model_validator(mode="after")
    def _version_needs_delta(self) -> "InputSection":
        if self.version is not None and self.format != "delta":
            raise ValueError(f"version={self.version} pins a Delta table's snapshot, but format is {self.format!r}; "
                             "remove input.version or set input.format: delta")
        return self

    @model_validator(mode="after")
    def _vector_xor_features(self) -> "InputSection":
        special = [c for c in (self.id_column, self.label_column, self.weight_column) if c]
        if self.vector_column is not None:
            if self.vector_column in special:
                raise ValueError(f"vector_column '{self.vector_column}' is also the id/label/weight column")
            if self.feature_columns and self.vector_column in self.feature_columns:
                raise ValueError(f"feature_columns must not list the vector_column '{self.vector_column}': "
                                 "its elements are features already")
        elif self.vector_size is not None:
            raise ValueError("vector_size needs input.vector_column")
        if self.profile_columns is not None:
            taken = set(special) | set(self.feature_columns or []) | {self.vector_column}
            clash = [c for c in self.profile_columns if c in taken]
            if clash:
                raise ValueError(f"profile_columns {clash} are already the id/label/weight/vector or feature "
                                 "columns; list only attributes that are not clustered on")
            if len(set(self.profile_columns)) != len(self.profile_columns):
                raise ValueError("profile_columns lists a column more than once")
        if self.feature_columns:
            clash = [c for c in special if c in self.feature_columns]
            if clash:
                raise ValueError(
                    f"feature_columns must not contain the id/label/weight column(s) {clash}"
                )
        return self


class PCASection(_Section):
    enabled: bool = True
    components: Optional[int] = Field(None, ge=1)
    variance: Optional[float] = Field(0.95, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _one_target(self) -> "PCASection":
        if self.enabled and self.components is None and self.variance is None:
            raise ValueError("set either components or variance when pca is enabled")
        return self


class PreprocessSection(_Section):
    scaling: Literal["standard", "none"] = "standard"
    normalize: bool = False
    pca: PCASection = PCASection()


class AutoKSection(_Section):
    """``kmeans.k: auto`` (issue 6): k is chosen on a sample, then fitted on all rows."""

    min_k: int = Field(2, ge=2)
    max_k: int = Field(20, ge=2, le=500)
    criterion: Optional[Literal["silhouette", "calinski_harabasz", "davies_bouldin", "elbow", "dynamic", "bic",
                                "aic"]] = None
    """silhouette / calinski_harabasz (highest), davies_bouldin (lowest), elbow (knee of the
    inertia curve): a sweep of k over [min_k, max_k]. dynamic: k grows, each new centre the
    farthest row within the ``percentile`` of distances, until the smallest cluster holds less
    than ``min_cluster_share`` of the rows. bic / aic (lowest; Gaussian mixtures only): a mixture
    fitted at each k. null: silhouette, or bic for ``algorithm: gmm``."""
    sample_size: int = Field(50_000, ge=100, le=1_000_000)
    min_cluster_share: float = Field(0.02, gt=0.0, lt=0.5)
    """dynamic: the smallest cluster share at which k stops growing."""
    percentile: float = Field(95.0, gt=50.0, le=100.0)
    """dynamic: a new centre is the farthest row within this percentile of distances."""

    @model_validator(mode="after")
    def _range(self) -> "AutoKSection":
        if self.min_k > self.max_k:
            raise ValueError(f"kmeans.auto.min_k={self.min_k} is larger than kmeans.auto.max_k={self.max_k}")
        return self


class KMedoidsSection(_Section):
    """``kmeans.algorithm: kmedoids`` (issue 23): FasterPAM on a sample, every row assigned to its
    nearest medoid under ``kmeans.distance``."""

    sample_size: int = Field(10_000, ge=100, le=50_000)
    """Rows of the run's sample the medoids are chosen from. Their pairwise distances are held in
    the driver's memory: 8 n^2 bytes (0.8 GB at 10,000; float32 above 20,000 rows: 10 GB at
    50,000)."""


class GMMSection(_Section):
    """``kmeans.algorithm: gmm`` (issue 24): a Gaussian mixture fitted by EM on every row on the
    engine, started from the K-means fit; rows go to their most probable component."""

    covariance: Literal["full", "diag", "tied", "spherical"] = "full"
    """Each component's covariance (scikit-learn's ``covariance_type``): full (any ellipsoid),
    diag (axis-aligned), tied (one full matrix shared), spherical (one variance each)."""
    reg_covar: float = Field(1e-6, gt=0.0)
    """Added to the covariances' diagonals (scikit-learn's; > 0): keeps every one positive
    definite, also where a feature is constant within a component (0/1 or one-hot features)."""
    tol: float = Field(1e-3, gt=0.0)
    """EM stops when the mean log-likelihood per row changes by less than this (scikit-learn's)."""
    max_iter: int = Field(100, ge=1, le=10_000)
    """EM iterations at most (each one pass over the resident rows)."""


DISTANCES = ("euclidean", "cosine", "manhattan", "chebyshev", "minkowski", "hamming", "jaccard", "mahalanobis")
"""``kmeans.distance``: K-means and bisecting take the first two; k-medoids any
(:mod:`clusterlake.kernels.distances` defines them)."""


class KMeansSection(_Section):
    enabled: bool = True
    """false: no K-means (and no numeric features needed): the job only groups near-duplicates
    (``grouping``), which must then be enabled."""
    algorithm: Literal["kmeans", "bisecting", "kmedoids", "gmm"] = "kmeans"
    """kmeans (Lloyd), bisecting, kmedoids (any distance, docs/kmedoids.md), gmm (a Gaussian
    mixture: soft assignments, docs/mixtures.md)."""
    k: Union[int, Literal["auto"]] = 8
    auto: AutoKSection = AutoKSection()
    distance: Literal["euclidean", "cosine", "manhattan", "chebyshev", "minkowski", "hamming", "jaccard",
                      "mahalanobis"] = "euclidean"
    """In the model space (scaled, PCA). K-means and bisecting: euclidean or cosine (spherical).
    k-medoids: any; ``minkowski`` with ``minkowski_p``; ``mahalanobis`` with the covariance of
    every row; ``jaccard`` and ``hamming`` compare 0/1 features (scaling off, PCA off)."""
    minkowski_p: Optional[float] = Field(None, ge=1.0)
    kmedoids: KMedoidsSection = KMedoidsSection()
    gmm: GMMSection = GMMSection()
    init: Literal["kmeans||", "kmeans++", "random", "previous"] = "previous"
    """``previous`` (the default): warm start from the last run's model under output.path, so
    night after night the fit starts where yesterday's ended; kmeans|| when there is none (the
    first run), or its features or k differ. Bisecting and the spark-mllib engine cannot warm
    start: for them the default is kmeans||."""
    init_steps: int = Field(5, ge=1, le=20)  # MLlib: 2; 5 finds the good optimum of the sample for 5 of 5 seeds, 2 for 3 of 5
    max_iter: int = Field(50, ge=0, le=10_000)
    """Lloyd iterations at most. 0: seeding only (k-means|| or k-means++, then one pass that
    assigns every row to its seed): the "approximate clustering" of very large tables, at a
    measured quality cost (docs/scaling.md); the kmeans algorithm on our engine only."""
    tol: float = Field(1.0e-4, ge=0.0)
    """Relative, as in scikit-learn: stop when the summed squared centre shift is at most tol x
    the mean per-dimension variance of the model space."""
    batch_size: Optional[int] = Field(None, ge=100)
    """Mini-batch K-means: steps of this many rows drawn from all rows (Sculley's update, as
    scikit-learn's ``MiniBatchKMeans``) instead of Lloyd's full passes, for tables too large for
    many passes; ``max_iter`` then counts epochs, and the fit also stops when the smoothed batch
    inertia has not improved for 10 steps (or a step moves the centres less than ``tol``). The
    ``runs`` table's ``iterations`` counts the steps. null: full passes. Its measured quality cost
    is in docs/scaling.md; the kmeans algorithm on our engine only."""
    seed: int = 42
    engine: Literal["clusterlake", "spark-mllib"] = "clusterlake"
    """``clusterlake``: our engine (one barrier stage, data cached in the tasks). ``spark-mllib``:
    Spark's KMeans, for comparison (kmeans algorithm, euclidean, kmeans||/random init only)."""
    num_tasks: Optional[int] = Field(None, ge=1)
    """Barrier tasks of the clusterlake engine; default: every free task slot."""
    recovery_wait_seconds: float = Field(30.0, ge=0.0, le=3600.0)
    """When a barrier task is lost (executor or worker died), how long the engine waits for the
    lost task slots to come back (YARN/Kubernetes replace executors) before it continues the fit
    on fewer tasks."""

    @model_validator(mode="after")
    def _engine_supports(self) -> "KMeansSection":
        if self.init == "previous" and "init" not in self.model_fields_set and (
                self.engine == "spark-mllib" or self.algorithm == "bisecting"):
            self.__dict__["init"] = "kmeans||"  # the default where a warm start cannot apply
        if self.engine == "spark-mllib":
            bad = [f"{k}={v}" for k, v, ok in (
                ("kmeans.algorithm", self.algorithm, self.algorithm == "kmeans"),
                ("kmeans.distance", self.distance, self.distance == "euclidean"),
                ("kmeans.init", self.init, self.init in ("kmeans||", "random")),
            ) if not ok]
            if bad:
                raise ValueError(f"kmeans.engine=spark-mllib does not support {', '.join(bad)}; "
                                 "use kmeans.engine: clusterlake")
        if self.batch_size is not None and (self.algorithm != "kmeans" or self.engine != "clusterlake"
                                            or self.max_iter == 0):
            raise ValueError("kmeans.batch_size (mini-batch K-means) needs kmeans.algorithm: kmeans, "
                             "kmeans.engine: clusterlake and kmeans.max_iter >= 1; remove kmeans.batch_size "
                             "for the other settings")
        if self.max_iter == 0 and (self.algorithm != "kmeans" or self.engine != "clusterlake"):
            raise ValueError("kmeans.max_iter=0 (seeding only) needs kmeans.algorithm: kmeans and "
                             "kmeans.engine: clusterlake")
        if self.max_iter == 0 and self.init == "previous":
            if "init" in self.model_fields_set:
                raise ValueError("kmeans.max_iter=0 (seeding only) with kmeans.init=previous would keep "
                                 "yesterday's centroids unchanged forever; use kmeans.init: kmeans|| (or "
                                 "kmeans++), or max_iter >= 1 for a warm start")
            self.__dict__["init"] = "kmeans||"  # seeding only means seeding
        self._gmm_settings()
        self._kmedoids_settings()
        if self.algorithm == "bisecting" and self.init != "kmeans||":
            raise ValueError(f"kmeans.init={self.init} does not apply to kmeans.algorithm=bisecting "
                             "(each split starts from 2-means++); remove kmeans.init")
        return self

    def _kmedoids_settings(self) -> None:
        """What k-medoids needs and what only it accepts (the distances K-means cannot minimise)."""
        if (self.distance == "minkowski") != (self.minkowski_p is not None):
            raise ValueError("kmeans.minkowski_p goes with kmeans.distance: minkowski (and it needs one: p >= 1)")
        if self.algorithm != "kmedoids":
            if self.distance not in ("euclidean", "cosine"):
                raise ValueError(f"kmeans.distance={self.distance} needs kmeans.algorithm: kmedoids (K-means' mean "
                                 "minimises squared euclidean distances only, or cosine on the unit sphere)")
            return
        # spark-mllib, batch_size and max_iter=0 were refused above (they need algorithm: kmeans);
        # kmeans.init does not apply: k-medoids seeds by k-medoids++ on its sample, every night
        # (a config written for K-means, init: previous included, runs unchanged)
        if self.k == "auto" and self.auto.criterion != "silhouette":
            raise ValueError(f"kmeans.auto.criterion={self.auto.criterion} is a K-means criterion; k-medoids "
                             "chooses k by the silhouette under its distance: remove kmeans.auto.criterion")

    def _gmm_settings(self) -> None:
        """The criterion's default, and what only mixtures take (bic/aic) or what they do not (cosine)."""
        gmm = self.algorithm == "gmm"
        if self.auto.criterion is None:
            self.auto.__dict__["criterion"] = "bic" if gmm else "silhouette"
        if not gmm and self.auto.criterion in ("bic", "aic"):
            raise ValueError(f"kmeans.auto.criterion={self.auto.criterion} scores Gaussian mixtures: it needs "
                             "kmeans.algorithm: gmm (K-means: silhouette, calinski_harabasz, davies_bouldin, elbow, "
                             "dynamic)")
        if gmm and self.k == "auto" and self.auto.criterion not in ("bic", "aic"):
            raise ValueError(f"kmeans.auto.criterion={self.auto.criterion} is a K-means criterion; a Gaussian "
                             "mixture chooses its number of components by bic or aic")
        if gmm and self.distance != "euclidean":
            raise ValueError(f"kmeans.distance={self.distance} does not apply to kmeans.algorithm=gmm (a mixture "
                             "assigns rows by posterior probability); remove kmeans.distance")

    @field_validator("k")
    @classmethod
    def _k_range(cls, v: Union[int, str]) -> Union[int, str]:
        if isinstance(v, int) and not isinstance(v, bool) and v < 2:
            raise ValueError("must be an integer >= 2 or 'auto'")
        return v


def _check_minkowski_p(section: str, metric: Optional[str], p: Optional[float]) -> None:
    if (metric == "minkowski") != (p is not None):
        raise ValueError(f"{section}.minkowski_p goes with {section}.metric: minkowski (and it needs one: p >= 1)")


class DensitySection(_Section):
    """The density pass (issue 5): DBSCAN or HDBSCAN on a uniform sample of the model space,
    extended to every row (nearest core point within its reach, else noise)."""

    enabled: bool = False
    algorithm: Literal["dbscan", "hdbscan"] = "hdbscan"
    sample_size: int = Field(100_000, ge=100, le=2_000_000)
    eps: Optional[float] = Field(None, gt=0.0)
    """DBSCAN's radius in the model space; null = the knee of the k-distance curve of the sample
    (k = min_samples). HDBSCAN has no eps."""
    min_samples: Optional[int] = Field(None, ge=1, le=10_000)
    """Neighbours that make a point core. null: for HDBSCAN with ``min_cluster_size`` null too,
    both are chosen on the sample by the density-based validity score DBCV over a small grid
    (docs/passes.md; the choice and its score in ``metrics``); else 10."""
    min_cluster_size: Optional[int] = Field(None, ge=2)
    """HDBSCAN's smallest cluster (sample rows); null = max(min_samples, sample rows / 1000), or
    chosen with ``min_samples`` when that is null too."""
    metric: Optional[Literal["euclidean", "cosine", "manhattan", "chebyshev", "minkowski", "hamming", "jaccard",
                             "mahalanobis"]] = None
    """The pass's distance between model-space rows (eps, core distances, the tree and the
    extension are all measured under it); any of ``kmeans.distance``'s. null: the partition's
    (``kmeans.distance`` for k-medoids; else euclidean: under cosine K-means the rows are unit
    vectors, on which euclidean ranks as cosine does)."""
    minkowski_p: Optional[float] = Field(None, ge=1.0)
    """The p of ``metric: minkowski``."""

    @property
    def chooses_parameters(self) -> bool:
        """HDBSCAN with neither ``min_samples`` nor ``min_cluster_size`` set: both chosen by DBCV."""
        return self.algorithm == "hdbscan" and self.min_samples is None and self.min_cluster_size is None

    @model_validator(mode="after")
    def _metric_p(self) -> "DensitySection":
        _check_minkowski_p("density", self.metric, self.minkowski_p)
        return self

    @model_validator(mode="after")
    def _algorithm_keys(self) -> "DensitySection":
        if self.algorithm == "hdbscan" and self.eps is not None:
            raise ValueError("density.eps applies to density.algorithm=dbscan only "
                             "(HDBSCAN finds its own density levels); remove density.eps")
        if self.algorithm == "dbscan" and self.min_cluster_size is not None:
            raise ValueError("density.min_cluster_size applies to density.algorithm=hdbscan only; "
                             "remove it or use min_samples")
        if self.min_samples is not None and self.min_samples > self.sample_size:
            raise ValueError(f"density.min_samples={self.min_samples} is larger than "
                             f"density.sample_size={self.sample_size}")
        return self


class HierarchicalSection(_Section):
    """The hierarchical pass (issue 5): agglomerative clustering of a sample, cut at ``levels``
    numbers of clusters, extended to every row."""

    enabled: bool = False
    linkage: Literal["ward", "average", "complete", "single"] = "ward"
    sample_size: int = Field(20_000, ge=10, le=200_000)
    levels: list[int] = [4, 16]
    """Numbers of clusters at which the tree is cut, coarse to fine (each >= 2)."""
    metric: Optional[Literal["euclidean", "cosine", "manhattan", "chebyshev", "minkowski", "hamming", "jaccard",
                             "mahalanobis"]] = None
    """The tree's distance between model-space rows (and the extension's nearest sampled row);
    ward: euclidean or mahalanobis only. null: the partition's (``kmeans.distance`` for k-medoids,
    except under ward, which stays euclidean unless it is mahalanobis; else euclidean)."""
    minkowski_p: Optional[float] = Field(None, ge=1.0)
    """The p of ``metric: minkowski``."""

    @model_validator(mode="after")
    def _metric_fits_linkage(self) -> "HierarchicalSection":
        _check_minkowski_p("hierarchical", self.metric, self.minkowski_p)
        if self.linkage == "ward" and self.metric not in (None, "euclidean", "mahalanobis"):
            raise ValueError(f"hierarchical.linkage=ward minimises squared euclidean distances; under "
                             f"hierarchical.metric={self.metric} use linkage average, complete or single")
        return self

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("must list at least one number of clusters, e.g. [4, 16]")
        if any(isinstance(x, bool) or x < 2 for x in v):
            raise ValueError("every level must be a number of clusters >= 2")
        if len(set(v)) != len(v):
            raise ValueError(f"lists {sorted({x for x in v if v.count(x) > 1})} more than once")
        return sorted(v)

    @model_validator(mode="after")
    def _levels_fit_sample(self) -> "HierarchicalSection":
        if self.levels[-1] > self.sample_size:
            raise ValueError(f"the finest level {self.levels[-1]} has more clusters than "
                             f"hierarchical.sample_size={self.sample_size} has rows")
        return self


class GroupingSection(_Section):
    """Near-duplicate groups by locality-sensitive hashing (issue 22; docs/grouping.md): MinHash
    signatures of a set column (Jaccard) or random-hyperplane signatures of a vector column
    (cosine), banded into buckets, every candidate pair verified with the exact similarity, the
    pairs at or above ``threshold`` linked, and the connected components written as the
    ``groups`` table."""

    enabled: bool = False
    column: Optional[str] = None
    """The set column (``array<string|int|long>``: duplicates ignored) or the vector column
    (``array<float|double>`` or an ML vector) to group on."""
    similarity: Literal["jaccard", "cosine"] = "jaccard"
    """jaccard for a set column, cosine for a vector column."""
    threshold: float = Field(0.7, gt=0.0, le=1.0)
    """Pairs whose exact similarity is at or above it are linked."""
    recall: float = Field(0.95, gt=0.0, lt=1.0)
    """The probability that a pair exactly at ``threshold`` becomes a candidate (the banding's
    S-curve there); the bands and rows per band are derived from it (docs/grouping.md)."""
    bands: Optional[int] = Field(None, ge=1, le=1024)
    """Overrides the derived banding: bands x rows hash functions; give both or neither."""
    rows: Optional[int] = Field(None, ge=1, le=64)
    max_hashes: int = Field(128, ge=1, le=1024)
    """Hash functions the derived banding may use at most (bands x rows)."""
    max_bucket: int = Field(1000, ge=2, le=100_000)
    """A bucket holding more rows than this (e.g. many identical sets) yields a star around its
    smallest id plus a chain through its sorted ids (2m pairs), not all m(m-1)/2 pairs."""
    seed: int = 42
    index_rows: int = Field(2_000_000, ge=0)
    """Rows kept in the model's band index for near-duplicate queries of new items (serving:
    ``ClusterCatalog.similar`` / ``POST /similar`` with the grouping column, or
    ``DuplicateIndex``); a larger table indexes a uniform sample of this many rows. 0: no index."""

    @model_validator(mode="after")
    def _complete(self) -> "GroupingSection":
        if self.enabled and not self.column:
            raise ValueError("grouping.enabled needs grouping.column: the set or vector column to group on")
        if (self.bands is None) != (self.rows is None):
            raise ValueError("grouping.bands and grouping.rows override the derived banding together: "
                             "give both or neither")
        return self


class GatesSection(_Section):
    """Checked after the metrics, before anything is committed (issue 6); null = no gate."""

    min_silhouette: Optional[float] = Field(None, ge=-1.0, le=1.0)
    min_cluster_share: Optional[float] = Field(None, ge=0.0, le=1.0)
    max_cluster_share: Optional[float] = Field(None, ge=0.0, le=1.0)
    max_noise_share: Optional[float] = Field(None, ge=0.0, le=1.0)
    """The density pass's noise share over all rows (needs density.enabled)."""


class DriftSection(_Section):
    """Thresholds on the drift against the previous run (scope ``drift`` in metrics; issue 7),
    checked like the gates before anything is committed; null = no threshold. See docs/drift.md."""

    max_centroid_shift: Optional[float] = Field(1.0, gt=0.0)
    """Largest shift of a matched cluster's centroid, in rms radii of the previous cluster."""
    max_psi: Optional[float] = Field(0.25, gt=0.0)
    """Population stability index of the cluster shares (0.1-0.25: some change, >0.25: major)."""
    max_changed_share: Optional[float] = Field(0.25, ge=0.0, le=1.0)
    """Share of ids present on both nights whose cluster id changed."""
    max_silhouette_drop: Optional[float] = Field(0.1, ge=0.0, le=2.0)
    """Largest allowed fall of the sampled silhouette since the previous run."""
    on_failure: Literal["warn", "fail"] = "warn"
    """warn: commit and record the drift in runs.gate_failures (the default: a moving population
    is news, not an error); fail: exit 3 before anything is committed."""


class QualitySection(_Section):
    sample_size: int = Field(20_000, ge=100, le=200_000)
    exemplars: int = Field(5, ge=0, le=20)
    """Per cluster, the ids of this many rows nearest its centroid (``centroids.exemplar_ids``, the
    report, and the descriptions of clusters of vectors); 0: none."""
    gates: GatesSection = GatesSection()
    on_gate_failure: Literal["warn", "fail"] = "warn"
    """fail: exit non-zero before the run is committed, so readers keep the previous run."""
    drift: DriftSection = DriftSection()


class LineageSection(_Section):
    """Stable cluster ids night over night (docs/drift.md)."""

    max_distance: float = Field(1.0, gt=0.0, le=100.0)
    """Tonight's centroid keeps a previous cluster's id only within this many rms radii (model
    space) of that cluster's centroid; beyond, it is a new cluster with a fresh id."""
    min_overlap: float = Field(0.2, gt=0.0, le=1.0)
    """A split or merge needs at least this share of the previous cluster's rows (joined on the
    id column) to move into the other cluster."""


class OutputSection(_Section):
    path: str = Field(..., min_length=1)
    format: Literal["delta", "parquet"] = "delta"
    delta_writer: Literal["auto", "delta-rs", "spark"] = "auto"
    """Who commits Delta tables: Spark's Delta writer when its jars are on the classpath (auto),
    else delta-rs (the ``deltalake`` package) committing the parquet files Spark wrote."""
    storage_options: dict[str, str] = {}
    """Passed to delta-rs for object stores (e.g. AWS_REGION); unused for local paths."""


class ReportSection(_Section):
    """The per-run HTML report (``<output.path>/reports/<run_id>.html``; ``clusterlake report``)."""

    enabled: bool = True
    sample_size: int = Field(5000, ge=100, le=50_000)
    """Points of the metrics sample drawn in the projection and the silhouette plot (kept in the
    model artifact so the report can be rebuilt from the output alone)."""
    history_runs: int = Field(14, ge=2, le=365)
    """Past runs shown in the drift section."""


class ServingSection(_Section):
    """What the nightly job lays out for real-time serving (``clusterlake serve``, docs/serving.md)."""

    members_per_cluster: Optional[int] = Field(10_000, ge=0)
    """Rows kept per cluster, with their model-space coordinates, under the model's ``members/``
    folder (one parquet file per cluster) for similar-item queries: a uniform sample (by a hash of
    the id) of about this many rows of each cluster. ``null``: every row; 0: none (no similar items)."""
    max_members: Optional[int] = Field(200_000, ge=1)
    """At most about this many member rows in all: the driver gathers and writes them. With many
    clusters the number per cluster shrinks to ``max_members / k`` (k=1,000: 200 each), never
    below one row a cluster. Incremental updates (``clusterlake update``) add their new rows'
    share at the same rate. ``null``: no cap (``members_per_cluster`` alone decides)."""


class StreamSection(_Section):
    """``jobs/assign_stream.py``: assign parquet files dropped in a landing folder with the latest
    model, each file exactly once (docs/streaming.md)."""

    landing_path: Optional[str] = None
    """The folder new parquet files land in (required by the stream job)."""
    checkpoint_path: Optional[str] = None
    """Spark's checkpoint (which files were processed); default
    ``<output.path>/_clusterlake/checkpoints/assign_stream``. Keep it as long as the output."""
    table: str = Field("assignments_stream", pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    max_files_per_trigger: int = Field(100, ge=1)
    trigger: str = Field("available_now", pattern=r"^(available_now|[1-9][0-9]* (seconds?|minutes?|hours?))$")
    """``available_now``: process every file there, then stop (scheduled micro-batch runs, tests);
    or a processing-time interval such as ``30 seconds`` (a long-running stream)."""
    schema_ddl: Optional[str] = None
    """Explicit schema of the landing files as Spark DDL (``"customer_id long, age double, ..."``);
    default: the id and feature columns' types in ``input.path``'s schema."""


class SparkSection(_Section):
    master: str = "local[*]"
    app_name: Optional[str] = None
    conf: dict[str, Union[str, int, float, bool]] = {}
    delta_jars: bool = True
    """A session started here (local mode) loads Delta Lake's Spark jars that ``make setup``
    fetched into ``<virtualenv>/jars`` (``$CLUSTERLAKE_JARS`` elsewhere), with Delta's SQL
    extension; then ``output.delta_writer: auto`` commits with Spark's Delta writer. Ignored under
    spark-submit (the cluster's ``--jars``/``--packages`` decide) and when ``conf`` sets
    ``spark.jars`` or ``spark.jars.packages``."""


class JobConfig(_Section):
    """The whole job config; see ``conf/local.yaml`` for a commented example."""

    job: JobSection = JobSection()
    input: InputSection
    preprocess: PreprocessSection = PreprocessSection()
    kmeans: KMeansSection = KMeansSection()
    density: DensitySection = DensitySection()
    hierarchical: HierarchicalSection = HierarchicalSection()
    grouping: GroupingSection = GroupingSection()
    quality: QualitySection = QualitySection()
    lineage: LineageSection = LineageSection()
    output: OutputSection
    report: ReportSection = ReportSection()
    serving: ServingSection = ServingSection()
    stream: StreamSection = StreamSection()
    spark: SparkSection = SparkSection()

    @model_validator(mode="after")
    def _supported(self) -> "JobConfig":
        # Options in the config contract that later versions implement. Refuse them loudly
        # rather than silently running something else.
        unsupported = {
            "preprocess.normalize": self.preprocess.normalize,
        }
        if not self.kmeans.enabled:
            needs = [k for k, on in (("density.enabled", self.density.enabled),
                                     ("hierarchical.enabled", self.hierarchical.enabled)) if on]
            if needs:
                raise ValueError(f"{', '.join(needs)} needs K-means (the passes run in its model space): "
                                 "set kmeans.enabled: true or turn them off")
            if not self.grouping.enabled:
                raise ValueError("kmeans.enabled: false leaves the job nothing to do: enable grouping "
                                 "(grouping.enabled: true, grouping.column) or K-means")
        raw = [(key, name) for key, name, on in (
            ("kmeans.distance", self.kmeans.distance, True),
            ("density.metric", self.pass_distance("density")[0], self.density.enabled),
            ("hierarchical.metric", self.pass_distance("hierarchical")[0], self.hierarchical.enabled))
            if on and name in ("jaccard", "hamming")]
        if self.kmeans.distance == "cosine":
            whitened = [k for k, on in (("density.metric", self.density.enabled), ("hierarchical.metric",
                                                                                    self.hierarchical.enabled))
                        if on and self.pass_distance(k.split(".")[0])[0] == "mahalanobis"]
            if whitened:
                raise ValueError(f"{whitened[0]}=mahalanobis with kmeans.distance=cosine: the model space's rows are "
                                 "unit vectors, whose covariance the run does not measure; use cosine or euclidean")
        if raw and (self.preprocess.scaling != "none" or self.preprocess.pca.enabled):
            key, name = raw[0]
            raise ValueError(f"{key}={name} compares the features' values as they are "
                             "(0/1 tags, categories): set preprocess.scaling: none and preprocess.pca.enabled: false")
        if self.kmeans.algorithm == "kmedoids" and self.input.weight_column:
            raise ValueError("kmeans.algorithm=kmedoids takes no row weights (its sample is uniform and its loss "
                             "unweighted): remove input.weight_column, or use kmeans.algorithm: kmeans")
        if self.grouping.enabled and self.grouping.column in (self.input.id_column, self.input.label_column,
                                                              self.input.weight_column):
            raise ValueError(f"grouping.column '{self.grouping.column}' is the id/label/weight column")
        if self.quality.gates.max_noise_share is not None and not self.density.enabled:
            raise ValueError("quality.gates.max_noise_share needs the density pass: set density.enabled: true "
                             "or remove the gate")
        g = self.quality.gates
        if g.min_cluster_share is not None and g.max_cluster_share is not None and g.min_cluster_share > g.max_cluster_share:
            raise ValueError("quality.gates.min_cluster_share is larger than quality.gates.max_cluster_share")
        bad = [k for k, v in unsupported.items() if v]
        if bad:
            raise ValueError(
                f"not supported by clusterlake {_version()} yet: "
                + ", ".join(f"{k}={_shown(self, k)}" for k in bad)
                + "; remove these keys or set them to their defaults"
            )
        return self

    def pass_distance(self, section: str) -> tuple[str, Optional[float]]:
        """``(distance, minkowski p)`` of the ``density`` or ``hierarchical`` pass: its ``metric``
        if set, else the partition's (k-medoids' ``kmeans.distance``; Ward stays euclidean unless
        that is mahalanobis), else euclidean."""
        s = getattr(self, section)
        if s.metric is not None:
            return s.metric, s.minkowski_p
        km = self.kmeans
        if km.algorithm == "kmedoids" and not (section == "hierarchical" and s.linkage == "ward"
                                               and km.distance not in ("euclidean", "mahalanobis")):
            return km.distance, km.minkowski_p
        return "euclidean", None

    @property
    def resolved_run_date(self) -> _dt.date:
        return self.job.run_date or _dt.datetime.now(_dt.timezone.utc).date()

    def to_json(self, redact: bool = False) -> str:
        """The config as JSON. ``redact=True`` (what the ``runs`` table stores) replaces every
        ``output.storage_options`` value and every ``spark.conf`` value whose key looks like a
        credential with ``"***"``."""
        data = self.model_dump(mode="json")
        if redact:
            data["output"]["storage_options"] = {k: "***" for k in data["output"]["storage_options"]}
            data["spark"]["conf"] = {
                k: ("***" if _SECRET_KEY.search(k) else v) for k, v in data["spark"]["conf"].items()
            }
        return json.dumps(data, sort_keys=True)


_SECRET_KEY = re.compile(r"secret|password|passwd|token|credential|access\.?key|private|sas|signature", re.I)


def _shown(cfg: BaseModel, dotted: str) -> str:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return json.dumps(node)


def _version() -> str:
    from clusterlake import __version__

    return __version__


# --------------------------------------------------------------------------------------------
# loading


_BRANCH_TAGS = {"int", "str", "float", "bool", "list", "dict", "date"}


def _user_path(loc: tuple) -> str:
    # pydantic adds union/literal branch tags ("int", "literal['auto']") to the location;
    # keep only the key path the user wrote.
    parts = [str(p) for p in loc]
    keep = [p for p in parts if p not in _BRANCH_TAGS and "[" not in p and not p.startswith("function-")]
    return ".".join(keep)


def _format_errors(err: ValidationError, source: str) -> str:
    by_path: dict[str, list[str]] = {}
    got_by_path: dict[str, Any] = {}
    for e in err.errors():
        path = _user_path(e["loc"])
        kind = e["type"]
        if kind == "extra_forbidden":
            by_path.setdefault(path, []).append("unknown key")
            got_by_path[path] = None
            continue
        if kind == "missing":
            by_path.setdefault(path, []).append("missing required key")
            got_by_path[path] = None
            continue
        text = e["msg"].removeprefix("Value error, ")
        if text not in by_path.setdefault(path, []):
            by_path[path].append(text)
        got_by_path[path] = e.get("input")
    lines = []
    for path, texts in by_path.items():
        where = f"'{path}'" if path else "the config"
        got = got_by_path[path]
        if texts in (["unknown key"], ["missing required key"]):
            lines.append(f"{texts[0]} {where}")
            continue
        if isinstance(got, dict):  # a check across keys of a section: the message names them
            lines.append(f"{where}: {' or '.join(texts)}")
        else:
            lines.append(f"{where}: {' or '.join(texts)} (got {json.dumps(got, default=str)})")
    return f"invalid config {source}: " + "; ".join(lines)


def _yaml_problem(exc: Exception) -> str:
    """A YAML error on one line (PyYAML's own text spans several, with a caret under the column)."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` into (["a","b","c"], value) with YAML scalar rules for the value."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r} (e.g. --set kmeans.k=12)")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set has an empty key path in {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else None
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML: {_yaml_problem(exc)}") from None
    return key.split("."), value


def _apply_override(data: dict, path: list[str], value: Any) -> None:
    node: Any = data
    model: Any = JobConfig
    for i, part in enumerate(path):
        dotted = ".".join(path[: i + 1])
        fields = model.model_fields
        if part not in fields:
            raise ConfigError(f"--set {'.'.join(path)}: unknown key '{dotted}'")
        ann = fields[part].annotation
        is_section = isinstance(ann, type) and issubclass(ann, BaseModel)
        if i == len(path) - 1:
            node[part] = value
            return
        nxt = node.get(part)
        if nxt is None:
            nxt = {}
            node[part] = nxt
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {'.'.join(path)}: '{dotted}' is not a section")
        if not is_section:
            # a free-form mapping (spark.conf, output.storage_options): the rest of the path is
            # one key, dots included (spark.conf.spark.sql.shuffle.partitions=4)
            nxt[".".join(path[i + 1 :])] = value
            return
        node, model = nxt, ann


def load_config(
    path: Optional[Union[str, Path]] = None,
    overrides: Optional[list[str]] = None,
    data: Optional[dict] = None,
) -> JobConfig:
    """Load and validate a job config.

    Parameters
    ----------
    path : str or Path, optional
        A YAML file. Either ``path`` or ``data`` must be given.
    overrides : list of str, optional
        ``key.path=value`` strings applied on top, in order.
    data : dict, optional
        An already-parsed mapping (used by tests and the library API).

    Raises
    ------
    ConfigError
        On an unreadable file, invalid YAML, unknown keys, wrong types or bad values; the message
        names the file and the dotted key path.
    """
    source = str(path) if path is not None else "<dict>"
    if data is None:
        if path is None:
            raise ConfigError("no config given: pass --config FILE")
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {source} does not exist")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {source} cannot be read: {exc}") from None
        try:
            data = yaml.safe_load(text)
        except (yaml.YAMLError, ValueError) as exc:
            raise ConfigError(f"config file {source} is not valid YAML: {_yaml_problem(exc)}") from None
    else:
        data = json.loads(json.dumps(data, default=str))  # deep copy, plain types only
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {source} must be a mapping of sections, got {type(data).__name__}")
    for ov in overrides or []:
        keys, value = parse_override(ov)
        _apply_override(data, keys, value)
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
