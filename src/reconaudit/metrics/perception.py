"""Task-aware perceptual distances on the frozen diagnostic model's own features.

LPIPS and the Inception network of the FID need downloaded weights; the audit already has a
network that looks at these images for a living: the diagnostic model trained on clean images.
Its penultimate features (:func:`reconaudit.tasks.features.penultimate_features`) define two
distances between reconstructions and clean images, *task-aware perception*: how different the
reconstruction looks to the model that will read it, not to a human or an ImageNet classifier.

* :func:`feature_distance`: per study, :math:`\\lVert f(\\hat x) - f(x) \\rVert_2`.
* :func:`frechet_distance`: between the two sets of features, the Fréchet distance of Gaussians
  fitted to each (the FID formula on task features).
"""

from __future__ import annotations

import numpy as np

from ._utils import to_numpy

__all__ = ["feature_distance", "frechet_distance"]


def _features(a: object, name: str) -> np.ndarray:
    f = np.asarray(to_numpy(a, name), dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{name}: expected features (N, F), got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return f


def feature_distance(features: object, reference: object) -> np.ndarray:
    r"""Euclidean distance between each study's features and its reference's.

    .. math:: d_i = \lVert f(\hat x_i) - f(x_i) \rVert_2

    Parameters
    ----------
    features, reference : array (N, F)
        Features of the reconstructions and of the clean images, row-aligned.

    Returns
    -------
    numpy.ndarray (N,)
    """
    a, b = _features(features, "features"), _features(reference, "reference")
    if a.shape != b.shape:
        raise ValueError(f"features and reference must have the same shape, got {a.shape} and {b.shape}")
    return np.linalg.norm(a - b, axis=1)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(features_a: object, features_b: object) -> float:
    r"""Fréchet distance between Gaussians fitted to two feature sets (the FID formula).

    .. math:: d^2 = \lVert \mu_a - \mu_b \rVert_2^2
              + \operatorname{tr}\!\Big(\Sigma_a + \Sigma_b - 2 \big(\Sigma_a^{1/2} \Sigma_b \Sigma_a^{1/2}\big)^{1/2}\Big)

    with sample means and covariances (ddof=1).  :math:`\operatorname{tr}(\Sigma_a\Sigma_b)^{1/2}`
    is computed as :math:`\operatorname{tr}(\Sigma_a^{1/2}\Sigma_b\Sigma_a^{1/2})^{1/2}`, whose
    argument is symmetric positive semi-definite, by eigendecomposition (stable when there are
    fewer studies than features and the covariances are singular).  Returns :math:`d^2` (as the FID does).

    Parameters
    ----------
    features_a, features_b : array (N_a, F), (N_b, F), N >= 2

    Returns
    -------
    float
        :math:`d^2 \ge 0`; 0 for a set against itself.
    """
    a, b = _features(features_a, "features_a"), _features(features_b, "features_b")
    if a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"need two sets of >= 2 rows with the same feature count, got {a.shape} and {b.shape}")
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False).reshape(a.shape[1], -1), np.cov(b, rowvar=False).reshape(b.shape[1], -1)
    ra = _sqrt_psd(sa)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(ra @ sb @ ra), 0.0, None)).sum()
    return float(max(mu @ mu + np.trace(sa) + np.trace(sb) - 2.0 * cross, 0.0))
