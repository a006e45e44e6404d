"""Distances between Gaussian summaries of two feature sets: CORAL and Fréchet."""

from __future__ import annotations

import numpy as np

from domadapt import ops
from domadapt.gap.checks import as_features


def moments(features, block_size=8192):
    """Mean and unbiased covariance, accumulated block by block in float64 (O(d^2) memory)."""
    d = features.shape[1]
    count = 0
    total = np.zeros(d)
    outer = np.zeros((d, d))
    shift = features[0].astype(np.float64)  # centring on a sample keeps the sums well conditioned
    for start in range(0, len(features), block_size):
        block = features[start : start + block_size].astype(np.float64) - shift
        count += len(block)
        total += block.sum(axis=0)
        outer += block.T @ block
    mean = total / count
    covariance = (outer - count * np.outer(mean, mean)) / (count - 1)
    if not (np.isfinite(covariance).all() and np.isfinite(mean).all()):
        # Past |x| ~ 1e154 the squares overflow float64: CORAL came back NaN and Fréchet raised LinAlgError.
        raise ValueError("The features' covariance overflowed float64 (values around 1e154 or larger): rescale "
                         "them (e.g. divide by their standard deviation).")
    return mean + shift, (covariance + covariance.T) / 2


def coral(source_features, target_features):
    """CORAL distance ||Cov_s - Cov_t||_F^2 / (4 d^2) (Sun & Saenko 2016). Lower means closer.

    The formula of :func:`domadapt.ops.coral` (``da.CORAL``'s loss), on covariances
    accumulated block-wise in float64. Covariances are unbiased (n - 1). Range [0, inf); symmetric; 0 for identical
    second moments (means are ignored).

    Example:

    ```python
    import numpy as np, domadapt as da
    rng = np.random.default_rng(0)
    print(da.gap.coral(rng.normal(size=(500, 8)), 2 * rng.normal(size=(500, 8))))
    ```
    """
    source, target = as_features(source_features, target_features)
    return float(ops.coral_from_covariances(moments(source)[1], moments(target)[1]))


def _psd_sqrt(matrix):
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_from_moments(mean_source, covariance_source, mean_target, covariance_target):
    """||mu_s - mu_t||^2 + Tr(C_s + C_t - 2 (C_s^1/2 C_t C_s^1/2)^1/2).

    The product C_s C_t is not symmetric, and ``scipy.linalg.sqrtm`` of it can return
    complex values and lose accuracy; the symmetric form above has the same trace
    and is computed by two eigen-decompositions, clipping the tiny negative
    eigenvalues that rounding gives near-singular covariances.
    """
    root = _psd_sqrt(covariance_source)
    middle = root @ covariance_target @ root
    trace_sqrt = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None))))
    difference = mean_source - mean_target
    value = float(difference @ difference + np.trace(covariance_source) + np.trace(covariance_target) - 2 * trace_sqrt)
    return max(value, 0.0)


def frechet(source_features, target_features):
    """Fréchet distance between Gaussians fitted to the features (FID's formula). Lower means closer.

    F = ||mu_s - mu_t||^2 + Tr(C_s + C_t - 2 (C_s^1/2 C_t C_s^1/2)^1/2) (Dowson & Landau
    1982; Heusel et al. 2017). Range [0, inf); symmetric; 0 for identical
    Gaussians. Moments are accumulated in blocks, so 100k x 512 features need only
    O(d^2) extra memory; near-singular covariances (fewer samples than dimensions)
    are handled by clipping eigenvalues at 0.

    Example:

    ```python
    import numpy as np, domadapt as da
    rng = np.random.default_rng(0)
    print(da.gap.frechet(rng.normal(size=(1000, 4)), rng.normal(1.0, 1, size=(1000, 4))))  # ~4
    ```
    """
    source, target = as_features(source_features, target_features)
    return frechet_from_moments(*moments(source), *moments(target))
