"""Scaling and PCA as one numpy transform, fitted once from a d x d scatter matrix.

The transform is ``z = ((x - center) / scale) @ components.T``: ``center`` is the column mean
(when scaling or PCA is on), ``scale`` the population standard deviation (``ddof=0``, like
scikit-learn's ``StandardScaler``) or 1, and ``components`` the leading eigenvectors of the scaled
covariance (like scikit-learn's ``PCA``: same variance-target rule and ``svd_flip``-style signs:
the largest-magnitude loading of each component is positive).

The same :meth:`Preprocessor.transform` runs inside Spark tasks, in the model artifact and in
``serving.Assigner``, so a row gets bit-for-bit the same model-space coordinates everywhere.
No Spark imports here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class Moments:
    """Mergeable first and second moments of a block of rows (Chan et al. parallel update)."""

    n: int
    mean: np.ndarray  # (d,)
    m2: np.ndarray  # (d, d) centred scatter: sum (x - mean)(x - mean)^T

    @classmethod
    def of(cls, X: np.ndarray) -> "Moments":
        X = np.asarray(X, dtype=np.float64)
        n = X.shape[0]
        d = X.shape[1]
        if n == 0:
            return cls(0, np.zeros(d), np.zeros((d, d)))
        mean = X.mean(axis=0)
        C = X - mean
        return cls(n, mean, C.T @ C)

    def merge(self, other: "Moments") -> "Moments":
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.n * other.n / n)
        return Moments(n, mean, m2)


@dataclass
class Preprocessor:
    """A fitted scaling + PCA transform from input features to the model space."""

    feature_names: list[str]
    center: np.ndarray  # (d,)
    scale: np.ndarray  # (d,)
    components: Optional[np.ndarray] = None  # (p, d) or None when PCA is off
    explained_variance_ratio: Optional[np.ndarray] = None  # (p,)
    scaling: str = "standard"
    info: dict = field(default_factory=dict)
    normalize: bool = False  # L2-normalise model-space rows (cosine distance: spherical k-means)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_components(self) -> int:
        return self.n_features if self.components is None else self.components.shape[0]

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Map raw rows (n, d) in ``feature_names`` order to the model space (n, p), float64."""
        Z = (np.asarray(X, dtype=np.float64) - self.center) / self.scale
        if self.components is not None:
            Z = Z @ self.components.T
        if self.normalize:
            norms = np.sqrt(np.einsum("ij,ij->i", Z, Z))
            Z = Z / np.where(norms > 0, norms, 1.0)[:, None]
        return Z

    def inverse_transform(self, Z: np.ndarray) -> np.ndarray:
        """Model space back to input units (exact when PCA keeps every component; for cosine,
        the direction only)."""
        Z = np.asarray(Z, dtype=np.float64)
        if self.components is not None:
            Z = Z @ self.components
        return Z * self.scale + self.center


def fit_preprocessor(
    moments: Moments,
    feature_names: list[str],
    scaling: str = "standard",
    pca_enabled: bool = True,
    pca_components: Optional[int] = None,
    pca_variance: Optional[float] = 0.95,
    normalize: bool = False,
) -> Preprocessor:
    """Fit the transform from merged moments of the whole (valid) input.

    Parameters
    ----------
    moments : Moments
        Of the input columns, in ``feature_names`` order.
    pca_components : int, optional
        Keep exactly this many components (capped at d). Takes precedence over ``pca_variance``.
    pca_variance : float, optional
        Keep the fewest components whose cumulative explained-variance ratio exceeds this
        (scikit-learn's rule for ``PCA(n_components=0.95)``).
    """
    d = len(feature_names)
    n = moments.n
    var = np.diag(moments.m2) / max(n, 1)
    if scaling == "standard":
        scale = np.sqrt(var)
        scale[scale == 0.0] = 1.0  # constant columns are removed upstream; keep this safe anyway
    else:
        scale = np.ones(d)
    center = moments.mean.copy() if (scaling == "standard" or pca_enabled) else np.zeros(d)
    prep = Preprocessor(list(feature_names), center, scale, scaling=scaling, normalize=normalize)
    if not pca_enabled:
        return prep
    cov = moments.m2 / max(n - 1, 1) / np.outer(scale, scale)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1]
    evals = np.clip(evals[order], 0.0, None)
    evecs = evecs[:, order].T  # rows are components
    # deterministic signs: largest |loading| positive
    idx = np.argmax(np.abs(evecs), axis=1)
    signs = np.sign(evecs[np.arange(d), idx])
    signs[signs == 0] = 1.0
    evecs = evecs * signs[:, None]
    total = evals.sum()
    ratio = evals / total if total > 0 else np.zeros_like(evals)
    if pca_components is not None:
        p = min(int(pca_components), d)
    else:
        cum = np.cumsum(ratio)
        p = int(np.searchsorted(cum, pca_variance, side="right") + 1)
        p = min(max(p, 1), d)
    prep.components = np.ascontiguousarray(evecs[:p])
    prep.explained_variance_ratio = ratio[:p]
    return prep
