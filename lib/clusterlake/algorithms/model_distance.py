"""The model space's distances as the job's settings name them (issue 23).

``kmeans.distance``, ``density.metric`` and ``hierarchical.metric`` name a distance of
:mod:`clusterlake.kernels.distances`; :func:`distance_named` makes it, with what the model space
supplies: mahalanobis' inverse covariance is the model space's covariance over every row (from
the input's moments and the fitted scaling and PCA, a linear map), never a sample's.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from clusterlake.errors import ConfigError
from clusterlake.kernels.distances import Metric
from clusterlake.kernels.distances import metric as make_metric

MAX_MAHALANOBIS_DIMS = 256  # model dimensions: VI travels in model.json and the tasks' commands


def model_space_covariance(moments, prep) -> np.ndarray:
    """The covariance of every row in the model space (``moments``: the input's, in input units;
    ``prep``: the fitted scaling and PCA, a linear map)."""
    cov_x = np.asarray(moments.m2, dtype=np.float64) / max(int(moments.n) - 1, 1)
    A = np.diag(1.0 / np.asarray(prep.scale, dtype=np.float64))
    if prep.components is not None:
        A = A @ np.asarray(prep.components, dtype=np.float64).T
    return A.T @ cov_x @ A


def distance_named(name: str, p: Optional[float], moments, prep, setting: str) -> Metric:
    """The :class:`~clusterlake.kernels.distances.Metric` ``name`` (``p``: minkowski's) in the
    model space; ``setting`` names the key in errors."""
    if name == "mahalanobis":
        cov = model_space_covariance(moments, prep)
        if len(cov) > MAX_MAHALANOBIS_DIMS:
            raise ConfigError(f"{setting}=mahalanobis on {len(cov)} model dimensions: the model keeps the inverse "
                              f"covariance ({len(cov)}^2 numbers, in model.json); keep at most "
                              f"{MAX_MAHALANOBIS_DIMS} with preprocess.pca.components")
        return make_metric("mahalanobis", VI=np.linalg.pinv(cov, hermitian=True))
    return make_metric(name, p=p)
